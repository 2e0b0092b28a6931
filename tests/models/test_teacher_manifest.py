"""The full-size teachers have exactly the released state-dict keys and shapes (built on the meta
device: no memory, no init cost), and the named teacher models are what they claim."""

import json
from pathlib import Path

import pytest
import torch

from datprl_edge.core.errors import StateDictMismatchError
from datprl_edge.models.loading import load_state_strict
from datprl_edge.models.registry import create_model, list_models

MANIFESTS = Path(__file__).parents[1] / "fixtures" / "manifests"
CASES = [("manifest_restormer_6t.json", "restormer-6t", 53_133_552),
         ("manifest_nafnet_default.json", "nafnet-default", 71_040_101)]


def _manifest(fname):
    man = json.loads((MANIFESTS / fname).read_text())
    net = dict(man["network_g"])
    arch = net.pop("type")
    return man, arch, net


@pytest.mark.parametrize("fname, name, params", CASES)
def test_manifest_keys_shapes_and_params(fname, name, params):
    man, arch, net = _manifest(fname)
    assert man["params"] == params
    with torch.device("meta"):
        model = create_model(arch, **net)
        state = {k: torch.empty(shape) for k, shape in man["state_dict"].items()}
    own = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert own == man["state_dict"]
    assert list(own) == list(man["state_dict"])  # same registration order as the released code
    assert sum(p.numel() for p in model.parameters()) == params
    load_state_strict(model, state)


@pytest.mark.parametrize("fname, name, params", CASES)
def test_named_model_matches_manifest(fname, name, params):
    man, arch, net = _manifest(fname)
    spec = {m.name: m for m in list_models()}[name]
    assert spec.role == "teacher" and spec.arch == arch
    with torch.device("meta"):
        model = create_model(name)
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == man["state_dict"]
    assert model.datprl_config["arch"] == arch


def test_manifest_state_with_a_missing_key_is_refused():
    man, arch, net = _manifest("manifest_nafnet_default.json")
    with torch.device("meta"):
        model = create_model(arch, **net)
        state = {k: torch.empty(shape) for k, shape in man["state_dict"].items()}
    state.pop("middle_blks.3.cross_attn_q.weight")
    state["ending.weight"] = torch.empty(3, 16, 3, 3, device="meta")
    with pytest.raises(StateDictMismatchError, match="middle_blks.3.cross_attn_q.weight") as err:
        load_state_strict(model, state)
    assert err.value.shape_mismatch and "ending.weight" in err.value.shape_mismatch[0]


def test_reference_teacher_is_small_and_runs():
    model = create_model("restormer-ref")
    assert sum(p.numel() for p in model.parameters()) <= 2_500_000
    x = torch.rand(2, 3, 21, 30)
    with torch.no_grad():
        out, aux = model.forward_with_aux(x)
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert aux["features"]["latent"].shape[-2:] == (3, 4)
    assert aux["routing"]["domain"].indices.shape == (2, 5)


def test_training_mode_backpropagates_into_prompts():
    model = create_model("restormer-ref").train()
    out = model(torch.rand(1, 3, 16, 16))
    out.mean().backward()
    for name in ("domain_prompt_pool.prompt_values", "degradation_mapper.mapper.8.weight",
                 "latent_blocks.0.cross_attn_v.weight", "refinement.0.prompt_weight"):
        grad = model.get_parameter(name).grad
        assert grad is not None and torch.isfinite(grad).all(), name
