"""Build (or reuse) the artifacts the headline suites time, and say where each came from.

- Student FP32 (ONNX, OpenVINO) and INT8 (ONNX QDQ, OpenVINO): the export stage
  (`datprl_edge.export.driver.export_model`), verified against torch before they are kept. The student is
  `bundled:edge-xs` when the toolkit ships it, else a randomly initialised edge-xs (same graph, same
  cost). INT8 comes from the shipped QAT weights `weights/edge-xs-int8-<target>.safetensors` when
  present, else post-training quantization (0 QAT steps) on calibration pairs of the `all` recipe.
- The student folded for one deployed task (`build_folded`: the prompts baked into the convs for
  the task, e.g. medical/ct_denoise for a CT console), OpenVINO FP32 and INT8, exactly what
  `datprl-edge export --target openvino --precision fp32,int8 --task T --calibration RECIPE` writes:
  INT8 by post-training quantization of the folded float student on the recipe's pairs.
- The released 6T full model (restormer-6t, 53.1 M parameters) in OpenVINO FP32: random weights
  (timing only), `openvino.convert_model(module, example_input=...)` at 1x3x256x256.
"""

from __future__ import annotations

import json
from pathlib import Path

WEIGHTS = Path(__file__).resolve().parent.parent / "datprl_edge" / "weights"
PTQ_RECIPE, PTQ_PAIRS, PTQ_CROP = "all", 1, 128  # INT8 without shipped weights: one pair per task


def student_description(name: str = "edge-xs") -> str:
    if (WEIGHTS / f"{name}.safetensors").exists():
        return f"bundled:{name} (distilled weights shipped with the toolkit, sha256 {student_sha256(name)})"
    return (f"{name}, random initialisation (bundled:{name} was not shipped yet); "
            "same graph and cost as the distilled student")


def student_sha256(name: str = "edge-xs") -> str | None:
    from datprl_edge.io.checkpoint import sha256_file

    path = WEIGHTS / f"{name}.safetensors"
    return sha256_file(path) if path.exists() else None


def student(name: str = "edge-xs"):
    """(float module, description)."""
    import torch

    from datprl_edge.models.registry import create_model
    from datprl_edge.sources import resolve_model

    if (WEIGHTS / f"{name}.safetensors").exists():
        return resolve_model(f"bundled:{name}"), student_description(name)
    torch.manual_seed(0)
    return create_model(name), student_description(name)


def int8_description(target: str, name: str = "edge-xs") -> str:
    shipped = WEIGHTS / f"{name}-int8-{target}.safetensors"
    if shipped.exists():
        from datprl_edge.io.checkpoint import sha256_file

        return f"shipped QAT weights {shipped.name} (sha256 {sha256_file(shipped)[:12]})"
    return (f"post-training quantization (0 QAT steps, calibration recipe {PTQ_RECIPE!r}, "
            f"{PTQ_PAIRS} pair per task at {PTQ_CROP}x{PTQ_CROP}) "
            f"with the {target} quantizer settings of datprl_edge.quantize.qat")


def quantized(model, target: str, name: str = "edge-xs"):
    """(QAT result, description) for an INT8 artifact of `target` (onnx or openvino)."""
    from datprl_edge.quantize.qat import QATConfig, load_qat, run_qat

    shipped = WEIGHTS / f"{name}-int8-{target}.safetensors"
    if shipped.exists():
        return load_qat(shipped), int8_description(target, name)
    from datprl_edge.data.calib import calibration_images

    calib = calibration_images(PTQ_RECIPE, count=PTQ_PAIRS, crop=PTQ_CROP).pairs()
    config = QATConfig(target=target, steps=0, calib_batches=2, batch_size=4, val_images=0, crop=64)
    return run_qat(model, config, calib), int8_description(target, name)


