"""Build (or reuse) the artifacts the headline suites time, and say where each came from.

- Student FP32 (ONNX, OpenVINO) and INT8 (ONNX QDQ, OpenVINO): the export stage
  (`datprl_edge.export.driver.export_model`), verified against torch before they are kept. The student is
  `bundled:edge-xs` when the toolkit ships it, else a randomly initialised edge-xs (same graph, same
  cost). INT8 comes from the shipped QAT weights `weights/edge-xs-int8-<target>.safetensors` when
  present, else post-training quantization (0 QAT steps) on calibration pairs of the `all` recipe.
- The released 6T full model (restormer-6t, 53.1 M parameters) in OpenVINO FP32: random weights
  (timing only), `openvino.convert_model(module, example_input=...)` at 1x3x256x256.
"""

from __future__ import annotations

import json
from pathlib import Path

WEIGHTS = Path(__file__).resolve().parent.parent / "datprl_edge" / "weights"
PTQ_RECIPE, PTQ_PAIRS, PTQ_CROP = "all", 1, 128  # INT8 without shipped weights: one pair per task


def student_description() -> str:
    if (WEIGHTS / "edge-xs.safetensors").exists():
        return f"bundled:edge-xs (distilled weights shipped with the toolkit, sha256 {student_sha256()})"
    return ("edge-xs, random initialisation (bundled:edge-xs was not shipped yet); "
            "same graph and cost as the distilled student")


def student_sha256() -> str | None:
    from datprl_edge.io.checkpoint import sha256_file

    path = WEIGHTS / "edge-xs.safetensors"
    return sha256_file(path) if path.exists() else None


def student():
    """(float module, description)."""
    import torch

    from datprl_edge.models.registry import create_model
    from datprl_edge.sources import resolve_model

    if (WEIGHTS / "edge-xs.safetensors").exists():
        return resolve_model("bundled:edge-xs"), student_description()
    torch.manual_seed(0)
    return create_model("edge-xs"), student_description()


def int8_description(target: str) -> str:
    shipped = WEIGHTS / f"edge-xs-int8-{target}.safetensors"
    if shipped.exists():
        from datprl_edge.io.checkpoint import sha256_file

        return f"shipped QAT weights {shipped.name} (sha256 {sha256_file(shipped)[:12]})"
    return (f"post-training quantization (0 QAT steps, calibration recipe {PTQ_RECIPE!r}, "
            f"{PTQ_PAIRS} pair per task at {PTQ_CROP}x{PTQ_CROP}) "
            f"with the {target} quantizer settings of datprl_edge.quantize.qat")


def quantized(model, target: str):
    """(QAT result, description) for an INT8 artifact of `target` (onnx or openvino)."""
    from datprl_edge.quantize.qat import QATConfig, load_qat, run_qat

    shipped = WEIGHTS / f"edge-xs-int8-{target}.safetensors"
    if shipped.exists():
        return load_qat(shipped), int8_description(target)
    from datprl_edge.data.calib import calibration_images

    calib = calibration_images(PTQ_RECIPE, count=PTQ_PAIRS, crop=PTQ_CROP).pairs()
    config = QATConfig(target=target, steps=0, calib_batches=2, batch_size=4, val_images=0, crop=64)
    return run_qat(model, config, calib), int8_description(target)


def build_student(out: Path, log=print) -> dict:
    """Export the student FP32 + INT8 to ONNX and OpenVINO in `out`. Artifacts already there are
    reused while their source (recorded in sources.json) is still the one that would be chosen now:
    shipping bundled or QAT weights later makes the next run rebuild them."""
    from datprl_edge.core.targets import resolve_target
    from datprl_edge.export.driver import ExportConfig, export_model

    out.mkdir(parents=True, exist_ok=True)
    sources_file = out / "sources.json"
    old = json.loads(sources_file.read_text()) if sources_file.exists() else {}
    paths = {f"{t}_{p}": out / f"edge-xs_{t}_{p}{resolve_target(t).suffix}"
             for t in ("onnx", "openvino") for p in ("fp32", "int8")}
    wanted = {"fp32": student_description()}
    for t in ("onnx", "openvino"):
        wanted[f"{t}_int8"] = f"{wanted['fp32']}; INT8 from {int8_description(t)}"

    def source_key(name):  # both FP32 artifacts share one source entry
        return "fp32" if name.endswith("fp32") else name

    stale = {k for k, p in paths.items() if not p.exists() or old.get(source_key(k)) != wanted[source_key(k)]}
    if stale:
        model, _ = student()
        small = dict(verify_images=2, verify_size=(96, 128), model_name="edge-xs", overwrite=True,
                     source_sha256=student_sha256() or "random-init")
        if stale & {"onnx_fp32", "openvino_fp32"}:
            log("exporting the student at fp32 (onnx, openvino)")
            export_model(model, ExportConfig(targets=("onnx", "openvino"), precision="fp32", **small), out)
        for target in ("onnx", "openvino"):
            if f"{target}_int8" in stale:
                log(f"quantizing + exporting the student at int8 ({target})")
                qat, _ = quantized(model, target)
                export_model(qat, ExportConfig(targets=(target,), precision="int8", **small), out)
        sources_file.write_text(json.dumps(wanted, indent=2) + "\n")
    return {"paths": {k: str(v) for k, v in paths.items()}, "sources": wanted}


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
