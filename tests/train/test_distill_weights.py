"""The shipped weights: present, small, described in the MANIFEST, loadable by name, and useful."""

import json

import numpy as np
import pytest
import torch

from datprl_edge.io.checkpoint import sha256_file
from datprl_edge.models.loading import WEIGHTS_DIR, load_model
from datprl_edge.models.registry import resolve

SHIPPED = {"teacher-ref": ("restormer-ref", "teacher"), "edge-xs": ("edge-xs", "distilled"),
           "edge-q8": ("edge-q8", "distilled")}


def _manifest():
    return json.loads((WEIGHTS_DIR / "MANIFEST.json").read_text())["files"]


def test_shipped_weights_are_at_most_20_mb_and_match_the_manifest():
    manifest = _manifest()
    total = 0
    for name in SHIPPED:
        path = WEIGHTS_DIR / f"{name}.safetensors"
        entry = manifest[path.name]
        assert entry["sha256"] == sha256_file(path)
        assert entry["bytes"] == path.stat().st_size
        assert "datprl-edge distill " in entry["command"] or entry["command"].startswith("datprl-edge ")
        assert entry["steps"] > 0 and entry["data"]
        total += path.stat().st_size
    assert total <= 20 * 1024 * 1024


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_bundled_weights_load_by_name_with_their_registry_options(name):
    model = load_model(f"bundled:{name}")
    registry_name, stage = SHIPPED[name]
    arch, options = resolve(registry_name)
    cfg = model.datprl_checkpoint
    assert (cfg.arch, cfg.stage) == (arch, stage)
    assert {k: cfg.options[k] for k in options} == options
    assert cfg.provenance["steps"] == _manifest()[f"{name}.safetensors"]["steps"]


@pytest.mark.parametrize("name", ["edge-xs", "edge-q8"])
def test_distilled_student_restores_better_than_its_input(name):
    from datprl_edge.core.metrics import image_metrics
    from datprl_edge.data.datasets import validation_set
    from datprl_edge.data.tasks import task_set

    model = load_model(f"bundled:{name}")
    gains = []
    for task in task_set("9task"):
        lq, gt = validation_set(getattr(task, "id", task), count=2, size=64, seed=0).tensors()
        with torch.no_grad():
            out = model(lq)
        for o, g, x in zip(out, gt, lq):
            o, g, x = (t.permute(1, 2, 0).numpy() for t in (o, g, x))
            gains.append(image_metrics(g, o)[0] - image_metrics(g, x)[0])
    assert np.mean(gains) > 0.5


SHIPPED_INT8 = sorted(p.name for p in WEIGHTS_DIR.glob("*-int8-*.safetensors"))


def test_every_student_target_pair_we_document_is_shipped():
    expected = {f"edge-xs-int8-{t}.safetensors" for t in ("onnx", "openvino", "coreml")}
    expected |= {f"edge-q8-int8-{t}.safetensors" for t in ("onnx", "openvino", "coreml")}
    assert expected | {"edge-lat-int8-openvino.safetensors"} == set(SHIPPED_INT8)


@pytest.mark.parametrize("name", SHIPPED_INT8)
def test_shipped_int8_weights_load_and_stay_close_to_the_float_student(name):
    from datprl_edge.core.metrics import psnr
    from datprl_edge.quantize.qat import load_qat
    from datprl_edge.quantize.scope import frozen_observers

    student, target = name.removesuffix(".safetensors").split("-int8-")
    path = WEIGHTS_DIR / name
    entry = _manifest()[path.name]
    assert entry["sha256"] == sha256_file(path) and entry["target"] == target
    assert entry["base_sha256"] == _manifest()[f"{student}.safetensors"]["sha256"]
    assert entry["base"] == f"bundled:{student}" and entry["worst_task_drop_db"] <= 0.1
    result = load_qat(path)
    assert result.target == target
    from datprl_edge.data.datasets import validation_set

    lq, _ = validation_set("medical/ct_denoise", count=1, size=64, seed=0).tensors()
    from datprl_edge.quantize.feed import run_image

    with torch.no_grad(), frozen_observers(result.prepared):  # zero context where the program takes one
        int8, fp32 = run_image(result.prepared, lq), load_model(f"bundled:{student}")(lq)
    int8, fp32 = (t[0].clamp(0, 1).permute(1, 2, 0).numpy() for t in (int8, fp32))
    assert psnr(fp32, int8) > 35  # INT8 noise against the FP32 output, not a different model
