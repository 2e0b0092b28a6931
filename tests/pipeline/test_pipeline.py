"""The pipeline's stage runner: skipping, resuming after a kill, config/input changes re-running a
stage and its dependents, --force; recipe parsing; and the first real stages end to end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from datprl_edge.core.errors import ConfigError, InputNotFoundError, UnknownChoiceError
from datprl_edge.pipeline.stages import Stage, expand_force, is_done, read_stage, run_stages

REPO = Path(__file__).resolve().parents[2]


def fake_stages(tmp_path, calls, config_b=None, fail_in=None):
    """a -> b -> c; each writes a file derived from its input, and counts its runs in `calls`."""
    src = tmp_path / "input.txt"
    if not src.exists():
        src.write_text("hello")
    run = tmp_path / "run"

    def make(name, upstream):
        def fn(ctx):
            calls.append(name)
            text = (src.read_text() if upstream is None else (run / upstream / "out.txt").read_text())
            (ctx.work / "progress").write_text("started")
            if fail_in == name:
                raise RuntimeError(f"{name} failed")
            (ctx.out / "out.txt").write_text(f"{text}+{name}")
            return {"summary": f"{name} ok"}
        return fn

    return run, [
        Stage("a", make("a", None), {"x": 1}, {"src": src}),
        Stage("b", make("b", "a"), config_b or {"y": 2}, lambda: {"a": run / "a" / "out.txt"}, deps=("a",)),
        Stage("c", make("c", "b"), {}, lambda: {"b": run / "b" / "out.txt"}, deps=("b",)),
    ]


def test_second_run_skips_every_stage(tmp_path):
    calls = []
    run, stages = fake_stages(tmp_path, calls)
    first = run_stages(run, stages, log=lambda m: None)
    assert [o.result for o in first] == ["ran"] * 3
    assert (run / "c" / "out.txt").read_text() == "hello+a+b+c"
    rec = read_stage(run, "b")
    assert rec["status"] == "done" and rec["outputs"] == {"out.txt": len("hello+a+b")}
    assert rec["info"]["summary"] == "b ok"
    again = run_stages(run, fake_stages(tmp_path, calls)[1], log=lambda m: None)
    assert [o.result for o in again] == ["skipped"] * 3
    assert calls == ["a", "b", "c"]
    assert [o.key for o in again] == [o.key for o in first]
    assert not list((run / ".work").iterdir())  # work folders go once a stage succeeds


def test_config_change_reruns_the_stage_and_its_dependents(tmp_path):
    calls = []
    run, stages = fake_stages(tmp_path, calls)
    run_stages(run, stages, log=lambda m: None)
    calls.clear()
    out = run_stages(run, fake_stages(tmp_path, calls, config_b={"y": 3})[1], log=lambda m: None)
    assert [o.result for o in out] == ["skipped", "ran", "ran"]
    assert calls == ["b", "c"]


def test_input_change_and_missing_output_rerun(tmp_path):
    calls = []
    run, stages = fake_stages(tmp_path, calls)
    run_stages(run, stages, log=lambda m: None)
    (tmp_path / "input.txt").write_text("changed")
    calls.clear()
    run_stages(run, fake_stages(tmp_path, calls)[1], log=lambda m: None)
    assert calls == ["a", "b", "c"]
    assert (run / "c" / "out.txt").read_text() == "changed+a+b+c"
    (run / "c" / "out.txt").unlink()  # an output that went missing makes its stage incomplete
    calls.clear()
    run_stages(run, fake_stages(tmp_path, calls)[1], log=lambda m: None)
    assert calls == ["c"]


def test_force_reruns_the_stage_and_everything_depending_on_it(tmp_path):
    calls = []
    run, stages = fake_stages(tmp_path, calls)
    run_stages(run, stages, log=lambda m: None)
    calls.clear()
    run_stages(run, fake_stages(tmp_path, calls)[1], force=["b"], log=lambda m: None)
    assert calls == ["b", "c"]
    assert expand_force(stages, ["all"]) == {"a", "b", "c"}
    with pytest.raises(UnknownChoiceError, match="did you mean 'b'"):
        expand_force(stages, ["bb"])


def test_failed_stage_leaves_no_partial_output_and_resumes(tmp_path):
    calls = []
    run, stages = fake_stages(tmp_path, calls, fail_in="b")
    with pytest.raises(RuntimeError, match="b failed"):
        run_stages(run, stages, log=lambda m: None)
    assert is_done(run, "a", read_stage(run, "a")["key"])
    assert not (run / "b").exists()
    assert not list(run.glob(".b.*"))
    work = list((run / ".work").glob("b-*"))
    assert len(work) == 1 and (work[0] / "progress").exists()  # kept for a resumable stage
    calls.clear()
    out = run_stages(run, fake_stages(tmp_path, calls)[1], log=lambda m: None)
    assert [o.result for o in out] == ["skipped", "ran", "ran"]


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys, time
    from pathlib import Path
    from datprl_edge.pipeline.stages import Stage, run_stages
    run = Path(sys.argv[1])

    def a(ctx):
        (ctx.out / "a.txt").write_text("a")

    def b(ctx):
        (ctx.out / "half.txt").write_text("partial")
        (run.parent / "b-started").write_text("1")
        os.kill(os.getpid(), signal.SIGKILL)  # killed in the middle of stage b

    run_stages(run, [Stage("a", a, {}, {}), Stage("b", b, {}, {}, deps=("a",))], log=lambda m: None)
""")


