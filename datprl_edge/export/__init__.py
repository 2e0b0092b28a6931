"""Stage export: write verified ONNX, OpenVINO and Core ML artifacts (`driver.export_model`;
one exporter per target in `onnx.py`, `openvino.py`, `coreml.py`)."""
