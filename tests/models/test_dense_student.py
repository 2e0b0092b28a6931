"""The INT8-first student `edge-q8` (EdgeDATPRL with `block="dense"`): dense conv blocks only, the
same prompt method as the gated students, and folds that reproduce it exactly."""

import pytest
import torch
from conftest import routed_student
from torch import nn

from datprl_edge import create_model
from datprl_edge.core.errors import ConfigError
from datprl_edge.fold.folding import FoldConfig, fold_dynamic, fold_static
from datprl_edge.models.complexity import count_macs, count_params
from datprl_edge.models.folded import EdgeDATPRLStatic
from datprl_edge.models.student import EdgeDATPRL, PromptOverride
from datprl_edge.models.student_blocks import DenseBlock, EdgeBlock, GatedFiLM

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TOL = 1e-4


@pytest.fixture(scope="module")
def q8():
    model = routed_student("edge-q8")
    with torch.no_grad():
        for m in model.modules():  # give each FiLM a real effect
            if isinstance(m, GatedFiLM):
                m.prompt_film.weight.normal_(std=0.3)
    return model


def test_blocks_are_dense_convs_only(q8):
    blocks = [m for m in q8.modules() if isinstance(m, (DenseBlock, EdgeBlock))]
    assert len(blocks) == 7 and all(isinstance(b, DenseBlock) for b in blocks)
    for b in blocks:
        convs = [m for m in b.modules() if isinstance(m, nn.Conv2d)]
        assert [c.kernel_size for c in convs] == [(1, 1), (3, 3)] and all(c.groups == 1 for c in convs)
    assert sum(b.film is not None for b in blocks) == 4  # the middle and decoder blocks, as edge-xs
    assert 500_000 < count_params(q8) < 800_000
    macs = count_macs(q8, (1, 3, 256, 256))
    assert 0.6e9 < macs.total < 0.8e9 and sum(macs.stages.values()) == macs.total


def test_residual_branches_start_small_and_gradients_reach_every_parameter():
    torch.manual_seed(1)
    model = create_model("edge-q8").train()
    x = torch.rand(2, 3, 32, 32)
    out, aux = model.forward_with_aux(x)
    assert (out - x).abs().mean() < 0.2
    (out.square().mean() + aux["features"]["latent"].abs().mean()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_unknown_block_is_refused():
    with pytest.raises(ConfigError, match="block must be one of 'gated', 'dense'"):
        EdgeDATPRL(block="plain")


def test_static_fold_equals_the_fixed_prompt_model(q8):
    images = {"natural/derain": torch.rand(2, 3, 32, 32)}
    result = fold_static(q8, FoldConfig(task="natural/derain", latency_iters=0, shape=(1, 3, 32, 32)),
                         images=images)
    model = result.model
    assert isinstance(model, EdgeDATPRLStatic) and not any(isinstance(m, GatedFiLM) for m in model.modules())
    w = result.prompts["natural/derain"]
    override = PromptOverride(domain=torch.tensor(w["domain_weights"]), task=torch.tensor(w["task_weights"]))
    x = torch.rand(2, 3, 37, 45)
    with torch.inference_mode():
        ref, out = q8(x, override=override), model(x)
        assert (ref - q8(x)).abs().max() > 1e-3  # the override matters: the check below is not vacuous
    assert (ref - out).abs().max() <= TOL and result.verification["natural/derain"]["psnr_db"] >= 60


def test_dynamic_fold_keeps_the_routing(q8):
    x = torch.rand(3, 3, 32, 32)
    dyn = fold_dynamic(q8, FoldConfig(latency_iters=0, shape=(1, 3, 32, 32)), images=x).model
    y = torch.rand(2, 3, 29, 35)
    with torch.inference_mode():
        assert (q8(y) - dyn(y)).abs().max() <= TOL


def test_transfer_init_copies_the_matching_tensors(tmp_path):
    """scripts/transfer_init.py: a fresh edge-q8 with every edge-lat tensor of the same name and shape
    (prompt path, stem, samplers and the blocks' 1x1 conv1); the 3x3 conv2, which has no counterpart,
    keeps its initialisation; an existing output is refused in one line."""
    import subprocess
    import sys
    from pathlib import Path

    from datprl_edge.models.loading import load_model

    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "init.safetensors"
    script = root / "scripts" / "transfer_init.py"
    run = [sys.executable, str(script), "bundled:edge-lat", "edge-q8", str(out)]
    done = subprocess.run(run, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "65 of 79 tensors" in done.stdout
    q8, lat = load_model(out).state_dict(), load_model("bundled:edge-lat").state_dict()
    for name in ("domain_prompt_pool.prompt_values", "intro.weight", "ups.0.0.weight",
                 "decoders.0.0.film.prompt_film.weight", "decoders.0.0.conv1.weight"):
        assert torch.equal(q8[name], lat[name]), name
    assert q8["decoders.0.0.conv2.weight"].shape != lat["decoders.0.0.conv2.weight"].shape
    again = subprocess.run(run, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "exists" in again.stderr
