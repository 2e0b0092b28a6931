"""The recommended operating point: the fastest artifact whose latency fits `--budget-ms` and whose
worst-task PSNR drop (against the eval reference) fits `--max-drop`, with the reason in words."""

from __future__ import annotations

import dataclasses
import math

from datprl_edge.core.errors import ConfigError

DEFAULT_MAX_DROP = 0.5  # dB, worst task, against the eval reference (the FP32 student in the pipeline)


@dataclasses.dataclass
class Candidate:
    artifact: str
    target: str
    precision: str
    p50_ms: float | None
    mean_psnr: float | None
    worst_drop: float | None
    excluded: str = ""  # why it was not eligible; "" when it was

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Recommendation:
    artifact: str | None  # None when no artifact meets the limits
    reason: str
    budget_ms: float | None
    max_drop: float | None
    shape: list | None
    device: str | None
    reference: str | None
    candidates: list  # every artifact with why it was or was not eligible

    def to_dict(self) -> dict:
        return {**{k: v for k, v in dataclasses.asdict(self).items() if k != "candidates"},
                "candidates": [c.to_dict() for c in self.candidates]}


def check_limits(budget_ms, max_drop) -> None:
    for name, v in (("--budget-ms", budget_ms), ("--max-drop", max_drop)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
                              or v < 0 or (name == "--budget-ms" and v == 0)):
            raise ConfigError(f"{name} must be a positive number, got {v!r}")


def recommend(run, budget_ms: float | None = None, max_drop: float | None = DEFAULT_MAX_DROP,
              shape=None) -> Recommendation:
    """Pick from `run.artifacts` (a `collect.RunData`) at the benchmark shape `shape` (default: the first)."""
    check_limits(budget_ms, max_drop)
    shape = run.primary_shape(shape)
    reference = ((run.eval or {}).get("reference") or {}).get("model")
    candidates, device = [], None
    for a in run.artifacts:
        lat = a.latency(shape) if shape else None
        c = Candidate(a.name, a.target, a.precision, lat["latency_ms"]["p50"] if lat else None,
                      a.mean_psnr(), a.worst_drop())
        if lat is None:
            c.excluded = f"latency not measured: {a.not_measured_reason()}"
        elif a.eval is None:
            c.excluded = "PSNR not measured (not in the eval report)"
        elif max_drop is not None and c.worst_drop is None:
            c.excluded = "no PSNR drop known (the eval report has no reference model)"
        elif budget_ms is not None and c.p50_ms > budget_ms:
            c.excluded = f"p50 {c.p50_ms:.2f} ms is over the {_num(budget_ms)} ms budget"
        elif max_drop is not None and c.worst_drop > max_drop:
            c.excluded = f"worst-task drop {c.worst_drop:.2f} dB is over --max-drop {_num(max_drop)} dB"
        else:
            device = device or (lat.get("device") or lat.get("compute_units"))
        candidates.append(c)
    eligible = sorted((c for c in candidates if not c.excluded),
                      key=lambda c: (c.p50_ms, -(c.mean_psnr if c.mean_psnr is not None else -math.inf)))
    limits = _limits_text(budget_ms, max_drop, reference)
    where = f"at {shape[0]}x{shape[1]}" if shape else ""
    if not eligible:
        reason = f"No artifact meets {limits}. " + _closest(candidates, budget_ms, max_drop)
        return Recommendation(None, reason.strip(), budget_ms, max_drop, shape, None, reference, candidates)
    best = eligible[0]
    best_lat = next(a for a in run.artifacts if a.name == best.artifact).latency(shape)
    device = best_lat.get("device") or best_lat.get("compute_units") or "CPU"
    on = f"{device} of {run.host}" if len(getattr(run, "hosts", [])) > 1 else device
    parts = [f"{best.artifact} is the fastest artifact that meets {limits}: p50 {best.p50_ms:.2f} ms {where} "
             f"on {on}, mean PSNR {best.mean_psnr:.2f} dB"]
    if best.worst_drop is not None:
        parts[0] += f", worst-task drop {best.worst_drop:+.2f} dB"
    parts[0] += "."
    if len(eligible) > 1:
        nxt = eligible[1]
        parts.append(f"Next: {nxt.artifact} at {nxt.p50_ms:.2f} ms ({nxt.p50_ms / best.p50_ms:.2f}x slower).")
    faster = [c for c in candidates if c.excluded and c.p50_ms is not None and c.p50_ms < best.p50_ms]
    if faster:
        parts.append("Faster but excluded: " + "; ".join(f"{c.artifact} ({c.excluded})" for c in faster)
                     + ".")
    return Recommendation(best.artifact, " ".join(parts), budget_ms, max_drop, shape, device, reference,
                          candidates)


def _limits_text(budget_ms, max_drop, reference) -> str:
    parts = []
    if budget_ms is not None:
        parts.append(f"the latency budget (p50 <= {_num(budget_ms)} ms)")
    if max_drop is not None:
        ref = f" against {reference}" if reference else ""
        parts.append(f"the quality limit (worst-task PSNR drop <= {_num(max_drop)} dB{ref})")
    return " and ".join(parts) or "no limits (none were given)"


def _closest(candidates, budget_ms, max_drop) -> str:
    measured = [c for c in candidates if c.p50_ms is not None and c.worst_drop is not None]
    if not measured:
        return "No artifact has both a measured latency and a measured PSNR drop."
    hints = []
    in_budget = [c for c in measured if budget_ms is None or c.p50_ms <= budget_ms]
    if in_budget and max_drop is not None:
        c = min(in_budget, key=lambda c: c.worst_drop)
        hints.append(f"Within the budget, the smallest drop is {c.artifact} ({c.worst_drop:.2f} dB): "
                     f"raise --max-drop to {math.ceil(c.worst_drop * 100) / 100:.2f} to accept it.")
    in_drop = [c for c in measured if max_drop is None or c.worst_drop <= max_drop]
    if in_drop and budget_ms is not None:
        c = min(in_drop, key=lambda c: c.p50_ms)
        hints.append(f"Within the quality limit, the fastest is {c.artifact} ({c.p50_ms:.2f} ms): "
                     f"a budget of {math.ceil(c.p50_ms * 10) / 10:.1f} ms would accept it.")
    return " ".join(hints)


def _num(v: float) -> str:
    return f"{v:g}"
