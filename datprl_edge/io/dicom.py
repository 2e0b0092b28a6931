"""DICOM in and out with pydicom: model arrays in [0, 1] and derived images written back.

Reading applies the modality transform (rescale slope/intercept or a Modality LUT), a window
(the file's WindowCenter/Width, an explicit one, or the full data range) and MONOCHROME1
inversion. `DicomInfo` keeps the original dataset and stored values, so `write_dicom` maps a
result back to stored values through the same window and rescale. Pixels the window clipped
keep their original stored values: the model never saw them.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import warnings
from pathlib import Path

import numpy as np

from datprl_edge.core import limits
from datprl_edge.core.errors import ChannelCountError, ConfigError, ImageReadError, InputNotFoundError
from datprl_edge.core.version import __version__
from datprl_edge.io.atomic import atomic_path

WINDOW_CHOICES = ("full", "file")
_SWAP_BYTES = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}


@dataclasses.dataclass(frozen=True)
class DicomInfo:
    dataset: object  # the pydicom Dataset as read (never modified)
    stored: np.ndarray  # original stored values of the frame, (H, W) or (H, W, 3)
    kind: str  # 'gray' or 'rgb'
    slope: float
    intercept: float
    window: tuple  # (low, high) in modality units; grayscale only
    invert: bool  # MONOCHROME1: high values display dark
    linear: bool  # False when a Modality LUT Sequence (not slope/intercept) was applied
    rgb_max: int  # 255 or 65535 for colour images
    frame: int

    @property
    def channels(self) -> int:
        return 1 if self.kind == "gray" else 3


def parse_window(text):
    """CLI value -> window: 'full', 'file' or (center, width)."""
    if text is None or text in WINDOW_CHOICES:
        return text or "full"
    try:
        center, width = (float(v) for v in str(text).split(","))
    except ValueError:
        raise ConfigError(
            f"--window must be 'full', 'file' or CENTER,WIDTH (e.g. 40,400), not {text!r}") from None
    if width <= 0:
        raise ConfigError(f"window width must be positive, not {width:g}")
    return center, width


def read_dataset(path):
    """Read a DICOM file with pydicom; missing or unreadable files give one-line errors."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    path = Path(path)
    if not path.exists():
        raise InputNotFoundError(f"DICOM file not found: {path}")
    if not path.is_file():
        raise ImageReadError(f"{path} is not a file")
    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError:
        raise ImageReadError(f"cannot read {path.name}: not a DICOM file (no DICM header)") from None
    except Exception as e:  # pydicom raises many kinds on damaged files
        raise ImageReadError(f"cannot read {path.name}: damaged DICOM file ({_first_line(e)})") from None
    if "PixelData" not in ds:
        raise ImageReadError(f"{path.name} holds no image (no Pixel Data element)")
    return ds


def stored_pixels(ds, name: str = "DICOM file", frame: int | None = None) -> np.ndarray:
    """Stored values of one frame (colour converted to RGB by pydicom)."""
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1 and frame is None:
        raise ImageReadError(f"{name} holds {frames} frames; only single-frame images are supported")
    frame = frame or 0
    if not 0 <= frame < frames:
        raise ConfigError(f"{name} has {frames} frame(s); frame {frame} does not exist")
    rows, cols = int(_number(ds, "Rows", 0)), int(_number(ds, "Columns", 0))
    limits.check_image(rows, cols, name)  # before pydicom decodes anything
    limits.check("pixels", rows * cols * frames, f"{name} ({frames} frames of {rows}x{cols})")
    try:
        arr = ds.pixel_array
    except Exception as e:  # missing decoders, truncated pixel data
        raise ImageReadError(f"cannot decode the pixels of {name}: {_first_line(e)}") from None
    if frames > 1:
        arr = arr[frame]
    return np.ascontiguousarray(arr.astype(arr.dtype.newbyteorder("=")))


def modality_values(ds, stored: np.ndarray) -> tuple[np.ndarray, float, float, bool]:
    """(values after the modality transform as float64, slope, intercept, is_linear)."""
    from pydicom.pixels import apply_modality_lut

    slope = _number(ds, "RescaleSlope", 1.0)
    intercept = _number(ds, "RescaleIntercept", 0.0)
    if slope == 0:
        raise ImageReadError("the DICOM file has RescaleSlope 0: every pixel would map to one value")
    if "ModalityLUTSequence" in ds:
        return np.asarray(apply_modality_lut(stored, ds), dtype=np.float64), slope, intercept, False
    return stored.astype(np.float64) * slope + intercept, slope, intercept, True


