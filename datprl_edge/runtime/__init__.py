"""Torch-free sessions for exported artifacts (`sessions.open_artifact`): numpy and one runtime
per target (`onnx.py`, `openvino.py`, `coreml.py`)."""
