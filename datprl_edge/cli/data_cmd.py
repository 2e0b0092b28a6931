"""`datprl-edge data`: synthesise paired gt/lq folders and draw a degradation preview sheet."""

from __future__ import annotations


def register(subparsers):
    p = subparsers.add_parser("data", help="synthesise degraded pairs and preview degradations")
    sub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    s = sub.add_parser("synth", help="write paired gt/ and lq/ PNGs for one task")
    s.add_argument("--task", required=True, help="task id (see `datprl-edge tasks`)")
    s.add_argument("--count", type=int, default=8, help="number of pairs (default 8)")
    s.add_argument("-o", "--output", required=True, help="output folder (gets gt/, lq/ and pairs.json)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--severity", type=float, help="0..1 (default: the task's default)")
    s.add_argument("--size", type=int, default=256, help="crop size in pixels (default 256)")
    s.add_argument("--split", choices=("train", "val"), default="val", help="bundled samples to use")
    s.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    s.set_defaults(func=run_synth)

    v = sub.add_parser("preview", help="contact sheet: one row per task, ground truth beside degraded")
    v.add_argument("-o", "--output", required=True, help="PNG file to write")
    v.add_argument("--tasks", nargs="+", default=["all"], help="task ids or set names (default all)")
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--severity", type=float, help="0..1 (default: each task's default)")
    v.add_argument("--size", type=int, default=256)
    v.add_argument("--index", type=int, default=0, help="which validation image of each task's pool")
    v.add_argument("--no-zoom", action="store_true", help="leave out the 2x centre crops")
    v.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    v.set_defaults(func=run_preview)


def run_synth(args) -> int:
    import json
    from pathlib import Path

    from datprl_edge.core.errors import ConfigError, OutputExistsError
    from datprl_edge.data.degrade._common import check_severity
    from datprl_edge.data.pairs import fixed_pairs
    from datprl_edge.data.preview import psnr
    from datprl_edge.data.tasks import get_task
    from datprl_edge.io.atomic import atomic_dir
    from datprl_edge.io.images import ImageInfo, write_image

    task = get_task(args.task)
    if args.count < 1 or args.size < 8:
        raise ConfigError(f"--count must be >= 1 and --size >= 8, got {args.count} and {args.size}")
    if Path(args.output).exists() and not args.overwrite:
        raise OutputExistsError(f"{args.output} exists; pass --overwrite or choose another output")
    sev = None if args.severity is None else [check_severity(args.severity)]
    pairs = fixed_pairs(task, args.count, args.size, args.seed, args.split, sev)
    # Medical pairs are grey: 16-bit single-channel PNGs keep the simulated noise; others 8-bit RGB.
    info = ImageInfo("png", "uint16", 16, (args.size, args.size)) if task.grayscale else \
        ImageInfo("png", "uint8", 8, (args.size, args.size, 3))
    records = []
    with atomic_dir(Path(args.output), overwrite=args.overwrite) as tmp:
        for k, p in enumerate(pairs):
            name = f"{k:04d}.png"
            write_image(tmp / "gt" / name, p.gt, info)
            write_image(tmp / "lq" / name, p.lq, info)
            records.append({"file": name, "source": p.source, "severity": p.severity,
                            "psnr_db": round(psnr(p.gt, p.lq), 3)})
        meta = {"task": task.id, "domain": task.domain, "seed": args.seed, "size": args.size,
                "split": args.split, "pairs": records}
        (tmp / "pairs.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    mean = sum(r["psnr_db"] for r in records) / len(records)
    print(f"wrote {len(pairs)} pairs for {task.id} to {args.output} (gt/, lq/, pairs.json); "
          f"mean PSNR(lq, gt) {mean:.2f} dB")
    return 0


def run_preview(args) -> int:
    from datprl_edge.data.degrade._common import check_severity
    from datprl_edge.data.preview import draw_sheet, preview_pairs, psnr
    from datprl_edge.io.atomic import check_output

    check_output(args.output, overwrite=args.overwrite, suffix=".png", option="-o")
    sev = None if args.severity is None else check_severity(args.severity)
    pairs = preview_pairs(args.tasks, size=args.size, seed=args.seed, severity=sev, index=args.index)
    draw_sheet(pairs, args.output, zoom=not args.no_zoom, overwrite=args.overwrite)
    for p in pairs:
        print(f"{p.task:24s} {p.source:32s} severity {p.severity:.2f}  PSNR {psnr(p.gt, p.lq):6.2f} dB")
    print(f"wrote {args.output}")
    return 0
