"""Build (or reuse) the artifacts the headline suites time, and say where each came from.

- Student FP32 (ONNX, OpenVINO) and INT8 (ONNX QDQ, OpenVINO): the export stage
  (`datprl_edge.export.export_model`), verified against torch before they are kept. The student is
  `bundled:edge-xs` when the toolkit ships it, else a randomly initialised edge-xs (same graph, same
  cost). INT8 comes from the shipped QAT weights `weights/edge-xs-int8-<target>.safetensors` when
  present, else post-training quantization (0 QAT steps) on bundled sample crops.
- The released 6T full model (restormer-6t, 53.1 M parameters) in OpenVINO FP32: random weights
  (timing only), `openvino.convert_model(module, example_input=...)` at 1x3x256x256.
"""

from __future__ import annotations

import json
from pathlib import Path

WEIGHTS = Path(__file__).resolve().parent.parent / "datprl_edge" / "weights"


def student():
    """(float module, description)."""
    import torch

    from datprl_edge.models.loading import load_model
    from datprl_edge.models.registry import create_model

    if (WEIGHTS / "edge-xs.safetensors").exists():
        return load_model("bundled:edge-xs"), "bundled:edge-xs (distilled weights shipped with the toolkit)"
    torch.manual_seed(0)
    return create_model("edge-xs"), ("edge-xs, random initialisation (bundled:edge-xs was not shipped yet); "
                                     "same graph and cost as the distilled student")


def calibration_images(count: int = 8, size: int = 128):
    """(1, 3, size, size) crops of the bundled 'train' samples, float32 in [0, 1]."""
    import numpy as np

    from datprl_edge.data.samples import list_samples, load_sample

    out = []
    for s in list_samples(split="train")[:: max(1, len(list_samples(split="train")) // count)][:count]:
        img = load_sample(s)
        top, left = (img.shape[0] - size) // 2, (img.shape[1] - size) // 2
        crop = img[max(top, 0):max(top, 0) + size, max(left, 0):max(left, 0) + size]
        out.append(np.ascontiguousarray(crop.transpose(2, 0, 1)[None], dtype=np.float32))
    return out


def quantized(model, target: str):
    """(QAT result, description) for an INT8 artifact of `target` (onnx or openvino)."""
    from datprl_edge.qat import QATConfig, load_qat, run_qat

    shipped = WEIGHTS / f"edge-xs-int8-{target}.safetensors"
    if shipped.exists():
        return load_qat(shipped), f"shipped QAT weights {shipped.name}"
    calib = [x[0] for x in calibration_images()]
    config = QATConfig(target=target, steps=0, calib_batches=2, batch_size=4, val_images=0, crop=64)
    return run_qat(model, config, calib), ("post-training quantization (0 QAT steps, 8 bundled sample crops) "
                                           f"with the {target} quantizer settings of datprl_edge.qat")


def build_student(out: Path, log=print) -> dict:
    """Export the student FP32 + INT8 to ONNX and OpenVINO in `out`; reuse what is already there."""
    from datprl_edge.export import ExportConfig, export_model

    out.mkdir(parents=True, exist_ok=True)
    sources_file = out / "sources.json"
    sources = json.loads(sources_file.read_text()) if sources_file.exists() else {}
    paths = {(t, p): out / f"edge-xs_{t}_{p}{'.onnx' if t == 'onnx' else '.xml'}"
             for t in ("onnx", "openvino") for p in ("fp32", "int8")}
    if all(p.exists() for p in paths.values()) and sources:
        return {"paths": {f"{t}_{p}": str(v) for (t, p), v in paths.items()}, "sources": sources}
    model, description = student()
    small = dict(verify_images=2, verify_size=(96, 128), model_name="edge-xs", overwrite=True)
    if not (paths[("onnx", "fp32")].exists() and paths[("openvino", "fp32")].exists()):
        log("exporting the student at fp32 (onnx, openvino)")
        export_model(model, ExportConfig(targets=("onnx", "openvino"), precision="fp32", **small), out)
    sources["fp32"] = description
    for target in ("onnx", "openvino"):
        if not paths[(target, "int8")].exists():
            log(f"quantizing + exporting the student at int8 ({target})")
            qat, how = quantized(model, target)
            export_model(qat, ExportConfig(targets=(target,), precision="int8", **small), out)
            sources[f"{target}_int8"] = f"{description}; INT8 from {how}"
    sources_file.write_text(json.dumps(sources, indent=2) + "\n")
    return {"paths": {f"{t}_{p}": str(v) for (t, p), v in paths.items()}, "sources": sources}


def build_full_model(out: Path, size: int = 256, log=print) -> dict:
    """restormer-6t (random weights) as an OpenVINO FP32 IR at 1x3xSIZExSIZE."""
    path = out / f"restormer-6t_openvino_fp32_{size}.xml"
    how = ("openvino.convert_model(create_model('restormer-6t'), "
           f"example_input=torch.rand(1, 3, {size}, {size})), random weights (timing only), "
           "saved without FP16 compression")
    if path.exists():
        return {"path": str(path), "source": how}
    import openvino as ov
    import torch

    from datprl_edge.models.registry import create_model

    log("converting restormer-6t to OpenVINO (random weights)")
    torch.manual_seed(0)
    module = create_model("restormer-6t").eval()
    params = sum(p.numel() for p in module.parameters())
    with torch.no_grad():
        model = ov.convert_model(module, example_input=torch.rand(1, 3, size, size),
                                 input=[ov.PartialShape([1, 3, size, size])])
    for key, value in {"model_name": "restormer-6t", "target": "openvino", "precision": "fp32",
                       "img_channel": "3", "pad_multiple": "8", "parameters": str(params),
                       "weights": "random (timing only)"}.items():
        model.set_rt_info(value, ["datprl_edge", key])
    out.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(path), compress_to_fp16=False)
    return {"path": str(path), "source": how, "parameters": params}
