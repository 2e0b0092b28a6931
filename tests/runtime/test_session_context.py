"""ArtifactSession's context API without a backend: metadata checks, input checks, padding, rows."""

import json
from pathlib import Path

import numpy as np
import pytest

from datprl_edge.core.errors import ArtifactError, ConfigError, NonFiniteInputError
from datprl_edge.runtime.session import ArtifactSession

LAYOUT = [["domain_weights", 3], ["encoders.0.0", 2]]


class Fake(ArtifactSession):
    """An 'artifact' whose output is the input plus the context's first entry (used value) and whose
    context_out is the image mean in every entry; it records the shapes it was fed."""

    def __init__(self, metadata):
        self.path, self.metadata, self.fed = Path("fake.onnx"), metadata, []

    def _infer(self, x):
        return self._infer_context(x, self._zero_context(), self._zero_context())[0]

    def _infer_context(self, x, context, context_mix):
        self.fed.append((x.shape, context.shape))
        own = np.full((1, self.context_size), x.mean(), np.float32)
        used = own + context_mix * (context - own)
        return x + used[0, 0], own


def meta(layout=LAYOUT, **extra):
    out = {"pad_multiple": "8", "img_channel": "3"}
    if layout is not None:
        out.update(context_layout=json.dumps(layout), context_size=str(sum(n for _, n in layout)))
    out.update(extra)
    return out


def test_layout_and_size_from_metadata():
    s = Fake(meta())
    assert s.context_layout == [("domain_weights", 3), ("encoders.0.0", 2)] and s.context_size == 5
    plain = Fake(meta(layout=None))
    assert plain.context_layout == [] and plain.context_size == 0


@pytest.mark.parametrize("bad", ["[[", '{"a": 1}', '[["a"]]', '[["a", 0]]', '[["a", 1.5]]', '[[1, 2]]'])
def test_damaged_layout_is_one_artifact_error(bad):
    with pytest.raises(ArtifactError, match="context_layout") as e:
        _ = Fake(meta(context_layout=bad)).context_layout
    assert "\n" not in str(e.value)


def test_size_must_match_layout():
    with pytest.raises(ArtifactError, match="context_size"):
        _ = Fake(meta(context_size="7")).context_size
    with pytest.raises(ArtifactError, match="context_size"):
        _ = Fake(meta(context_size="x")).context_size


def test_run_feeds_zero_context_and_crops():
    s = Fake(meta())
    x = np.random.default_rng(0).random((2, 3, 13, 17), dtype=np.float32)
    y = s.run(x)
    assert y.shape == x.shape and s.fed[0] == ((1, 3, 16, 24), (1, 5))


def test_run_with_context_rows_padding_and_own():
    s = Fake(meta())
    x = np.random.default_rng(0).random((2, 3, 13, 17), dtype=np.float32)
    context = np.array([[0.5] * 5, [2.0] * 5], np.float32)
    y, own = s.run_with_context(x, context, np.ones((2, 5), np.float32))
    assert y.shape == x.shape and own.shape == (2, 5)
    assert np.allclose(y[0], x[0] + 0.5) and np.allclose(y[1], x[1] + 2.0)  # each image its own row
    y1, _ = s.run_with_context(x, context[:1], np.ones((1, 5), np.float32))  # one row for all
    assert np.allclose(y1, x + 0.5)
    y0, own0 = s.run_with_context(x, context, np.zeros((2, 5), np.float32))
    assert np.allclose(y0, s.run(x)) and np.allclose(own0, own)


@pytest.mark.parametrize("context, mix, error, match", [
    (np.zeros((2, 4), np.float32), np.zeros((2, 5), np.float32), ConfigError, r"context must be an \(N, 5\)"),
    (np.zeros((3, 5), np.float32), np.zeros((2, 5), np.float32), ConfigError, "N = 2"),
    (np.zeros(5, np.float32), np.zeros((2, 5), np.float32), ConfigError, "context must be"),
    (np.zeros((2, 5), np.float32), [[0.0] * 5] * 2, ConfigError, "context_mix must be a numpy array"),
    (np.full((2, 5), np.nan, np.float32), np.zeros((2, 5), np.float32), NonFiniteInputError, "context holds"),
    (np.zeros((2, 5), np.float32), np.full((2, 5), np.inf, np.float32), NonFiniteInputError, "context_mix"),
])
def test_context_inputs_are_checked(context, mix, error, match):
    x = np.zeros((2, 3, 8, 8), np.float32)
    with pytest.raises(error, match=match):
        Fake(meta()).run_with_context(x, context, mix)


def test_artifact_without_context_refuses_run_with_context():
    with pytest.raises(ConfigError, match="no context inputs"):
        Fake(meta(layout=None)).run_with_context(np.zeros((1, 3, 8, 8), np.float32),
                                                 np.zeros((1, 0), np.float32), np.zeros((1, 0), np.float32))


def test_static_size_applies_to_run_with_context():
    s = Fake(meta())
    s.static_hw = (16, 16)
    with pytest.raises(ConfigError, match="16x16"):
        s.run_with_context(np.zeros((1, 3, 8, 8), np.float32), np.zeros((1, 5), np.float32),
                           np.zeros((1, 5), np.float32))


def test_missing_context_tensors_are_an_artifact_error():
    with pytest.raises(ArtifactError, match="context, context_mix, context_out"):
        Fake(meta())._check_io(["input"], ["output"])
    Fake(meta(layout=None))._check_io(["input"], ["output"])
