"""Registers the "QuantizedModel" architecture: a saved QAT result (stage "qat" checkpoint).

Building it re-runs the target's prepare on a fresh base model (see `datprl_edge.quantize.qat`), so that
`load_model` can load a QAT checkpoint's fake-quant state like any other toolkit checkpoint.
"""

from __future__ import annotations

from datprl_edge.models.registry import register_arch


# the saved program is re-prepared with a forward pass on a base built (and size-checked) by create_model
@register_arch("QuantizedModel", builds_checked_models=True)
def build_quantized_model(**options):
    from datprl_edge.quantize.qat import build_quantized

    return build_quantized(**options)
