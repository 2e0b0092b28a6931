"""INT8 QAT per target: prepare/convert round trips, PTQ path, save/load, float layers, sensitivity."""

import copy
import dataclasses
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import run_cli  # noqa: E402

from datprl_edge.core.errors import CheckpointError, ConfigError, UnknownChoiceError  # noqa: E402
from datprl_edge.models.registry import create_model  # noqa: E402
from datprl_edge.quantize.feed import run_image  # noqa: E402
from datprl_edge.quantize.qat import QATConfig, load_qat, run_qat, save_qat  # noqa: E402
from datprl_edge.quantize.scope import check_float_layers, example_inputs, frozen_observers  # noqa: E402

SIZE = 32


def _img(seed, n=2, h=SIZE, w=SIZE):
    """Inside the calibration images' value range (the input quantizer clips outside it)."""
    return 0.2 + 0.6 * torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


VAL = {"natural/denoise": (_img(1), _img(2))}


def _calib(n=6, size=40, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        gt = rng.random((size, size, 3)).astype(np.float32) * 0.6 + 0.2
        out.append({"lq": np.clip(gt + 0.05 * rng.standard_normal(gt.shape), 0, 1).astype(np.float32),
                    "gt": gt, "task": "natural/denoise"})
    return out


def _cfg(target, steps=2, **kw):
    return QATConfig(target=target, steps=steps, batch_size=2, crop=SIZE, calib_batches=2, val_images=2,
                     example_size=SIZE, **kw)


def _x(h=SIZE, w=SIZE):
    return _img(3, 1, h, w)


@pytest.fixture(scope="module")
def student():
    torch.manual_seed(0)
    return create_model("edge-xs")


@pytest.fixture(scope="module")
def onnx_ptq(student):
    return run_qat(student, _cfg("onnx", steps=0), _calib(), val=VAL)


def test_config_validation():
    with pytest.raises(UnknownChoiceError, match="did you mean 'onnx'"):
        QATConfig(target="onnxx")
    with pytest.raises(ConfigError, match="steps"):
        QATConfig(target="onnx", steps=-1)
    with pytest.raises(ConfigError, match="multiples of 8"):
        QATConfig(target="onnx", crop=36)
    for bad in (-0.1, 11, float("nan"), True, "0.1"):  # the same budget check as export's --max-drop
        with pytest.raises(ConfigError, match=r"max_drop is a PSNR budget in dB \(0\.\.10"):
            QATConfig(target="onnx", max_drop=bad)
    assert QATConfig(target="onnx", float_layers="intro, ending").float_layers == ("intro", "ending")
    with pytest.raises(ConfigError, match="routing_weight"):
        QATConfig(target="onnx", routing_weight=float("nan"))
    with pytest.raises(ConfigError, match="freeze_observers_at"):
        QATConfig(target="onnx", freeze_observers_at=1.5)


def test_observer_freeze_defaults_to_the_scheme():
    """Unset, the fraction of QAT steps with moving activation ranges is the target scheme's: Core ML
    keeps its calibrated ranges from the first step; a set value wins."""
    from datprl_edge.quantize.loop import config_key, freeze_fraction

    assert freeze_fraction(QATConfig(target="coreml")) == 0.0
    assert freeze_fraction(QATConfig(target="openvino")) == 0.7
    assert freeze_fraction(QATConfig(target="coreml", freeze_observers_at=0.5)) == 0.5
    # resumable states made with the value spelled out stay valid
    assert config_key(QATConfig(target="openvino")) == config_key(QATConfig(target="openvino",
                                                                            freeze_observers_at=0.7))


def test_float_layer_names_checked(student):
    with pytest.raises(UnknownChoiceError, match="quantizable layer"):
        check_float_layers(student, ["decoders.0.0.conv9"])
    # prompt-path layers are float by design, so they are not choices
    with pytest.raises(UnknownChoiceError):
        check_float_layers(student, ["domain_mapper.proj"])
    with pytest.raises(UnknownChoiceError, match="quantizable layer"):
        check_float_layers(student, ["decoders.0.0.conv"])  # a block, not a prefix of names


def test_a_block_name_stands_for_its_layers(student):
    from datprl_edge.quantize.scope import quantizable_layers

    block = check_float_layers(student, "decoders.0.0")
    assert block == tuple(n for n in quantizable_layers(student) if n.startswith("decoders.0.0."))
    assert "decoders.0.0.conv1" in block and "decoders.0.0.conv5" in block
    assert check_float_layers(student, "ending,decoders.0.0") == block + ("ending",)


@pytest.mark.parametrize("target", ["onnx", "openvino", "coreml"])
def test_qat_round_trip(target, student, tmp_path):
    before = {k: v.clone() for k, v in student.state_dict().items()}
    result = run_qat(student, _cfg(target), _calib())
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items()), "input model mutated"
    x = _x()
    with torch.no_grad(), frozen_observers(result.prepared):
        fq, ref = run_image(result.prepared, x), student(x)
        assert fq.shape == ref.shape
        assert 0 < (fq - ref).abs().max() < 0.2  # quantization noise, not a broken model
        assert (run_image(result.converted(), x) - fq).abs().max() < 0.05
    m = result.metrics
    assert set(m["psnr_fp32"]) == {"natural/denoise"} and np.isfinite(m["drop_db"]["worst"])
    # QAT trains the pixel path; the routing (query mappers, prompt pools) stays as it was
    trained = dict(result.prepared.named_parameters())
    routing = [k for k in before if k.startswith(("domain_mapper.", "degradation_prompt_pool."))]
    assert routing and all(torch.equal(trained[k], before[k]) for k in routing if k in trained)
    assert not torch.equal(trained["intro.weight"], before["intro.weight"])

    path = save_qat(result, tmp_path / f"q-{target}.safetensors")
    loaded = load_qat(path)
    assert loaded.target == target and loaded.float_layers == result.float_layers
    assert loaded.config.steps == 2 and loaded.scheme["target"] == target
    with torch.no_grad():
        assert torch.equal(run_image(loaded.prepared, x), run_image(result.prepared, x))
    from datprl_edge.io.checkpoint import read_checkpoint_config

    extra = read_checkpoint_config(path).extra
    assert {"target", "scheme", "example_shape", "float_layers", "base_arch", "base_options", "steps",
            "metrics"} <= set(extra)


