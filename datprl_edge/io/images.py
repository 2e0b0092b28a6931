"""Read and write PNG, TIFF, JPEG and `.npy` images as float32 (H, W, C) arrays in [0, 1].

`read_image` returns the array handed to models (C is 1 for grayscale, 3 for RGB) plus an
`ImageInfo` recording what the file held, so that `write_image` can store a result with the
input's format, dtype, bit depth and shape. Integer images round-trip exactly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import zlib
from pathlib import Path

import numpy as np

from datprl_edge.core import limits
from datprl_edge.core.errors import (
    ChannelCountError,
    ImageReadError,
    InputNotFoundError,
    NonFiniteInputError,
    ResourceLimitError,
    UnknownChoiceError,
)
from datprl_edge.io.atomic import atomic_path

# Suffix -> format name. DICOM (.dcm) is handled by `datprl_edge.io.dicom`.
FORMATS = {".png": "png", ".tif": "tiff", ".tiff": "tiff", ".npy": "npy", ".jpg": "jpeg", ".jpeg": "jpeg"}
DTYPES = {"png": ("uint8", "uint16"), "tiff": ("uint8", "uint16", "float32"), "jpeg": ("uint8",),
          "npy": ("float32",)}
ACCEPTED_CHANNELS = "grayscale (H, W) or (H, W, 1), or RGB (H, W, 3)"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclasses.dataclass(frozen=True)
class ImageInfo:
    format: str  # 'png' | 'tiff' | 'jpeg' | 'npy'
    dtype: str  # 'uint8' | 'uint16' | 'float32'
    bit_depth: int  # 8, 16 or 32
    shape: tuple  # the array shape as stored: (H, W), (H, W, 1) or (H, W, 3)

    @property
    def channels(self) -> int:
        return 1 if len(self.shape) == 2 else int(self.shape[2])


def image_format(path, *, purpose: str = "image") -> str:
    """Format name for a path's suffix, or an error that lists the known suffixes."""
    suffix = Path(path).suffix.lower()
    if suffix in FORMATS:
        return FORMATS[suffix]
    known = sorted(FORMATS) + [".dcm"]
    if not suffix:
        raise UnknownChoiceError(f"{purpose} format (no file suffix) for", str(path), known)
    raise UnknownChoiceError(f"{purpose} format", suffix, known)


def read_image(path) -> tuple[np.ndarray, ImageInfo]:
    """Read an image file; returns (float32 (H, W, C) in [0, 1], ImageInfo)."""
    path = Path(path)
    fmt = image_format(path)
    if not path.exists():
        raise InputNotFoundError(f"image not found: {path}")
    if not path.is_file():
        raise ImageReadError(f"{path} is not a file")
    reader = {"png": _read_png, "tiff": _read_tiff, "jpeg": _read_pillow, "npy": _read_npy}[fmt]
    raw = reader(path)
    return to_model_array(raw, path.name), ImageInfo(
        format=fmt, dtype=str(raw.dtype), bit_depth=raw.dtype.itemsize * 8, shape=tuple(raw.shape)
    )


def to_model_array(raw: np.ndarray, name: str = "array") -> np.ndarray:
    """Check channels, dtype and values of a stored array and scale it to float32 (H, W, C) in [0, 1]."""
    if raw.ndim == 2:
        raw = raw[:, :, None]
    if raw.ndim != 3 or raw.shape[2] not in (1, 3):
        raise ChannelCountError(f"{name} has shape {tuple(raw.shape)}; accepted: {ACCEPTED_CHANNELS}")
    if raw.shape[0] == 0 or raw.shape[1] == 0:
        raise ImageReadError(f"{name} is empty (shape {tuple(raw.shape)})")
    if raw.dtype == np.uint8:
        return _scaled(raw, 255.0)
    if raw.dtype == np.uint16:
        return _scaled(raw, 65535.0)
    if raw.dtype == np.float32:
        if not np.isfinite(raw).all():
            bad = int((~np.isfinite(raw)).sum())
            raise NonFiniteInputError(f"{name} holds {bad} NaN or infinite value(s)")
        lo, hi = float(raw.min()), float(raw.max())
        if lo < 0.0 or hi > 1.0:
            raise ImageReadError(
                f"{name} has values in [{lo:.4g}, {hi:.4g}]; float images must lie in [0, 1]")
        return np.ascontiguousarray(raw)
    raise ImageReadError(
        f"{name} has dtype {raw.dtype}; accepted: uint8, uint16, or float32 in [0, 1]"
        + (" (convert with .astype(np.float32))" if raw.dtype.kind == "f" else "")
    )


