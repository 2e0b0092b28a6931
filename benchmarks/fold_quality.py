"""Does fixing the prompt per task cost restoration quality? (benchmark helper)

On held-out validation pairs (`validation_set`, bundled 'val' images, never used for the prompt):
mean PSNR vs ground truth (`core.metrics`: output clipped, mean capped) of the input, the auto-routed
model, the static fold with mean pool weights (what `fold_static` does), and the alternative fold
with the mean composed prompt.
"""

from __future__ import annotations

VAL_COUNT, VAL_SIZE = 8, 256


def quality_part(student, folded: dict, images: int | None) -> list:
    import torch

    from datprl_edge.core.metrics import batch_psnr, mean_psnr
    from datprl_edge.data.datasets import validation_set
    from datprl_edge.fold.folding import FoldConfig
    from datprl_edge.fold.support import load_fold_images
    from datprl_edge.models.folded import prompted_blocks, static_from_student
    from datprl_edge.models.registry import model_config

    options = model_config(student)[1]
    calib = load_fold_images(FoldConfig(task=list(folded), images=images), list(folded), 3)

    def score(fn, lq, gt):
        with torch.inference_mode():
            out = torch.cat([fn(lq[i:i + 4]) for i in range(0, len(lq), 4)]).numpy()
        return mean_psnr(batch_psnr(gt, out, clip=True))

    rows = []
    for task, model in folded.items():
        x = calib[task]
        with torch.inference_mode():
            prompt = torch.cat([student.conditioning(x[i:i + 4]).prompt for i in range(0, len(x), 4)])
        films = {n: b.film.terms(prompt.mean(0, keepdim=True)) for n, b in prompted_blocks(student).items()}
        alt = static_from_student(student, options, films, [task])
        lq, gt = validation_set(task, count=VAL_COUNT, size=VAL_SIZE).tensors()
        gt_np = gt.numpy()
        rows.append({"task": task, "val_images": len(gt), "val_size": VAL_SIZE,
                     "psnr_input_db": round(mean_psnr(batch_psnr(gt_np, lq.numpy(), clip=True)), 2),
                     "psnr_auto_db": round(score(student, lq, gt_np), 2),
                     "psnr_fold_mean_weights_db": round(score(model, lq, gt_np), 2),
                     "psnr_fold_mean_prompt_db": round(score(alt, lq, gt_np), 2)})
        print(f"  quality {task}: {rows[-1]}", flush=True)
    return rows