def test_resume_after_a_killed_run(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(run)], cwd=REPO, capture_output=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == -signal.SIGKILL
    assert (tmp_path / "b-started").exists()
    assert read_stage(run, "a")["status"] == "done"
    assert not (run / "b").exists() and list(run.glob(".b.*.partial"))  # only the hidden temporary folder

    calls = []

    def a(ctx):
        calls.append("a")

    def b(ctx):
        calls.append("b")
        (ctx.out / "b.txt").write_text("b")

    out = run_stages(run, [Stage("a", a, {}, {}), Stage("b", b, {}, {}, deps=("a",))], log=lambda m: None)
    assert [o.result for o in out] == ["skipped", "ran"] and calls == ["b"]
    assert (run / "b" / "b.txt").read_text() == "b" and not (run / "b" / "half.txt").exists()
    assert not list(run.glob(".b.*.partial"))


def test_stage_order_and_until(tmp_path):
    calls = []
    run, stages = fake_stages(tmp_path, calls)
    with pytest.raises(ConfigError, match="must come before"):
        run_stages(run, [stages[1], stages[0]], log=lambda m: None)
    out = run_stages(run, stages, until="a", log=lambda m: None)
    assert [o.name for o in out] == ["a"] and calls == ["a"]


# -- recipes --------------------------------------------------------------------------------------

def test_shipped_recipes_parse():
    from datprl_edge.pipeline.recipe import load_recipe

    quick, full = load_recipe("quick"), load_recipe(REPO / "recipes" / "full.toml")
    assert quick.name == "quick" and full.name == "full"
    assert quick.threads == 1 and full.threads == 0
    assert quick["distill"]["mode"] == "bundled" and full["distill"]["mode"] == "train"
    assert set(quick["export"]["targets"]) == {"onnx", "openvino", "coreml"}
    assert set(quick["export"]["precisions"]) == {"fp32", "fp16", "int8"}


def test_recipe_errors(tmp_path):
    from datprl_edge.pipeline.recipe import load_recipe, parse_recipe

    with pytest.raises(ConfigError, match="unknown key"):
        parse_recipe({"qat": {"stepz": 3}})
    with pytest.raises(ConfigError, match="unknown section"):
        parse_recipe({"qatt": {}})
    with pytest.raises(UnknownChoiceError, match="did you mean 'quick'"):
        load_recipe("quik")
    with pytest.raises(InputNotFoundError):
        load_recipe(tmp_path / "missing.toml")
    assert parse_recipe({"qat": {"steps": 3}})["qat"]["steps"] == 3


