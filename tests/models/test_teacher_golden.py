"""The teachers reproduce the released code's outputs (official golden cases), and loading fails
clearly on bad checkpoints and options."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import datprl_edge
from datprl_edge.core.errors import (
    ChannelCountError,
    ConfigError,
    PickledCheckpointError,
    StateDictMismatchError,
    UnknownChoiceError,
)
from datprl_edge.models.registry import create_model

GOLDEN = Path(__file__).parents[1] / "fixtures" / "golden"
CASES = sorted(p.stem for p in GOLDEN.glob("*.json"))
TOL = 1e-4


def _case(name):
    meta = json.loads((GOLDEN / f"{name}.json").read_text())
    model = datprl_edge.load_model(GOLDEN / meta["checkpoint"], network=GOLDEN / f"{name}.json")
    io = load_file(str(GOLDEN / meta["io"]))
    return meta, model, io


def test_all_cases_are_present():
    assert len(CASES) == 5
    for name in CASES:
        meta = json.loads((GOLDEN / f"{name}.json").read_text())
        assert (GOLDEN / meta["checkpoint"]).is_file() and (GOLDEN / meta["io"]).is_file()


@pytest.mark.parametrize("name", CASES)
def test_golden_output(name):
    meta, model, io = _case(name)
    assert list(io["input"].shape) == meta["input_shape"]
    with torch.no_grad():
        out = model(io["input"])
    assert out.shape == io["output"].shape
    assert (out - io["output"]).abs().max().item() <= TOL


@pytest.mark.parametrize("name", ["restormer_tiny", "nafnet_tiny"])
def test_forward_with_aux(name):
    meta, model, io = _case(name)
    x = io["input"]
    net = meta["network_g"]
    with torch.no_grad():
        out, aux = model.forward_with_aux(x)
        assert torch.equal(out, model(x))
    assert (out - io["output"]).abs().max().item() <= TOL
    feats = aux["features"]
    assert set(feats) == set(model.feature_info)
    assert {"latent", "dec1", "dec2", "dec3"} <= set(feats)
    unit = 8 if "restormer" in name else 2 ** len(net["enc_blk_nums"])
    hp, wp = -(-x.shape[2] // unit) * unit, -(-x.shape[3] // unit) * unit
    for key, (channels, scale) in model.feature_info.items():
        assert feats[key].shape == (x.shape[0], channels, hp // scale, wp // scale), key
    for kind in ("domain", "degradation"):
        r = aux["routing"][kind]
        k = net[f"{kind}_top_k"]
        assert r.indices.shape == r.weights.shape == (x.shape[0], k)
        assert r.logits.shape == (x.shape[0], net[f"{kind}_pool_size"])
        torch.testing.assert_close(r.weights.sum(1), torch.ones(x.shape[0]))
    assert aux["prompts"]["fused"].shape == (x.shape[0], net["domain_prompt_dim"])


def test_params_ema_is_accepted(tmp_path):
    state = torch.load(GOLDEN / "nafnet_tiny.pth", weights_only=True)["params"]
    ckpt = tmp_path / "ema.pth"
    torch.save({"params_ema": state}, ckpt)
    _, _, io = _case("nafnet_tiny")
    model = datprl_edge.load_model(ckpt, network=GOLDEN / "nafnet_tiny.json")
    with torch.no_grad():
        assert (model(io["input"]) - io["output"]).abs().max().item() <= TOL


def test_wrong_keys_name_the_keys(tmp_path):
    state = torch.load(GOLDEN / "nafnet_tiny.pth", weights_only=True)["params"]
    state["intro.weight_renamed"] = state.pop("intro.weight")
    ckpt = tmp_path / "bad.pth"
    torch.save({"params": state}, ckpt)
    with pytest.raises(StateDictMismatchError) as err:
        datprl_edge.load_model(ckpt, network=GOLDEN / "nafnet_tiny.json")
    assert err.value.missing == ["intro.weight"]
    assert err.value.unexpected == ["intro.weight_renamed"]
    assert "intro.weight" in str(err.value) and "intro.weight_renamed" in str(err.value)


def test_checkpoint_of_another_config_reports_shapes():
    # The concat case has the same keys as restormer_tiny minus/plus the fusion modules.
    with pytest.raises(StateDictMismatchError) as err:
        datprl_edge.load_model(GOLDEN / "restormer_tiny_concat.pth", network=GOLDEN / "restormer_tiny.json")
    assert any("cross_attn_q" in k for k in err.value.missing)
    assert any("prompt_projection" in k for k in err.value.unexpected)


class _NotATensor:
    def __init__(self):
        self.note = "arbitrary python object"


def test_pickled_checkpoint_is_refused(tmp_path):
    state = torch.load(GOLDEN / "nafnet_tiny.pth", weights_only=True)["params"]
    ckpt = tmp_path / "pickled.pth"
    torch.save({"params": state, "extra": _NotATensor()}, ckpt)
    with pytest.raises(PickledCheckpointError, match="pickled"):
        datprl_edge.load_model(ckpt, network=GOLDEN / "nafnet_tiny.json")


def test_unknown_option_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"no option 'dimm'; did you mean 'dim'"):
        create_model("DualPromptRestormerv3", dimm=16)
    with pytest.raises(ConfigError, match=r"no option 'widht'; did you mean 'width'"):
        create_model("DualPromptNAFNetv3", widht=8)
    meta = json.loads((GOLDEN / "nafnet_tiny.json").read_text())
    meta["network_g"]["colour_space"] = "rgb"
    net = tmp_path / "net.json"
    net.write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="colour_space"):
        datprl_edge.load_model(GOLDEN / "nafnet_tiny.pth", network=net)


@pytest.mark.parametrize(
    "arch, options, pattern",
    [
        ("DualPromptRestormerv3", {"domain_top_k": 9, "domain_pool_size": 4},
         r"domain_top_k \(9\) exceeds domain_pool_size \(4\); lower domain_top_k"),
        ("DualPromptNAFNetv3", {"degradation_top_k": 0}, "degradation_top_k must be an integer >= 1"),
        ("DualPromptRestormerv3", {"dim": 16, "heads": [1, 2, 3, 8]}, r"heads\[2\] = 3 does not divide"),
        ("DualPromptRestormerv3", {"dim": 15}, "must be even"),
        ("DualPromptRestormerv3", {"enc_blk_nums": [1, 1]}, "enc_blk_nums must be a list of 3"),
        ("DualPromptNAFNetv3", {"enc_blk_nums": [1, 1], "dec_blk_nums": [1]}, "same number of levels"),
        ("DualPromptRestormerv3", {"bias": "yes"}, "bias must be true or false"),
        ("DualPromptNAFNetv3", {"domain_prompt_dim": 64, "degradation_prompt_dim": 32},
         "cross_attention needs domain_prompt_dim == degradation_prompt_dim"),
    ],
)
def test_invalid_options(arch, options, pattern):
    with pytest.raises(ConfigError, match=pattern):
        with torch.device("meta"):
            create_model(arch, **options)


def test_unknown_choice_suggests():
    with pytest.raises(UnknownChoiceError, match="did you mean 'concat'"):
        create_model("DualPromptNAFNetv3", width=8, fusion_method="conact")
    with pytest.raises(UnknownChoiceError, match="did you mean 'BiasFree'"):
        create_model("DualPromptRestormerv3", dim=8, LayerNorm_type="Biasfree")


def test_dim_falls_back_to_width_then_48():
    with torch.device("meta"):
        assert create_model("DualPromptRestormerv3", width=24).patch_embed.proj.weight.shape[0] == 24
        assert create_model("DualPromptRestormerv3").patch_embed.proj.weight.shape[0] == 48
        assert create_model("DualPromptRestormerv3", dim=16, width=24).patch_embed.proj.weight.shape[0] == 16


@pytest.mark.parametrize("arch, options", [
    ("DualPromptRestormerv3", {"dim": 8, "enc_blk_nums": [1, 1, 1], "middle_blk_num": 1,
                               "dec_blk_nums": [1, 1, 1], "refine_blk_num": 1, "use_prompt": False}),
    ("DualPromptNAFNetv3", {"width": 8, "enc_blk_nums": [1, 1], "middle_blk_num": 1,
                            "dec_blk_nums": [1, 1], "use_prompt": False}),
])
def test_plain_backbone_without_prompts(arch, options):
    model = create_model(arch, **options)
    assert not any("prompt" in k or "feature_weight" in k for k in model.state_dict())
    x = torch.rand(1, 3, 13, 10)
    with torch.no_grad():
        out, aux = model.forward_with_aux(x)
    assert out.shape == x.shape and aux["routing"] == {}


def test_wrong_channel_count():
    _, model, _ = _case("nafnet_tiny")
    with pytest.raises(ChannelCountError, match="3-channel"):
        model(torch.rand(1, 1, 16, 16))
