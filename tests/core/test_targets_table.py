"""The targets table answers every capability question: no module outside the per-target modules
(quantize/, export/, runtime/ <target>.py) branches on a target's name, and the table's fields agree
with those modules."""

import ast
import importlib
import re
from pathlib import Path

import pytest

from datprl_edge.core.targets import (
    BENCH_COMPUTE_UNITS,
    COMPUTE_UNITS,
    PRECISIONS,
    STAGE_API,
    STAGES,
    TARGETS,
    target_for_suffix,
    target_names,
)
from datprl_edge.runtime.session import ArtifactSession

ROOT = Path(__file__).resolve().parents[2]
NAMES = set(target_names())
# The table itself and the modules each target owns may name targets.
ALLOWED = {"datprl_edge/core/targets.py"} | {f"datprl_edge/{stage}/{t}.py" for stage in STAGES for t in NAMES}


def _target_names(node) -> set:
    """Target names written as a string literal, or as literals in a tuple/list/set."""
    items = node.elts if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else [node]
    return {n.value for n in items if isinstance(n, ast.Constant) and n.value in NAMES}


def name_branches(source: str, lookups: bool = True) -> list[str]:
    """Places in `source` that ask a target's name instead of the table: comparisons with a target
    name (==, !=, in), dicts keyed by target names, match cases and (`lookups`) subscripts with a
    literal target name."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            if any(_target_names(operand) for operand in (node.left, *node.comparators)):
                found.append(f"line {node.lineno}: compares with a target name")
        elif isinstance(node, ast.Dict):
            keys = [k.value if isinstance(k, ast.Constant) else None for k in node.keys]
            if len(keys) >= 2 and set(keys) <= NAMES:
                found.append(f"line {node.lineno}: dict keyed by target names")
        elif lookups and isinstance(node, ast.Subscript) and _target_names(node.slice):
            found.append(f"line {node.lineno}: looks up a target name")
        elif isinstance(node, ast.MatchValue) and _target_names(node.value):
            found.append(f"line {node.lineno}: matches a target name")
    return found


def test_the_scan_finds_name_branches():
    snippets = ['if target == "coreml": pass', 'ok = spec.name != "onnx"', 'x = t in ("onnx", "openvino")',
                'S = {"onnx": 1, "openvino": 2}', 'u = TARGETS["coreml"].compute_units',
                'match t:\n    case "openvino": pass']
    for code in snippets:
        assert name_branches(code), code
    clean = ['if spec.needs_macos: pass', 'x = {"onnx": "export", "matplotlib": "report"}',
             'require("onnx", "onnx")', 'y = quant.target == spec.name']
    for code in clean:
        assert not name_branches(code), code


def test_no_module_outside_the_target_modules_branches_on_a_target_name():
    files = sorted((ROOT / "datprl_edge").rglob("*.py")) + sorted((ROOT / "benchmarks").rglob("*.py"))
    leaks = {}
    for path in files:
        rel = path.relative_to(ROOT).as_posix()
        if rel in ALLOWED:
            continue
        # benchmark scripts pick the targets they measure and read their results by name; no branching
        found = name_branches(path.read_text(encoding="utf-8"), lookups=not rel.startswith("benchmarks/"))
        if found:
            leaks[rel] = found
    assert not leaks, f"ask the targets table (core/targets.py TargetSpec) instead: {leaks}"


def test_compute_units_are_written_once():
    pattern = re.compile(r"""["']CPU_AND_NE["']""")
    files = [p for p in (ROOT / "datprl_edge").rglob("*.py") if p.relative_to(ROOT).as_posix() not in ALLOWED]
    assert [p.name for p in files if pattern.search(p.read_text(encoding="utf-8"))] == []
    assert set(BENCH_COMPUTE_UNITS) <= set(COMPUTE_UNITS)


@pytest.mark.parametrize("name", sorted(NAMES))
def test_table_fields_are_consistent(name):
    spec = TARGETS[name]
    assert spec.name == name and spec.label and spec.title
    assert target_for_suffix(f"model{spec.suffix}") is spec
    assert spec.default_precision in spec.precisions and set(spec.precisions) <= set(PRECISIONS)
    assert set(spec.qat_from) <= NAMES - {name}
    assert spec.accepts_qat(name)
    assert set(spec.compute_units) <= set(COMPUTE_UNITS)
    assert re.fullmatch(r"#[0-9a-f]{6}", spec.color)
    for pairs in (spec.export_modules, spec.fp16_modules):
        assert all(len(p) == 2 and all(isinstance(v, str) and v for v in p) for p in pairs)
    assert all(s.startswith(".") and s != spec.suffix for s in spec.sidecars)
    assert len({s.suffix for s in TARGETS.values()}) == len(TARGETS)


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("name", sorted(NAMES))
def test_each_target_has_its_stage_modules(name, stage):
    spec = TARGETS[name]
    assert (ROOT / Path(*spec.module(stage).split("."))).with_suffix(".py").is_file()
    if stage == "quantize":
        pytest.importorskip("torch")
    # backends are imported inside the functions: the modules load without them
    module = importlib.import_module(spec.module(stage))
    missing = [n for n in STAGE_API[stage] if not hasattr(module, n)]
    assert not missing, f"{spec.module(stage)} lacks {missing}"
    if stage == "runtime":
        session = getattr(module, spec.session_class)
        assert issubclass(session, ArtifactSession) and session.target == name
        assert callable(getattr(module, spec.inspect_function))
        assert callable(getattr(module, "available_devices", None)) == spec.lists_devices
        assert callable(getattr(module, "check_structure", None)) == spec.structure_check
