"""The edge student: shapes, gradients, MAC budgets, prompt overrides, FiLM folding, ONNX export."""

import copy

import numpy as np
import pytest
import torch
from conftest import routed_student

from datprl_edge import create_model
from datprl_edge.core.errors import ChannelCountError, ConfigError
from datprl_edge.models.complexity import count_macs, count_params
from datprl_edge.models.student import EdgeDATPRL, PromptOverride
from datprl_edge.models.student_blocks import EdgeBlock

BUDGETS = {"edge-xs": 1e9, "edge-s": 3e9}


@pytest.fixture(scope="module")
def xs():
    return routed_student("edge-xs")


def test_odd_sizes_pad_and_crop(xs):
    x = torch.rand(2, 3, 37, 50)
    with torch.inference_mode():
        y, aux = xs.forward_with_aux(x)
    assert y.shape == x.shape
    feats = aux["features"]
    assert feats["dec1"].shape == (2, 16, 40, 56)
    assert feats["dec2"].shape == (2, 32, 20, 28)
    assert feats["dec3"].shape == (2, 64, 10, 14)
    assert feats["latent"].shape == (2, 128, 5, 7)
    assert aux["routing"]["domain"].indices.shape == (2, 5)
    assert aux["routing"]["degradation"].weights.shape == (2, 3)
    assert torch.allclose(aux["prompt_weights"]["domain"].sum(1), torch.ones(2))


def test_global_residual_is_exact_identity_when_head_is_zero(xs):
    model = copy.deepcopy(xs)
    with torch.no_grad():
        model.ending.weight.zero_()
        model.ending.bias.zero_()
    x = torch.rand(1, 3, 19, 23)
    with torch.inference_mode():
        assert torch.equal(model(x), x)


def test_batch_items_are_independent(xs):
    x = torch.rand(2, 3, 24, 24)
    with torch.inference_mode():
        both = xs(x)
        one = xs(x[1:])
    assert torch.allclose(both[1:], one, atol=1e-6)


def test_gradients_reach_every_parameter():
    model = create_model("edge-xs").train()
    out, aux = model.forward_with_aux(torch.rand(2, 3, 32, 32))
    loss = out.square().mean() + aux["features"]["latent"].abs().mean()
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    film = model.middle_blks[0].film
    for p in (film.prompt_film.weight, film.feature_weight, model.degradation_prompt_pool.prompt_keys,
              model.domain_prompt_pool.prompt_values, model.domain_mapper.conv.weight, model.intro.weight):
        assert p.grad.abs().sum() > 0


@pytest.mark.parametrize("name", sorted(BUDGETS))
def test_mac_budget_counted(name):
    model = create_model(name)
    macs = count_macs(model, (1, 3, 256, 256))
    assert macs.device == "meta"
    assert 0.3 * BUDGETS[name] < macs.total <= BUDGETS[name]
    assert sum(macs.stages.values()) == macs.total
    assert macs.stages["decoders"] > 0 and macs.stages["middle_blks"] > 0


def test_student_sizes_are_compact():
    assert 100_000 < count_params(create_model("edge-xs")) < 400_000
    assert count_params(create_model("edge-s")) < 1_500_000


def test_forced_prompt_changes_output_and_blend_zero_is_auto(xs):
    x = torch.rand(1, 3, 32, 32)
    with torch.inference_mode():
        auto, aux = xs.forward_with_aux(x)
        chosen = aux["routing"]["degradation"].indices[0].tolist()
        other = next(i for i in range(15) if i not in chosen)
        forced, faux = xs.forward_with_aux(x, override=PromptOverride(task=other, domain=0))
        blend0 = xs(x, override=PromptOverride(task=other, domain=0, blend=0.0))
    dec1, forced_dec1 = aux["features"]["dec1"], faux["features"]["dec1"]
    # Residual branches start at 0.1 scale, so random-init effects are modest but far above 1e-6.
    assert (forced_dec1 - dec1).abs().max() > 1e-2
    assert (forced - auto).abs().max() > 1e-4
    assert torch.allclose(blend0, auto, atol=1e-6)


def test_index_equals_one_hot_and_blend_mixes_weights(xs):
    x = torch.rand(2, 3, 16, 24)
    onehot = [0.0] * 15
    onehot[7] = 1.0
    with torch.inference_mode():
        a = xs(x, override=PromptOverride(domain=2, task=7))
        b = xs(x, override=PromptOverride(domain=torch.eye(15)[2], task=onehot))
        _, auto = xs.forward_with_aux(x)
        _, half = xs.forward_with_aux(x, override=PromptOverride(task=7, blend=0.5))
    assert torch.allclose(a, b, atol=1e-6)
    want = 0.5 * auto["prompt_weights"]["degradation"] + 0.5 * torch.eye(15)[7]
    assert torch.allclose(half["prompt_weights"]["degradation"], want)
    assert torch.equal(half["prompt_weights"]["domain"], auto["prompt_weights"]["domain"])


