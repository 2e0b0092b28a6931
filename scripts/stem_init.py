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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", help="a full-resolution edge student (checkpoint or bundled:NAME)")
    ap.add_argument("out", type=Path)
    ap.add_argument("--stem", type=int, default=2, choices=(2, 4))
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args(argv)

    from datprl_edge.core.errors import DatprlEdgeError
    from datprl_edge.io.atomic import check_output
    from datprl_edge.io.checkpoint import CheckpointConfig, save_checkpoint
    from datprl_edge.models.student import with_stem
    from datprl_edge.sources import resolve_model

    try:
        check_output(args.out, overwrite=args.overwrite, suffix=".safetensors")
        model = with_stem(resolve_model(args.source), args.stem)
        command = " ".join(["python", "scripts/stem_init.py", *(sys.argv[1:] if argv is None else argv)])
        init = f"{args.source}, models.student.with_stem(stem={args.stem})"
        cfg = CheckpointConfig(arch="EdgeDATPRL", options=model.datprl_config["options"], stage="student",
                               provenance={"init": init, "command": command})
        save_checkpoint(args.out, model.state_dict(), cfg)
    except DatprlEdgeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
