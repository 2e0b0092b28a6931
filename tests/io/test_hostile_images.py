"""Hostile image files: size bombs are refused from their headers, before any pixel is decoded,
and any corrupted or truncated file ends in one toolkit error (fuzzed with hypothesis)."""

import struct
import tracemalloc
import zlib

import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from datprl_edge.core import limits
from datprl_edge.core.errors import DatprlEdgeError, ImageReadError, ResourceLimitError
from datprl_edge.io.images import read_image, write_image


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_claiming(width: int, height: int, depth: int = 8, colour: int = 0) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + _chunk(b"IEND", b""))


def _bounded_read(path):
    """read_image under tracemalloc: the refusal must come without a large allocation."""
    tracemalloc.start()
    try:
        with pytest.raises(ResourceLimitError) as info:
            read_image(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2**20, f"{peak / 2**20:.0f} MiB allocated before refusing {path.name}"
    return str(info.value)


@pytest.mark.parametrize("width,height,depth,colour", [
    (100000, 100000, 8, 0),  # header bomb: 10 G pixels
    (14000, 14000, 8, 2),  # what a 190 KB zlib PNG can declare
    (12000, 12000, 16, 2),  # 16-bit RGB: read by pypng, not Pillow
])
def test_png_size_bombs_are_refused_from_the_header(tmp_path, width, height, depth, colour):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_claiming(width, height, depth, colour))
    msg = _bounded_read(path)
    assert f"{width}x{height}" in msg or f"{height}x{width}" in msg
    assert "DATPRL_EDGE_MAX_PIXELS" in msg and "\n" not in msg


@pytest.mark.parametrize("error", [ZeroDivisionError("integer division or modulo by zero"),
                                   TypeError("'<' not supported between instances of 'tuple' and 'int'")])
def test_tiff_parser_arithmetic_on_corrupted_tags_is_one_error(tmp_path, monkeypatch, error):
    """What tifffile raised on two fuzzed TIFFs (flipped tag bytes) ends in one ImageReadError line."""
    import tifffile

    path = tmp_path / "a.tif"
    tifffile.imwrite(path, np.zeros((8, 8, 3), np.uint8), photometric="rgb")

    def broken(*_a, **_k):
        raise error

    monkeypatch.setattr(tifffile, "TiffFile", broken)
    with pytest.raises(ImageReadError) as e:
        read_image(path)
    assert "a.tif" in str(e.value) and "\n" not in str(e.value)


def test_tiff_declaring_a_huge_image_is_refused(tmp_path):
    path = tmp_path / "bomb.tif"
    tifffile.imwrite(path, np.zeros((16, 16), np.uint8), compression="zlib")
    with tifffile.TiffFile(path, mode="r+b") as tif:
        tif.pages[0].tags["ImageWidth"].overwrite(20000)
        tif.pages[0].tags["ImageLength"].overwrite(20000)
    assert "20000x20000" in _bounded_read(path)


