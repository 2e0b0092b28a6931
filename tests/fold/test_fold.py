"""Prompt folding: static and dynamic folds reproduce the unfolded model, refuse mismatches, save and
reload as toolkit checkpoints, and leave their input untouched."""

import copy
import json
from pathlib import Path

import pytest
import torch
from conftest import routed_student, run_cli
from safetensors.torch import load_file

import datprl_edge
from datprl_edge import create_model
from datprl_edge.core.errors import ConfigError, UnknownChoiceError, VerificationError
from datprl_edge.fold.folding import FoldConfig, fold_dynamic, fold_static, save_fold
from datprl_edge.io.checkpoint import read_checkpoint_config
from datprl_edge.models import folded as folded_mod
from datprl_edge.models import folded_teacher
from datprl_edge.models.folded import EdgeDATPRLDynamic, EdgeDATPRLStatic
from datprl_edge.models.prompt_pool import PromptPool
from datprl_edge.models.student import PromptOverride
from datprl_edge.models.student_blocks import GatedFiLM, QueryMapper

GOLDEN = Path(__file__).parents[1] / "fixtures" / "golden"
CASES = sorted(p.stem for p in GOLDEN.glob("*.json"))
TASKS = ("natural/derain", "medical/ct_denoise")
FAST = dict(shape=(1, 3, 32, 32), latency_iters=1, latency_warmup=0)
TOL = 1e-4


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _psnr(a, b):
    from skimage.metrics import peak_signal_noise_ratio

    return peak_signal_noise_ratio(a.double().numpy(), b.double().numpy(), data_range=1.0)


@pytest.fixture(scope="module")
def xs():
    return routed_student("edge-xs")


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(1)
    return {t: torch.rand(3, 3, 32, 32, generator=g) for t in TASKS}


@pytest.fixture(scope="module")
def static(xs, images):
    state = copy.deepcopy(xs.state_dict())
    result = fold_static(xs, FoldConfig(task=list(TASKS), **FAST), images=images)
    assert all(torch.equal(v, xs.state_dict()[k]) for k, v in state.items())  # input untouched
    return result


def test_static_fold_is_a_plain_conv_net_equal_to_the_fixed_prompt_model(xs, static, images):
    assert static.tasks == TASKS
    for task in TASKS:
        model = static.models[task]
        assert isinstance(model, EdgeDATPRLStatic)
        assert not any(isinstance(m, (PromptPool, QueryMapper, GatedFiLM)) for m in model.modules())
        w = static.prompts[task]
        assert w["images"] == 3 and abs(sum(w["task_weights"]) - 1) < 1e-4
        override = PromptOverride(domain=torch.tensor(w["domain_weights"]),
                                  task=torch.tensor(w["task_weights"]))
        x = torch.rand(2, 3, 37, 45)  # other images, odd size
        with torch.inference_mode():
            ref, out = xs(x, override=override), model(x)
        assert (ref - out).abs().max() <= TOL and _psnr(ref, out) >= 60
        check = static.verification[task]
        assert check["psnr_db"] >= 60 and check["images"] == 3 and "psnr_vs_auto_db" in check
    c = static.complexity
    assert c["after"][TASKS[0]]["macs"] < c["before"]["macs"]
    assert c["before"]["latency_ms"] > 0 and c["after"][TASKS[1]]["latency_ms"] > 0


def test_static_fold_with_explicit_override(xs):
    override = PromptOverride(domain=2, task=5)
    x = torch.rand(2, 3, 32, 32)
    result = fold_static(xs, FoldConfig(task="natural/derain", override=override, latency_iters=0,
                                        shape=(1, 3, 32, 32)), images=x)
    record = result.prompts["natural/derain"]
    assert record["domain_top"] == 2 and record["task_top"] == 5 and record["images"] == 0
    with torch.inference_mode():
        assert (result.model(x) - xs(x, override=override)).abs().max() <= TOL


def test_static_fold_saves_one_checkpoint_per_task_and_reloads(static, tmp_path):
    written = save_fold(static, tmp_path / "folded", provenance={"source": "test"})
    assert [p.name for p in written] == ["natural__derain.safetensors", "medical__ct_denoise.safetensors"]
    cfg = read_checkpoint_config(written[1])
    assert cfg.stage == "folded" and cfg.arch == "EdgeDATPRLStatic"
    assert cfg.extra["tasks"] == ["medical/ct_denoise"] and cfg.options["tasks"] == ["medical/ct_denoise"]
    assert cfg.extra["macs_after"] < cfg.extra["macs_before"] and cfg.extra["verification"]["psnr_db"] >= 60
    loaded = datprl_edge.load_model(written[1])
    x = torch.rand(1, 3, 24, 40)
    with torch.inference_mode():
        assert torch.equal(loaded(x), static.models["medical/ct_denoise"](x))
    with pytest.raises(ConfigError, match="folder"):
        save_fold(static, tmp_path / "one.safetensors")


