"""Whether an INT8 model picks the prompts its FP32 model picks.

The prompt pools choose their top-k prompts discretely, so a small change in the features a query
mapper reads can swap one prompt for another and move the whole restored image. Per task: how many
validation images route differently under INT8 and the PSNR drop on those and on the rest; the
rest is what a fixed-task (folded) deployment, where nothing is chosen at run time, would lose.
"""

from __future__ import annotations

import numpy as np
import torch

from datprl_edge.core.metrics import PSNR_CAP_DB, batch_psnr
from datprl_edge.models.prompt_pool import recorded_routes
from datprl_edge.quantize.loop import run_padded
from datprl_edge.quantize.scope import frozen_observers


def _choices_and_psnr(module, lq, gt, multiple):
    """(every pool's top-k of one image, or None when no eager routing ran; its PSNR, capped)."""
    with recorded_routes() as record:
        out = run_padded(module, lq, multiple)
    choices = [r.indices.sort(dim=-1).values.flatten().tolist() for r in record] if record else None
    return choices, min(batch_psnr(gt.numpy(), out.numpy(), clip=True)[0], PSNR_CAP_DB)


@torch.no_grad()
def routing_agreement(fp32, quantized, val: dict, multiple: int) -> dict | None:
    """{task: {images, flipped, drop_flipped_db, drop_kept_db}}; None when the INT8 module routes inside
    a traced program (nothing to compare)."""
    out = {}
    with frozen_observers(quantized):
        for task, (lq, gt) in val.items():
            kept, flipped = [], []
            for i in range(lq.shape[0]):
                ref, p_ref = _choices_and_psnr(fp32, lq[i:i + 1], gt[i:i + 1], multiple)
                got, p_got = _choices_and_psnr(quantized, lq[i:i + 1], gt[i:i + 1], multiple)
                if got is None or ref is None:
                    return None
                (kept if got == ref else flipped).append(p_ref - p_got)
            out[task] = {"images": len(kept) + len(flipped), "flipped": len(flipped),
                         "drop_flipped_db": float(np.mean(flipped)) if flipped else None,
                         "drop_kept_db": float(np.mean(kept)) if kept else None}
    return out
