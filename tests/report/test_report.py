"""The trade-off report from a small synthetic run folder (JSON in the export/bench/eval formats):
files, tables, embedded figures, no network resource, and the operating-point choice with its reason."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from datprl_edge.core.errors import ConfigError, InputNotFoundError
from datprl_edge.report import build_report, recommend
from datprl_edge.report.collect import collect

TASKS = ["natural/derain", "medical/ct_denoise"]
# name -> (target, precision, p50 ms or None, per-task PSNR or None, size bytes)
ARTIFACTS = {
    "s_onnx_fp32.onnx": ("onnx", "fp32", 20.0, [30.0, 35.0], 1_200_000),
    "s_onnx_int8.onnx": ("onnx", "int8", 10.0, [29.7, 34.9], 600_000),
    "s_openvino_int8.xml": ("openvino", "int8", 8.0, [29.1, 34.8], 650_000),
    "s_coreml_fp16.mlpackage": ("coreml", "fp16", None, None, 700_000),
}
REFERENCE = [30.0, 35.0]  # the FP32 student in torch


def _write(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")


def _scores(psnrs, ref=None):
    per = {}
    for t, p in zip(TASKS, psnrs):
        per[t] = {"psnr": p, "ssim": 0.9, "images": 2, "seconds": 0.1}
        if ref is not None:
            per[t]["psnr_drop_db"] = round(ref[TASKS.index(t)] - p, 4)
            per[t]["ssim_drop"] = 0.0
    mean = {"psnr": float(np.mean(psnrs)), "ssim": 0.9}
    if ref is not None:
        mean["psnr_drop_db"] = float(np.mean([m["psnr_drop_db"] for m in per.values()]))
    return {"per_task": per, "mean": mean}


@pytest.fixture()
def run_dir(tmp_path):
    run = tmp_path / "run"
    results = []
    for name, (target, precision, ms, _, size) in ARTIFACTS.items():
        checked = target != "coreml"
        _write(run / "export" / f"{Path(name).stem}.json", {
            "artifact": name, "files": [name], "target": target, "precision": precision, "size_bytes": size,
            "numerics_checked": checked, "metadata": {"model_name": "s"}, "structure": {}, "notes": {},
            "verification": {"precision": precision, "reference": "FP32 torch model",
                             "numerics_checked": checked, "passed": True, "threshold_db": 40.0,
                             "psnr_db": 55.5 if checked else None,
                             "max_abs_diff": 0.001 if checked else None, "images": [], "note": ""}})
        if ms is None:
            results.append({"status": "skipped", "artifact": name, "target": target, "compute_units": "ALL",
                            "shape": [256, 256],
                            "message": "Core ML prediction needs macOS; run this benchmark on a Mac"})
        else:
            results.append({"status": "ok", "artifact": name, "target": target, "precision": precision,
                            "shape": [256, 256], "device": "CPU", "tiled": None, "load_s": 0.1,
                            "first_inference_ms": ms * 2, "iterations": 10, "peak_rss_mb": 100.0,
                            "latency_ms": {"min": ms - 1, "mean": ms, "p50": ms, "p90": ms + 1, "p99": ms + 2,
                                           "max": ms + 3, "std": 0.5},
                            "throughput": {"images_per_s": 1000 / ms, "megapixels_per_s": 0.0655 * 1000 / ms},
                            "load_average_before": [1.0, 1.0, 1.0]})
    _write(run / "bench" / "bench.json", {
        "schema": "datprl-edge-bench/1", "created": "2026-01-01T00:00:00+0000",
        "load_average_after": [1.0, 1, 1],
        "environment": {"cpu_model": "Test CPU 9000", "available_cpus": 2, "os": "Linux", "versions": {},
                        "isa": "AVX2 without VNNI (test)"},
        "settings": {"threads": 2, "warmup": 2, "iters": 10, "inference_precision": "f32"},
        "results": results})
    models = [{"model": name, "kind": "artifact", "folded_tasks": None, **_scores(psnr, REFERENCE)}
              for name, (*_, psnr, _) in ARTIFACTS.items() if psnr is not None]
    models.append({"model": "teacher.safetensors (T)", "kind": "torch", "folded_tasks": None,
                   **_scores([31.0, 36.0], REFERENCE)})
    _write(run / "eval" / "eval.json", {
        "schema": "datprl-edge-eval/1", "created": "2026-01-01T00:00:00+0000", "tasks": TASKS,
        "data": {"source": "val", "count_per_task": 2, "size": 64, "seed": 0, "what": "fixed pairs"},
        "metrics": {"psnr": "skimage psnr"}, "input": _scores([25.0, 28.0]),
        "reference": {"model": "student.safetensors (S)", "kind": "torch", **_scores(REFERENCE)},
        "models": models, "roles": {"teacher": "teacher.safetensors (T)",
                                    "student_fp32": "student.safetensors (S)"}})
    _visuals(run / "eval" / "visuals")
    return run


def _visuals(folder: Path) -> None:
    from PIL import Image

    panels = []
    for i, label in enumerate(["ground truth", "degraded", "teacher", "student FP32", "student INT8 (onnx)"]):
        (folder / "natural_derain").mkdir(parents=True, exist_ok=True)
        img = (np.random.default_rng(i).random((24, 24, 3)) * 255).astype(np.uint8)
        Image.fromarray(img).save(folder / "natural_derain" / f"{i}.png")
        entry = {"label": label, "model": "", "file": f"natural_derain/{i}.png"}
        if i:
            entry.update(psnr=20.0 + i, ssim=0.5)
        panels.append(entry)
    _write(folder / "visuals.json", {"schema": "datprl-edge-visuals/1", "size": 24, "seed": 0, "what": "test",
                                     "tasks": [{"task": "natural/derain", "source": "x", "panels": panels}]})


def test_report_files_tables_and_figures(run_dir, tmp_path):
    out = tmp_path / "out" / "report.html"
    result = build_report(run_dir, out)
    assert result.html == out and out.exists()
    assert out.with_suffix(".md").exists() and out.with_suffix(".json").exists()
    html = out.read_text()
    for section in ('id="artifacts"', 'id="psnr"', 'id="latency"', 'id="pareto"', 'id="bars"', 'id="visuals"',
                    'id="candidates"', 'id="sources"'):
        assert section in html
    # Pareto plot, per-task bars and one visual row, all embedded (+ the committed frontier plot, if any)
    frontier = 'alt="student family frontier plot"' in html
    assert len(re.findall(r'src="data:image/png;base64,', html)) == 3 + frontier
    assert "Test CPU 9000" in html and "AVX2 without VNNI (test)" in html  # where latency was measured
    md = out.with_suffix(".md").read_text()
    assert "| s_onnx_int8.onnx | onnx | int8 |" in md and "Recommended operating point" in md


def test_no_network_resources(run_dir, tmp_path):
    html = build_report(run_dir, tmp_path / "r.html").html.read_text()
    assert "http://" not in html and "https://" not in html and "//" not in re.sub(r"data:[^\"]+", "", html)
    srcs = re.findall(r'(?:src|href)="([^"]*)"', html)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "<script" not in html and "<link" not in html


def test_numbers_are_copied_not_invented(run_dir, tmp_path):
    data = json.loads(build_report(run_dir, tmp_path / "r.html").json.read_text())
    arts = {a["artifact"]: a for a in data["artifacts"]}
    assert arts["s_openvino_int8.xml"]["latency_ms"]["p50"] == 8.0
    assert arts["s_onnx_int8.onnx"]["worst_drop_db"] == pytest.approx(0.3)
    assert arts["s_onnx_int8.onnx"]["psnr_per_task"] == {"natural/derain": 29.7, "medical/ct_denoise": 34.9}
    coreml = arts["s_coreml_fp16.mlpackage"]
    assert coreml["latency_ms"] is None and "macOS" in coreml["latency_not_measured"]
    assert coreml["psnr_per_task"] is None
    assert data["pareto_front"] == ["s_openvino_int8.xml", "s_onnx_int8.onnx", "s_onnx_fp32.onnx"]
    row = next(r for r in data["tables"]["artifacts"]["rows"] if r[0] == "s_coreml_fp16.mlpackage")
    assert row[5] == "-" and row[9] == "-" and "macOS" in row[-1]


def test_recommendation_fastest_within_max_drop(run_dir):
    run = collect(run_dir)
    rec = recommend(run, budget_ms=None, max_drop=0.5)
    assert rec.artifact == "s_onnx_int8.onnx"
    assert "fastest" in rec.reason and "0.5 dB" in rec.reason
    assert "s_openvino_int8.xml" in rec.reason and "over --max-drop" in rec.reason  # why the faster one lost
    why = {c.artifact: c.excluded for c in rec.candidates}
    assert "macOS" in why["s_coreml_fp16.mlpackage"] and why["s_onnx_fp32.onnx"] == ""
    assert recommend(run, max_drop=1.0).artifact == "s_openvino_int8.xml"
    assert recommend(run, max_drop=None).artifact == "s_openvino_int8.xml"


def test_recommendation_with_budget(run_dir):
    run = collect(run_dir)
    assert recommend(run, budget_ms=15, max_drop=0.5).artifact == "s_onnx_int8.onnx"
    assert recommend(run, budget_ms=25, max_drop=0.1).artifact == "s_onnx_fp32.onnx"
    none = recommend(run, budget_ms=9, max_drop=0.5)
    assert none.artifact is None
    assert "No artifact meets" in none.reason and "s_openvino_int8.xml" in none.reason  # the closest option
    with pytest.raises(ConfigError, match="--budget-ms"):
        recommend(run, budget_ms=0)


def test_report_without_a_run_or_with_bad_output(tmp_path, run_dir):
    with pytest.raises(InputNotFoundError):
        build_report(tmp_path / "nope", tmp_path / "r.html")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputNotFoundError, match="no export, bench or eval"):
        build_report(tmp_path / "empty", tmp_path / "r.html")
    with pytest.raises(ConfigError, match=r"\.html"):
        build_report(run_dir, tmp_path / "r.pdf")
    with pytest.raises(ConfigError, match="no results at 512x512"):
        build_report(run_dir, tmp_path / "r.html", shape=(512, 512))


def test_cli(run_dir, tmp_path, capsys):
    from datprl_edge.cli.main import main

    out = tmp_path / "cli" / "report.html"
    assert main(["report", str(run_dir), "-o", str(out), "--max-drop", "1"]) == 0
    text = capsys.readouterr().out
    assert "recommended: s_openvino_int8.xml" in text and str(out) in text
    assert main(["report", str(run_dir), "-o", str(out)]) == 2  # exists, no --overwrite
    assert main(["report", str(run_dir), "-o", str(out), "--overwrite", "--budget-ms", "9"]) == 0
    assert "recommended: none" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "missing"), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "run folder not found" in err[0]


def test_compute_visuals_with_a_real_model(tmp_path):
    import torch

    from datprl_edge.evaluate.driver import image_metrics
    from datprl_edge.io.checkpoint import CheckpointConfig, save_checkpoint
    from datprl_edge.models.registry import create_model
    from datprl_edge.report.visuals import compute_visuals, render_task

    torch.manual_seed(0)
    m = create_model("edge-xs")
    ckpt = tmp_path / "s.safetensors"
    cfg = m.datprl_config
    save_checkpoint(ckpt, m.state_dict(), CheckpointConfig(cfg["arch"], cfg["options"]))
    out = tmp_path / "vis"
    report = compute_visuals(out, ["natural/denoise"], [("student FP32", str(ckpt))], size=32)
    entry = report["tasks"][0]
    assert [p["label"] for p in entry["panels"]] == ["ground truth", "degraded", "student FP32"]
    assert all((out / p["file"]).is_file() for p in entry["panels"])
    from datprl_edge.data.pairs import fixed_pairs

    pair = fixed_pairs("natural/denoise", 1, 32, 0)[0]
    assert entry["panels"][1]["psnr"] == pytest.approx(image_metrics(pair.gt, pair.lq)[0], abs=1e-3)
    assert render_task(entry, out)[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "visuals.json").read_text())["tasks"][0]["task"] == "natural/denoise"


def test_busy_machine_is_said_plainly(run_dir, tmp_path):
    bench = run_dir / "bench" / "bench.json"
    data = json.loads(bench.read_text())
    data["load_average_after"] = [7.5, 7.0, 6.0]
    bench.write_text(json.dumps(data))
    html = build_report(run_dir, tmp_path / "r.html").html.read_text()
    assert "machine was busy" in html and "7.5 on 2 CPUs" in html


HEADLINE = {
    "suite": "speedup_256", "created": "2026-01-02T03:04:05+0000", "cpus": 2,
    "load_average_start": [6.5, 5.0, 4.0], "load_average_end": [7.0, 5.5, 4.2],
    "targets": [{"name": "student INT8 vs 6T FP32 speed-up at 256x256", "target": 500, "measured": 173.3,
                 "unit": "x", "met": False, "missed_by": "2.89x short (173 vs 500 x)",
                 "higher_is_better": True,
                 "limits": "the MAC ratio is 211x; Convolution 37%, PowerStatic 15%, Multiply 14%."},
                {"name": "toy latency", "target": 60, "measured": 41.0, "unit": "ms", "met": True,
                 "higher_is_better": False}],
    "figures": {}, "profiles": [], "bench": [],
}


def test_edge_targets_from_the_run_folder(run_dir, tmp_path):
    _write(run_dir / "headline" / "speedup_256.json", HEADLINE)
    result = build_report(run_dir, tmp_path / "r.html")
    html, md = result.html.read_text(), result.markdown.read_text()
    data = json.loads(result.json.read_text())
    for text in (html, md):
        assert "Edge targets" in text and "missed by 2.89x short (173 vs 500 x)" in text
        assert "the MAC ratio is 211x" in text and "at least 500 x" in text and "at most 60.0 ms" in text
        assert "speedup_256.json (created 2026-01-02T03:04:05+0000, 2 CPUs" in text
        assert "machine was shared" in text  # load 7.0 on 2 CPUs
    assert '<h2 id="headline">' in html
    head = data["headline"]
    assert head["source"] == "run folder" and head["files"][0].endswith("headline/speedup_256.json")
    assert [r[3] for r in head["rows"]] == ["missed by 2.89x short (173 vs 500 x)", "met"]
    assert head["targets"][0]["measured"] == 173.3 and head["targets"][0]["suite"] == "speedup_256"
    assert head["measured_on"][0]["load_average_end"] == [7.0, 5.5, 4.2]


def test_edge_targets_absent_is_one_line(run_dir, tmp_path, monkeypatch):
    from datprl_edge.report import headline

    monkeypatch.setattr(headline, "committed_results_dir", lambda: tmp_path / "no-results")
    result = build_report(run_dir, tmp_path / "r.html")
    md = result.markdown.read_text()
    section = md[md.index("## Edge targets"):].strip().splitlines()
    assert len(section) == 3 and section[2].startswith("No headline benchmark results")  # one line
    assert "No headline benchmark results" in result.html.read_text()
    assert json.loads(result.json.read_text())["headline"]["rows"] == []


def test_edge_targets_from_the_committed_results(run_dir, tmp_path, monkeypatch):
    from datprl_edge.report import headline

    committed = tmp_path / "benchmarks" / "results"
    _write(committed / "ct_512.json", dict(HEADLINE, suite="ct_512", targets=HEADLINE["targets"][1:]))
    _write(committed / "unrelated.json", {"x": 1})  # only the four suites are read
    monkeypatch.setattr(headline, "committed_results_dir", lambda: committed)
    data = json.loads(build_report(run_dir, tmp_path / "r.html").json.read_text())["headline"]
    assert data["source"] == "toolkit" and [Path(f).name for f in data["files"]] == ["ct_512.json"]
    assert data["rows"] == [["ct_512: toy latency", "41.0 ms", "at most 60.0 ms", "met", "-"]]
    assert "committed with the toolkit" in data["caption"]


def _device_bench(path: Path, cpu: str, p50: dict) -> Path:
    results = [{"status": "ok", "artifact": name, "target": ARTIFACTS[name][0], "shape": [256, 256],
                "device": "CPU", "tiled": None, "load_s": 0.2, "first_inference_ms": ms * 2, "iterations": 10,
                "peak_rss_mb": 80.0, "throughput": {"images_per_s": 1000 / ms},
                "latency_ms": {"min": ms, "mean": ms, "p50": ms, "p90": ms, "p99": ms, "max": ms, "std": 0.0}}
               for name, ms in p50.items()]
    _write(path, {"schema": "datprl-edge-bench/1", "created": "2026-01-02T00:00:00+0000",
                  "environment": {"cpu_model": cpu, "os": "Linux-6.1-aarch64", "isa": "Arm NEON",
                                  "versions": {"onnxruntime": "1.32.0"}},
                  "settings": {"threads": 4}, "results": results})
    return path


def test_device_bench_files_are_rows_of_their_own_host(run_dir, tmp_path):
    drone = _device_bench(tmp_path / "drone.json", "Cortex-A78AE",
                          {"s_onnx_int8.onnx": 30.0, "s_onnx_fp32.onnx": 25.0})
    run = collect(run_dir, [drone])
    assert run.hosts[0].startswith("Test CPU 9000") and run.hosts[1].startswith("Cortex-A78AE | Arm NEON")
    assert run.host == run.hosts[0]  # the run folder's own bench comes first when this machine is not in it
    assert recommend(run, max_drop=0.5).artifact == "s_onnx_int8.onnx"
    on_drone = collect(run_dir, [drone], host="cortex")
    rec = recommend(on_drone, max_drop=0.5)
    # on the drone only the two ONNX artifacts were measured, and FP32 is the faster one there
    assert rec.artifact == "s_onnx_fp32.onnx" and "Cortex-A78AE" in rec.reason
    html = build_report(run_dir, tmp_path / "r.html", bench_files=[drone], host="cortex").html.read_text()
    assert html.count("Cortex-A78AE") >= 3 and "choose with --host" in html
    with pytest.raises(ConfigError, match="did you mean|choose from"):
        collect(run_dir, [drone], host="raspberry")
    with pytest.raises(ConfigError, match="not a bench report"):
        collect(run_dir, [run_dir / "eval" / "eval.json"])


def _frontier_member(fp32_ms, int8_ms, gains):
    q = {k: {s: {"mean_gain_db": g, "tasks_above_input": 9, "tasks": {f"t{i}": {} for i in range(9)}}
             for s in ("val", "shifted")} for k, g in zip(("openvino_fp32", "openvino_int8"), gains)}
    return {"params": 299000, "gmacs": 0.263, "speedup_vs_6t_mean": {"openvino_int8": 612.0},
            "openvino_ms": {"openvino_fp32": {"p50": fp32_ms, "mean": fp32_ms},
                            "openvino_int8": {"p50": int8_ms, "mean": int8_ms}}, "quality": q}


FRONTIER = {
    "suite": "frontier", "created": "2026-01-02T03:04:05+0000", "cpus": 2, "threads": 2,
    "load_average_start": [0.5, 0.5, 0.5], "load_average_end": [0.6, 0.5, 0.5], "shape": [256, 256],
    "latency": {"rounds": [{}, {}], "full_6t_ms": {"p50": 3900.0, "mean": 3910.0}},
    "members": {"edge-xs": _frontier_member(41.0, 19.5, (2.80, 2.71)),
                "edge-lat": _frontier_member(8.9, 6.4, (1.61, 1.52))},
    "targets": [{"name": "edge-lat INT8 OpenVINO p50 latency at 256x256", "target": 8.0, "measured": 6.4,
                 "unit": "ms", "met": True, "higher_is_better": False}],
}


def test_student_family_frontier_section(run_dir, tmp_path):
    _write(run_dir / "headline" / "frontier.json", FRONTIER)
    result = build_report(run_dir, tmp_path / "r.html")
    html, md = result.html.read_text(), result.markdown.read_text()
    for text in (html, md):
        assert "Student family: latency vs quality" in text and "frontier: edge-lat INT8 OpenVINO p50" in text
    assert "| edge-lat | 0.30 M | 0.263 | 8.9 | 6.4 | 612x | +1.61 | +1.52 | +1.52 | 9/9 |" in md
    assert 'alt="student family frontier plot"' in html  # the plot, from the same file


def test_paired_speed_ups_join_the_artifacts_table(run_dir, tmp_path):
    """A `bench --paired` report beside bench.json: its speed-ups fill the table's paired column, while
    the latency columns still come from the per-artifact processes of bench.json."""
    rows = [{"status": "ok", "artifact": name, "target": "onnx", "shape": [256, 256], "device": "CPU",
             "tiled": None, "load_s": 0.1, "first_inference_ms": 1.0, "iterations": 50, "peak_rss_mb": 150.0,
             "paired": True, "throughput": {"images_per_s": 1.0},
             "latency_ms": {"min": 1.0, "mean": 99.0, "p50": 99.0, "p90": 99.0, "p99": 99.0, "max": 99.0,
                            "std": 0.0}} for name in ("s_onnx_fp32.onnx", "s_onnx_int8.onnx")]
    comparison = {"shape": [256, 256], "device": "CPU", "baseline": "s_onnx_fp32.onnx", "rounds": 50,
                  "speedup_vs_baseline": {"s_onnx_int8.onnx": {"median": 1.23, "ci95": [1.2, 1.26],
                                                               "quartiles": [1.1, 1.3], "p50_ratio": 1.22}}}
    _write(run_dir / "bench" / "paired.json", {
        "schema": "datprl-edge-bench/1", "created": "2026-01-01T00:00:00+0000",
        "environment": {"cpu_model": "Test CPU 9000", "available_cpus": 2, "os": "Linux", "versions": {},
                        "isa": "AVX2 without VNNI (test)"},
        "settings": {"threads": 2, "paired": True}, "results": rows, "paired": [comparison]})
    run = collect(run_dir)
    int8 = next(a for a in run.artifacts if a.name == "s_onnx_int8.onnx")
    assert int8.latency([256, 256])["latency_ms"]["p50"] == 10.0  # not the paired row's 99
    md = build_report(run_dir, tmp_path / "r.html").html.with_suffix(".md").read_text()
    int8_row = next(line for line in md.splitlines() if line.startswith("| s_onnx_int8.onnx |"))
    fp32_row = next(line for line in md.splitlines() if line.startswith("| s_onnx_fp32.onnx |"))
    assert "| 1.23x (1.20-1.26) vs s_onnx_fp32.onnx |" in int8_row and "| baseline |" in fp32_row
    ov_row = next(line for line in md.splitlines() if line.startswith("| s_openvino_int8.xml |"))
    assert "| 8.00 |" in ov_row and "| - |" in ov_row  # measured, but not paired with anything
    assert "paired run (RSS of the shared process)" in md
