"""`datprl-edge bench` runs with numpy + the runtime only: torch (and every other third-party package)
is blocked in every process it starts."""

import json
import subprocess
import sys

import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")

from torchblock import ALL_BUT_NUMPY_AND_RUNTIMES, error_line, no_torch_env, run_cli  # noqa: E402

from datprl_edge.bench.driver import BenchConfig, plan_jobs, summary_lines  # noqa: E402
from datprl_edge.core.errors import ConfigError, UnknownChoiceError  # noqa: E402
from datprl_edge.core.host import environment  # noqa: E402
from datprl_edge.core.shapes import parse_hw  # noqa: E402


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    import torch

    from datprl_edge.export.driver import ExportConfig, export_model
    from datprl_edge.models.registry import create_model

    out = tmp_path_factory.mktemp("bench-artifacts")
    torch.manual_seed(0)
    model = create_model("edge-xs")
    config = ExportConfig(targets=("onnx", "openvino"), precision="fp32", model_name="edge-xs",
                          verify_images=1, verify_size=(40, 48))
    reports = export_model(model, config, out)
    static = ExportConfig(targets=("onnx",), precision="fp32", model_name="edge-xs-static",
                          shapes=((32, 32),), verify_images=1, tile_size=32, tile_overlap=8)
    reports += export_model(model, static, out)
    return {(r.target, r.metadata["shapes"] == "dynamic"): r.path for r in reports}


@pytest.fixture(scope="module")
def no_torch(tmp_path_factory):
    return no_torch_env(tmp_path_factory.mktemp("no-torch"), blocked=ALL_BUT_NUMPY_AND_RUNTIMES)


def test_the_blocker_really_blocks_torch(no_torch):
    for module in ("torch", "skimage", "PIL"):
        proc = subprocess.run([sys.executable, "-c", f"import {module}"], env=no_torch, capture_output=True,
                              text=True)
        assert proc.returncode != 0 and f"{module} is blocked" in proc.stderr
    proc = subprocess.run([sys.executable, "-c", "import numpy, onnxruntime, openvino"], env=no_torch)
    assert proc.returncode == 0


def test_bench_without_torch_writes_the_report(artifacts, no_torch, tmp_path):
    onnx_path, ov_path = artifacts[("onnx", True)], artifacts[("openvino", True)]
    out = tmp_path / "bench.json"
    proc = run_cli(no_torch, "bench", onnx_path, ov_path, "--shape", "48x64", "--shape", "2100x16",
                "--threads", "1", "--warmup", "1", "--iters", "4", "--json", out)
    assert proc.returncode == 0, proc.stderr
    assert "edge-xs_onnx_fp32.onnx" in proc.stdout and f"wrote {out}" in proc.stdout
    report = json.loads(out.read_text())
    assert report["schema"] == "datprl-edge-bench/1"
    assert report["command"].startswith("datprl-edge bench ") and "--iters 4" in report["command"]
    env = report["environment"]
    assert env["cpu_model"] and env["logical_cpus"] >= 1 and env["memory_total_mb"] > 0
    assert env["versions"]["onnxruntime"] and env["versions"]["openvino"] and env["versions"]["numpy"]
    results = report["results"]
    assert [(r["target"], tuple(r["shape"])) for r in results] == [
        ("onnx", (48, 64)), ("onnx", (2100, 16)), ("openvino", (48, 64)), ("openvino", (2100, 16))]
    for r in results:
        assert r["status"] == "ok" and r["torch_imported"] is False
        assert r["iterations"] == 4 and len(r["latencies_ms"]) == 4
        lat = r["latency_ms"]
        assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
        assert lat["min"] <= lat["mean"] <= lat["max"]
        assert r["load_s"] > 0 and r["first_inference_ms"] > 0
        assert r["throughput"]["images_per_s"] == pytest.approx(1e3 / lat["mean"], rel=1e-3)
        assert r["peak_rss_mb"] >= r["rss_mb"]["after_load"] >= r["rss_mb"]["before_load"] > 0
        assert r["precision"] == "fp32" and r["model_name"] == "edge-xs"
    assert results[0]["runtime"]["intra_op_num_threads"] == 1
    assert results[0]["tiled"] is None
    assert results[1]["tiled"] == {"tile": 256, "overlap": 16, "tiles": 9}  # auto: a side above 2048
    ov = results[2]["runtime"]
    assert ov["inference_precision_hint"] == "f32" and ov["inference_num_threads"] == "1"
    assert ov["device"] == "CPU" and ov["version"]