def _quiet(fn):
    """pydicom warns about non-conformant values of the source file (e.g. a bad CS value); a
    restore should not print them, so they are silenced while reading and writing."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return fn(*args, **kwargs)

    return wrapper


@_quiet
def read_dicom(path, window="full", frame: int | None = None) -> tuple[np.ndarray, DicomInfo]:
    """Read a DICOM image; returns (float32 (H, W, 1) or (H, W, 3) in [0, 1], DicomInfo)."""
    path = Path(path)
    ds = read_dataset(path)
    stored = stored_pixels(ds, path.name, frame)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip()
    common = {"dataset": ds, "stored": stored, "frame": frame or 0}
    if photometric in ("MONOCHROME1", "MONOCHROME2"):
        if stored.ndim != 2:
            raise ChannelCountError(f"{path.name} is {photometric} but has shape {stored.shape}")
        values, slope, intercept, linear = modality_values(ds, stored)
        lo, hi = _window_bounds(ds, values, window)
        x = np.clip((values - lo) / (hi - lo), 0.0, 1.0)
        invert = photometric == "MONOCHROME1"
        if invert:
            x = 1.0 - x
        info = DicomInfo(kind="gray", slope=slope, intercept=intercept, window=(lo, hi), invert=invert,
                         linear=linear, rgb_max=0, **common)
        return x.astype(np.float32)[:, :, None], info
    rgb = _as_rgb(ds, stored, photometric, path.name)
    rgb_max = 65535 if rgb.dtype == np.uint16 else 255
    info = DicomInfo(kind="rgb", slope=1.0, intercept=0.0, window=(0.0, float(rgb_max)), invert=False,
                     linear=True, rgb_max=rgb_max, **common)
    return (rgb.astype(np.float32) / rgb_max), info


@_quiet
def write_dicom(path, array: np.ndarray, info: DicomInfo, *, model: str = "", overwrite: bool = True,
                protect=(), series_uid: str | None = None) -> Path:
    """Write `array` (H, W, C) in [0, 1] as a derived DICOM image of `info.dataset`, atomically.

    Patient, study and other tags are kept. A new SOP Instance UID and Series Instance UID are
    set (`series_uid`, when given, so that the slices of one restored series share it), ImageType
    becomes DERIVED, and DerivationDescription plus SourceImageSequence name the model and the
    original image. Pixels are stored uncompressed (Explicit VR Little Endian).
    """
    import pydicom
    from pydicom.dataset import Dataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    arr = np.clip(np.asarray(array, dtype=np.float64), 0.0, 1.0)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3) or arr.shape[:2] != info.stored.shape[:2]:
        raise ChannelCountError(
            f"output shape {arr.shape} does not match the DICOM image {info.stored.shape}")
    src = info.dataset
    if int(src.get("NumberOfFrames", 1) or 1) > 1:
        raise ConfigError("writing a multi-frame DICOM back is not supported; write PNG or TIFF instead")
    ds = copy.deepcopy(src)
    if info.kind == "gray":
        pixels, photometric, bits = _gray_to_stored(arr.mean(axis=2), info)
    else:
        if arr.shape[2] == 1:
            arr = np.repeat(arr, 3, axis=2)
        dtype = np.uint16 if info.rgb_max == 65535 else np.uint8
        pixels, photometric = np.rint(arr * info.rgb_max).astype(dtype), "RGB"
        bits = 16 if dtype == np.uint16 else 8
        for key in ("RedPaletteColorLookupTableDescriptor", "GreenPaletteColorLookupTableDescriptor",
                    "BluePaletteColorLookupTableDescriptor", "RedPaletteColorLookupTableData",
                    "GreenPaletteColorLookupTableData", "BluePaletteColorLookupTableData",
                    "SegmentedRedPaletteColorLookupTableData", "SegmentedGreenPaletteColorLookupTableData",
                    "SegmentedBluePaletteColorLookupTableData", "PaletteColorLookupTableUID"):
            if key in ds:
                del ds[key]
    if not ds.file_meta.get("TransferSyntaxUID", ExplicitVRLittleEndian).is_little_endian:
        _swap_other_bytes(ds)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.set_pixel_data(pixels, photometric, bits, generate_instance_uid=True)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SeriesInstanceUID = series_uid or generate_uid()
    old_type = [str(v) for v in (src.get("ImageType") or [])]
    ds.ImageType = ["DERIVED", "SECONDARY", *old_type[2:]]
    what = f" with model {model}" if model else ""
    ds.DerivationDescription = f"Restored by datprl-edge {__version__}{what}"[:1024]
    if "SOPClassUID" in src and "SOPInstanceUID" in src:
        ref = Dataset()
        ref.ReferencedSOPClassUID = src.SOPClassUID
        ref.ReferencedSOPInstanceUID = src.SOPInstanceUID
        ds.SourceImageSequence = [ref]
    if ds.get("LossyImageCompression") != "01" and _was_lossy(src):
        ds.LossyImageCompression = "01"
    with atomic_path(path, overwrite=overwrite, protect=protect) as tmp:
        pydicom.dcmwrite(tmp, ds, enforce_file_format=True)
    return Path(path)


# --- helpers -------------------------------------------------------------------------------------


def _window_bounds(ds, values: np.ndarray, window) -> tuple[float, float]:
    if window is None or window == "full":
        lo, hi = float(values.min()), float(values.max())
    elif window == "file":
        if "WindowCenter" not in ds or "WindowWidth" not in ds:
            return _window_bounds(ds, values, "full")
        center, width = _first(ds, "WindowCenter"), _first(ds, "WindowWidth")
        lo, hi = center - width / 2.0, center + width / 2.0
    elif isinstance(window, tuple) and len(window) == 2:
        center, width = float(window[0]), float(window[1])
        lo, hi = center - width / 2.0, center + width / 2.0
    else:
        raise ConfigError(f"window must be 'full', 'file' or (center, width), not {window!r}")
    if hi <= lo:
        hi = lo + 1.0
    return lo, hi


def _as_rgb(ds, stored: np.ndarray, photometric: str, name: str) -> np.ndarray:
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        try:
            rgb = apply_color_lut(stored, ds)
        except Exception as e:
            raise ImageReadError(f"cannot apply the palette of {name}: {_first_line(e)}") from None
        return np.ascontiguousarray(rgb.astype(rgb.dtype.newbyteorder("=")))
    if stored.ndim == 3 and stored.shape[2] == 3:
        # pydicom converts YBR to RGB when decoding; anything else with 3 samples is RGB already.
        return stored
    raise ChannelCountError(
        f"{name} has photometric interpretation {photometric} with shape {stored.shape}; "
        "accepted: MONOCHROME1/2, RGB, YBR or PALETTE COLOR"
    )


def _gray_to_stored(x: np.ndarray, info: DicomInfo):
    ds = info.dataset
    if not info.linear:
        raise ConfigError("this DICOM uses a Modality LUT Sequence, which cannot be inverted; "
                          "write the result as PNG or TIFF instead")
    if info.invert:
        x = 1.0 - x
    lo, hi = info.window
    values = lo + x * (hi - lo)
    stored = np.rint((values - info.intercept) / info.slope)
    bits = int(ds.get("BitsStored", 16) or 16)
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    smin, smax = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    stored = np.clip(stored, smin, smax)
    orig_values = info.stored.astype(np.float64) * info.slope + info.intercept
    outside = (orig_values < lo) | (orig_values > hi)
    stored = np.where(outside, info.stored, stored)
    if bits > 16:
        raise ConfigError(f"{bits}-bit DICOM pixels cannot be written back; write TIFF instead")
    alloc = 16 if bits > 8 else 8
    dtype = {(8, False): np.uint8, (8, True): np.int8, (16, False): np.uint16, (16, True): np.int16}[
        (alloc, signed)]
    photometric = "MONOCHROME1" if info.invert else "MONOCHROME2"
    return stored.astype(dtype), photometric, bits


def _swap_other_bytes(ds) -> None:
    """Big-endian input written as little endian: swap the bytes of OW/OF/OL/OD/OV values."""
    for elem in list(ds):
        if elem.tag == 0x7FE00010 or elem.VR not in _SWAP_BYTES or elem.value is None:
            continue
        size = _SWAP_BYTES[elem.VR]
        raw = bytes(elem.value)
        if len(raw) % size:
            del ds[elem.tag]
            continue
        elem.value = np.frombuffer(raw, dtype=f">u{size}").astype(f"<u{size}").tobytes()


def _was_lossy(ds) -> bool:
    ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    return bool(ts is not None and ts.is_compressed and "Lossless" not in ts.name)


def _first(ds, keyword: str) -> float:
    """The first of a possibly multi-valued numeric attribute (window centre/width may list several)."""
    from pydicom.multival import MultiValue

    value = ds.get(keyword)
    values = list(value) if isinstance(value, (list, tuple, MultiValue)) else [value]
    if not values or values[0] is None or str(values[0]).strip() == "":
        raise ImageReadError(f"the DICOM file's {keyword} is empty: use --window full or --window C,W")
    return _finite(values[0], keyword)


def _number(ds, keyword: str, default: float) -> float:
    """A single-valued numeric attribute (absent or empty: `default`); anything else is one error."""
    from pydicom.multival import MultiValue

    value = ds.get(keyword)
    if value is None or str(value).strip() == "":
        return float(default)
    if isinstance(value, (list, tuple, MultiValue)):
        raise ImageReadError(f"the DICOM file's {keyword} holds {len(value)} values; expected one number")
    return _finite(value, keyword)


def _finite(value, keyword: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ImageReadError(f"the DICOM file's {keyword} is not a number: {str(value)[:40]!r}") from None
    if not math.isfinite(number):
        raise ImageReadError(f"the DICOM file's {keyword} is {number}; expected a finite number")
    return number


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:160] if text else type(e).__name__