def from_model_array(array: np.ndarray, info: ImageInfo) -> np.ndarray:
    """Model output (H, W, C) -> the stored dtype and shape in `info` (grayscale = channel mean)."""
    arr = np.asarray(array, dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3):
        raise ChannelCountError(f"output has shape {tuple(arr.shape)}; expected (H, W, 1) or (H, W, 3)")
    if not np.isfinite(arr).all():
        raise NonFiniteInputError("the model produced NaN or infinite values")
    if info.channels == 1 and arr.shape[2] == 3:
        arr = arr.mean(axis=2, keepdims=True)
    elif info.channels == 3 and arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    if info.dtype in ("uint8", "uint16"):  # one float temporary, changed in place (large images)
        top = 255.0 if info.dtype == "uint8" else 65535.0
        tmp = np.multiply(arr, top, dtype=np.float32)
        np.clip(tmp, 0.0, top, out=tmp)
        out = np.rint(tmp, out=tmp).astype(info.dtype)
    else:
        out = np.clip(arr, 0.0, 1.0).astype(np.float32, copy=False)
    return out.reshape(out.shape[0], out.shape[1], *info.shape[2:])


def _scaled(raw: np.ndarray, top: float) -> np.ndarray:
    x = raw.astype(np.float32)
    x /= top
    return x


def write_image(path, array: np.ndarray, info: ImageInfo, *, overwrite: bool = True, protect=()) -> Path:
    """Write a float (H, W, C) array in [0, 1] with `info`'s dtype and shape, atomically.

    The format follows `path`'s suffix; the dtype is kept where that format can hold it
    (PNG and JPEG have no float32: 16 and 8 bit are used instead; `.npy` is always float32).
    """
    path = Path(path)
    fmt = image_format(path, purpose="output")
    dtype = info.dtype if info.dtype in DTYPES[fmt] else DTYPES[fmt][-1]
    info = dataclasses.replace(info, format=fmt, dtype=dtype, bit_depth=np.dtype(dtype).itemsize * 8)
    stored = from_model_array(array, info)
    writer = {"png": _write_png, "tiff": _write_tiff, "jpeg": _write_jpeg, "npy": _write_npy}[fmt]
    with atomic_path(path, overwrite=overwrite, protect=protect) as tmp:
        writer(tmp, stored)
    return path


# --- readers -------------------------------------------------------------------------------------


def _fail(path: Path, e: BaseException) -> ImageReadError:
    text = str(e).strip().splitlines()
    detail = text[0][:160] if text else type(e).__name__
    return ImageReadError(f"cannot read {path.name}: corrupt, truncated or unsupported file ({detail})")


def _png_header(path: Path) -> tuple[int, int]:
    """(bit depth, colour type) from the PNG IHDR chunk, after checking the size it declares."""
    with open(path, "rb") as f:
        head = f.read(33)
    if len(head) < 26 or head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR":
        raise ImageReadError(f"cannot read {path.name}: not a PNG file (bad signature or header)")
    width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    limits.check_image(height, width, path.name)
    return head[24], head[25]


