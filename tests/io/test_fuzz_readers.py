"""Fuzzed configs, manifests and recipes: every reader ends in one toolkit error or a valid result,
never another exception (hypothesis)."""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datprl_edge.core.errors import DatprlEdgeError

JSON = st.recursive(st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=True)
                    | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                                max_size=4),
                    max_leaves=12)
FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _one_error(fn, *args):
    try:
        return fn(*args)
    except DatprlEdgeError as e:
        assert str(e).strip()  # the CLI prints it as one line
        return None


@FUZZ
@given(options=st.dictionaries(st.sampled_from(["width", "enc_blk_nums", "middle_blk_num", "dec_blk_nums",
                                                "ffn_expand", "img_channel", "bogus"]), JSON, max_size=4),
       top=st.dictionaries(st.sampled_from(["arch", "options", "stage", "extra", "provenance"]), JSON,
                           max_size=3))
def test_checkpoint_configs(options, top):
    from datprl_edge.io.checkpoint import CheckpointConfig
    from datprl_edge.models.registry import create_model

    text = json.dumps({"format": "datprl-edge-checkpoint/1", "arch": "EdgeDATPRL", "options": options, **top})
    cfg = _one_error(CheckpointConfig.from_json, text)
    if cfg is not None and cfg.arch == "EdgeDATPRL":
        _one_error(lambda: create_model(cfg.arch, **cfg.options))


@FUZZ
@given(text=st.text(max_size=300) | st.lists(
    st.tuples(st.text("0123456789abcdef", min_size=60, max_size=66), st.text(max_size=30)), max_size=4
).map(lambda rows: "\n".join(f"{d}  {n}" for d, n in rows)))
def test_calibration_manifests(tmp_path, text):
    from datprl_edge.data.calib import load_calibration_set

    (tmp_path / "SHA256SUMS").write_text(text, encoding="utf-8")
    (tmp_path / "coverage.json").write_text("{}")
    _one_error(load_calibration_set, tmp_path)


@FUZZ
@given(data=st.dictionaries(st.sampled_from(["qat", "export", "fold", "bench", "eval", "report", "distill",
                                             "seed", "threads"]),
                            st.dictionaries(st.sampled_from(["steps", "crop", "batch_size", "verify_size",
                                                             "shapes", "tasks", "images", "iters", "max_drop",
                                                             "mode", "count", "seconds"]), JSON, max_size=3)
                            | JSON, max_size=3))
def test_pipeline_recipes(data):
    from datprl_edge.pipeline.recipe import parse_recipe

    _one_error(parse_recipe, data)


@pytest.mark.parametrize("value", ["0", "-1", "x", "1e9", "", "  8 ", "99999"])
def test_artifact_metadata_values(value):
    from datprl_edge.runtime.session import ArtifactSession

    class Fake(ArtifactSession):
        def __init__(self):
            from pathlib import Path

            self.path, self.metadata = Path("fake.onnx"), {"pad_multiple": value, "img_channel": value}

    s = Fake()
    for prop in ("pad_multiple", "channels"):
        result = _one_error(lambda p=prop: getattr(s, p))
        assert result is None or isinstance(result, int) and result >= 1
