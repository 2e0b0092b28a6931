"""Validation PSNR against steps and wall time for one or more training runs (from RUN/val.jsonl).

    .venv/bin/python benchmarks/plot_training.py runs/edge-xs-v3 "no KD=runs/edge-xs-v3-nokd" \
        -o benchmarks/results/training_curves.png --per-task
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from datprl_edge.train.curves import plot_runs  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="run folders, optionally LABEL=FOLDER")
    p.add_argument("-o", "--output", default="benchmarks/results/training_curves.png")
    p.add_argument("--title", default="validation PSNR")
    p.add_argument("--per-task", action="store_true", help="add per-task gain over the input")
    args = p.parse_args(argv)
    runs = {}
    for spec in args.runs:
        label, eq, folder = spec.partition("=")
        runs[label if eq else Path(spec).name] = folder if eq else spec
    print(plot_runs(runs, args.output, args.title, args.per_task))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