def test_ptq_is_calibration_only(student, onnx_ptq):
    from datprl_edge.quantize import onnx as onnx_quant

    state, own = onnx_ptq.prepared.state_dict(), student.state_dict()
    # the ONNX scheme cuts each gated conv in halves (split_gates): `conv1.a` is conv1's first half
    halves = {k: v for k, v in state.items() if k.endswith("conv1.a.weight")}
    assert halves
    assert all(torch.equal(v, own[k.replace("conv1.a", "conv1")][:len(v)]) for k, v in halves.items())
    assert torch.equal(state["intro.weight"], own["intro.weight"])
    assert onnx_ptq.source == "PTQ" and onnx_ptq.metrics["val_source"] == "given"
    # the int8 ranges were set from the calibration images
    mods = onnx_quant.layer_fake_quants(onnx_ptq.prepared, "encoders.0.0.conv3")
    assert mods and all(float(m.scale.min()) > 0 for m in mods)
    # the image conv is float by the scheme (IMAGE_LAYERS): its weight and the image it reads are not
    # quantized (what it outputs is, for the int8 convs that read it)
    intro = [n for n in onnx_ptq.prepared.graph.nodes
             if n.target == torch.ops.aten.conv2d.default and onnx_quant._module_path(n) == "intro"]
    assert len(intro) == 1 and intro[0].args[1].op == "get_attr"
    image = next(n for n in onnx_ptq.prepared.graph.nodes if n.op == "placeholder")
    assert not any(u.op == "call_module" and "activation_post_process" in str(u.target) for u in image.users)


def test_float_layers_stay_float(student):
    from datprl_edge.quantize import coreml as coreml_quant
    from datprl_edge.quantize import onnx as onnx_quant
    from datprl_edge.quantize import openvino as openvino_quant

    ex = example_inputs(student, SIZE)
    p = onnx_quant.prepare(student, ex, ("decoders.0.0.conv1",))
    assert onnx_quant.layer_fake_quants(p, "decoders.0.0.conv1") == []
    assert onnx_quant.layer_fake_quants(p, "decoders.0.0.conv2")
    p = coreml_quant.prepare(student, ex, ("intro", "decoders.0.0.conv1"))
    assert isinstance(p.intro, torch.nn.Conv2d) and not hasattr(p.intro, "weight_fake_quant")
    assert not hasattr(p.decoders[0][0].get_submodule("conv1"), "weight_fake_quant")
    assert hasattr(p.decoders[0][0].get_submodule("conv2"), "weight_fake_quant")
    assert openvino_quant.nncf_node_names(student, ex[0], ("intro",)) == ["intro/conv2d/0"]