def test_jpeg_declaring_a_huge_image_is_refused(tmp_path):
    path = tmp_path / "bomb.jpg"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(path, quality=90)
    data = bytearray(path.read_bytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", 60000, 60000)  # height, width
    path.write_bytes(bytes(data))
    assert "60000x60000" in _bounded_read(path)


def test_npy_header_declaring_a_huge_array_is_refused(tmp_path):
    path = tmp_path / "bomb.npy"
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": "<f4", "fortran_order": False, "shape": (100000, 100000, 3)})
        f.write(b"\0" * 64)
    assert "100000x100000" in _bounded_read(path)


def test_npy_header_that_is_not_a_python_literal_is_one_toolkit_error(tmp_path):
    """A flipped byte in the shape tuple made numpy's header parser raise tokenize.TokenError (found
    by the fuzz test below); it must end like any other damaged file."""
    path = tmp_path / "bad.npy"
    np.save(path, np.zeros((24, 20, 3), np.float32))
    data = path.read_bytes()
    path.write_bytes(data.replace(b"(24, 20, 3)", b"(24, 20, 3(", 1))
    with pytest.raises(ImageReadError, match="bad.npy"):
        read_image(path)


def test_the_pixel_limit_is_raised_by_its_environment_variable(tmp_path, monkeypatch):
    path = tmp_path / "small.png"
    write_image(path, np.full((20, 30, 1), 0.5, np.float32), _info())
    monkeypatch.setenv("DATPRL_EDGE_MAX_PIXELS", "500")
    with pytest.raises(ResourceLimitError, match="20x30.*600 pixels.*over the limit of 500"):
        read_image(path)
    monkeypatch.setenv("DATPRL_EDGE_MAX_PIXELS", "600")
    assert read_image(path)[0].shape == (20, 30, 1)
    monkeypatch.setenv("DATPRL_EDGE_MAX_PIXELS", "lots")
    with pytest.raises(DatprlEdgeError, match="DATPRL_EDGE_MAX_PIXELS='lots' is not a number"):
        read_image(path)


def _info():
    from datprl_edge.io.images import ImageInfo

    return ImageInfo("png", "uint8", 8, (20, 30, 1))


def _valid_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("valid")
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (24, 20, 3), dtype=np.uint8)
    files = {}
    for name, save in {
        "a.png": lambda p: Image.fromarray(img).save(p),
        "a.jpg": lambda p: Image.fromarray(img).save(p, quality=90),
        "a.tif": lambda p: tifffile.imwrite(p, img, compression="zlib"),
        "a16.png": lambda p: write_image(p, img / 255.0, _rgb16()),
        "a.npy": lambda p: np.save(p, (img / 255.0).astype(np.float32)),
    }.items():
        save(root / name)
        files[name] = (root / name).read_bytes()
    return files


def _rgb16():
    from datprl_edge.io.images import ImageInfo

    return ImageInfo("png", "uint16", 16, (24, 20, 3))


@pytest.fixture(scope="module")
def valid_files(tmp_path_factory):
    return _valid_files(tmp_path_factory)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(["a.png", "a.jpg", "a.tif", "a16.png", "a.npy"]),
       cut=st.floats(0.0, 1.0), flips=st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(1, 255)),
                                               max_size=8))
def test_corrupted_and_truncated_images_end_in_one_toolkit_error(tmp_path, valid_files, name, cut, flips):
    data = bytearray(valid_files[name])
    for where, xor in flips:
        data[int(where * (len(data) - 1))] ^= xor
    data = bytes(data[:max(1, int(cut * len(data)))]) if cut < 0.999 else bytes(data)
    path = tmp_path / f"fuzz_{name}"
    path.write_bytes(data)
    with limits_of(4_000_000):
        try:
            arr, _ = read_image(path)
        except DatprlEdgeError as e:
            assert str(e) and "\n" not in str(e)
            return
    assert arr.dtype == np.float32 and np.isfinite(arr).all() and 0 <= arr.min() and arr.max() <= 1


class limits_of:
    """The pixel limit set for a block (a fuzzed header may declare any size)."""

    def __init__(self, pixels):
        self.pixels = pixels

    def __enter__(self):
        limits.set_limit("pixels", self.pixels)

    def __exit__(self, *exc):
        limits.set_limit("pixels", None)


def test_a_bomb_in_a_folder_fails_alone(tmp_path, capsys):
    from conftest import run_cli

    src = tmp_path / "in"
    src.mkdir()
    (src / "a_bomb.png").write_bytes(_png_claiming(100000, 100000))
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(src / "b_good.png")
    code, out, err = run_cli(capsys, "restore", "bundled:edge-xs", src, "-o", tmp_path / "out")
    assert code == 2 and "restored 1, failed 1" in out and "a_bomb.png is 100000x100000" in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["b_good.png"]
