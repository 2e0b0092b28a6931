"""A distilled student's activation bounds (`models.bounds`), set from training crops at the end of a
run, or afterwards for a checkpoint trained before bounds existed (`scripts/bound_student.py`)."""

from __future__ import annotations

from datprl_edge.models.bounds import DEFAULT_MARGIN, measure_act_bounds, set_act_bounds

BOUND_CROPS = 128  # training crops the bounds are measured on (16 batches of 8)


def bound_student(models, data, batch_size: int, seed: int = 0, curriculum: str = "mixed",
                  crops: int = BOUND_CROPS, margin: float = DEFAULT_MARGIN):
    """Measure the bounds on the first model over the first `crops` training crops of `data` (a
    `train.data.TrainData`, in batches of `batch_size`) and set them on every model; returns them
    (None: a model without the `act_bounds` option, e.g. a teacher with norms)."""
    from datprl_edge.train.curriculum import Curriculum
    from datprl_edge.train.loader import BatchPlan, make_batch

    models = list(models)
    if not getattr(models[0], "accepts_act_bounds", False):
        return None
    batches = max(1, -(-crops // batch_size))
    plan = BatchPlan(data, Curriculum(curriculum, data.task_of_item, batches, seed), batch_size,
                     slice(0, batch_size))
    lq = [make_batch(data, plan, s)["lq"] for s in range(batches)]
    bounds = measure_act_bounds(models[0], lq, margin)
    for m in models:
        set_act_bounds(m, bounds)
    return bounds
