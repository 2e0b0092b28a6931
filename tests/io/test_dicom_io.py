"""DICOM reading (rescale, window, MONOCHROME1) and derived-image writing with pydicom."""

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut

from datprl_edge.core.errors import (
    ChannelCountError,
    ConfigError,
    ImageReadError,
    InputNotFoundError,
    OutputExistsError,
    ResourceLimitError,
)
from datprl_edge.io.dicom import parse_window, read_dicom, write_dicom

DATA = Path(__file__).parents[1] / "fixtures" / "dicom"
CT = DATA / "CT_small.dcm"  # pydicom test file: signed 16 bit, intercept -1024
MR = DATA / "MR_small.dcm"  # has WindowCenter 600 / WindowWidth 1600


def test_ct_rescale_and_full_window():
    x, info = read_dicom(CT)
    ds = pydicom.dcmread(CT)
    hu = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    assert x.shape == (128, 128, 1) and x.dtype == np.float32
    assert info.intercept == -1024.0 and info.window == (hu.min(), hu.max())
    np.testing.assert_allclose(x[:, :, 0], (hu - hu.min()) / (hu.max() - hu.min()), atol=1e-6)


def test_ct_round_trip_keeps_values_and_tags(tmp_path):
    x, info = read_dicom(CT)
    out = write_dicom(tmp_path / "out.dcm", x, info, model="edge-xs")
    src, ds = pydicom.dcmread(CT), pydicom.dcmread(out)
    np.testing.assert_array_equal(ds.pixel_array, src.pixel_array)
    for tag in ("PatientName", "PatientID", "StudyInstanceUID", "StudyDate", "Modality",
                "RescaleIntercept", "RescaleSlope", "PixelSpacing"):
        assert ds.get(tag) == src.get(tag), tag
    assert ds.SOPInstanceUID != src.SOPInstanceUID
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert ds.SeriesInstanceUID != src.SeriesInstanceUID
    assert ds.ImageType[0] == "DERIVED"
    assert "datprl-edge" in ds.DerivationDescription and "edge-xs" in ds.DerivationDescription
    ref = ds.SourceImageSequence[0]
    assert ref.ReferencedSOPInstanceUID == src.SOPInstanceUID and ref.ReferencedSOPClassUID == src.SOPClassUID
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian


def test_changed_pixels_map_back_through_rescale(tmp_path):
    x, info = read_dicom(CT)
    brighter = np.clip(x + 0.1, 0, 1)
    out = write_dicom(tmp_path / "b.dcm", brighter, info)
    lo, hi = info.window
    expected = np.rint((lo + brighter[:, :, 0].astype(np.float64) * (hi - lo)) - info.intercept)
    np.testing.assert_array_equal(pydicom.dcmread(out).pixel_array, expected.astype(np.int16))


def test_file_window_clips_and_keeps_outside_pixels(tmp_path):
    x, info = read_dicom(MR, window="file")
    assert info.window == (600 - 800, 600 + 800)
    stored = pydicom.dcmread(MR).pixel_array
    outside = (stored < -200) | (stored > 1400)
    assert outside.any()
    out = write_dicom(tmp_path / "w.dcm", x * 0.5, info)
    back = pydicom.dcmread(out).pixel_array
    np.testing.assert_array_equal(back[outside], stored[outside])
    assert not np.array_equal(back[~outside], stored[~outside])


def test_explicit_window_and_parse():
    assert parse_window("40,400") == (40.0, 400.0)
    assert parse_window("file") == "file" and parse_window(None) == "full"
    with pytest.raises(ConfigError, match="CENTER,WIDTH"):
        parse_window("soft tissue")
    with pytest.raises(ConfigError, match="positive"):
        parse_window("40,0")
    x, info = read_dicom(CT, window=(40.0, 400.0))
    assert info.window == (-160.0, 240.0) and x.min() == 0.0 and x.max() == 1.0


def test_monochrome1_is_inverted_and_round_trips(tmp_path):
    ds = pydicom.dcmread(CT)
    ds.PhotometricInterpretation = "MONOCHROME1"
    path = tmp_path / "mono1.dcm"
    ds.save_as(path)
    x2, _ = read_dicom(CT)
    x1, info = read_dicom(path)
    assert info.invert
    np.testing.assert_allclose(x1, 1.0 - x2, atol=1e-6)
    out = write_dicom(tmp_path / "o.dcm", x1, info)
    back = pydicom.dcmread(out)
    assert back.PhotometricInterpretation == "MONOCHROME1"
    np.testing.assert_array_equal(back.pixel_array, ds.pixel_array)


