"""core/shapes.py: the one reader and writer of "HxW" sizes and "BxCxHxW" shapes."""

import pytest

from datprl_edge.core.errors import ConfigError
from datprl_edge.core.shapes import (
    MAX_SIDE,
    format_dims,
    format_shapes,
    parse_dims,
    parse_hw,
    parse_shapes,
)


@pytest.mark.parametrize("value, expected", [
    ("256x256", (256, 256)), ("64x48", (64, 48)), ("64X48", (64, 48)), ("64*48", (64, 48)),
    (" 64 x 48 ", (64, 48)), ("512", (512, 512)), (512, (512, 512)), ([40, 48], (40, 48)),
    ((40, 48), (40, 48)), (["40", "48"], (40, 48)), (f"1x{MAX_SIDE}", (1, MAX_SIDE)),
])
def test_parse_hw_accepts_every_form(value, expected):
    assert parse_hw(value) == expected


@pytest.mark.parametrize("value, message", [
    ("big", "must look like HxW"), ("1x2x3", "must look like HxW"), ("", "must look like HxW"),
    ("0x64", "between 1 and 16384 pixels per side, got 0x64"), (f"{MAX_SIDE + 1}", "pixels per side"),
    ("-5", "pixels per side"), ([1, 2, 3], "must be (height, width)"), (["a", "b"], "(height, width)"),
])
def test_parse_hw_errors_are_one_line_and_name_the_option(value, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
        parse_hw(value, "--size")
    assert str(e.value).startswith("--size ") and "\n" not in str(e.value)


def test_parse_dims():
    assert parse_dims("1x3x256x256") == (1, 3, 256, 256)
    assert parse_dims("2*1*8*8") == (2, 1, 8, 8)
    for bad in ("1x3x256", "1x3x256x256x1", "1x3x0x256", "axbxcxd"):
        with pytest.raises(ConfigError, match=r"--shape takes BxCxHxW, e\.g\. 1x3x256x256"):
            parse_dims(bad)
    with pytest.raises(ConfigError, match="--tile takes HxW"):
        parse_dims("8", form="HxW", what="--tile", example="256x256")


def test_format_and_parse_shapes_round_trip():
    assert format_dims((1, 3, 64, 48)) == "1x3x64x48"
    assert format_shapes([]) == "dynamic" and parse_shapes("dynamic") == [] and parse_shapes("") == []
    shapes = [(256, 256), (512, 384)]
    assert format_shapes(shapes) == "256x256,512x384"
    assert parse_shapes(format_shapes(shapes)) == shapes