def test_paired_bench_interleaves_artifacts_in_one_process(artifacts, no_torch, tmp_path):
    base, other = artifacts[("onnx", True)], artifacts[("onnx", False)]
    out = tmp_path / "paired.json"
    proc = run_cli(no_torch, "bench", base, other, "--paired", "--shape", "32x32", "--iters", "7",
                   "--warmup", "1", "--threads", "1", "--json", out)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert report["command"].endswith("--paired") and report["settings"]["paired"] is True
    first, second = report["results"]
    assert (first["artifact"], second["artifact"]) == (base.name, other.name)
    for r in (first, second):
        assert r["status"] == "ok" and r["paired"] and r["iterations"] == 7 and r["torch_imported"] is False
    (comparison,) = report["paired"]
    assert comparison["baseline"] == base.name and comparison["rounds"] == 7
    assert comparison["shape"] == [32, 32] and first["runtime"]["thread_pool"].startswith("global")
    s = comparison["speedup_vs_baseline"][other.name]
    assert s["ci95"][0] <= s["median"] <= s["ci95"][1] and s["quartiles"][0] <= s["quartiles"][1]
    assert s["p50_ratio"] == pytest.approx(first["latency_ms"]["p50"] / second["latency_ms"]["p50"], rel=1e-3)
    assert f"paired 32x32: {other.name} vs {base.name}: " in proc.stdout


def test_paired_bench_groups_by_runtime_and_needs_a_pair(artifacts, no_torch, tmp_path):
    onnx, static, ov = artifacts[("onnx", True)], artifacts[("onnx", False)], artifacts[("openvino", True)]
    jobs, _ = plan_jobs([onnx, ov, static], BenchConfig(shapes=("32x32",), iters=1, paired=True))
    assert [j.get("artifacts") for j in jobs] == [[str(onnx), str(static)], None]  # OpenVINO alone: unpaired
    out = tmp_path / "paired.json"
    proc = run_cli(no_torch, "bench", onnx, ov, "--paired", "--iters", "1", "--json", out)
    assert error_line(proc) == ("datprl-edge: error: --paired compares two or more artifacts of one runtime; "
                                "name the baseline first")
    assert not out.exists()


def test_a_damaged_artifact_fails_its_paired_run_in_one_line(artifacts, no_torch, tmp_path):
    bad = tmp_path / "bad_onnx_fp32.onnx"
    bad.write_bytes(b"not a model")
    out = tmp_path / "paired.json"
    proc = run_cli(no_torch, "bench", artifacts[("onnx", True)], bad, "--paired", "--iters", "1",
                   "--json", out)
    line = error_line(proc)
    assert line.startswith("datprl-edge: error: the paired run of 2 artifacts failed: ") and bad.name in line
    assert [r["status"] for r in json.loads(out.read_text())["results"]] == ["error", "error"]
    assert bad.read_bytes() == b"not a model"


def test_paired_ratios_cancel_a_drift_that_hits_every_artifact():
    from datprl_edge.bench.worker import paired_ratios

    drift = [10.0, 20.0, 10.0, 40.0, 10.0, 20.0, 10.0]  # the machine's speed changes between rounds
    result = paired_ratios(["fp32", "int8"], [drift, [t / 2 for t in drift]])
    s = result["speedup_vs_baseline"]["int8"]
    assert result["baseline"] == "fp32" and result["rounds"] == 7
    assert s["median"] == 2.0 and s["ci95"] == [2.0, 2.0] and s["quartiles"] == [2.0, 2.0]
    noisy = paired_ratios(["a", "b"], [list(range(1, 101)), [50.0] * 100])["speedup_vs_baseline"]["b"]
    assert noisy["ci95"][0] < noisy["median"] < noisy["ci95"][1]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/stat")
