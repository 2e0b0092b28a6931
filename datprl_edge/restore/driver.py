"""Stage: restore image files with a model, tiled, one file at a time, without torch.

A `Runner` wraps any callable that maps NCHW float32 in [0, 1] to NCHW float32 (an exported
artifact's session, or a torch model: see `runners.open_runner`). `plan_jobs` turns the
inputs (files and folders) and the output path into (source, destination) jobs; `restore_files`
runs them: each file is read, cut into overlapping tiles (`tiling.tile_apply`, blended), restored
and written atomically in its own format and bit depth. A failing file is reported and skipped;
nothing partial is written, and no input is ever overwritten.

Models with a context (edge students and their artifacts) are tiled seam-free: one pass over the
tiles gathers the image's statistics (routing queries, channel-attention means), and every tile is
then restored with them (`restore.context.seamless_tiles`). Other models (teachers) route and
normalise each tile on its own.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from datprl_edge.core.errors import ConfigError, DatprlEdgeError, InputNotFoundError, OutputExistsError
from datprl_edge.core.tiling import plan_tiles, tile_apply
from datprl_edge.io.images import FORMATS, image_format

DICOM_SUFFIXES = (".dcm", ".dicom")
IMAGE_SUFFIXES = tuple(FORMATS) + DICOM_SUFFIXES
DEFAULT_TILE, DEFAULT_OVERLAP = 512, 32

__all__ = ["Runner", "RestoreOptions", "RestoreJob", "FileResult", "RestoreSummary", "plan_jobs",
           "restore_files", "restore_file", "restore_array", "tile_geometry", "check_geometry", "is_dicom"]


@dataclasses.dataclass(frozen=True)
class Runner:
    """A model as a numpy function, with what tiling needs to know about it."""

    fn: Callable[[np.ndarray], np.ndarray]  # (N, channels, H, W) float32 -> same shape, float32
    name: str
    channels: int = 3  # image channels the model takes (1 or 3)
    pad_multiple: int = 1  # tile sizes must be a multiple of this
    tile: int | None = None  # recommended tile size (artifact metadata), None: DEFAULT_TILE
    overlap: int | None = None
    max_tile: int | None = None  # largest tile a static artifact takes; None: any size
    tasks: tuple = ()  # the task(s) the prompts are fixed to; () = automatic routing
    # models with a context (models.context): (x, context, mix) -> (restored, own context), the
    # context layout [(name, size)], and the base (context, mix) of the routing request
    context_fn: Callable | None = None
    context_layout: tuple = ()
    context: tuple | None = None
    routing: str = "auto"  # what decides the prompts, for reports: auto, or the request

    def __call__(self, nchw: np.ndarray) -> np.ndarray:
        return self.fn(nchw)

    @property
    def seamless(self) -> bool:
        """True when tiles can share one context (seam-free tiling)."""
        return self.context_fn is not None and bool(self.context_layout)


@dataclasses.dataclass(frozen=True)
class RestoreOptions:
    """`tile`: tile size (None: the model's recommendation or 512; 0: whole images, no tiling).
    `overlap`: pixels shared by neighbouring tiles (None: the recommendation or 32)."""

    tile: int | None = None
    overlap: int | None = None
    window: str = "full"  # DICOM intensity window: full, file or CENTER,WIDTH (other images ignore it)
    overwrite: bool = False
    # seam-free tiling (models with a context): longest side of the image the statistics come from
    # (None: the default, 1024); 0: every tile on its own statistics
    stats_size: int | None = None

    def __post_init__(self):
        p = self.stats_size
        bad = isinstance(p, bool) or not isinstance(p, int) or not (p == 0 or 16 <= p <= 16384)
        if p is not None and bad:
            raise ConfigError(f"--stats-size must be 0 or a number of pixels from 16 to 16384, got {p!r}")
        for name in ("tile", "overlap"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ConfigError(f"--{name} must be a whole number of pixels >= 0, got {value!r}")


@dataclasses.dataclass(frozen=True)
class RestoreJob:
    src: Path
    dst: Path
    dicom_in: bool
    dicom_out: bool


@dataclasses.dataclass(frozen=True)
class FileResult:
    src: Path
    dst: Path
    shape: tuple  # (H, W, C) given to the model
    format: str  # of the output: png, tiff, jpeg, npy or dicom
    tiles: int
    seconds: float


@dataclasses.dataclass
class RestoreSummary:
    restored: list = dataclasses.field(default_factory=list)  # FileResult
    failed: list = dataclasses.field(default_factory=list)  # (Path, one-line reason)
    skipped: list = dataclasses.field(default_factory=list)  # files in input folders that are not images

    @property
    def line(self) -> str:
        return f"restored {len(self.restored)}, failed {len(self.failed)}"


# -- planning -------------------------------------------------------------------------------------

def plan_jobs(inputs, output, *, recursive: bool = False) -> tuple[list, list, list]:
    """(jobs, failures, skipped) for input files/folders and an output path.

    OUTPUT is a file when there is one input file and OUTPUT has a suffix and is not a folder;
    otherwise it is a folder that mirrors the input names (files of an input folder keep their
    path inside it). An output folder that is one of the input folders is refused: outputs keep
    the input names, so they would replace the inputs.
    """
    slash = str(output).endswith(("/", "\\"))
    inputs, output = [Path(p) for p in inputs], Path(output)
    if not inputs:
        raise ConfigError("give at least one input file or folder")
    single = len(inputs) == 1 and not inputs[0].is_dir()
    as_folder = output.is_dir() or slash
    file_mode = single and bool(output.suffix) and not as_folder
    if not file_mode:
        if output.exists() and not output.is_dir():
            raise OutputExistsError(f"{output} is a file; with several inputs or a folder, -o names a folder")
        if not output.exists() and output.suffix.lower() in IMAGE_SUFFIXES:
            raise ConfigError(f"with several inputs or a folder, -o names a folder, and {output.name} looks "
                              "like an image file; choose a folder name")
        for folder in (p for p in inputs if p.is_dir()):
            if _same(folder, output):
                raise ConfigError(f"the output folder {output} is the input folder; choose a different "
                                  "output folder (outputs keep the input names, and inputs are never "
                                  "overwritten)")
    failures, skipped, pairs = [], [], []
    for item in inputs:
        if item.is_dir():
            found, ignored = _scan(item, recursive, exclude=None if file_mode else output)
            skipped += ignored
            pairs += [(f, output / f.relative_to(item)) for f in found]
        elif item.exists():
            pairs.append((item, output if file_mode else output / item.name))
        else:
            failures.append((item, f"input not found: {item}"))
    if not pairs and not failures:
        looked = ", ".join(IMAGE_SUFFIXES)
        raise InputNotFoundError(f"no images to restore in {', '.join(map(str, inputs))} (looked for {looked}"
                                 f"{'' if recursive else '; pass --recursive to look in subfolders'})")
    sources = [s for s, _ in pairs]
    jobs, taken = [], {}
    for src, dst in pairs:
        key = dst.resolve()
        if key in taken:
            failures.append((src, f"output {dst} would also be written from {taken[key]}; restore them in "
                                  "separate runs or to separate folders"))
            continue
        taken[key] = src
        try:
            jobs.append(_job(src, dst, sources, file_mode))
        except DatprlEdgeError as e:
            failures.append((src, _one_line(e)))
    return jobs, failures, skipped


def _job(src: Path, dst: Path, sources, file_mode: bool) -> RestoreJob:
    from datprl_edge.io.atomic import check_not_input

    check_not_input(dst, sources)
    dicom_in = is_dicom(src)
    dicom_out = dicom_in if not file_mode else dst.suffix.lower() in DICOM_SUFFIXES
    if not dicom_in:
        image_format(src)
    if dicom_out and not dicom_in:
        raise ConfigError("DICOM output needs a DICOM input; choose a .png, .tif or .npy output")
    if not dicom_out:
        image_format(dst, purpose="output")
    return RestoreJob(src, dst, dicom_in, dicom_out)


def _scan(folder: Path, recursive: bool, exclude: Path | None) -> tuple[list, list]:
    """(image files, other files) in a folder, sorted; hidden files, DICOMDIR and `exclude` left out."""
    found, other = [], []
    pattern = folder.rglob("*") if recursive else folder.iterdir()
    skip = exclude.resolve() if exclude is not None and exclude.exists() else None
    for p in sorted(pattern):
        rel = p.relative_to(folder).parts
        if any(part.startswith(".") for part in rel) or not p.is_file() or p.name.upper() == "DICOMDIR":
            continue
        if skip is not None and (p.resolve() == skip or skip in p.resolve().parents):
            continue
        if p.suffix.lower() in IMAGE_SUFFIXES or (not p.suffix and _has_dicom_magic(p)):
            found.append(p)
        else:
            other.append(p)
    return found, other


def is_dicom(path: Path) -> bool:
    return Path(path).suffix.lower() in DICOM_SUFFIXES or _has_dicom_magic(path)


def _has_dicom_magic(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM"


def _same(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


# -- running --------------------------------------------------------------------------------------

def restore_files(runner: Runner, jobs, options: RestoreOptions = RestoreOptions(), *,
                  on_result: Callable | None = None, on_error: Callable | None = None,
                  progress: Callable | None = None, debug: bool = False) -> RestoreSummary:
    """Restore every job; a failing file is reported through `on_error(src, reason)` and the rest
    go on. `on_result(FileResult)` after each written file; `progress(src)` returns a tile
    callback `(done, total)` or None. With `debug`, the first failure is raised."""
    check_geometry(runner, options)
    summary = RestoreSummary()
    series: dict = {}
    for job in jobs:
        try:
            result = restore_file(runner, job, options, series_uids=series,
                                  progress=progress(job.src) if progress else None)
        except (DatprlEdgeError, OSError, MemoryError, RuntimeError, ValueError) as e:
            if debug:
                raise
            reason = _one_line(e) if isinstance(e, DatprlEdgeError) else f"{type(e).__name__}: {_one_line(e)}"
            summary.failed.append((job.src, reason))
            if on_error:
                on_error(job.src, reason)
            continue
        summary.restored.append(result)
        if on_result:
            on_result(result)
    return summary


def restore_file(runner: Runner, job: RestoreJob, options: RestoreOptions = RestoreOptions(), *,
                 series_uids: dict | None = None, progress=None) -> FileResult:
    """Read, restore and write one job's file."""
    from datprl_edge.io.atomic import check_output

    start = time.perf_counter()
    if not job.src.exists():
        raise InputNotFoundError(f"input image not found: {job.src}")
    check_output(job.dst, overwrite=options.overwrite, inputs=[job.src])
    array, info = _read(job, options.window)
    shape = tuple(array.shape)
    tile, overlap = tile_geometry(runner, options, shape[:2])
    restored = restore_array(runner, array, tile, overlap, progress=progress, stats_size=options.stats_size)
    del array  # large images: the input need not live while the output is written
    _write(job, restored, info, runner.name, options.overwrite, series_uids)
    tiles = plan_tiles(shape[0], shape[1], tile, overlap, max(1, int(runner.pad_multiple))).count
    fmt = "dicom" if job.dicom_out else image_format(job.dst)
    return FileResult(job.src, job.dst, shape, fmt, tiles, time.perf_counter() - start)


def tile_geometry(runner: Runner, options: RestoreOptions, hw) -> tuple[int, int]:
    """(tile, overlap) for an image of size `hw`: the options, else the runner's recommendation,
    else 512/32; tile 0 (no tiling) gives one tile of the whole image."""
    m = max(1, int(runner.pad_multiple))
    if options.tile == 0:
        whole = max(hw)
        tile = whole + (-whole) % m
        if runner.max_tile is not None and tile > runner.max_tile:
            raise ConfigError(f"{runner.name} takes at most {runner.max_tile}x{runner.max_tile} pixels at "
                              f"once; this image is {hw[0]}x{hw[1]}: leave out --tile 0 to tile it")
        return tile, 0
    tile = options.tile
    if tile is None:
        tile = runner.tile or DEFAULT_TILE
        if runner.max_tile is not None:
            tile = min(tile, runner.max_tile)
        tile = max(m, tile - tile % m)
    elif runner.max_tile is not None and tile > runner.max_tile:
        raise ConfigError(f"--tile {tile} is larger than {runner.name} takes (at most {runner.max_tile}); "
                          f"use --tile {runner.max_tile} or less")
    overlap = options.overlap
    if overlap is None:
        overlap = runner.overlap if runner.overlap is not None else DEFAULT_OVERLAP
        if 2 * overlap >= tile:
            overlap = tile // 4
    return tile, overlap


def check_geometry(runner: Runner, options: RestoreOptions) -> None:
    """Raise once for a tile/overlap that no image could use (instead of once per file)."""
    if options.tile != 0:
        tile, overlap = tile_geometry(runner, options, (1, 1))
        plan_tiles(4 * tile, 4 * tile, tile, overlap, max(1, int(runner.pad_multiple)))


def restore_array(runner: Runner, image: np.ndarray, tile: int, overlap: int, *, progress=None,
                  stats_size: int | None = None) -> np.ndarray:
    """(H, W, C) float32 in [0, 1] (C 1 or 3) -> restored (H, W, C) float32 in [0, 1], tiled; seam-free
    where the runner has a context, with statistics from the image downscaled to `stats_size` (None:
    the default; 0: each tile its own)."""
    channels = image.shape[2]
    if channels not in (1, 3):
        raise ConfigError(f"restore takes (H, W, 1) or (H, W, 3) images, got shape {image.shape}")

    def fn(x: np.ndarray) -> np.ndarray:
        y = runner(_to_channels(x, runner.channels))
        return _to_channels(np.asarray(y, dtype=np.float32), channels)

    nchw = image.transpose(2, 0, 1)[None]
    multiple = max(1, int(runner.pad_multiple))
    if runner.seamless and stats_size != 0 \
            and plan_tiles(nchw.shape[2], nchw.shape[3], tile, overlap, multiple).count > 1:
        from datprl_edge.restore.context import DEFAULT_STATS_SIZE, seamless_tiles

        size = DEFAULT_STATS_SIZE if stats_size is None else stats_size
        if runner.max_tile is not None:
            size = min(size, runner.max_tile)

        def context_fn(x, ctx, mix):
            y, own = runner.context_fn(_to_channels(x, runner.channels), ctx, mix)
            return _to_channels(np.asarray(y, dtype=np.float32), channels), own

        given, mix = runner.context
        out = seamless_tiles(context_fn, nchw, tile, overlap, multiple, runner.context_layout, given, mix,
                             stats_size=size, progress=progress)
    else:
        out = tile_apply(fn, nchw, tile, overlap, multiple, progress=progress)
    if not np.isfinite(out).all():
        from datprl_edge.core.errors import NonFiniteInputError

        raise NonFiniteInputError("the model produced NaN or infinite values")
    hwc = out[0].transpose(1, 2, 0)
    return np.clip(hwc, 0.0, 1.0, out=hwc)


def _to_channels(x: np.ndarray, channels: int) -> np.ndarray:
    """NCHW with 1 or 3 channels -> `channels` (grey = equal channels; colour to grey = mean)."""
    if x.ndim != 4 or x.shape[1] == channels:
        return x
    if x.shape[1] == 1 and channels == 3:
        return np.repeat(x, 3, axis=1)
    if x.shape[1] == 3 and channels == 1:
        return x.mean(axis=1, keepdims=True, dtype=np.float32)
    raise ConfigError(f"the model gave {x.shape[1]} channels where {channels} were expected")


def _read(job: RestoreJob, window):
    if job.dicom_in:
        from datprl_edge.io.dicom import parse_window, read_dicom

        return read_dicom(job.src, window=parse_window(window))
    from datprl_edge.io.images import read_image

    return read_image(job.src)  # the window is for DICOM values; other images are read as stored


def _write(job: RestoreJob, restored, info, name, overwrite, series_uids) -> None:
    if job.dicom_out:
        from datprl_edge.io.dicom import write_dicom

        write_dicom(job.dst, restored, info, model=name, overwrite=overwrite, protect=[job.src],
                    series_uid=_series_uid(info.dataset, series_uids))
        return
    from datprl_edge.io.images import ImageInfo, write_image

    if job.dicom_in:  # DICOM -> image: 16 bit where the DICOM held more than 8 bits
        deep = int(info.dataset.get("BitsStored", 8) or 8) > 8
        dtype = "uint16" if deep else "uint8"
        shape = info.stored.shape[:2] + (() if info.kind == "gray" else (3,))
        info = ImageInfo("dicom", dtype, 16 if deep else 8, tuple(shape))
    write_image(job.dst, restored, info, overwrite=overwrite, protect=[job.src])


def _series_uid(ds, cache: dict | None):
    """One new Series Instance UID per source series in a run: restored slices stay one series."""
    source = str(ds.get("SeriesInstanceUID", "") or "")
    if cache is None or not source:
        return None
    if source not in cache:
        from pydicom.uid import generate_uid

        cache[source] = generate_uid()
    return cache[source]


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__
