"""`datprl-edge restore`: restore image files or folders with a checkpoint or an exported artifact.

PNG, TIFF, JPEG and `.npy` keep their dtype, bit depth and shape; DICOM in gives DICOM out (a
derived image with patient and study tags kept). Images are tiled with blended overlaps, so any
size fits in bounded memory. A file that fails prints one error line and the others go on; the
exit code is 2 when any failed. Outputs are written atomically and inputs never overwritten.
Exported artifacts run without torch.
"""

from __future__ import annotations

import os
import sys


def register(subparsers):
    p = subparsers.add_parser(
        "restore",
        help="restore images (PNG, TIFF, JPEG, .npy, DICOM; files or folders) with a model",
        description="Restore images with MODEL: a toolkit .safetensors checkpoint, a released .pth with "
                    "--network, bundled:NAME, or an exported artifact (.onnx, OpenVINO .xml, .mlpackage; "
                    "runs without torch). Outputs keep the input's format, dtype and bit depth; DICOM keeps "
                    "its tags. With one input file and an OUTPUT that has a suffix, OUTPUT is that file; "
                    "otherwise OUTPUT is a folder that mirrors the input names, and it may not be an input "
                    "folder. Existing outputs are kept unless --overwrite; inputs are never overwritten.",
        epilog="Large images are cut into overlapping tiles blended back together. Edge students and their "
               "artifacts tile seam-free: one pass over the (downscaled) whole image gives its routing and "
               "channel statistics, then every tile is restored with them. Failed files print "
               "'datprl-edge: error: FILE: REASON' and the run goes on; the exit code is 2 if any failed.",
    )
    p.add_argument("model", metavar="MODEL", help="checkpoint, bundled:NAME or exported artifact")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image files (.png .tif .tiff .jpg .npy .dcm) or folders of them")
    p.add_argument("-o", "--output", required=True, metavar="OUTPUT", help="output file, or folder")
    p.add_argument("--task", default="auto", metavar="auto|ID",
                   help="auto: the model routes its prompts (default); a task id (e.g. medical/ct_denoise) "
                        "forces that task's prompt-pool weights through the routing input (edge students and "
                        "their artifacts, no re-folding), and must match a model folded for fixed tasks")
    p.add_argument("--domain", default=None, metavar="NAME",
                   help="force a domain's prompt weights (natural, medical, remote); the task prompt stays "
                        "automatic")
    p.add_argument("--blend", type=float, default=None, metavar="B",
                   help="with --task or --domain: mix the forced weights with the model's own routing, 0 "
                        "(own) to 1 (forced, default)")
    p.add_argument("--stats-size", type=int, default=None, metavar="PX",
                   help="seam-free tiling: the image's routing and channel statistics come from one pass "
                        "over it, box-downscaled to this longest side (default 1024; 0: every tile its "
                        "own, with seams)")
    p.add_argument("--tile", type=int, default=None, metavar="N",
                   help="tile size in pixels, a multiple of the model's pad multiple (default: the "
                        "artifact's recommended tile, else 512; 0 runs whole images)")
    p.add_argument("--overlap", type=int, default=None, metavar="N",
                   help="pixels shared by neighbouring tiles (default: the artifact's recommendation, "
                        "else 32)")
    p.add_argument("-r", "--recursive", action="store_true", help="also restore images in subfolders")
    p.add_argument("--network", metavar="CFG", help="YAML/JSON with the network_g block of a released .pth")
    p.add_argument("--overwrite", action="store_true", help="replace outputs that exist")
    p.add_argument("--window", default="full", metavar="full|file|C,W",
                   help="DICOM intensity window given to the model (other images ignore it): the full data "
                        "range (default), the file's WindowCenter/Width, or CENTER,WIDTH; pixels outside it "
                        "are kept as they were")
    p.set_defaults(func=run)


def run(args) -> int:
    from datprl_edge.core.errors import ConfigError
    from datprl_edge.io.dicom import parse_window
    from datprl_edge.restore.driver import RestoreOptions, plan_jobs, restore_files
    from datprl_edge.restore.runners import open_runner

    options = RestoreOptions(tile=args.tile, overlap=args.overlap, window=args.window,
                             overwrite=args.overwrite, stats_size=args.stats_size)
    parse_window(args.window)  # a bad window is one error, not one per file
    jobs, failures, skipped = plan_jobs(args.inputs, args.output, recursive=args.recursive)
    if args.window != "full" and jobs and not any(job.dicom_in for job in jobs):
        raise ConfigError("--window applies to DICOM inputs only")
    runner = open_runner(args.model, network=args.network, task=args.task, domain=args.domain,
                         blend=args.blend) if jobs else None
    debug = bool(getattr(args, "debug", False)) or os.environ.get("DATPRL_EDGE_DEBUG") == "1"
    for src, reason in failures:
        _error(src, reason)
    summary = restore_files(runner, jobs, options, on_result=_done, on_error=_error,
                            progress=_tile_bar, debug=debug) if jobs else None
    failed = len(failures) + (len(summary.failed) if summary else 0)
    restored = len(summary.restored) if summary else 0
    if skipped:
        print(f"skipped {len(skipped)} file(s) in the input folders that are not images")
    print(f"restored {restored}, failed {failed}")
    return 2 if failed else 0


def _done(result) -> None:
    h, w = result.shape[:2]
    tiles = f", {result.tiles} tiles" if result.tiles > 1 else ""
    print(f"restored {result.src} -> {result.dst} ({w}x{h}, {result.format}{tiles}, {result.seconds:.2f} s)",
          flush=True)


def _error(src, reason) -> None:
    print(f"datprl-edge: error: {src}: {reason}", file=sys.stderr, flush=True)


def _tile_bar(src):
    """A tile progress bar on a terminal (tqdm stays silent when stderr is not one)."""
    from tqdm import tqdm

    state = {}

    def update(done, total):
        if "bar" not in state:
            if total < 4:
                state["bar"] = None
                return
            state["bar"] = tqdm(total=total, desc=os.path.basename(str(src)), unit="tile", leave=False,
                                disable=None)
        bar = state["bar"]
        if bar is not None:
            bar.update(done - bar.n)
            if done >= total:
                bar.close()

    return update