def test_bench_reports_a_competing_process(artifacts, no_torch, tmp_path):
    import os

    out = tmp_path / "busy.json"
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        proc = run_cli(no_torch, "bench", artifacts[("onnx", True)], "--shape", "32x32", "--seconds", "1.5",
                       "--threads", "1", "--json", out)
    finally:
        hog.kill()
        hog.wait()
    assert proc.returncode == 0, proc.stderr
    (r,) = json.loads(out.read_text())["results"]
    share = r["cpu_share_while_timed"]
    assert share["other_processes"] > 0.5 / os.cpu_count() and 0 <= share["steal"] < 1
    assert f"note: while {r['artifact']} was timed, other processes used" in proc.stdout


def test_cpu_shares_between_two_clock_readings():
    from datprl_edge.core.host import cpu_share_between

    before = {"busy": 100.0, "idle": 50.0, "steal": 1.0, "own": 10.0}
    after = {"busy": 106.0, "idle": 52.0, "steal": 3.0, "own": 13.0}  # 10 s of CPU time: 6 busy, 3 ours
    assert cpu_share_between(before, after) == {"other_processes": 0.3, "steal": 0.2}
    assert cpu_share_between(None, after) is None and cpu_share_between(before, before) is None


def test_static_artifact_is_tiled_at_its_size(artifacts, no_torch, tmp_path):
    out = tmp_path / "static.json"
    proc = run_cli(no_torch, "bench", artifacts[("onnx", False)], "--shape", "40x72", "--iters", "1",
                "--warmup", "0", "--threads", "1", "--json", out)
    assert proc.returncode == 0, proc.stderr
    (r,) = json.loads(out.read_text())["results"]
    assert r["tiled"] == {"tile": 32, "overlap": 8, "tiles": 2 * 3}
    proc = run_cli(no_torch, "bench", artifacts[("onnx", False)], "--shape", "40x72", "--iters", "1",
                "--tile", "off")
    assert "takes 32x32 only; 40x72 needs tiling" in error_line(proc)


def test_one_failing_artifact_is_recorded_and_the_others_are_measured(artifacts, tmp_path):
    """A device install with onnxruntime but no openvino: the ONNX result is kept in the JSON, the
    OpenVINO one is recorded as an error, and the command exits 2 at the end."""
    env = no_torch_env(tmp_path / "env", blocked=ALL_BUT_NUMPY_AND_RUNTIMES + ("openvino",))
    out = tmp_path / "bench.json"
    proc = run_cli(env, "bench", artifacts[("onnx", True)], artifacts[("openvino", True)], "--shape", "16x16",
                   "--iters", "2", "--warmup", "0", "--json", out)
    line = error_line(proc)
    assert "openvino" in line and "(1 of 2 measurements failed; the others are in the report)" in line
    results = json.loads(out.read_text())["results"]
    assert [r["status"] for r in results] == ["ok", "error"]
    assert results[1]["target"] == "openvino" and results[1]["error_type"] == "MissingBackendError"
    assert "FAILED" in proc.stdout


def test_unknown_openvino_device_is_one_line(artifacts, no_torch):
    proc = run_cli(no_torch, "bench", artifacts[("openvino", True)], "--shape", "16x16", "--iters", "1",
                "--device", "NPU")
    line = error_line(proc)
    assert line.startswith("datprl-edge: error: OpenVINO does not list device NPU here; it lists")


def test_missing_artifact_and_existing_output(artifacts, no_torch, tmp_path):
    proc = run_cli(no_torch, "bench", tmp_path / "nope.onnx", "--iters", "1")
    assert "artifact not found" in error_line(proc)
    out = tmp_path / "taken.json"
    out.write_text("{}")
    proc = run_cli(no_torch, "bench", artifacts[("onnx", True)], "--iters", "1", "--json", out)
    assert "exists; pass --overwrite" in error_line(proc) and out.read_text() == "{}"