def test_onnx_float_block_keeps_its_products_float(student):
    """A block given whole (`decoders.0.0`) is float inside, gate products included; one float conv
    leaves the block's gate products quantized."""
    from datprl_edge.quantize import onnx as onnx_quant
    from datprl_edge.quantize.scope import float_blocks

    def quantized_in(p, block):
        hits = []
        for node in p.graph.nodes:
            paths = [onnx_quant._clean_path(v[0]) for v in (node.meta.get("nn_module_stack") or {}).values()]
            inside = any(s == block or s.startswith(block + ".") for s in paths)
            if node.op == "call_function" and inside and any(
                    u.op == "call_module" and "activation_post_process" in str(u.target) for u in node.users):
                hits.append(node.target)
        return hits

    ex = example_inputs(student, SIZE)
    whole = check_float_layers(student, "decoders.0.0")
    assert float_blocks(student, whole) == ("decoders.0.0",)
    assert float_blocks(student, whole[:-1]) == ()
    assert quantized_in(onnx_quant.prepare(student, ex, whole), "decoders.0.0") == []
    one = quantized_in(onnx_quant.prepare(student, ex, ("decoders.0.0.conv1",)), "decoders.0.0")
    assert torch.ops.aten.mul.Tensor in one


def test_sensitivity_keeps_layers_float(student, onnx_ptq):
    full = onnx_ptq.metrics["drop_db"]["worst"]
    budget = max(full / 2, 0.0)
    result = run_qat(student, _cfg("onnx", steps=0, max_drop=budget, best_effort=True), _calib(), val=VAL)
    sens = result.metrics["sensitivity"]
    assert len(sens["ranking"]) == 50 and sens["rounds"]
    chosen = sens["rounds"][sens["chosen_round"]]
    assert list(result.float_layers) == chosen["float_layers"]
    assert chosen["drop_worst"] == min(r["drop_worst"] for r in sens["rounds"])  # the best, not the last
    if full > 0:
        assert result.float_layers, "a drop over budget must float some layers"
    assert sens["within_budget_held_out"] == (result.metrics["drop_db"]["worst"] <= budget)
    assert sens["met"] == (sens["within_budget"] and sens["within_budget_held_out"])


def test_unmet_budget_fails_unless_best_effort(student, onnx_ptq, monkeypatch):
    from datprl_edge.core.errors import QualityBudgetError
    from datprl_edge.quantize import sensitivity

    full = onnx_ptq.metrics["drop_db"]["worst"]
    if full <= 0:
        pytest.skip("INT8 is exact on these pairs: no budget can fail")
    monkeypatch.setattr(sensitivity, "MAX_ROUNDS", 1)  # the search may only try all-INT8
    with pytest.raises(QualityBudgetError, match=r"--max-drop .* dB is not met for onnx.*--best-effort"):
        run_qat(student, _cfg("onnx", steps=0, max_drop=full / 2), _calib(), val=VAL)
    kept = run_qat(student, _cfg("onnx", steps=0, max_drop=full / 2, best_effort=True), _calib(), val=VAL)
    assert kept.metrics["sensitivity"]["met"] is False


def test_a_budget_met_only_with_every_layer_float_leaves_no_int8(student, onnx_ptq, monkeypatch):
    from datprl_edge.core.errors import QualityBudgetError
    from datprl_edge.quantize import sensitivity
    from datprl_edge.quantize.scope import quantizable_layers

    if onnx_ptq.metrics["drop_db"]["worst"] <= 0:
        pytest.skip("INT8 is exact on these pairs: every budget is met with no float layer")
    layers = quantizable_layers(student)
    monkeypatch.setattr(sensitivity, "greedy_count", lambda *a, **k: (len(layers), []))
    monkeypatch.setattr(sensitivity, "MAX_ROUNDS", 2)  # all-INT8, then every layer float
    probe = run_qat(student, _cfg("onnx", steps=0, max_drop=0.0, best_effort=True), _calib(), val=VAL)
    rounds = probe.metrics["sensitivity"]["rounds"]
    assert rounds[1]["float_layers"] == layers
    budget = max(rounds[1]["drop_worst"], probe.metrics["drop_db"]["worst"], 0.0) + 1e-6
    if budget >= rounds[0]["drop_worst"]:
        pytest.skip("floating every layer does not beat all-INT8 on these pairs")
    with pytest.raises(QualityBudgetError, match="only with every quantizable layer float, which leaves no"):
        run_qat(student, _cfg("onnx", steps=0, max_drop=budget), _calib(), val=VAL)


