"""PNG, TIFF, JPEG and .npy reading and writing: exact round trips and one-line errors."""

import numpy as np
import pytest
import tifffile
from PIL import Image

from datprl_edge.core.errors import (
    ChannelCountError,
    ImageReadError,
    InputNotFoundError,
    NonFiniteInputError,
    OutputExistsError,
    UnknownChoiceError,
)
from datprl_edge.io.images import ImageInfo, read_image, write_image

RNG = np.random.default_rng(0)


def _ints(shape, dtype):
    return RNG.integers(0, np.iinfo(dtype).max + 1, size=shape, dtype=dtype)


def _round_trip(tmp_path, name, stored):
    src = tmp_path / f"in_{name}"
    if name.endswith(".png"):
        if stored.dtype == np.uint16 and stored.ndim == 3:
            write_image(src, stored / 65535.0, ImageInfo("png", "uint16", 16, stored.shape))
        else:
            Image.fromarray(stored).save(src)
    elif name.endswith(".tif"):
        tifffile.imwrite(src, stored)
    else:
        np.save(src, stored)
    arr, info = read_image(src)
    assert arr.dtype == np.float32 and arr.ndim == 3 and arr.shape[2] in (1, 3)
    assert 0.0 <= arr.min() and arr.max() <= 1.0
    out = tmp_path / f"out_{name}"
    write_image(out, arr, info)
    back = np.load(out) if name.endswith(".npy") else _raw(out)
    return info, back


def _raw(path):
    if path.suffix == ".tif":
        return tifffile.imread(path)
    import png

    w, h, rows, meta = png.Reader(filename=str(path)).asDirect()
    arr = np.vstack([np.asarray(r) for r in rows]).reshape(h, w, meta["planes"])
    return arr[:, :, 0] if meta["planes"] == 1 else arr


@pytest.mark.parametrize("name,shape,dtype,bits", [
    ("g8.png", (23, 31), np.uint8, 8),
    ("g16.png", (23, 31), np.uint16, 16),
    ("rgb8.png", (23, 31, 3), np.uint8, 8),
    ("rgb16.png", (23, 31, 3), np.uint16, 16),
    ("g8.tif", (23, 31), np.uint8, 8),
    ("g16.tif", (23, 31), np.uint16, 16),
    ("rgb8.tif", (23, 31, 3), np.uint8, 8),
    ("rgb16.tif", (23, 31, 3), np.uint16, 16),
])
def test_integer_round_trip_is_exact(tmp_path, name, shape, dtype, bits):
    stored = _ints(shape, dtype)
    info, back = _round_trip(tmp_path, name, stored)
    assert info.dtype == np.dtype(dtype).name and info.bit_depth == bits and info.shape == shape
    assert back.dtype == dtype and back.shape == shape
    np.testing.assert_array_equal(back, stored)


def test_sixteen_bit_rgb_png_keeps_low_byte(tmp_path):
    stored = np.full((4, 5, 3), 0x1234, np.uint16)
    info, back = _round_trip(tmp_path, "low.png", stored)
    arr, _ = read_image(tmp_path / "in_low.png")
    assert arr[0, 0, 0] == pytest.approx(0x1234 / 65535, abs=1e-7)  # not truncated to 8 bits
    np.testing.assert_array_equal(back, stored)


@pytest.mark.parametrize("shape", [(9, 11), (9, 11, 1), (9, 11, 3)])
def test_npy_round_trip_keeps_shape(tmp_path, shape):
    stored = RNG.random(shape, dtype=np.float32)
    info, back = _round_trip(tmp_path, "a.npy", stored)
    assert info.format == "npy" and info.dtype == "float32" and info.shape == shape
    assert back.dtype == np.float32 and back.shape == shape
    np.testing.assert_array_equal(back, stored)


def test_float_tiff_and_planar_tiff(tmp_path):
    stored = RNG.random((8, 10), dtype=np.float32)
    info, back = _round_trip(tmp_path, "f.tif", stored)
    assert info.dtype == "float32"
    np.testing.assert_array_equal(back, stored)
    planar = _ints((3, 8, 10), np.uint16)
    tifffile.imwrite(tmp_path / "planar.tif", planar, photometric="rgb", planarconfig="separate")
    arr, info = read_image(tmp_path / "planar.tif")
    assert arr.shape == (8, 10, 3) and info.shape == (8, 10, 3)
    np.testing.assert_array_equal(np.rint(arr * 65535).astype(np.uint16), np.moveaxis(planar, 0, -1))


def test_lzw_tiff_read_without_imagecodecs(tmp_path):
    stored = _ints((12, 14, 3), np.uint8)
    Image.fromarray(stored).save(tmp_path / "lzw.tif", compression="tiff_lzw")
    arr, info = read_image(tmp_path / "lzw.tif")
    assert info.dtype == "uint8"
    np.testing.assert_array_equal(np.rint(arr * 255).astype(np.uint8), stored)


def test_palette_png_reads_as_rgb(tmp_path):
    im = Image.fromarray(_ints((6, 7, 3), np.uint8)).convert("P")
    im.save(tmp_path / "p.png")
    arr, info = read_image(tmp_path / "p.png")
    assert arr.shape == (6, 7, 3) and info.shape == (6, 7, 3)


def test_palette_tiff_reads_as_rgb(tmp_path):
    rgb = _ints((6, 7, 3), np.uint8)
    Image.fromarray(rgb).convert("P").save(tmp_path / "p.tif")
    arr, info = read_image(tmp_path / "p.tif")
    expected = np.asarray(Image.open(tmp_path / "p.tif").convert("RGB"))
    assert info.shape == (6, 7, 3)
    np.testing.assert_array_equal(np.rint(arr * 255).astype(np.uint8), expected)


