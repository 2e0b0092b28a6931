"""Extrapolating a quality figure against training compute."""

import math

import pytest

from datprl_edge.train.compute_fit import curve_points, extrapolate, stage_pixels


def test_stage_pixels_accumulate():
    assert stage_pixels([(10, 8, 64), (5, 8, 96)]) == [10 * 8 * 4096, 10 * 8 * 4096 + 5 * 8 * 9216]
    with pytest.raises(ValueError, match="positive"):
        stage_pixels([(0, 8, 64)])


def test_power_fit_recovers_exact_law_and_solves_for_target():
    compute = [1e6, 4e6, 1.6e7]
    gap = [3.0 * c ** -0.25 for c in compute]
    f = extrapolate(compute, gap, target=gap[-1] / 2, shape="power")
    assert f["params"]["c"] == pytest.approx(0.25) and f["params"]["A"] == pytest.approx(3.0)
    assert f["factor"] == pytest.approx(2 ** 4) and f["residual_db"] < 1e-9
    assert f["met_at_last_point"] is False
    xs, ys = curve_points(f, 1e6, 1e8, n=3)
    assert ys[0] == pytest.approx(gap[0]) and xs[-1] == pytest.approx(1e8)


def test_log_fit_and_trends_that_never_get_there():
    compute = [1e6, 1e7, 1e8]
    gain = [0.1, 0.3, 0.5]
    f = extrapolate(compute, gain, target=0.8, shape="log")
    assert f["compute_at_target"] == pytest.approx(10 ** 9.5) and f["met_at_last_point"] is False
    assert extrapolate(compute, gain[::-1], 0.8, "log")["compute_at_target"] is None
    flat = extrapolate(compute, [0.1, 0.12, 0.11], 0.8, "log")  # a trend that would need 10^30x more
    assert flat["compute_at_target"] is None and "no trend" in flat["note"]
    assert extrapolate(compute, gain, 0.4, "log")["met_at_last_point"] is True
    done = extrapolate(compute, [1.0, 0.2, -0.1], 0.5, "power")
    assert done["met_at_last_point"] is True and done["params"] is None
    with pytest.raises(ValueError, match="shape"):
        extrapolate(compute, gain, 0.8, "linear")
    with pytest.raises(ValueError, match="two"):
        extrapolate([1e6], [0.1], 0.8, "log")
    assert math.isfinite(extrapolate(compute, gain, 0.8, "log")["residual_db"])