def test_resume_continues_from_saved_state(student, onnx_ptq, tmp_path):
    from datprl_edge.quantize.loop import as_pairs, train

    cfg = _cfg("onnx", steps=3, checkpoint_every=2)
    pairs = as_pairs(_calib(), 3)
    straight = copy.deepcopy(onnx_ptq.prepared)
    train(straight, student, pairs, cfg)
    train(copy.deepcopy(onnx_ptq.prepared), student, pairs, cfg, state_dir=tmp_path)  # saves at step 2
    assert (tmp_path / "qat_state.pt").is_file()
    resumed = copy.deepcopy(onnx_ptq.prepared)
    info = train(resumed, student, pairs, cfg, state_dir=tmp_path)
    assert info["resumed_from"] == 2
    with torch.no_grad():
        assert torch.allclose(run_image(resumed, _x()), run_image(straight, _x()), atol=1e-5)
    with pytest.raises(ConfigError, match="other settings"):
        train(copy.deepcopy(onnx_ptq.prepared), student, pairs, dataclasses.replace(cfg, lr=1e-3),
              state_dir=tmp_path)


def test_load_qat_refuses_float_checkpoint(student, tmp_path):
    from datprl_edge.io.checkpoint import CheckpointConfig, save_checkpoint

    p = save_checkpoint(tmp_path / "f.safetensors", student.state_dict(),
                        CheckpointConfig("EdgeDATPRL", {}, stage="student"))
    with pytest.raises(CheckpointError, match="not a QAT result"):
        load_qat(p)


def test_load_qat_refuses_another_scheme_version(onnx_ptq, tmp_path, monkeypatch):
    from datprl_edge.quantize import onnx as onnx_quant

    path = save_qat(onnx_ptq, tmp_path / "q.safetensors")
    monkeypatch.setitem(onnx_quant.SCHEME, "version", onnx_quant.SCHEME["version"] + 1)
    made = onnx_quant.SCHEME["version"] - 1
    with pytest.raises(CheckpointError, match=f"scheme version {made}; this toolkit uses version {made + 1}"):
        load_qat(path)


def test_cli_errors_are_one_line(capsys, tmp_path):
    code, _, err = run_cli(capsys, "qat", "bundled:none", "--target", "onnxx", "--calib", "all",
                           "-o", tmp_path / "o.safetensors")
    assert code == 2 and "did you mean 'onnx'" in err and len(err.strip().splitlines()) == 1
    out = tmp_path / "o.safetensors"
    out.write_bytes(b"x")
    code, _, err = run_cli(capsys, "qat", "bundled:none", "--target", "onnx", "--calib", "all", "-o", out)
    assert code == 2 and "exists" in err