def test_jpeg_reads_and_writes(tmp_path):
    Image.fromarray(_ints((16, 16, 3), np.uint8)).save(tmp_path / "a.jpg", quality=95)
    arr, info = read_image(tmp_path / "a.jpg")
    assert info.format == "jpeg" and arr.shape == (16, 16, 3)
    write_image(tmp_path / "b.jpeg", arr, info)
    assert Image.open(tmp_path / "b.jpeg").size == (16, 16)


def test_grayscale_info_gets_channel_mean(tmp_path):
    info = ImageInfo("png", "uint8", 8, (2, 2))
    rgb = np.zeros((2, 2, 3), np.float32)
    rgb[..., 0] = 0.3
    write_image(tmp_path / "g.png", rgb, info)
    back = np.asarray(Image.open(tmp_path / "g.png"))
    assert back.shape == (2, 2) and (back == round(0.1 * 255)).all()


def _one_line(exc):
    text = str(exc.value)
    assert "\n" not in text and "Traceback" not in text
    return text


def test_truncated_and_corrupt_png(tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(_ints((64, 64, 3), np.uint8)).save(good)
    data = good.read_bytes()
    (tmp_path / "trunc.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError) as e:
        read_image(tmp_path / "trunc.png")
    assert "trunc.png" in _one_line(e)
    (tmp_path / "junk.png").write_bytes(b"this is not an image at all")
    with pytest.raises(ImageReadError) as e:
        read_image(tmp_path / "junk.png")
    _one_line(e)
    (tmp_path / "empty.tif").write_bytes(b"")
    with pytest.raises(ImageReadError):
        read_image(tmp_path / "empty.tif")


def test_truncated_sixteen_bit_rgb_png(tmp_path):
    path = tmp_path / "rgb16.png"
    write_image(path, RNG.random((40, 40, 3)), ImageInfo("png", "uint16", 16, (40, 40, 3)))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 200])
    with pytest.raises(ImageReadError) as e:
        read_image(path)
    _one_line(e)


@pytest.mark.parametrize("mode,bands", [("RGBA", 4), ("LA", 2)])
def test_alpha_png_refused(tmp_path, mode, bands):
    Image.fromarray(_ints((5, 5, bands), np.uint8), mode=mode).save(tmp_path / "a.png")
    with pytest.raises(ChannelCountError) as e:
        read_image(tmp_path / "a.png")
    assert "accepted" in _one_line(e)


@pytest.mark.parametrize("shape", [(5, 5, 2), (5, 5, 4), (5, 5, 5), (2, 5, 5, 3)])
def test_wrong_channel_npy(tmp_path, shape):
    np.save(tmp_path / "a.npy", np.zeros(shape, np.float32))
    with pytest.raises(ChannelCountError) as e:
        read_image(tmp_path / "a.npy")
    assert "accepted" in _one_line(e)


def test_four_band_tiff_refused(tmp_path):
    tifffile.imwrite(tmp_path / "rgbn.tif", _ints((6, 6, 4), np.uint8))
    with pytest.raises(ChannelCountError):
        read_image(tmp_path / "rgbn.tif")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_npy(tmp_path, bad):
    arr = np.zeros((4, 4, 3), np.float32)
    arr[1, 2, 0] = bad
    np.save(tmp_path / "a.npy", arr)
    with pytest.raises(NonFiniteInputError) as e:
        read_image(tmp_path / "a.npy")
    assert "1 NaN or infinite" in _one_line(e)


def test_npy_range_and_dtype(tmp_path):
    np.save(tmp_path / "big.npy", np.full((3, 3), 1.5, np.float32))
    with pytest.raises(ImageReadError, match=r"\[0, 1\]"):
        read_image(tmp_path / "big.npy")
    np.save(tmp_path / "f64.npy", np.zeros((3, 3)))
    with pytest.raises(ImageReadError, match="float32"):
        read_image(tmp_path / "f64.npy")
    np.save(tmp_path / "int.npy", np.zeros((3, 3), np.int32))
    with pytest.raises(ImageReadError, match="float32"):
        read_image(tmp_path / "int.npy")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ImageReadError, match="pickled"):
        read_image(tmp_path / "obj.npy")


def test_missing_file_and_unknown_suffix(tmp_path):
    with pytest.raises(InputNotFoundError):
        read_image(tmp_path / "nope.png")
    with pytest.raises(UnknownChoiceError, match="did you mean '.png'"):
        read_image(tmp_path / "a.pgn")
    with pytest.raises(UnknownChoiceError, match=r"\.npy.*\.tiff"):
        read_image(tmp_path / "a.bmpx")


def test_failed_write_leaves_nothing(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    bad = np.full((4, 4, 3), np.nan, np.float32)
    with pytest.raises(NonFiniteInputError):
        write_image(out / "x.png", bad, ImageInfo("png", "uint8", 8, (4, 4, 3)))
    with pytest.raises(ChannelCountError):
        write_image(out / "x.tif", np.zeros((4, 4, 2)), ImageInfo("tiff", "uint8", 8, (4, 4, 3)))
    assert list(out.iterdir()) == []


def test_write_refuses_input_and_existing(tmp_path):
    src = tmp_path / "a.png"
    Image.fromarray(_ints((4, 4), np.uint8)).save(src)
    before = src.read_bytes()
    arr, info = read_image(src)
    with pytest.raises(OutputExistsError, match="refusing to overwrite input"):
        write_image(src, arr, info, protect=[src])
    with pytest.raises(OutputExistsError, match="--overwrite"):
        write_image(src, arr, info, overwrite=False)
    assert src.read_bytes() == before
