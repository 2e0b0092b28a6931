"""datprl-edge: put DATPRL-IR all-in-one image restoration on edge devices.

Importing this package loads torch lazily and no export backend at all (onnx, onnxruntime,
openvino, coremltools, nncf): devices that only run an exported artifact have no torch.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "create_model", "list_models", "load_model"]


def __getattr__(name):
    # Lazy so that `import datprl_edge` stays cheap and torch-free.
    if name in ("create_model", "list_models"):
        from .models import registry

        return getattr(registry, name)
    if name == "load_model":
        from .models.loading import load_model

        return load_model
    raise AttributeError(f"module 'datprl_edge' has no attribute {name!r}")