@pytest.mark.slow
def test_onnx_scheme_exports_qdq_with_int8_weights(onnx_ptq, tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from torch.export import Dim

    conv = onnx_ptq.converted()
    k = sum(n for _, n in onnx_ptq.context_layout)
    x = torch.rand(2, 3, SIZE, SIZE)
    dims = {0: Dim.AUTO, 2: Dim.AUTO, 3: Dim.AUTO}
    args, shapes = ((x, torch.zeros(2, k), torch.zeros(2, k)), (dims, {0: Dim.AUTO}, {0: Dim.AUTO})) if k \
        else ((x,), (dims,))
    prog = torch.onnx.export(conv, args, dynamo=True, dynamic_shapes=shapes, verbose=False)
    path = tmp_path / "q.onnx"
    prog.save(str(path))
    proto = onnx.load(str(path))
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert any(i.data_type == onnx.TensorProto.INT8 for i in proto.graph.initializer)
    sess = ort.InferenceSession(str(path))
    x1 = _x(40, 48)
    feeds = [x1.numpy()] + [np.zeros((1, k), np.float32)] * (2 if k else 0)
    got = sess.run(None, {i.name: v for i, v in zip(sess.get_inputs(), feeds)})[0]
    from datprl_edge.core.artifacts import psnr_db
    from datprl_edge.export.verify import MIN_PSNR_DB

    with torch.no_grad():
        # the export rule, on every CPU
        assert psnr_db(run_image(conv, x1).numpy(), got) >= MIN_PSNR_DB["int8"]


def test_calibration_ranges_mean_or_extremes():
    """"extremes" keeps every calibration activation inside the range; "mean" (the ONNX scheme's
    choice since its residual sums are float) averages the per-batch ranges."""
    from torch import nn

    from datprl_edge.quantize import onnx as onnx_quant
    from datprl_edge.quantize.scope import calibrate

    assert onnx_quant.SCHEME["calibration"] == "mean"
    dim, bright = torch.full((2, 3, 16, 16), 0.25), torch.full((2, 3, 16, 16), 0.25)
    bright[0, 0, 0, 0] = 1.0
    highs = {}
    for ranges in ("mean", "extremes"):
        torch.manual_seed(0)
        prepared = onnx_quant.prepare(nn.Sequential(nn.Conv2d(3, 8, 1)), (torch.rand(2, 3, 16, 16),))
        calibrate(prepared, [dim, bright], ranges=ranges)
        placeholder = next(n for n in prepared.graph.nodes if n.op == "placeholder")
        quantizer = next(prepared.get_submodule(u.target) for u in placeholder.users
                         if u.op == "call_module" and "activation_post_process" in u.target)  # the input's
        highs[ranges] = float(quantizer.activation_post_process.max_val)
    assert highs["extremes"] == pytest.approx(1.0) and highs["mean"] == pytest.approx(0.625)
    with pytest.raises(ConfigError, match="calibration ranges"):
        calibrate(prepared, [dim], ranges="median")


def test_openvino_keeps_block_outputs_float(student, monkeypatch):
    """NNCF's CPU placement quantizes every add and product output; the toolkit's (quantize.openvino.
    FLOAT_OPS) keeps an add or product quantized only where it is a conv's input, quantizes no mean or
    pixel-shuffle input, leaves the image and channel-attention convs float, and every other conv still
    has int8 weights."""
    from datprl_edge.quantize import openvino as openvino_quant

    def eltwise_quantizers():
        prepared = openvino_quant.prepare(student, example_inputs(student, SIZE))
        hooks = [h for c in openvino_quant.backend_state(prepared)["nncf_config"]["compression_state"]
                 for h in c["hook_names_in_model"]]
        return hooks, {h for h in hooks if "/add/" in h or "/mul/" in h}

    hooks, ours = eltwise_quantizers()
    assert not [h for h in hooks if "/mean/" in h]
    ops = openvino_quant.prepare(student, example_inputs(student, SIZE)).datprl_weight_ops
    ups = [op for name in ("ups.0.0.weight", "ups.1.0.weight") for op in ops[name]]  # before pixel shuffles
    assert len(ups) == 2 and not [h for h in hooks if any(h.startswith(f"post_hooks.{u}__") for u in ups)]
    monkeypatch.setattr(openvino_quant, "FLOAT_OPS", ())
    monkeypatch.setattr(openvino_quant, "IMAGE_LAYERS", ())
    monkeypatch.setattr(openvino_quant, "POOLED_LAYERS", False)
    nncf_hooks, nncf_default = eltwise_quantizers()
    assert ours < nncf_default and len(ours) <= len(nncf_default) - 10
    assert [h for h in nncf_hooks if "/mean/" in h]
    blocks = [n for n, m in student.named_modules() if type(m).__name__ == "EdgeBlock"]
    assert sum(h.startswith("post_hooks./add/") for h in ours) < len(blocks)  # not every block output
    weights = [h for h in hooks if h.startswith("pre_hooks.") and "conv2d" in h and h.endswith("__1.0")]
    image = {"pre_hooks.intro/conv2d/0__1.0", "pre_hooks.ending/conv2d/0__1.0"}
    assert not image & set(weights) and image <= set(nncf_hooks)
    assert not [h for h in hooks if "sca/conv2d" in h] and [h for h in nncf_hooks if "sca/conv2d" in h]
    assert len(weights) >= 40  # every other pixel-path conv's weight is int8


def test_coreml_keeps_sums_products_and_image_convs_float(student, monkeypatch):
    """The Core ML scheme (quantize.coreml, version 2): no fake quant reads the output of a sum, product
    or conv inside the traced blocks unless a conv reads it (its input quantizer), the image and
    channel-attention convs have float weights, and every other block conv still has int8 weights.
    coremltools' default configuration quantizes all of those outputs."""
    import operator

    from datprl_edge.quantize import coreml as coreml_quant
    from datprl_edge.quantize.scope import channel_attention_layers

    def eltwise_fed_quantizers(prepared):
        out = []
        for _, mod in prepared.named_modules():
            graph = getattr(mod, "graph", None)
            for node in graph.nodes if graph is not None else ():
                if node.op == "call_function" and node.target in (operator.add, operator.mul):
                    users = [u for u in node.users if u.op == "call_module" and
                             "activation_post_process" in str(u.target)]
                    # a conv's input quantizer may sit on a sum / product: that one stays
                    out += [u for u in users if not any("conv" in str(v.target) for v in u.users)]
        return out

    def conv_fed_quantizers(prepared):
        graphs = [(m, m.graph) for _, m in prepared.named_modules() if hasattr(m, "graph")]
        return [n for mod, graph in graphs for n in graph.nodes
                if n.op == "call_module" and "activation_post_process" in str(n.target)
                and n.args[0].op == "call_module"
                and isinstance(mod.get_submodule(n.args[0].target), torch.nn.Conv2d)]

    def float_input_convs(prepared):
        out = []
        for mod in [m for _, m in prepared.named_modules() if hasattr(m, "graph")]:
            for n in mod.graph.nodes:
                conv = (n.op == "call_module" and isinstance(mod.get_submodule(n.target), torch.nn.Conv2d)) \
                    or (n.op == "call_function" and n.target is torch.conv2d)
                src = n.args[0] if conv else None
                if conv and not (src.op == "call_module" and "activation_post_process" in str(src.target)):
                    out.append(n)
        return out

    from datprl_edge.models.bounds import set_act_bounds

    ex = example_inputs(student, SIZE)
    p = coreml_quant.prepare(student, ex)
    assert coreml_quant.SCHEME["version"] == 2 and eltwise_fed_quantizers(p) == []
    # without the activation clamps between convs, as QAT prepares it: every conv but the float
    # channel-attention ones reads a quantized map
    unbounded = copy.deepcopy(student)
    set_act_bounds(unbounded, None)
    pooled = len(channel_attention_layers(student))
    for model in (student, unbounded):
        assert len(float_input_convs(coreml_quant.prepare(model, ex))) == pooled
    for name in ("intro", "ending") + channel_attention_layers(student):
        assert not hasattr(p.get_submodule(name), "weight_fake_quant"), name
    convs = [n for n, m in p.named_modules() if hasattr(m, "weight_fake_quant")]
    assert len(convs) >= 35 and not [n for n in convs if n.endswith(".sca")]  # 5 per block, ups
    monkeypatch.setattr(coreml_quant, "FLOAT_OPS", ())
    monkeypatch.setattr(coreml_quant, "IMAGE_LAYERS", ())
    monkeypatch.setattr(coreml_quant, "POOLED_LAYERS", False)
    monkeypatch.setattr(coreml_quant, "FLOAT_CONV_OUTPUTS", False)
    default = coreml_quant.prepare(student, ex)
    assert len(eltwise_fed_quantizers(default)) >= 10 and len(conv_fed_quantizers(default)) >= 35
    assert len([n for n, m in default.named_modules() if hasattr(m, "weight_fake_quant")]) > len(convs)


def test_openvino_layer_switches(student):
    """The sensitivity search toggles one layer's NNCF quantizers (weight and own input) in place."""
    from datprl_edge.quantize import openvino as openvino_quant

    x = example_inputs(student, SIZE)
    prepared = openvino_quant.prepare(student, x)
    assert openvino_quant.layer_fake_quants(prepared, "ending") == []  # float by the scheme
    switches = openvino_quant.layer_fake_quants(prepared, "encoders.0.0.conv1")  # cut in halves
    assert len(switches) == 4
    with torch.no_grad():
        before = prepared(x[0])
        for s in switches:
            s.disable_fake_quant()
        off = prepared(x[0])
        for s in switches:
            s.enable_fake_quant()
        again = prepared(x[0])
    assert not torch.equal(before, off) and torch.equal(before, again)


def test_onnx_scheme_keeps_stream_sums_float(onnx_ptq):
    """No fake quant reads a residual / skip sum's output except a conv's own input quantizer: the
    sums of the stream are not rounded to 8 bits (scheme 4)."""
    import torch as t

    gm = onnx_ptq.prepared
    def feature_map(n):
        val = n.meta.get("val")
        return val is not None and val.dim() == 4 and tuple(val.shape[2:]) != (1, 1)

    sums = [n for n in gm.graph.nodes if n.op == "call_function" and n.target == t.ops.aten.add.Tensor
            and feature_map(n) and all(isinstance(a, t.fx.Node) for a in n.args[:2])]
    assert len(sums) >= 10
    for node in sums:
        for user in node.users:
            if user.op == "call_module" and "activation_post_process" in str(user.target):
                assert all(u.op == "call_function" and u.target == t.ops.aten.conv2d.default
                           for u in user.users), f"{node.name} is quantized for a non-conv consumer"


def test_onnx_scheme_keeps_pixel_shuffled_sum_terms_float_at_any_width():
    """At stem 2 `ending` has 12 outputs (a pixel shuffle makes them the image's residual) and each
    up-sampler's conv feeds a pixel shuffle into a skip sum: their outputs are not rounded to 8 bits
    (scheme 6, OUTPUT_LAYERS) while their weights are int8; a block's last conv keeps its quantized output."""
    import torch as t

    torch.manual_seed(0)
    model = create_model("edge-q8")
    gm = run_qat(model, _cfg("onnx", steps=0), _calib(), val=VAL).prepared

    def quantizers_after(node):
        return [u for u in node.users if u.op == "call_module" and "activation_post_process" in str(u.target)]

    def module_path(node):
        stack = node.meta.get("nn_module_stack") or {}
        return [v[0].replace("L['self'].", "").replace("[", ".").replace("]", "") for v in stack.values()]

    convs = {n: module_path(n) for n in gm.graph.nodes if n.target == t.ops.aten.conv2d.default}
    shuffled = [n for n, paths in convs.items() if any(p == "ending" or p.startswith("ups.") for p in paths)]
    blocks = [n for n, paths in convs.items() if any(p.startswith("decoders.") and p.endswith(".conv2")
                                                      for p in paths)]
    assert model.ending.out_channels == 12 and len(shuffled) == 1 + len(model.ups) and len(blocks) >= 2
    for conv in shuffled:
        assert quantizers_after(conv) == [], conv.name
        weight = conv.args[1]  # the int8 weight: its fake quant feeds the conv
        assert weight.op == "call_module" and "activation_post_process" in str(weight.target)
    assert all(len(quantizers_after(conv)) == 1 for conv in blocks)


def test_routing_agreement_counts_swapped_prompts(student):
    """An INT8 model that routes one image to other prompts shows up as a flip; the drop on the other
    images is reported apart."""
    from datprl_edge.models.prompt_pool import recorded_routes
    from datprl_edge.quantize.routing import routing_agreement

    val = {"natural/denoise": (_img(4, n=3), _img(5, n=3))}
    with recorded_routes() as record, torch.no_grad():
        student(val["natural/denoise"][0][:1])
    assert len(record) == 2 and record[0].indices.shape == (1, student.domain_prompt_pool.top_k)
    same = routing_agreement(student, student, val, student.pad_multiple)
    assert same["natural/denoise"] == {"images": 3, "flipped": 0, "drop_flipped_db": None,
                                       "drop_kept_db": 0.0}
    other = copy.deepcopy(student)
    with torch.no_grad():
        other.degradation_prompt_pool.prompt_keys.mul_(-1)  # every query now prefers other prompts
    flips = routing_agreement(student, other, val, student.pad_multiple)["natural/denoise"]
    assert flips["flipped"] == 3 and flips["drop_kept_db"] is None
    exported = routing_agreement(student, torch.nn.Identity(), val, student.pad_multiple)
    assert exported is None  # nothing routes eagerly: no comparison


def test_routing_weight_adds_the_routing_logit_gap(student):
    """With `routing_weight`, QAT's loss includes how far the module's routing logits are from the
    reference's; without it, it does not."""
    from datprl_edge.quantize.loop import as_pairs, train

    moved = copy.deepcopy(student)
    with torch.no_grad():
        w = moved.degradation_mapper.proj.weight
        w.add_(torch.randn(w.shape, generator=torch.Generator().manual_seed(0)))  # other routing logits
    pairs = as_pairs(_calib(), 3)
    first = {}
    for weight in (0.0, 10.0):
        torch.manual_seed(0)
        model = copy.deepcopy(moved)
        first[weight] = train(model, student, pairs, _cfg("onnx", steps=1, lr=0.0, routing_weight=weight))[
            "loss_first"]
    assert first[10.0] > first[0.0] > 0


def test_psnr_distill_loss_weighs_each_image_in_db():
    """"psnr": the mean per-image log10 MSE, so an error costs the same whether the image is
    restored to 20 dB or to 40 dB; "l1" is dominated by the image with the larger residual."""
    from datprl_edge.quantize.loop import PSNR_LOSS_FLOOR, distill_loss

    ref = torch.zeros(2, 1, 8, 8)
    out = ref.clone()
    out[0] += 0.1   # 20 dB
    out[1] += 0.01  # 40 dB
    want = (math.log10(0.01 + PSNR_LOSS_FLOOR) + math.log10(1e-4 + PSNR_LOSS_FLOOR)) / 2
    assert distill_loss(out, ref, "psnr").item() == pytest.approx(want, rel=1e-5)
    assert distill_loss(out, ref, "l1").item() == pytest.approx(0.055, rel=1e-5)
    err = out.abs().mean(dim=(1, 2, 3))
    for kind in ("l1", "psnr"):
        x = out.clone().requires_grad_(True)
        distill_loss(x, ref, kind).backward()
        # the loss change for the same relative change of each image's error
        pull = x.grad.abs().sum(dim=(1, 2, 3)) * err
        share = (pull[1] / pull.sum()).item()
        if kind == "psnr":
            assert share == pytest.approx(0.5, rel=0.02)
        else:
            assert share < 0.1
    with pytest.raises(UnknownChoiceError, match="distill_loss.*did you mean 'psnr'"):
        QATConfig(target="onnx", distill_loss="psnrr")


def test_non_finite_gradient_step_is_skipped(student, onnx_ptq, monkeypatch):
    """A step whose gradient is not finite changes no weight (Adam would carry the NaN into every
    later step) and is counted."""
    from datprl_edge.quantize import loop

    pairs = loop.as_pairs(_calib(), 3)
    model = copy.deepcopy(onnx_ptq.prepared)
    before = {k: v.clone() for k, v in model.state_dict().items() if v.is_floating_point()}
    monkeypatch.setattr(loop, "distill_loss",
                        lambda out, target, kind="l1": (out - target).abs().mean() * float("nan"))
    info = loop.train(model, student, pairs, _cfg("onnx", steps=2, lr=1e-2, gt_weight=0.0))
    assert info["skipped_steps"] == 2
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if "weight" in k or "bias" in k)