def test_dynamic_fold_student_keeps_routing_and_overrides(xs, tmp_path):
    x = torch.rand(4, 3, 32, 32)
    result = fold_dynamic(xs, FoldConfig(**FAST), images=x)
    dyn = result.model
    assert isinstance(dyn, EdgeDATPRLDynamic) and result.verification["all"]["psnr_db"] >= 60
    y = torch.rand(2, 3, 29, 35)
    override = PromptOverride(domain=1, task=[0.5] + [0.5 / 14] * 14, blend=0.5)
    with torch.inference_mode():
        (a, aux_a), (b, aux_b) = xs.forward_with_aux(y), dyn.forward_with_aux(y)
        assert (a - b).abs().max() <= TOL and _psnr(a, b) >= 60
        assert torch.equal(aux_a["routing"]["degradation"].indices, aux_b["routing"]["degradation"].indices)
        assert (xs(y, override=override) - dyn(y, override=override)).abs().max() <= TOL
    out = save_fold(result, tmp_path / "dyn.safetensors")[0]
    loaded = datprl_edge.load_model(out)
    with torch.inference_mode():
        assert torch.equal(loaded(y), dyn(y))
    # a dynamic fold still folds statically
    static = fold_static(dyn, FoldConfig(task="natural/derain", latency_iters=0, shape=(1, 3, 32, 32)),
                         images=x)
    assert static.verification["natural/derain"]["psnr_db"] >= 60


def _golden(name):
    meta = json.loads((GOLDEN / f"{name}.json").read_text())
    model = datprl_edge.load_model(GOLDEN / meta["checkpoint"], network=GOLDEN / f"{name}.json")
    return meta, model, load_file(str(GOLDEN / meta["io"]))


@pytest.mark.parametrize("name", CASES)
def test_dynamic_fold_teacher_matches_the_released_output(name):
    meta, model, io = _golden(name)
    result = fold_dynamic(model, FoldConfig(latency_iters=0, shape=(1, 3, 32, 32)), images=io["input"])
    with torch.inference_mode():
        out = result.model(io["input"])
    assert (out - io["output"]).abs().max() <= TOL and _psnr(io["output"], out) >= 60
    keys = set(result.model.state_dict())
    assert not any("cross_attn_q" in k or "cross_attn_k" in k or "prompt_cross_attention" in k for k in keys)
    assert not any(k.endswith(("norm1.weight", "norm1.body.weight", "norm2.weight")) for k in keys)
    c = result.complexity
    saved = c["before"]["macs"] - c["after"][""]["macs"]
    if meta["network_g"]["fusion_method"] == "cross_attention":
        assert saved > 0  # the per-pixel query/out projections are gone
    else:
        assert saved >= 0


def test_dynamic_teacher_checkpoint_reloads(tmp_path):
    model = create_model("restormer-ref")
    x = torch.rand(2, 3, 32, 32)
    result = fold_dynamic(model, FoldConfig(latency_iters=0, shape=(1, 3, 32, 32)), images=x)
    assert result.complexity["after"][""]["macs"] < result.complexity["before"]["macs"]
    path = save_fold(result, tmp_path / "teacher-dyn.safetensors")[0]
    loaded = datprl_edge.load_model(path)
    with torch.inference_mode():
        assert torch.equal(loaded(x), result.model(x))
        assert (loaded(x) - model(x)).abs().max() <= TOL


def test_refuses_below_the_psnr_threshold(xs, images):
    with pytest.raises(VerificationError, match=r"PSNR \d+\.\d+ dB .* below 1000 dB"):
        fold_static(xs, FoldConfig(task="natural/derain", min_psnr_db=1000, latency_iters=0,
                                   shape=(1, 3, 32, 32)), images=images)


def test_refuses_a_perturbed_static_fold(xs, images, monkeypatch):
    real = folded_mod.fold_film_into_conv

    def off_by_a_bit(conv, mul, add):
        real(conv, mul * 2, add)

    monkeypatch.setattr(folded_mod, "fold_film_into_conv", off_by_a_bit)
    with pytest.raises(VerificationError, match="static fold of natural/derain refused"):
        fold_static(xs, FoldConfig(task="natural/derain", latency_iters=0, shape=(1, 3, 32, 32)),
                    images=images)