def test_big_endian_and_rgb_round_trip(tmp_path):
    for name in ("MR_small_bigendian.dcm", "SC_rgb.dcm"):
        x, info = read_dicom(DATA / name)
        out = write_dicom(tmp_path / name, x, info)
        src, ds = pydicom.dcmread(DATA / name), pydicom.dcmread(out)
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        np.testing.assert_array_equal(ds.pixel_array, src.pixel_array)
        assert ds.PatientName == src.PatientName
    assert read_dicom(DATA / "SC_rgb.dcm")[0].shape == (100, 100, 3)


def test_multiframe_needs_a_frame():
    with pytest.raises(ImageReadError, match="10 frames"):
        read_dicom(DATA / "emri_small.dcm")
    x, info = read_dicom(DATA / "emri_small.dcm", frame=3)
    assert x.shape == (64, 64, 1) and info.frame == 3
    np.testing.assert_array_equal(info.stored, pydicom.dcmread(DATA / "emri_small.dcm").pixel_array[3])
    with pytest.raises(ConfigError, match="frame 12"):
        read_dicom(DATA / "emri_small.dcm", frame=12)


def test_unreadable_files(tmp_path):
    with pytest.raises(InputNotFoundError):
        read_dicom(tmp_path / "none.dcm")
    (tmp_path / "text.dcm").write_text("hello")
    with pytest.raises(ImageReadError, match="not a DICOM") as e:
        read_dicom(tmp_path / "text.dcm")
    assert "\n" not in str(e.value)
    with pytest.raises(ImageReadError) as e:
        read_dicom(DATA / "MR_truncated.dcm")
    assert "\n" not in str(e.value) and "Traceback" not in str(e.value)
    data = CT.read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError):
        read_dicom(tmp_path / "cut.dcm")


def test_write_protects_input_and_is_atomic(tmp_path):
    copy = tmp_path / "ct.dcm"
    copy.write_bytes(CT.read_bytes())
    x, info = read_dicom(copy)
    with pytest.raises(OutputExistsError):
        write_dicom(copy, x, info, protect=[copy])
    assert copy.read_bytes() == CT.read_bytes()
    out = tmp_path / "out"
    with pytest.raises(ChannelCountError):  # wrong shape: nothing may be left behind
        write_dicom(out / "bad.dcm", x[:10], info)
    assert not out.exists() or list(out.iterdir()) == []


def _edited(tmp_path, name="edited.dcm", **attrs):
    ds = pydicom.dcmread(CT)
    for key, value in attrs.items():
        setattr(ds, key, value)
    path = tmp_path / name
    ds.save_as(path)
    before = path.read_bytes()
    return path, before


@pytest.mark.parametrize("attrs,message", [
    ({"RescaleSlope": [1, 2]}, "RescaleSlope holds 2 values; expected one number"),
    ({"RescaleSlope": 0}, "RescaleSlope 0"),
    ({"Rows": 60000, "Columns": 60000}, "60000x60000.*over the limit.*DATPRL_EDGE_MAX_PIXELS"),
])
def test_hostile_dicom_attributes_are_one_error(tmp_path, attrs, message):
    path, before = _edited(tmp_path, **attrs)
    with pytest.raises((ImageReadError, ResourceLimitError), match=message):
        read_dicom(path)
    assert path.read_bytes() == before


def test_empty_window_centre_with_file_window_is_one_error(tmp_path):
    ds = pydicom.dcmread(MR)
    ds.WindowCenter = ""
    path = tmp_path / "nowindow.dcm"
    ds.save_as(path)
    with pytest.raises(ImageReadError, match="WindowCenter is empty: use --window full"):
        read_dicom(path, window="file")
    assert read_dicom(path, window="full")[0].shape == (64, 64, 1)


def test_non_numeric_rescale_intercept_is_one_error(tmp_path):
    data = CT.read_bytes()
    value = pydicom.dcmread(CT)["RescaleIntercept"]
    raw = str(value.value).encode()
    assert data.count(raw) >= 1
    path = tmp_path / "text_intercept.dcm"
    path.write_bytes(data.replace(raw, b"x" * len(raw), 1))
    with pytest.raises(ImageReadError, match="RescaleIntercept is not a number"):
        read_dicom(path)
