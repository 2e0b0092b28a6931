"""Give a student checkpoint trained before activation bounds existed its bounds (`models.bounds`):
measured on training crops exactly as `distill` now does at the end of a run; the weights are
unchanged. For a bundled checkpoint the MANIFEST entry gets the new sha256 and a note.

    python scripts/bound_student.py datprl_edge/weights/edge-xs.safetensors [--crop 96] [--seed 0]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
WEIGHTS = ROOT / "datprl_edge" / "weights"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--data", default="synthetic")
    ap.add_argument("--crop", type=int, default=96)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from datprl_edge.io.atomic import write_text_atomic
    from datprl_edge.io.checkpoint import read_checkpoint, save_checkpoint, sha256_file
    from datprl_edge.models.loading import load_model
    from datprl_edge.train.bounds import bound_student
    from datprl_edge.train.data import build_train_data

    old_sha = sha256_file(args.checkpoint)
    state, cfg = read_checkpoint(args.checkpoint)
    model = load_model(args.checkpoint)
    data = build_train_data(args.data, args.crop, 0, args.seed, severity="random")
    bounds = bound_student([model], data, args.batch, args.seed)
    if bounds is None:
        print(f"{args.checkpoint.name}: not an edge student (no act_bounds option)", file=sys.stderr)
        return 2
    command = shlex.join(["python", "scripts/bound_student.py", *(sys.argv[1:] if argv is None else argv)])
    cfg = dataclasses.replace(cfg, options={**cfg.options, "act_bounds": bounds},
                              provenance={**cfg.provenance, "act_bounds": command})
    dest = save_checkpoint(args.checkpoint, state, cfg)
    manifest_path = WEIGHTS / "MANIFEST.json"
    if dest.resolve().parent == WEIGHTS.resolve():
        manifest = json.loads(manifest_path.read_text())
        entry = manifest["files"][dest.name]
        entry.update(bytes=dest.stat().st_size, sha256=sha256_file(dest), act_bounds={
            "layers": len(bounds), "command": command,
            "what": "each conv's output clamped to +-(its largest |output| on 16 training batches of 8 "
                    "crops, random severity); weights unchanged (models.bounds; values in the "
                    "checkpoint's options.act_bounds)"})
        for other in manifest["files"].values():  # QAT strips the bounds: the same program either way
            if other.get("base_sha256") == old_sha:
                other["base_sha256"] = entry["sha256"]
                other["base_note"] = f"made from the same weights before act_bounds (sha256 {old_sha})"
        write_text_atomic(manifest_path, json.dumps(manifest, indent=1) + "\n")
    print(f"{dest}: bounds on {len(bounds)} convs, {min(bounds.values()):.3g}..{max(bounds.values()):.3g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