def test_weight_vector_is_normalised(xs):
    x = torch.rand(1, 3, 16, 16)
    with torch.inference_mode():
        a = xs(x, override=PromptOverride(task=[2.0 if i in (1, 4) else 0.0 for i in range(15)]))
        b = xs(x, override=PromptOverride(task=[0.5 if i in (1, 4) else 0.0 for i in range(15)]))
    assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("override, message", [
    (dict(task=15), "out of range"),
    (dict(domain=-1), "out of range"),
    (dict(task=[1.0, 0.0]), "15 entries"),
    (dict(task=[-1.0] + [1.0] * 14), "non-negative"),
    (dict(task=[0.0] * 15), "all be zero"),
    (dict(task="rain"), "index or a weight vector"),
    (dict(task=True), "index or a weight vector"),
])
def test_override_validation(xs, override, message):
    with pytest.raises(ConfigError, match=message):
        xs(torch.rand(1, 3, 16, 16), override=PromptOverride(**override))


def test_override_object_validation(xs):
    with pytest.raises(ConfigError, match="blend must be in"):
        PromptOverride(task=1, blend=1.5)
    with pytest.raises(ConfigError, match="needs a domain and/or a task"):
        PromptOverride()
    with pytest.raises(ConfigError, match="force both"):
        xs.conditioning(override=PromptOverride(task=1))
    with pytest.raises(ConfigError, match="rows but the batch"):
        xs(torch.rand(2, 3, 16, 16), override=PromptOverride(task=torch.eye(15)[:3]))


def test_bad_input_and_options(xs):
    with pytest.raises(ChannelCountError, match="3-channel"):
        xs(torch.rand(1, 1, 16, 16))
    with pytest.raises(ConfigError, match="top_k"):
        EdgeDATPRL(degradation_pool_size=4, degradation_top_k=5)
    with pytest.raises(ConfigError, match="same number of levels"):
        EdgeDATPRL(enc_blk_nums=[1, 1], dec_blk_nums=[1, 1, 1])


def test_conditioning_matches_forward(xs):
    x = torch.rand(1, 3, 24, 24)
    with torch.inference_mode():
        cond = xs.conditioning(x)
        _, aux = xs.forward_with_aux(x)
    assert torch.allclose(cond.domain_weights, aux["prompt_weights"]["domain"])
    blocks = [n for n, m in xs.named_modules() if isinstance(m, EdgeBlock) and m.film is not None]
    assert sorted(cond.films) == sorted(blocks) and len(blocks) == 4
    t = cond.films["middle_blks.0"]
    assert t.mul.shape == t.add.shape == t.scale.shape == (1, 128)


def test_fixed_prompt_folds_exactly_into_conv1(xs):
    """A fixed task/domain makes each FiLM a per-channel affine map that conv1 absorbs."""
    override = PromptOverride(domain=1, task=4)
    with torch.inference_mode():
        cond = xs.conditioning(override=override)
    folded = copy.deepcopy(xs)
    with torch.no_grad():
        for name, terms in cond.films.items():
            block = folded.get_submodule(name)
            w = block.conv1.weight  # (out, in, 1, 1)
            block.conv1.bias += w[:, :, 0, 0] @ terms.add[0]
            block.conv1.weight.mul_(terms.mul[0][None, :, None, None])
            block.film = None
    x = torch.rand(2, 3, 21, 30)
    with torch.inference_mode():
        want = xs(x, override=override)
        got = folded(x)
    assert (got - want).abs().max() <= 1e-5


def test_onnx_export_matches_torch(xs, tmp_path):
    """Dynamic-size export: the pad-to-8 and crop must follow the runtime size, not the example."""
    ort = pytest.importorskip("onnxruntime")
    from torch.export import Dim

    path = tmp_path / "edge_xs.onnx"
    dims = {2: Dim("h", min=8, max=4096), 3: Dim("w", min=8, max=4096)}
    torch.onnx.export(xs, (torch.rand(1, 3, 64, 64),), str(path), dynamo=True, input_names=["image"],
                      output_names=["restored"], dynamic_shapes={"x": dims}, verbose=False)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in [(1, 3, 64, 64), (1, 3, 37, 50)]:
        x = torch.rand(shape)
        got = sess.run(None, {"image": x.numpy()})[0]
        with torch.inference_mode():
            want = xs(x).numpy()
        assert got.shape == want.shape and np.abs(got - want).max() <= 1e-4
