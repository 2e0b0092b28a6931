"""Fixtures shared by the export tests."""

import pytest


@pytest.fixture(scope="module")
def model():
    """An untrained edge-xs student (seed 0): export must reproduce any weights."""
    import torch

    from datprl_edge.models.registry import create_model

    torch.manual_seed(0)
    return create_model("edge-xs")