def _read_png(path: Path) -> np.ndarray:
    depth, colour = _png_header(path)
    if colour in (4, 6):
        what = "gray + alpha (2 channels)" if colour == 4 else "RGBA (4 channels)"
        raise ChannelCountError(f"{path.name} is {what}; accepted: {ACCEPTED_CHANNELS}")
    if depth == 16 and colour == 2:
        return _read_png16_rgb(path)  # Pillow reduces 16-bit RGB to 8 bits
    return _read_pillow(path)


def _read_png16_rgb(path: Path) -> np.ndarray:
    import png

    try:
        width, height, rows, meta = png.Reader(filename=str(path)).asDirect()
        arr = np.vstack([np.asarray(r, dtype=np.uint16) for r in rows])
    except (png.Error, zlib.error, ValueError, EOFError, OSError) as e:
        raise _fail(path, e) from None
    if arr.shape != (height, width * meta["planes"]):
        raise ImageReadError(f"cannot read {path.name}: truncated pixel data")
    return arr.reshape(height, width, meta["planes"])


@contextlib.contextmanager
def _without_pillow_limit(Image):
    """Pillow's decompression-bomb check off while opening (only the header is read): our own
    limit (`core.limits`) is checked on the declared size right after, before any decoding."""
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def _read_pillow(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with _without_pillow_limit(Image):
            im_ctx = Image.open(path)
        with im_ctx as im:
            limits.check_image(im.size[1], im.size[0], path.name)  # before decoding any pixel
            im.load()
            mode = im.mode
            if mode == "P":
                has_alpha = "transparency" in im.info
                im = im.convert("RGBA" if has_alpha else "RGB")
                mode = im.mode
            elif mode == "1":
                im = im.convert("L")
                mode = "L"
            if mode in ("LA", "PA", "RGBA", "CMYK", "La", "RGBa"):
                raise ChannelCountError(
                    f"{path.name} has {len(im.getbands())} channels ({mode}); accepted: {ACCEPTED_CHANNELS}"
                )
            arr = np.asarray(im)
    except Image.DecompressionBombError:
        raise ResourceLimitError(f"{path.name} declares more pixels than Pillow's own limit "
                                        f"({Image.MAX_IMAGE_PIXELS * 2} pixels)") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, zlib.error, EOFError) as e:
        raise _fail(path, e) from None
    if mode in ("I;16", "I;16B", "I;16L"):
        return arr.astype(np.uint16)
    if mode == "I":  # 16-bit grayscale PNGs may open as 32-bit 'I'
        if arr.min() < 0 or arr.max() > 65535:
            raise ImageReadError(f"{path.name} holds 32-bit integers; accepted: 8 or 16 bit")
        return arr.astype(np.uint16)
    if arr.dtype != np.uint8:
        raise ImageReadError(f"{path.name} has pixel mode {mode}; accepted: 8 or 16 bit grayscale or RGB")
    return arr


def _read_tiff(path: Path) -> np.ndarray:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.series:
                raise ImageReadError(f"cannot read {path.name}: no image in the TIFF file")
            if tif.pages[0].photometric == tifffile.PHOTOMETRIC.PALETTE:
                arr, axes = None, "palette"
            else:
                series = tif.series[0]
                axes = series.axes
                _check_tiff_size(series, path)
                arr = series.asarray()
    except (ImageReadError, ResourceLimitError):
        raise
    except ValueError as e:
        if "imagecodecs" in str(e):
            return _read_pillow(path)  # Pillow decodes LZW and JPEG TIFFs without imagecodecs
        raise _fail(path, e) from None
    except (tifffile.TiffFileError, OSError, EOFError, KeyError, IndexError, zlib.error,
            ArithmeticError, TypeError) as e:  # the last two: tifffile on corrupted tag values (fuzz)
        raise _fail(path, e) from None
    if arr is None:
        return _read_pillow(path)  # palette indices -> RGB
    if axes in ("SYX", "CYX") and arr.shape[0] in (1, 3):
        arr = np.moveaxis(arr, 0, -1)
        axes = "YXS"
    if axes not in ("YX", "YXS", "YXC"):
        raise ChannelCountError(
            f"{path.name} holds an array with axes {axes} and shape {arr.shape}; "
            f"accepted: {ACCEPTED_CHANNELS}"
        )
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return arr


