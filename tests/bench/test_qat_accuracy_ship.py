"""benchmarks/qat_accuracy.py --ship picks the variant with the smallest worst-task drop, never one
whose float-layer search left no INT8 layer."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from qat_accuracy import ship_choice  # noqa: E402


def _row(**drops):
    return {k: {"drop_db": {"worst": v}} for k, v in drops.items()}


def test_smallest_worst_drop_wins_and_ties_go_to_the_later_variant():
    assert ship_choice(_row(ptq=0.2, qat=0.05), ["ptq", "qat"]) == "qat"
    assert ship_choice(_row(ptq=0.05, qat=0.05), ["ptq", "qat"]) == "qat"
    assert ship_choice(_row(ptq=0.03, qat=0.05), ["ptq", "qat"]) == "ptq"


def test_an_all_float_search_result_is_never_shipped():
    row = _row(ptq=0.22, qat=0.15, qat_mixed=0.01)
    row["qat_mixed"]["sensitivity"] = {"all_float": True}
    assert ship_choice(row, ["ptq", "qat", "qat_mixed"]) == "qat"
    row["qat_mixed"]["sensitivity"] = {"all_float": False}
    assert ship_choice(row, ["ptq", "qat", "qat_mixed"]) == "qat_mixed"
