"""What `stem_init.py` and `transfer_init.py` share: refuse an existing OUT (unless --overwrite), build the
new student, save it as a toolkit student checkpoint with its provenance, and end a toolkit error in one
line on stderr with exit code 2."""

from __future__ import annotations

import sys


def write_student_init(out, overwrite: bool, script: str, argv, build) -> int:
    """`build()` returns (model built by create_model, a line saying how it was initialised)."""
    from datprl_edge.core.errors import DatprlEdgeError
    from datprl_edge.io.atomic import check_output
    from datprl_edge.io.checkpoint import CheckpointConfig, save_checkpoint
    from datprl_edge.models.registry import model_config

    try:
        check_output(out, overwrite=overwrite, suffix=".safetensors")
        model, init = build()
        arch, options = model_config(model)
        command = " ".join(["python", script, *(sys.argv[1:] if argv is None else argv)])
        cfg = CheckpointConfig(arch=arch, options=options, stage="student",
                               provenance={"init": init, "command": command})
        save_checkpoint(out, model.state_dict(), cfg)
    except DatprlEdgeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}: {init}")
    return 0