def test_refuses_a_perturbed_dynamic_fold(monkeypatch):
    _, model, io = _golden("restormer_tiny")
    real = folded_teacher._gates

    def feature_gate_off_by_ten_percent(blk):
        fw, pw = real(blk)
        return fw * 1.1, pw

    monkeypatch.setattr(folded_teacher, "_gates", feature_gate_off_by_ten_percent)
    with pytest.raises(VerificationError, match="dynamic fold refused: PSNR"):
        fold_dynamic(model, FoldConfig(latency_iters=0, shape=(1, 3, 32, 32)), images=io["input"])


def test_clear_errors(xs):
    with pytest.raises(UnknownChoiceError, match="did you mean 'natural/derain'"):
        fold_static(xs, FoldConfig(task="natural/deraim", latency_iters=0))
    _, teacher, _ = _golden("nafnet_tiny")
    with pytest.raises(ConfigError, match="--mode dynamic"):
        fold_static(teacher, FoldConfig(task="natural/derain"))
    with pytest.raises(ConfigError, match="needs at least one task"):
        fold_static(xs, FoldConfig())
    with pytest.raises(ConfigError, match="blend 1"):
        FoldConfig(task="natural/derain", override=PromptOverride(domain=1))
    folded = fold_static(xs, FoldConfig(task="natural/derain", latency_iters=0, shape=(1, 3, 32, 32)),
                         images=torch.rand(1, 3, 32, 32)).model
    with pytest.raises(ConfigError, match="already statically folded"):
        fold_dynamic(folded, FoldConfig())


def test_images_from_a_built_calibration_set(xs, tmp_path):
    from datprl_edge.data.calib import build_calibration_set, parse_calib_recipe

    recipe = parse_calib_recipe({"name": "tiny", "crop": 32, "tasks": [{"id": "natural/derain", "count": 2},
                                                                       {"id": "remote/dehaze", "count": 1}]})
    build_calibration_set(recipe, tmp_path / "calib", progress=False)
    config = FoldConfig(task="natural/derain", calibration=str(tmp_path / "calib"), latency_iters=0,
                        shape=(1, 3, 32, 32))
    assert fold_static(xs, config).verification["natural/derain"]["images"] == 2
    dyn = fold_dynamic(xs, FoldConfig(calibration=str(tmp_path / "calib"), latency_iters=0,
                                      shape=(1, 3, 32, 32)))
    assert dyn.verification["all"]["images"] == 2  # one per task by default
    with pytest.raises(UnknownChoiceError, match="task in calibration set"):
        fold_static(xs, FoldConfig(task="medical/ct_denoise", calibration=str(tmp_path / "calib")))


def _student_file(tmp_path, xs):
    from datprl_edge.io.checkpoint import CheckpointConfig, save_checkpoint
    from datprl_edge.models.registry import model_config

    arch, options = model_config(xs)
    return save_checkpoint(tmp_path / "student.safetensors", xs.state_dict(), CheckpointConfig(arch, options))


def test_cli_static_fold_from_a_recipe_and_refusal(xs, tmp_path, capsys):
    src = _student_file(tmp_path, xs)
    out = tmp_path / "derain.safetensors"
    args = (src, "--mode", "static", "--task", "natural/derain", "--images", "2", "--crop", "32",
            "--shape", "1x3x32x32", "--latency-iters", "1")
    code, stdout, err = run_cli(capsys, "fold", *args, "--min-psnr", "1000", "-o", out)
    assert code == 2 and "dB" in err and "refused" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    code, stdout, err = run_cli(capsys, "fold", *args, "-o", out)
    assert code == 0, err
    assert "GMAC before" in stdout and "ms after" in stdout and f"wrote {out}" in stdout
    assert read_checkpoint_config(out).extra["prompt"]["images"] == 2
    code, _, err = run_cli(capsys, "fold", *args, "-o", out)
    assert code == 2 and "exists" in err
    code, _, err = run_cli(capsys, "fold", src, "--mode", "static", "--task", "natural/deraim", "-o",
                           tmp_path / "x.safetensors")
    assert code == 2 and "did you mean 'natural/derain'" in err


def test_cli_dynamic_fold_of_a_released_teacher(tmp_path, capsys):
    out = tmp_path / "nafnet-dyn.safetensors"
    code, stdout, err = run_cli(capsys, "fold", GOLDEN / "nafnet_tiny.pth", "--network",
                                GOLDEN / "nafnet_tiny.json", "--mode", "dynamic", "--task", "natural/derain",
                                "--images", "1", "--crop", "32", "--shape", "1x3x32x32",
                                "--latency-iters", "0", "-o", out)
    assert code == 0, err
    assert "DualPromptNAFNetv3Dynamic" in stdout and out.exists()
    assert read_checkpoint_config(out).extra["mode"] == "dynamic"
