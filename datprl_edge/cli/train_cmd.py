"""`datprl-edge train-teacher`: train a full DATPRL-IR model (L1 + FFT loss) on restoration pairs.

Also holds the training options shared with `distill`. One process, or many through torchrun:
    torchrun --nproc_per_node 2 -m datprl_edge train-teacher --data synthetic --steps 1000 -o runs/t
"""

from __future__ import annotations

import sys

DEFAULT_TEACHER = "restormer-ref"


def register(subparsers):
    p = subparsers.add_parser(
        "train-teacher",
        help="train a full DATPRL-IR model (any size) on synthetic or paired data",
        description="Train a full-model architecture with the paper's L1 + 0.1 x FFT loss. Writes "
                    "RUN/state.pt (resumable), RUN/model.safetensors (EMA weights), train/val logs and "
                    "metrics.json.",
    )
    p.add_argument("--model", default=None, metavar="NAME",
                   help=f"registry name of the architecture to train (default {DEFAULT_TEACHER})")
    p.add_argument("--network", metavar="CFG",
                   help="YAML/JSON with a network_g block (type + options) instead")
    p.add_argument("--init", metavar="CKPT",
                   help="start from these weights (a toolkit checkpoint or bundled:teacher-ref) instead of "
                        "a random initialisation; the architecture comes from the checkpoint")
    add_training_args(p)
    p.set_defaults(func=run)


def add_training_args(p) -> None:
    g = p.add_argument_group("data and schedule")
    g.add_argument("--data", default="synthetic", metavar="SPEC",
                   help="synthetic[:TASKSET or task ids] (default synthetic = 9task) or a paired folder")
    g.add_argument("--steps", type=int, required=True, metavar="N", help="optimizer steps")
    g.add_argument("-o", "--output", required=True, metavar="RUN", help="run folder")
    g.add_argument("--resume", action="store_true", help="continue the run in RUN from its last checkpoint")
    g.add_argument("--batch", type=int, default=8, metavar="B", help="global batch size (default 8)")
    g.add_argument("--crop", type=int, default=64, metavar="PX", help="training crop size (default 64)")
    g.add_argument("--pairs", type=int, default=2048, metavar="N",
                   help="size of the fixed pool of training crops (default 2048); 0: a new pair for every "
                        "crop (on the fly, synthetic data)")
    g.add_argument("--severity", default="fixed",
                   help="fixed (each task's default, default) or random (uniform over the task's training "
                        "range, synthetic data)")
    g.add_argument("--task-weights", default="uniform", metavar="SPEC",
                   help="how often each task is drawn: uniform (default), adaptive (more steps for tasks "
                        "with the smallest validation gain over the input) or TASK=W,... (others 1)")
    g.add_argument("--pair-reuse", type=int, default=1, metavar="R",
                   help="on-the-fly pairs: each made pair fills R batch slots in different flips/turns")
    g.add_argument("--time-budget", type=float, default=0.0, metavar="SEC",
                   help="train for this many seconds: --steps becomes an upper bound and the cosine "
                        "schedule is fitted to the time (default 0 = off)")
    g.add_argument("--lr", type=float, default=4e-4, help="peak learning rate (AdamW, cosine; default 4e-4)")
    g.add_argument("--min-lr", type=float, default=1e-6, help="final learning rate (default 1e-6)")
    g.add_argument("--warmup", type=int, default=0, metavar="N", help="linear warm-up steps (default 0)")
    g.add_argument("--grad-clip", type=float, default=1.0, help="gradient-norm clip, 0 = off (default 1)")
    g.add_argument("--fft-weight", type=float, default=0.1, help="weight of the FFT loss (default 0.1)")
    g.add_argument("--ema", type=float, default=0.999, metavar="DECAY",
                   help="EMA decay, 0 = off (default 0.999)")
    g.add_argument("--seed", type=int, default=0, help="seed of data, batches and initialisation (default 0)")
    g.add_argument("--accum", type=int, default=1, metavar="N",
                   help="gradient-accumulation steps (default 1)")
    g.add_argument("--curriculum", default="mixed",
                   help="mixed (default) or sequential (tasks added one by one)")
    g.add_argument("--prompts", default="adaptive",
                   help="adaptive (the model routes, default) or explicit (task-id prompts; students only)")
    h = p.add_argument_group("hardware and logging")
    h.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    h.add_argument("--amp", default="auto", help="auto (bf16 on CUDA, default), bf16 or off")
    h.add_argument("--channels-last", default=None, action="store_true",
                   help="channels_last (default: on CUDA)")
    h.add_argument("--compile", action="store_true", help="torch.compile the training model")
    h.add_argument("--threads", type=int, default=None, metavar="N", help="torch CPU threads per process")
    h.add_argument("--workers", type=int, default=0, metavar="N",
                   help="processes that make the batches ahead of the step (default 0: in the step)")
    h.add_argument("--ckpt-every", type=int, default=200, metavar="N",
                   help="checkpoint interval (default 200)")
    h.add_argument("--val-every", type=int, default=200, metavar="N",
                   help="validation interval (default 200)")
    h.add_argument("--val-count", type=int, default=4, metavar="N",
                   help="validation images per task (default 4)")
    h.add_argument("--val-size", type=int, default=64, metavar="PX",
                   help="validation image size (default 64)")
    h.add_argument("--log-every", type=int, default=10, metavar="N", help="train-log interval (default 10)")
    h.add_argument("--no-progress", action="store_true", help="no progress bar")


