"""Tiled inference: coverage, blending, layouts, padding, errors, and tiled == untiled away from borders."""

import numpy as np
import pytest

from datprl_edge.core.errors import ConfigError
from datprl_edge.core.tiling import plan_axis, plan_tiles, ramp_window, tile_apply


def _image(*shape, seed=0):
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def test_plan_covers_every_pixel_with_the_overlap():
    for length in (1, 50, 128, 129, 300, 1000, 2160, 3840):
        extent, starts = plan_axis(length, 128, 16)
        assert starts[0] == 0 and starts[-1] + extent == length
        if length <= 128:
            assert extent == length and starts == [0]
            continue
        gaps = np.diff(starts)
        assert np.all(extent - gaps >= 16)  # neighbours share at least the overlap
        assert np.all(gaps > 0)


def test_offsets_lie_on_the_stride_grid():
    for length in (136, 300, 1003, 2160):
        padded = length + (-length) % 8
        extent, starts = plan_axis(padded, 64, 20, grid=8)
        assert all(s % 8 == 0 for s in starts) and starts[-1] + extent == padded
        assert np.all(extent - np.diff(starts) >= 20)
    plan = plan_tiles(1003, 77, tile=64, overlap=20, multiple=8)
    assert (plan.padded_h, plan.padded_w) == (1008, 80)
    assert all(y % 8 == 0 for y in plan.ys) and all(x % 8 == 0 for x in plan.xs)


def test_plan_counts_tiles_for_a_4k_frame():
    plan = plan_tiles(2160, 3840, tile=512, overlap=32)
    assert (plan.tile_h, plan.tile_w) == (512, 512)
    assert plan.count == len(plan.ys) * len(plan.xs) == 5 * 8


def test_ramps_sum_to_one_where_tiles_meet():
    w = ramp_window(64, 16, 16)
    assert w.min() > 0 and w.max() == 1.0
    np.testing.assert_allclose(w[:16] + w[-16:], 1.0, atol=1e-6)  # a start ramp meets an end ramp


def test_identity_function_is_reproduced_exactly():
    x = _image(1, 3, 300, 517)
    y = tile_apply(lambda t: t.copy(), x, tile=128, overlap=16)
    assert y.dtype == np.float32 and y.shape == x.shape
    np.testing.assert_allclose(y, x, atol=1e-6)


def test_batched_tiles_equal_single_tiles():
    x = _image(1, 3, 200, 260)
    calls = []

    def fn(t):
        calls.append(t.shape[0])
        return np.sqrt(t)

    one = tile_apply(fn, x, tile=64, overlap=8)
    calls_single = len(calls)
    many = tile_apply(fn, x, tile=64, overlap=8, batch=5)
    assert max(calls[calls_single:]) == 5 and len(calls) - calls_single < calls_single
    np.testing.assert_allclose(one, many, atol=1e-6)


def test_tiled_matches_untiled_away_from_tile_borders():
    # a local (3x3 box) filter: tiles with enough overlap give the same result as one pass,
    # except within the filter's reach of the image border (handled identically by both)
    def box(t):
        p = np.pad(t, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="reflect")
        return sum(p[:, :, i:i + t.shape[2], j:j + t.shape[3]] for i in range(3) for j in range(3)) / 9

    x = _image(1, 3, 190, 250, seed=1)
    full = box(x)
    tiled = tile_apply(box, x, tile=64, overlap=16, multiple=8)
    inner = (slice(None), slice(None), slice(2, -2), slice(2, -2))
    # ramps give tile-edge pixels (the ones the filter sees differently) a small weight
    np.testing.assert_allclose(tiled[inner], full[inner], atol=2e-2)
    assert np.abs(tiled[inner] - full[inner]).mean() < 1e-3


