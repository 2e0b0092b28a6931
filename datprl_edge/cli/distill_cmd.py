"""`datprl-edge distill`: train an edge student from a teacher (or without one: --no-kd)."""

from __future__ import annotations

from datprl_edge.cli.train_cmd import (
    add_training_args,
    apply_threads,
    command_line,
    config_kwargs,
    print_summary,
)


def register(subparsers):
    p = subparsers.add_parser(
        "distill",
        help="distil a teacher into an edge student (ground truth + output/feature/routing distillation)",
        description="Train a student against the ground truth (L1 + FFT) and a teacher: output L1, "
                    "feature distillation through 1x1 adapters at matched scales, and routing distillation "
                    "(KL between the prompt-selection distributions). --no-kd: the same without a teacher.",
    )
    p.add_argument("--teacher", metavar="CKPT", help="teacher checkpoint (.safetensors, released .pth with "
                   "--network, or bundled:teacher-ref)")
    p.add_argument("--network", metavar="CFG", help="YAML/JSON network_g of a released teacher .pth")
    p.add_argument("--student", default="edge-xs", metavar="NAME",
                   help="student registry name (default edge-xs) or a student checkpoint to start from")
    p.add_argument("--no-kd", action="store_true", help="no teacher: ground-truth loss only (the baseline)")
    k = p.add_argument_group("distillation losses")
    k.add_argument("--gt-weight", type=float, default=1.0, help="ground-truth L1+FFT weight (default 1)")
    k.add_argument("--output-weight", type=float, default=1.0, help="output distillation weight (default 1)")
    k.add_argument("--feature-weight", type=float, default=0.1,
                   help="feature distillation weight (default 0.1)")
    k.add_argument("--routing-weight", type=float, default=0.1,
                   help="routing distillation weight (default 0.1)")
    k.add_argument("--routing-temperature", type=float, default=1.0, help="softmax temperature of routing KD")
    k.add_argument("--teacher-cache", default="auto",
                   help="cache teacher outputs per training pair: auto (on CPU, default), on or off")
    k.add_argument("--cache-dir", metavar="DIR",
                   help="where the teacher cache lives (default RUN/teacher_cache)")
    add_training_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    from datprl_edge.core.errors import ConfigError
    from datprl_edge.train.config import DistillConfig
    from datprl_edge.train.distill import distill

    apply_threads(args)
    kd = {} if not args.no_kd else dict(output_weight=0.0, feature_weight=0.0, routing_weight=0.0)
    weights = dict(gt_weight=args.gt_weight, output_weight=args.output_weight,
                   feature_weight=args.feature_weight, routing_weight=args.routing_weight)
    config = DistillConfig(**config_kwargs(args), **{**weights, **kd},
                           routing_temperature=args.routing_temperature, teacher_cache=args.teacher_cache)
    teacher, prov = None, {"command": command_line()}
    if config.uses_teacher:
        if not args.teacher:
            raise ConfigError("distill needs --teacher CKPT (or --no-kd for the baseline without a teacher)")
        teacher = _load_teacher(args.teacher, args.network)
        prov["teacher"] = args.teacher
        sha = getattr(teacher, "datprl_source_sha256", None)
        if sha:
            prov["teacher_sha256"] = sha
    elif args.teacher:
        raise ConfigError("--no-kd trains without a teacher; drop --teacher or drop --no-kd")
    torch.manual_seed(config.seed)
    student = _build_student(args.student)
    result = distill(teacher, student, config, args.data, args.output, resume=args.resume, provenance=prov,
                     cache_dir=args.cache_dir)
    print_summary(result, "distilled student" if config.uses_teacher else "student (no KD)")
    return 0


def _load_teacher(spec: str, network):
    from datprl_edge.sources import locate_model

    source = locate_model(spec, network)
    model = source.load()
    model.datprl_source_sha256 = source.sha256
    return model


def _build_student(spec: str):
    """A student checkpoint (or bundled:NAME) to start from, or a registry name (random init)."""
    from datprl_edge.sources import resolve_model

    return resolve_model(spec, random_init=True)
