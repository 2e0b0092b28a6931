"""The export check: an artifact's outputs against its torch reference, the thresholds it must
meet, and the record of it (`Verification`) kept in the artifact's report. numpy only.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from datprl_edge.core.artifacts import psnr_db

# Lowest PSNR (dB) of an artifact against its torch reference: FP32 and FP16 against the FP32
# model, INT8 against the fake-quant model.
MIN_PSNR_DB = {"fp32": 60.0, "fp16": 45.0, "int8": 40.0}
# Lowest PSNR (dB) of an INT8 artifact run with the runtime's default kernels against the same
# artifact run with its exact integer kernels (where the runtime has both): they differ only where
# the fast kernels lose precision on this CPU (int16 saturation without VNNI), which must not happen.
MIN_EXACT_INT8_PSNR_DB = 60.0


@dataclasses.dataclass
class Verification:
    """Artifact vs torch reference on a few images (or, without a runtime, a structural check)."""

    precision: str
    reference: str  # what the artifact was compared with
    numerics_checked: bool
    passed: bool
    threshold_db: float
    psnr_db: float | None = None  # worst image; None when not checked (or outputs identical)
    psnr_db_mean: float | None = None
    max_abs_diff: float | None = None
    images: list = dataclasses.field(default_factory=list)  # names/shapes of the images used
    note: str = ""
    # INT8 only, where the runtime has exact integer kernels: default kernels vs exact kernels
    exact_int8_max_abs_diff: float | None = None  # 0.0: the same numbers
    exact_int8_psnr_db: float | None = None  # worst image; None when identical or not checked
    # Models with a context: one image run with another image's own context at mix 1, artifact vs
    # torch (restored: the same threshold; context_out: recorded)
    context_checked: bool = False
    context_passed: bool | None = None
    context_psnr_db: float | None = None  # None when identical or not checked
    context_max_abs_diff: float | None = None
    context_out_max_abs_diff: float | None = None
    context_effect_max_abs_diff: float | None = None  # torch: given context vs own (how much the check sees)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def compare_outputs(refs, outs, precision: str, reference: str, images=()) -> Verification:
    """Verification from reference and artifact outputs (lists of NCHW arrays)."""
    threshold = MIN_PSNR_DB[precision]
    values = [psnr_db(r, o) for r, o in zip(refs, outs)]
    diffs = [max_abs_diff(r, o) for r, o in zip(refs, outs)]
    worst = min(values)
    finite = [v for v in values if math.isfinite(v)]
    note = ""
    if worst == -math.inf:
        note = "the artifact produced NaN or infinite values"
    elif worst == math.inf:
        note = "outputs identical to the reference"
    return Verification(
        precision=precision, reference=reference, numerics_checked=True, passed=worst >= threshold,
        threshold_db=threshold,
        psnr_db=round(worst, 3) if math.isfinite(worst) else None,
        psnr_db_mean=round(float(np.mean(finite)), 3) if finite else None,
        max_abs_diff=float(max(diffs)) if all(math.isfinite(d) for d in diffs) else None,
        images=list(images), note=note,
    )


def max_abs_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def check_exact_int8(verification: Verification, outs, exact_outs) -> Verification:
    """Add the default-vs-exact-kernel comparison of an INT8 artifact to its verification."""
    worst = min(psnr_db(e, o) for e, o in zip(exact_outs, outs))
    verification.exact_int8_psnr_db = round(worst, 3) if math.isfinite(worst) else None
    verification.exact_int8_max_abs_diff = max(max_abs_diff(e, o) for e, o in zip(exact_outs, outs))
    if worst < MIN_EXACT_INT8_PSNR_DB:
        verification.passed = False
        verification.note = (f"on this CPU the runtime's fast INT8 kernels differ from its exact integer "
                             f"kernels ({worst:.1f} dB < {MIN_EXACT_INT8_PSNR_DB} dB): int16 saturation "
                             "without VNNI; re-quantize with this toolkit's scheme (7-bit weights)")
    return verification


def check_context(verification: Verification, ref, out, ref_own, out_own) -> Verification:
    """Add the context-input check (artifact run with a given context vs torch) to a verification."""
    value = psnr_db(ref, out)
    own_diff = max_abs_diff(ref_own, out_own)
    ok = value >= verification.threshold_db and math.isfinite(own_diff)
    verification.context_checked, verification.context_passed = True, ok
    verification.context_psnr_db = round(value, 3) if math.isfinite(value) else None
    diff = max_abs_diff(ref, out)
    verification.context_max_abs_diff = diff if math.isfinite(diff) else None
    verification.context_out_max_abs_diff = own_diff if math.isfinite(own_diff) else None
    if not ok:
        verification.passed = False
        verification.note = (f"with a given context (mix 1) the artifact differs from torch: {value:.1f} dB "
                             f"< {verification.threshold_db} dB, context_out max abs diff {own_diff:.3g}; "
                             "the context inputs are not wired as in the model")
    return verification


def structural_only(precision: str, reference: str, note: str) -> Verification:
    return Verification(precision=precision, reference=reference, numerics_checked=False, passed=True,
                        threshold_db=MIN_PSNR_DB[precision], note=note)


INT8_DROP_WARN_DB = 0.1  # dB: the INT8 drop against FP32 this toolkit holds its shipped weights to


def warn_drop(progress, target: str, drop, config) -> None:
    """One warning line through `progress` when `drop` (`int8_drop`) is over INT8_DROP_WARN_DB and no
    --max-drop budget was asked for."""
    if drop and progress and drop["worst"] > INT8_DROP_WARN_DB and config.max_drop is None:
        progress(f"warning: {target} INT8 loses {drop['worst']:.2f} dB against the float model on "
                 f"{drop['worst_task']} ({drop['pairs']}); export again with --max-drop "
                 f"{INT8_DROP_WARN_DB:g} (keeps the most sensitive layers float) or --qat-steps N")


def int8_drop(quant, from_float: bool, pairs: str) -> dict | None:
    """{tasks: {task: dB}, worst, worst_task, pairs, fidelity_db} of an INT8 result made here from a
    float model: its PSNR drop against that model on `pairs` (`sources.drop_pairs`), and the PSNR of
    its outputs against the float model's (`fidelity_db`, per task: how closely it tracks the float
    model, which a small drop alone does not say); None otherwise."""
    metrics = (getattr(quant, "metrics", None) or {}) if from_float else {}
    d = metrics.get("drop_db")
    if not d:
        return None
    tasks = {t: round(float(v), 4) for t, v in d["tasks"].items()}
    worst = max(tasks, key=tasks.get)
    fidelity = {t: round(float(v), 2) for t, v in (metrics.get("psnr_int8_vs_fp32") or {}).items()}
    return {"tasks": tasks, "worst": tasks[worst], "worst_task": worst, "pairs": pairs,
            **({"fidelity_db": fidelity} if fidelity else {})}
