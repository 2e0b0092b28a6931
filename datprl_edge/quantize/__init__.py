"""Stage quantize: INT8 quantization-aware training with each target's own quantizer
(`qat.run_qat`; `onnx.py`, `openvino.py`, `coreml.py` hold the per-target schemes)."""
