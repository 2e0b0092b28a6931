"""Start a new student architecture from a trained one: a fresh model of the registry name, with every
parameter whose name and shape match the source's copied over (for edge-q8 from edge-lat: prompt pools,
mappers, FiLM, stem, samplers and each block's 1x1 conv1), the rest at their initialisation. The
starting point of `edge-q8`.

    python scripts/transfer_init.py bundled:edge-lat edge-q8 runs/edge-q8-init.safetensors

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
    ap.add_argument("source", help="a trained student (checkpoint or bundled:NAME)")
    ap.add_argument("name", help="registry name of the new student")
    ap.add_argument("out", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args(argv)

    import torch

    from datprl_edge.models.registry import create_model
    from datprl_edge.sources import resolve_model

    def build():
        source = resolve_model(args.source).state_dict()
        torch.manual_seed(args.seed)
        model = create_model(args.name)
        state = model.state_dict()
        copied = [k for k, v in state.items() if k in source and source[k].shape == v.shape]
        model.load_state_dict({**state, **{k: source[k] for k in copied}}, strict=True)
        init = f"{args.name} (seed {args.seed}) with {len(copied)} of {len(state)} tensors from {args.source}"
        return model, init

    return write_student_init(args.out, args.overwrite, "scripts/transfer_init.py", argv, build)


if __name__ == "__main__":
    raise SystemExit(main())
