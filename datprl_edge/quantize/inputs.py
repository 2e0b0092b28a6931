"""The images QAT runs on: calibration pairs from a recipe, the fixed validation pairs it reports, and
the separate pairs the sensitivity search (`--max-drop`) decides on."""

from __future__ import annotations

from datprl_edge.core.errors import ConfigError


def calibration_pairs(recipe) -> tuple[list, list]:
    """(calibration items for `qat.run_qat`, the recipe's task ids) of a recipe (name or .toml) or of a
    built set folder."""
    try:
        from datprl_edge.data.calib import calibration_images
    except ImportError:
        raise ConfigError("calibration recipes need datprl_edge.data.calib, which this install lacks") \
            from None
    images = calibration_images(recipe)
    return images.pairs(), list(images.tasks)


def validation_pairs(tasks, count: int, size: int) -> dict:
    """{task: (lq, gt) tensors}: the fixed validation pairs ('val' split) of `tasks`."""
    from datprl_edge.data.datasets import validation_set

    return {t: validation_set(t, count=count, size=size).tensors() for t in tasks}


def search_pairs(tasks, count: int, size: int) -> dict:
    """{task: (lq, gt) tensors} of the 'train' images (seed 1) for the sensitivity search, apart from
    the reported ones."""
    import numpy as np
    import torch

    from datprl_edge.data.pairs import fixed_pairs

    out = {}
    for t in tasks:
        pairs = fixed_pairs(t, count, size, seed=1, split="train")
        lq = np.stack([p.lq.transpose(2, 0, 1) for p in pairs]).astype(np.float32)
        gt = np.stack([p.gt.transpose(2, 0, 1) for p in pairs]).astype(np.float32)
        out[t] = (torch.from_numpy(lq), torch.from_numpy(gt))
    return out
