"""benchmarks/isa_cap.py caps oneDNN and OpenVINO together (one without the other makes the CPU plugin
disagree with itself) and leaves the environment alone for the native runs."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import isa_cap  # noqa: E402


def test_both_variables_are_set_together_and_dropped_for_native_runs(monkeypatch):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE")  # a stale cap from the caller's shell
    capped = isa_cap.cap_env("AVX2")
    assert capped["ONEDNN_MAX_CPU_ISA"] == capped["OV_CPU_MAX_ISA"] == "AVX2"
    native = isa_cap.cap_env(None)
    assert not {"ONEDNN_MAX_CPU_ISA", "OV_CPU_MAX_ISA"} & set(native) and native["PATH"]


def test_every_cap_names_the_wider_kernels_it_rules_out():
    assert set(isa_cap.WIDER) >= {"AVX2"} and "avx512" in isa_cap.WIDER["AVX2"]