def test_torch_commands_on_a_device_install_say_what_to_install(no_torch):
    proc = run_cli(no_torch, "inspect", "edge-xs")
    assert error_line(proc).endswith("install it, or the toolkit with its extra: "
                                     "pip install 'datprl-edge[torch]'")


@pytest.mark.skipif(sys.platform == "darwin", reason="Core ML predicts on macOS")
def test_coreml_off_macos_says_so(no_torch, tmp_path):
    package = tmp_path / "m_coreml_fp16.mlpackage"
    package.mkdir()
    proc = run_cli(no_torch, "bench", package, "--iters", "1")
    assert error_line(proc) == ("datprl-edge: error: Core ML prediction needs macOS; "
                                 "run this benchmark on a Mac")


def test_coreml_is_skipped_beside_other_artifacts(artifacts, tmp_path):
    package = tmp_path / "m_coreml_fp16.mlpackage"
    package.mkdir()
    config = BenchConfig(shapes=("16x16",), iters=1)
    jobs, skipped = plan_jobs([artifacts[("onnx", True)], package], config)
    if sys.platform == "darwin":
        assert len(jobs) == 4 and not skipped
    else:
        assert len(jobs) == 1 and [s["compute_units"] for s in skipped] == ["ALL", "CPU_ONLY", "CPU_AND_NE"]


def test_config_validation():
    assert parse_hw("3840x2160") == (3840, 2160) and parse_hw("512") == (512, 512)
    with pytest.raises(ConfigError, match="HxW"):
        parse_hw("big")
    with pytest.raises(ConfigError, match="--iters"):
        BenchConfig(iters=0)
    with pytest.raises(ConfigError, match="--tile"):
        BenchConfig(tile="huge")
    with pytest.raises(UnknownChoiceError, match="did you mean 'CPU_ONLY'"):
        BenchConfig(compute_units=("CPU_ONLI",))
    config = BenchConfig(shapes=("64x32",), iters=5)
    assert config.shapes == ((64, 32),) and config.seconds is None and config.threads >= 1


def test_isa_summary_names_the_int8_path():
    from datprl_edge.core.host import isa_summary

    assert isa_summary(["avx2", "avx512f", "avx512_vnni"]).startswith("AVX-512 VNNI")
    assert isa_summary(["avx2", "avx_vnni"]).startswith("AVX VNNI")
    assert "saturating int16" in isa_summary(["avx2", "fma"])
    assert isa_summary(["avx2", "avx512f"]).endswith("AVX-512F")
    assert isa_summary(["neon"]) == "Arm NEON" and isa_summary([]).startswith("no AVX2")


def test_environment_and_summary():
    env = environment()
    assert env["python"].startswith("CPython") or env["python"]
    assert isinstance(env["cpu_flags"], list) and env["isa"]  # which int8 kernels this CPU runs
    assert env["logical_cpus"] >= 1 and "numpy" in env["versions"]
    report = {"results": [{"status": "ok", "artifact": "a.onnx", "shape": [8, 8], "device": "CPU",
                           "load_s": 0.1, "first_inference_ms": 2.0, "latency_ms": {"p50": 1.0, "p90": 1.5},
                           "throughput": {"images_per_s": 900.0}, "peak_rss_mb": 80.0, "tiled": None}]}
    lines = summary_lines(report)
    assert len(lines) == 2 and "a.onnx" in lines[1] and "900.00" in lines[1]


