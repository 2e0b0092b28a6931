"""datprl-edge: put DATPRL-IR all-in-one image restoration on edge devices.

Importing this package loads torch lazily and no export backend at all (onnx, onnxruntime,
openvino, coremltools, nncf): devices that only run an exported artifact have no torch.
"""

from datprl_edge.core.version import __version__

__all__ = ["__version__", "create_model", "list_models", "load_model"]


def __getattr__(name):
    # Lazy so that `import datprl_edge` stays cheap and torch-free.
    if name in ("create_model", "list_models"):
        from datprl_edge.models import registry

        return getattr(registry, name)
    if name == "load_model":
        from datprl_edge.sources import resolve_model

        return resolve_model
    raise AttributeError(f"module 'datprl_edge' has no attribute {name!r}")
