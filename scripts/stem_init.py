"""Start a reduced-resolution student from a trained full-resolution one (`models.student.with_stem`):
same block weights, stem convs spread over the pixel phases. The starting point of `edge-lat`.

    python scripts/stem_init.py bundled:edge-xs runs/edge-lat-init.safetensors [--stem 2]

The output is a toolkit checkpoint for `datprl-edge distill --student OUT` (kept unless --overwrite).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from init_checkpoint import write_student_init  # noqa: E402  (scripts/, beside this file)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", help="a full-resolution edge student (checkpoint or bundled:NAME)")
    ap.add_argument("out", type=Path)
    ap.add_argument("--stem", type=int, default=2, choices=(2, 4))
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args(argv)

    from datprl_edge.models.student import with_stem
    from datprl_edge.sources import resolve_model

    def build():
        model = with_stem(resolve_model(args.source), args.stem)
        return model, f"{args.source}, models.student.with_stem(stem={args.stem})"

    return write_student_init(args.out, args.overwrite, "scripts/stem_init.py", argv, build)


if __name__ == "__main__":
    raise SystemExit(main())