def test_small_image_is_one_padded_call():
    seen = []

    def fn(t):
        seen.append(t.shape)
        return t * 2

    x = _image(3, 37, 45)  # CHW, smaller than a tile and not a multiple of 8
    y = tile_apply(fn, x, tile=64, overlap=8, multiple=8)
    assert seen == [(1, 3, 40, 48)]
    assert y.shape == x.shape
    np.testing.assert_allclose(y, 2 * x, atol=1e-6)
    padded = []
    tile_apply(lambda t: padded.append(t) or t, x, tile=64, overlap=8, multiple=8, pad_mode="symmetric")
    np.testing.assert_array_equal(padded[0][0, :, 37:, :45], x[:, 36:33:-1, :])  # mirrored rows


def test_rectangular_tiles():
    plan = plan_tiles(2160, 3840, tile=(1088, 1296), overlap=16, multiple=8)
    assert (plan.tile_h, plan.tile_w, plan.count) == (1088, 1296, 6)
    x = _image(1, 2, 90, 130)
    np.testing.assert_allclose(tile_apply(lambda t: t * 3, x, tile=(32, 48), overlap=8), 3 * x, atol=1e-5)


def test_hwc_layout_and_channel_change():
    x = _image(70, 90, 3)
    y = tile_apply(lambda t: t.mean(axis=1, keepdims=True), x, tile=32, overlap=8, layout="HWC")
    assert y.shape == (70, 90, 1)
    np.testing.assert_allclose(y[..., 0], x.mean(axis=2), atol=1e-5)


def test_batch_of_images():
    x = _image(2, 1, 80, 100)
    y = tile_apply(lambda t: 1 - t, x, tile=32, overlap=4, multiple=4)
    np.testing.assert_allclose(y, 1 - x, atol=1e-6)


def test_progress_reports_each_call():
    marks = []
    tile_apply(lambda t: t, _image(1, 3, 100, 100), tile=48, overlap=8,
               progress=lambda done, total: marks.append((done, total)))
    assert marks[-1][0] == marks[-1][1] == len(marks)


@pytest.mark.parametrize("kwargs, message", [
    (dict(tile=60, multiple=8), "multiple of the pad multiple"),
    (dict(tile=64, overlap=32), "less than half"),
    (dict(tile=64, overlap=8, batch=0), "at least 1"),
    (dict(tile=64, overlap=8, layout="WHC"), "layout"),
    (dict(tile=64, overlap=8, pad_mode="wrap"), "pad_mode"),
])
def test_bad_settings_raise_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        tile_apply(lambda t: t, _image(3, 80, 80), **kwargs)


def test_function_that_changes_the_size_is_refused():
    with pytest.raises(ConfigError, match="keep the batch size, height and width"):
        tile_apply(lambda t: t[:, :, :-1], _image(1, 3, 80, 80), tile=32, overlap=4)


def test_non_array_and_wrong_rank_are_refused():
    with pytest.raises(ConfigError, match="numpy array"):
        tile_apply(lambda t: t, [[1.0]])
    with pytest.raises(ConfigError, match="arrays, got shape"):
        tile_apply(lambda t: t, np.zeros((4, 4), np.float32))


def test_with_a_real_artifact_session(tmp_path):
    """Tiled restoration of an exported model matches the whole-image run away from the seams."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    torch = pytest.importorskip("torch")
    from datprl_edge.export.driver import ExportConfig, export_model
    from datprl_edge.models.registry import create_model
    from datprl_edge.runtime.sessions import open_artifact

    torch.manual_seed(0)
    config = ExportConfig(targets=("onnx",), precision="fp32", model_name="edge-xs", verify_images=1,
                          verify_size=(48, 56))
    (report,) = export_model(create_model("edge-xs"), config, tmp_path)
    session = open_artifact(report.path)
    x = _image(1, 3, 100, 150, seed=3)  # not a multiple of 8: edge tiles are reflected and cropped
    full = session.run(x)
    tiled = tile_apply(session.run, x, tile=64, overlap=20, multiple=session.pad_multiple)
    diff = np.abs(tiled - full)
    # zero padding at the edge, as the model pads: borders match too. Global prompt routing sees a
    # tile instead of the whole image: small, not zero, differences (measured max 0.0065)
    assert diff.mean() < 2e-3 and diff.max() < 0.02