def config_kwargs(args) -> dict:
    return dict(steps=args.steps, batch_size=args.batch, crop=args.crop, train_pairs=args.pairs, lr=args.lr,
                severity=args.severity, task_weights=args.task_weights, workers=args.workers,
                pair_reuse=args.pair_reuse, time_budget=args.time_budget,
                min_lr=args.min_lr, warmup_steps=args.warmup, grad_clip=args.grad_clip,
                fft_weight=args.fft_weight, ema_decay=args.ema, seed=args.seed, accum_steps=args.accum,
                curriculum=args.curriculum, prompt_mode=args.prompts, amp=args.amp,
                channels_last=args.channels_last, compile=args.compile, device=args.device,
                ckpt_every=args.ckpt_every, val_every=args.val_every, val_count=args.val_count,
                val_size=args.val_size, log_every=args.log_every, progress=not args.no_progress)


def apply_threads(args) -> None:
    import torch

    from datprl_edge.core.errors import ConfigError

    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)


def command_line() -> str:
    return "datprl-edge " + " ".join(sys.argv[1:])


def print_summary(result, label: str) -> None:
    if not result.metrics:  # not the main process
        return
    print(f"{label}: {result.checkpoint}  ({result.steps} steps, {result.sec_per_step:.3f} s/step)")
    print(f"{'task':28s} {'PSNR':>7s} {'SSIM':>7s} {'input PSNR':>11s}")
    for task, m in result.metrics["tasks"].items():
        print(f"{task:28s} {m['psnr']:7.2f} {m['ssim']:7.4f} {m['psnr_input']:11.2f}")
    m = result.metrics["mean"]
    print(f"{'mean':28s} {m['psnr']:7.2f} {m['ssim']:7.4f} {m['psnr_input']:11.2f}")


def build_teacher_model(args):
    from datprl_edge.core.errors import ConfigError
    from datprl_edge.models.loading import read_network_config
    from datprl_edge.models.registry import create_model

    if args.network and args.model:
        raise ConfigError("pass either --model or --network, not both")
    if getattr(args, "init", None):
        if args.network or args.model:
            raise ConfigError("--init takes the architecture from the checkpoint; drop --model/--network")
        from datprl_edge.sources import resolve_model

        return resolve_model(args.init)
    if args.network:
        net = read_network_config(args.network)
        arch = net.pop("type", None)
        if not arch:
            raise ConfigError("network config has no 'type' (e.g. DualPromptRestormerv3)")
        return create_model(arch, **net)
    return create_model(args.model or DEFAULT_TEACHER)


def run(args) -> int:
    import torch

    from datprl_edge.train.config import TrainConfig
    from datprl_edge.train.teacher import train_teacher

    apply_threads(args)
    config = TrainConfig(**config_kwargs(args))
    torch.manual_seed(config.seed)
    model = build_teacher_model(args)
    prov = {"command": command_line(), **({"init": args.init} if args.init else {})}
    result = train_teacher(model, config, args.data, args.output, resume=args.resume, provenance=prov)
    print_summary(result, "teacher")
    return 0