def test_selection_keeps_the_best_scored_step(student, onnx_ptq, tmp_path):
    """select_every: the module is scored before the first step and every N steps; the best-scoring
    state is what train leaves (here step 2 of 4), and a resumed run carries the kept state."""
    from datprl_edge.quantize import loop

    pairs = loop.as_pairs(_calib(), 3)
    cfg = _cfg("onnx", steps=4, lr=1e-2, select_every=1, checkpoint_every=3)
    scripted, snapshots = iter([0.5, 0.4, 0.1, 0.3, 0.2]), {}

    def select(prepared):
        snapshots[len(snapshots)] = {k: v.clone() for k, v in prepared.state_dict().items()}
        return next(scripted)

    model = copy.deepcopy(onnx_ptq.prepared)
    info = loop.train(model, student, pairs, cfg, select=select)
    sel = info["selection"]
    assert [s for s, _ in sel["scores"]] == [0, 1, 2, 3, 4] and sel["kept_step"] == 2
    assert sel["kept_score"] == pytest.approx(0.1)
    kept, last = snapshots[2], snapshots[4]
    state = model.state_dict()
    # (torch's observer load resets its `eps` buffer to the dtype's; weights, scales and zero points load)
    assert all(torch.equal(state[k], kept[k]) for k in kept if not k.endswith(".eps"))
    assert any(not torch.equal(kept[k], last[k]) for k in kept if "weight" in k)

    # resumed from the state saved at step 3: the best (step 2) comes back with it
    first = copy.deepcopy(onnx_ptq.prepared)
    scores = iter([0.5, 0.4, 0.1, 0.3, 9.0])
    loop.train(first, student, pairs, cfg, select=lambda p: next(scores), state_dir=tmp_path)
    resumed = copy.deepcopy(onnx_ptq.prepared)
    info = loop.train(resumed, student, pairs, cfg, select=lambda p: 9.0, state_dir=tmp_path)
    assert info["resumed_from"] == 3 and info["selection"]["kept_step"] == 2
    got, want = resumed.state_dict(), first.state_dict()
    assert all(torch.equal(got[k], want[k]) for k in kept if not k.endswith(".eps"))


def test_selection_needs_separate_pairs(student):
    with pytest.raises(ConfigError, match="select_every needs selection pairs"):
        run_qat(student, _cfg("onnx", steps=1, select_every=1), _calib(), val=VAL)
    with pytest.raises(ConfigError, match="select_every must be an integer >= 0"):
        _cfg("onnx", select_every=-1)