def _check_tiff_size(series, path: Path) -> None:
    """Pixel limit from the TIFF's declared shape (no pixel decoded yet)."""
    axes, shape = series.axes, series.shape
    if "Y" in axes and "X" in axes:
        limits.check_image(shape[axes.index("Y")], shape[axes.index("X")], path.name)
    limits.check("pixels", int(np.prod(shape, dtype=np.float64)) // max(1, _samples(axes, shape)),
                 f"{path.name} ({axes} {tuple(shape)})")


def _samples(axes: str, shape) -> int:
    return int(shape[axes.index("S")]) if "S" in axes else 1


def npy_header_shape(f) -> tuple:
    """The array shape an .npy stream's header declares (an open file, or a member of an .npz),
    read without touching the data. Raises ValueError on a damaged header."""
    import tokenize

    fmt = np.lib.format
    major, _ = fmt.read_magic(f)
    try:
        header = fmt.read_array_header_1_0(f) if major == 1 else fmt.read_array_header_2_0(f)
    except (SyntaxError, tokenize.TokenError) as e:  # numpy parses the header as a Python literal
        raise ValueError(f"damaged .npy header ({e})") from None
    return tuple(int(v) for v in header[0])


def _npy_shape(path: Path) -> tuple:
    try:
        with open(path, "rb") as f:
            return npy_header_shape(f)
    except (ValueError, OSError, EOFError, SyntaxError) as e:
        raise _fail(path, e) from None


def _read_npy(path: Path) -> np.ndarray:
    shape = _npy_shape(path)
    if len(shape) in (2, 3):
        limits.check_image(shape[0], shape[1], path.name)
    else:
        limits.check("pixels", int(np.prod(shape, dtype=np.float64)), f"{path.name} {shape}")
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError as e:
        if "pickle" in str(e):
            raise ImageReadError(f"{path.name} holds pickled objects; save a plain float32 array") from None
        raise _fail(path, e) from None
    except (OSError, EOFError) as e:
        raise _fail(path, e) from None
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "uif":
        raise ImageReadError(f"{path.name} does not hold a numeric array")
    if arr.dtype != np.float32:
        raise ImageReadError(
            f"{path.name} has dtype {arr.dtype}; .npy images must be float32 in [0, 1]"
            + (" (convert with .astype(np.float32))" if arr.dtype.kind == "f" else "")
        )
    return arr


# --- writers -------------------------------------------------------------------------------------


def _write_png(tmp: Path, stored: np.ndarray) -> None:
    if stored.dtype == np.uint16 and stored.ndim == 3 and stored.shape[2] == 3:
        import png

        h, w, _ = stored.shape
        writer = png.Writer(w, h, greyscale=False, bitdepth=16, compression=6)
        with open(tmp, "wb") as f:
            writer.write(f, stored.reshape(h, w * 3))
        return
    _write_pillow(tmp, stored, format="PNG")


def _write_pillow(tmp: Path, stored: np.ndarray, **save_args) -> None:
    from PIL import Image

    arr = stored[:, :, 0] if stored.ndim == 3 and stored.shape[2] == 1 else stored
    Image.fromarray(arr).save(tmp, **save_args)


def _write_jpeg(tmp: Path, stored: np.ndarray) -> None:
    _write_pillow(tmp, stored, format="JPEG", quality=95, subsampling=0)


def _write_tiff(tmp: Path, stored: np.ndarray) -> None:
    import tifffile

    rgb = stored.ndim == 3 and stored.shape[2] == 3
    tifffile.imwrite(tmp, stored, photometric="rgb" if rgb else "minisblack", compression="zlib")


def _write_npy(tmp: Path, stored: np.ndarray) -> None:
    with open(tmp, "wb") as f:
        np.save(f, stored.astype(np.float32), allow_pickle=False)