def test_cli_bad_recipe_is_one_line(tmp_path, capsys):
    from datprl_edge.cli.main import main

    assert main(["pipeline", "--recipe", "quik", "-o", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "did you mean 'quick'" in err[0]


@pytest.mark.parametrize("text,message", [
    ("[qat]\nsteps = -5\n", "\\[qat\\] QAT steps must be an integer >= 0"),
    ('[export]\nverify_size = "0x0"\n', "\\[export\\] shape must be between 1 and 16384"),
    ('[eval]\ntasks = ["natural/sr_x5"]\n', "did you mean 'natural/sr_x4'"),
    ('[bench]\nshapes = ["256x"]\n', "\\[bench\\]"),
    ('[distill]\nmode = "train"\nsteps = 0\n', "\\[distill\\]"),
    ("[fold]\ncrop = 4\n", "\\[fold\\] fold crop must be an integer >= 8"),  # what the fold stage takes
])
def test_whole_recipe_is_checked_before_the_first_stage(tmp_path, capsys, text, message):
    from datprl_edge.cli.main import main

    recipe = tmp_path / "bad.toml"
    recipe.write_text(text)
    assert main(["pipeline", "--recipe", str(recipe), "-o", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    import re

    assert re.search(message, err[0]), err[0]
    assert not (tmp_path / "run").exists()


# -- real stages ----------------------------------------------------------------------------------

def test_real_first_stages_skip_and_rerun_on_change(tmp_path):
    import torch

    from datprl_edge.io.checkpoint import CheckpointConfig, save_checkpoint
    from datprl_edge.models.registry import create_model
    from datprl_edge.pipeline.driver import run_pipeline
    from datprl_edge.pipeline.recipe import parse_recipe

    torch.manual_seed(0)
    paths = {}
    for name, stage in (("edge-xs", "student"), ("restormer-ref", "teacher")):
        m = create_model(name)
        paths[name] = tmp_path / f"{name}.safetensors"
        save_checkpoint(paths[name], m.state_dict(), CheckpointConfig(m.datprl_config["arch"],
                                                                       m.datprl_config["options"], stage))
    calib = tmp_path / "calib.toml"

    def write_calib(count):
        calib.write_text(f'name = "tiny"\ncrop = 32\n[[tasks]]\nid = "natural/denoise"\ncount = {count}\n'
                         'severities = [0.5]\n')

    write_calib(1)
    recipe = {"name": "t", "threads": 1, "teacher": {"checkpoint": str(paths["restormer-ref"])},
              "distill": {"mode": "bundled", "student": str(paths["edge-xs"])},
              "calibration": {"recipe": str(calib)}}
    run = tmp_path / "run"
    threads, omp = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    first = run_pipeline(parse_recipe(recipe), run, until="calib", log=lambda m: None)
    assert torch.get_num_threads() == threads and os.environ.get("OMP_NUM_THREADS") == omp  # restored
    assert [(o.name, o.result) for o in first.outcomes] == [("teacher", "ran"), ("distill", "ran"),
                                                            ("calib", "ran")]
    assert (run / "teacher" / "teacher.safetensors").read_bytes() == paths["restormer-ref"].read_bytes()
    status = json.loads((run / "pipeline.json").read_text())
    assert [o["stage"] for o in status["outcomes"]] == ["teacher", "distill", "calib"]
    again = run_pipeline(parse_recipe(recipe), run, until="calib", log=lambda m: None)
    assert [o.result for o in again.outcomes] == ["skipped"] * 3
    write_calib(2)  # the calibration recipe file changed: only its stage runs again
    third = run_pipeline(parse_recipe(recipe), run, until="calib", log=lambda m: None)
    assert [o.result for o in third.outcomes] == ["skipped", "skipped", "ran"]
    assert read_stage(run, "calib")["info"]["totals"]["pairs"] == 2


def test_paired_bench_order_puts_each_runtimes_fp32_first():
    from datprl_edge.pipeline.driver import paired_order

    names = ["s_coreml_fp16.mlpackage", "s_onnx_int8.onnx", "s_onnx_fp32.onnx", "s_openvino_int8.xml",
             "s_openvino_fp32.xml", "s_openvino_fp16.xml"]
    assert [p.name for p in paired_order([Path(n) for n in names])] == [
        "s_onnx_fp32.onnx", "s_onnx_int8.onnx", "s_openvino_fp32.xml", "s_openvino_fp16.xml",
        "s_openvino_int8.xml"]  # Core ML alone in its runtime: nothing to pair it with
    assert paired_order([Path("s_onnx_int8.onnx"), Path("s_openvino_int8.xml")]) == []
