"""benchmarks/frontier.py's targets are computed from the figures in its JSON: the latency-first
member's INT8 p50, its speed-up over the 6T model in the same run, its INT8/FP32 ratio per round, and
its held-out gain."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
frontier = pytest.importorskip("frontier")


def _doc(int8_ms, fp32_ms, gain):
    fp32, int8 = "edge-lat_openvino_fp32.xml", "edge-lat_openvino_int8.xml"
    arts = {"openvino_fp32": f"/a/{fp32}", "openvino_int8": f"/a/{int8}"}
    rounds = [{fp32: {"p50": f, "mean": f}, int8: {"p50": i, "mean": i}} for f, i in zip(fp32_ms, int8_ms)]
    median = {"edge-lat_openvino_fp32.xml": {"p50": sorted(fp32_ms)[1], "mean": sorted(fp32_ms)[1]},
              "edge-lat_openvino_int8.xml": {"p50": sorted(int8_ms)[1], "mean": sorted(int8_ms)[1]}}
    return {"latency": {"rounds": rounds, "median_ms": median, "full_6t_ms": {"p50": 4000.0, "mean": 4000.0}},
            "members": {"edge-lat": {"artifacts": arts, "quality": {
                "openvino_fp32": {"val": {"mean_gain_db": gain + 0.1,
                                          "tasks": {"a": {"psnr": 30.0}, "b": {"psnr": 20.0}}}},
                "openvino_int8": {"val": {"mean_gain_db": gain,
                                          "tasks": {"a": {"psnr": 29.95}, "b": {"psnr": 19.7}}}}}}}}


def test_targets_from_the_figures():
    rows = frontier.frontier_targets(_doc([6.0, 7.0, 9.0], [12.0, 10.0, 9.0], 1.2))
    lat, speed, ratio, gain, drop = rows
    assert lat["measured"] == 7.0 and lat["met"] and lat["unit"] == "ms"
    assert speed["measured"] == pytest.approx(4000 / 7.0, abs=1e-3) and speed["met"]
    assert ratio["measured"] == pytest.approx(10 / 7.0, abs=1e-3) and not ratio["met"]  # median of 2, 1.43, 1
    assert "short" in ratio["missed_by"]
    assert gain["measured"] == 1.2 and not gain["met"] and gain["target"] == 1.5
    assert drop["measured"] == pytest.approx(0.3) and not drop["met"] and drop["unit"] == "dB"
    drops = frontier.int8_drops(_doc([6.0, 7.0, 9.0], [12.0, 10.0, 9.0], 1.2)["members"]["edge-lat"])
    assert drops["val"]["worst_task"] == "b" and drops["val"]["tasks"]["a"] == pytest.approx(0.05)


def test_no_latency_first_member_no_targets():
    doc = _doc([6.0, 7.0, 9.0], [12.0, 10.0, 9.0], 1.2)
    doc["members"] = {"edge-xs": doc["members"].pop("edge-lat")}
    assert frontier.frontier_targets(doc) == []


def test_the_int8_ratio_comes_from_paired_runs_when_the_json_has_them():
    doc = _doc([6.0, 7.0, 9.0], [12.0, 10.0, 9.0], 1.2)
    doc["latency"]["paired"] = {"edge-lat": {"rounds": 900, "median": 1.9, "ci95": [1.85, 1.95]}}
    ratio = frontier.frontier_targets(doc)[2]
    assert ratio["measured"] == 1.9 and ratio["met"] and "paired runs" in ratio["name"]


def test_the_int8_first_member_is_held_to_its_own_int8_ratio():
    """edge-q8 gets the 500x, INT8/FP32, gain and drop rows (no 8 ms row: that is the latency-first
    member's), and a missed timing row quotes its own profiles, not another member's."""
    doc = _doc([6.0, 7.0, 9.0], [12.0, 10.0, 9.0], 1.2)
    lat = doc["latency"]
    arts = {k: v.replace("edge-lat", "edge-q8") for k, v in doc["members"]["edge-lat"]["artifacts"].items()}
    q8 = {"artifacts": arts, "quality": doc["members"]["edge-lat"]["quality"], "sources": {}}
    doc["members"]["edge-lat"]["sources"] = {}
    doc["members"]["edge-q8"] = q8
    for name in ("edge-q8_openvino_fp32.xml", "edge-q8_openvino_int8.xml"):
        lat["median_ms"][name] = lat["median_ms"][name.replace("edge-q8", "edge-lat")]
    lat["paired"] = {"edge-q8": {"median": 1.6, "ci95": [1.5, 1.7]},
                     "edge-lat": {"median": 1.1, "ci95": [1.0, 1.2]}}
    doc["targets"] = rows = frontier.frontier_targets(doc)
    mine = [r for r in rows if r["name"].startswith("edge-q8 ")]
    assert len(rows) == 5 + 4 and len(mine) == 4 and not any(r["unit"] == "ms" for r in mine)
    assert mine[1]["measured"] == 1.6 and not mine[1]["met"]
    doc["profiles"] = [{"artifact": f"{m}_openvino_int8.xml", "by_layer_type": [], "sum_of_layers_ms": 1.0,
                        "int8_kernel_time_share": 0.5, "shape": [256, 256]} for m in ("edge-lat", "edge-q8")]
    frontier.add_limits(doc)
    assert "edge-q8_openvino_int8.xml" in mine[1]["limits"] and "edge-lat_" not in mine[1]["limits"]