def build_student(out: Path, log=print, name: str = "edge-xs", targets=("onnx", "openvino"),
                  onnx_rewrites: bool = True) -> dict:
    """Export the student `name` FP32 + INT8 to each target in `out`. Artifacts already there are
    reused while their source (recorded in sources-NAME.json) is still the one that would be chosen
    now: shipping bundled or QAT weights later, or a new version of the ONNX rewrites, makes the next
    run rebuild them. `onnx_rewrites` False: ONNX files as traced (`export --plain-onnx`)."""
    from datprl_edge.core.targets import resolve_target
    from datprl_edge.export.driver import ExportConfig, export_model
    from datprl_edge.export.onnx_runtime_graph import REWRITES

    out.mkdir(parents=True, exist_ok=True)
    sources_file = out / f"sources-{name}.json"
    old = json.loads(sources_file.read_text()) if sources_file.exists() else {}
    paths = {f"{t}_{p}": out / f"{name}_{t}_{p}{resolve_target(t).suffix}"
             for t in targets for p in ("fp32", "int8")}
    wanted = {"fp32": student_description(name)}
    for t in targets:
        wanted[f"{t}_int8"] = f"{wanted['fp32']}; INT8 from {int8_description(t, name)}"

    wanted["onnx_graph"] = REWRITES if onnx_rewrites else "as traced (--plain-onnx)"

    def source_key(key):  # the FP32 artifacts share one source entry
        return "fp32" if key.endswith("fp32") else key

    stale = {k for k, p in paths.items() if not p.exists() or old.get(source_key(k)) != wanted[source_key(k)]
             or (k.startswith("onnx") and old.get("onnx_graph") != wanted["onnx_graph"])}
    if stale:
        model, _ = student(name)
        small = dict(verify_images=2, verify_size=(96, 128), model_name=name, overwrite=True,
                     source_sha256=student_sha256(name) or "random-init", onnx_rewrites=onnx_rewrites)
        fp32 = tuple(t for t in targets if f"{t}_fp32" in stale)
        if fp32:
            log(f"exporting {name} at fp32 ({', '.join(fp32)})")
            export_model(model, ExportConfig(targets=fp32, precision="fp32", **small), out)
        for target in targets:
            if f"{target}_int8" in stale:
                log(f"quantizing + exporting {name} at int8 ({target})")
                qat, _ = quantized(model, target, name)
                export_model(qat, ExportConfig(targets=(target,), precision="int8", **small), out)
        sources_file.write_text(json.dumps(wanted, indent=2) + "\n")
    return {"name": name, "paths": {k: str(v) for k, v in paths.items()}, "sources": wanted}


# the deployed task of a suite's folded artifacts, and the calibration recipe of that deployment
DEPLOYMENTS = {"ct_512": ("medical/ct_denoise", "medical-scanner"), "frame_4k": ("remote/dehaze", "drone")}


def build_folded(out: Path, task: str, calibration: str, name: str = "edge-xs", qat_steps: int | None = None,
                 log=print) -> dict:
    """OpenVINO FP32 + INT8 of the student `name` folded for `task` (the export stage's `--task` path:
    INT8 from `qat_steps` of QAT on `calibration`, 0 = PTQ, None = the export's default), reused while
    sources-NAME-TASK.json still names the same source."""
    from datprl_edge.core.artifacts import artifact_stem, safe_name
    from datprl_edge.export.config import ExportConfig
    from datprl_edge.export.driver import export_model
    from datprl_edge.sources import export_sources

    out.mkdir(parents=True, exist_ok=True)
    qat_steps = ExportConfig(task=task, qat_steps=qat_steps).qat_steps
    stem = safe_name(f"{name}-{task}")  # the export stage's name for a folded artifact
    paths = {f"openvino_{p}": out / f"{artifact_stem(stem, 'openvino', p)}.xml" for p in ("fp32", "int8")}
    command = (f"datprl-edge export bundled:{name} --target openvino --precision fp32,int8 --task {task} "
               f"--calibration {calibration}" + (f" --qat-steps {qat_steps}" if qat_steps else ""))
    how = f"{qat_steps} QAT steps" if qat_steps else "post-training quantization"
    wanted = {"fp32": f"{student_description(name)}; folded for {task} on calibration recipe {calibration!r}",
              "int8": f"{how} of the folded float student (recipe {calibration!r})",
              "command": command}
    sources_file = out / f"sources-{stem}.json"
    old = json.loads(sources_file.read_text()) if sources_file.exists() else {}
    if old != wanted or not all(p.exists() for p in paths.values()):
        if not (WEIGHTS / f"{name}.safetensors").exists():
            raise SystemExit(f"folding needs trained weights: bundled:{name} is not shipped")
        log(f"folding {name} for {task} and exporting it (openvino fp32, int8): {command}")
        config = ExportConfig(targets=("openvino",), precision="fp32,int8", task=task,
                              calibration=calibration, qat_steps=qat_steps, verify_images=2,
                              verify_size=(96, 128), model_name=name, overwrite=True)
        for part, model, _ in export_sources(f"bundled:{name}", config):
            export_model(model, part, out)
        sources_file.write_text(json.dumps(wanted, indent=2) + "\n")
    return {"name": stem, "task": task, "calibration": calibration,
            "paths": {k: str(v) for k, v in paths.items()}, "sources": wanted}


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