def _workers_under(folder) -> list[int]:
    """Live bench workers whose spec lies in `folder`."""
    from pathlib import Path

    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            state = next(x for x in (proc / "status").read_text().splitlines() if x.startswith("State:"))
        except (OSError, StopIteration):
            continue
        if b"datprl_edge.bench.worker" in cmd and str(folder).encode() in b" ".join(cmd) and "Z" not in state:
            pids.append(int(proc.name))
    return pids


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("how,sig", [("cli", "SIGTERM"), ("cli", "SIGKILL"), ("library", "SIGTERM")])
def test_a_killed_bench_leaves_no_worker_and_no_folder(artifacts, tmp_path, how, sig):
    import os
    import signal
    import time

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    out = tmp_path / "bench.json"
    env = {**os.environ, "TMPDIR": str(scratch)}
    artifact = artifacts[("onnx", True)]
    cmd = [sys.executable, "-m", "datprl_edge.cli.main", "bench", str(artifact), "--shape", "32x32",
           "--seconds", "120", "--threads", "1", "--json", str(out)]
    if how == "library":  # a script of the user's own, no CLI around run_bench
        cmd = [sys.executable, "-c", "from datprl_edge.bench.driver import BenchConfig, run_bench; "
               f"run_bench([{str(artifact)!r}], BenchConfig(shapes=((32, 32),), seconds=120.0, threads=1))"]
    parent = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not _workers_under(scratch):
        assert parent.poll() is None and time.monotonic() < deadline, parent.communicate()
        time.sleep(0.2)
    parent.send_signal(getattr(signal, sig))
    _, stderr = parent.communicate(timeout=60)
    deadline = time.monotonic() + 30
    while _workers_under(scratch) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _workers_under(scratch)
    assert not out.exists()
    if sig == "SIGTERM":  # SIGKILL cannot clean up: the next run's temporary folder is another one
        assert list(scratch.glob("datprl-bench-*")) == []  # (a runtime leaves its own dot file)
    if how == "cli" and sig == "SIGTERM":
        assert parent.returncode == 143 and "Traceback" not in stderr
        assert stderr.strip().splitlines()[-1] == "datprl-edge: terminated"


def test_inspect_an_artifact_without_torch(artifacts, no_torch, tmp_path):
    ov_path, onnx_path = artifacts[("openvino", True)], artifacts[("onnx", True)]
    proc = run_cli(no_torch, "inspect", ov_path, "--size", "48x64", "--iters", "2", "--threads", "1",
                   "--json")
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert r["target"] == "openvino" and r["structure"]["metadata"]["model_name"] == "edge-xs"
    assert r["structure"]["ops"]["Convolution"] > 0 and "input" in r["structure"]["inputs"]
    prof = r["profile"]
    assert prof["shape"] == [48, 64] and prof["iterations"] == 2 and prof["sum_of_layers_ms"] > 0
    kinds = {e["name"] for e in prof["by_layer_type"]}
    assert "Convolution" in kinds and prof["int8_kernel_time_share"] == 0.0  # an FP32 artifact
    assert sum(e["share"] for e in prof["by_layer_type"]) <= 1.0 + 1e-3
    assert all(e["kernel"] and e["type"] for e in prof["slowest_layers"])

    proc = run_cli(no_torch, "inspect", onnx_path, "--size", "32x32", "--iters", "1", "--threads", "1")
    assert proc.returncode == 0, proc.stderr
    assert "ONNX (onnxruntime), model_name edge-xs, precision fp32" in proc.stdout
    assert "op type" in proc.stdout and "slowest nodes" in proc.stdout
    assert "summed over layers at 32x32" in proc.stdout
    assert "op histogram and weight bytes need the onnx package" in proc.stdout  # a device: no onnx

    static = artifacts[("onnx", False)]  # 32x32 only
    proc = run_cli(no_torch, "inspect", static)
    assert "takes 32x32 only; profile it with --size 32x32" in error_line(proc)
    proc = run_cli(no_torch, "inspect", static, "--size", "32x32", "--iters", "1", "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["profile"]["shape"] == [32, 32]

    proc = run_cli(no_torch, "inspect", ov_path, "--no-latency")
    assert proc.returncode == 0 and "times       not measured (--no-latency)" in proc.stdout
    assert "artifact not found: " in error_line(run_cli(no_torch, "inspect", tmp_path / "gone.xml"))
    assert "not an exported artifact" in error_line(
        run_cli(no_torch, "inspect", ov_path, "--network", "net.yml"))
