"""The environment fingerprint recorded with every benchmark: CPU, cores, memory, OS, versions.

Standard library only (psutil when installed), so it runs on devices without torch.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path

PACKAGES = ("datprl-edge", "numpy", "onnxruntime", "openvino", "coremltools", "scikit-image", "torch")
# CPU features that decide which kernels the runtimes pick (bf16/int8 dot products, AVX-512).
CPU_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16",
             "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "neon", "asimd", "sve")


def environment() -> dict:
    """A fingerprint of this machine; keys with unknown values hold None."""
    cpu = cpu_info()
    return {
        "cpu_model": cpu["model"],
        "cpu_flags": cpu["flags"],
        "isa": isa_summary(cpu["flags"]),
        "physical_cores": cpu["physical_cores"],
        "logical_cpus": os.cpu_count(),
        "available_cpus": available_cpus(),
        "cgroup_cpu_quota": cgroup_cpu_quota(),
        "memory_total_mb": memory_total_mb(),
        "os": platform.platform(),
        "machine": platform.machine(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "versions": package_versions(),
        "load_average": load_average(),
    }


RUNTIMES = ("onnxruntime", "openvino", "coremltools")


def host_label(env: dict) -> str:
    """A short name of the machine a benchmark ran on: CPU model, INT8 ISA, OS and runtime versions."""
    env = env or {}
    cpu = env.get("cpu_model") or env.get("machine") or "unknown CPU"
    isa = str(env.get("isa") or "").split(" (")[0]
    system = str(env.get("os") or "").split("-")[0] or "unknown OS"
    versions = env.get("versions") or {}
    runtimes = ", ".join(f"{name} {versions[name]}" for name in RUNTIMES if versions.get(name))
    return " | ".join(part for part in (cpu, isa, system, runtimes) if part)


def int8_pairs_saturate(flags) -> bool:
    """True on an x86 CPU whose u8 x s8 kernels add product pairs in saturating int16 (AVX2 without
    VNNI): there an int8 weight above 64 in magnitude can clip a sum (255 * 2 * 64 = 32640 fits)."""
    flags = set(flags or ())
    return "avx2" in flags and not flags & {"avx512_vnni", "avx_vnni", "amx_int8"}


def isa_summary(flags) -> str:
    """How an x86 CPU runs uint8 x int8 dot products, the kernels INT8 artifacts use."""
    flags = set(flags or ())
    if "amx_int8" in flags:
        return "AMX-INT8 (int8 tiles), AVX-512 VNNI"
    if "avx512_vnni" in flags or "avx_vnni" in flags:
        width = "AVX-512" if "avx512_vnni" in flags else "AVX"
        return f"{width} VNNI (int8 dot products accumulate in int32)"
    if "avx2" in flags:
        return ("AVX2 without VNNI (int8 pairs add in saturating int16: VPMADDUBSW)"
                + ("; AVX-512F" if "avx512f" in flags else ""))
    if "neon" in flags or "asimd" in flags:
        return "Arm NEON"
    return "no AVX2 (generic int8 kernels)"


def isa_block() -> dict:
    """The CPU part of `environment()`: what decides which INT8 kernels run."""
    cpu = cpu_info()
    return {"cpu_model": cpu["model"], "cpu_flags": cpu["flags"], "isa": isa_summary(cpu["flags"])}


def available_cpus() -> int | None:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count()


def default_threads() -> int:
    """All cores this process may use."""
    return max(1, available_cpus() or 1)


def load_average() -> list | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def cpu_clock() -> dict | None:
    """The machine's CPU time so far, in seconds summed over CPUs (busy, idle, stolen by the hypervisor),
    and this process's own (all its threads); None where /proc/stat is missing (not Linux)."""
    text = _read("/proc/stat")
    if not text or not text.startswith("cpu "):
        return None
    fields = [int(v) for v in text.splitlines()[0].split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = fields + [0] * (8 - len(fields))
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    own = os.times()
    return {"busy": (user + nice + system + irq + softirq) / tick, "idle": (idle + iowait) / tick,
            "steal": steal / tick, "own": own.user + own.system}


def cpu_share_between(before: dict | None, after: dict | None) -> dict | None:
    """What else the CPUs did between two `cpu_clock()` readings, as shares of all CPU time: other
    processes' busy time (another job competing for the cores) and time the hypervisor gave to other
    guests (steal). Either share well above 0 means the timings of that interval are suspect."""
    if not before or not after:
        return None
    delta = {k: after[k] - before[k] for k in before}
    total = delta["busy"] + delta["idle"] + delta["steal"]
    if total <= 0:
        return None
    return {"other_processes": round(max(0.0, delta["busy"] - delta["own"]) / total, 4),
            "steal": round(delta["steal"] / total, 4)}


def package_versions(names=PACKAGES) -> dict:
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def cpu_info() -> dict:
    info = {"model": None, "flags": [], "physical_cores": None}
    cpuinfo = _read("/proc/cpuinfo")
    if cpuinfo:
        cores, flags = set(), set()
        phys = core = None
        for line in cpuinfo.splitlines():
            key, _, value = line.partition(":")
            key, value = key.strip(), value.strip()
            if key in ("model name", "Model", "Hardware") and not info["model"]:
                info["model"] = value
            elif key in ("flags", "Features"):
                flags.update(value.split())
            elif key == "physical id":
                phys = value
            elif key == "core id":
                core = value
            elif not key and core is not None:
                cores.add((phys, core))
                phys = core = None
        if core is not None:
            cores.add((phys, core))
        info["flags"] = [f for f in CPU_FLAGS if f in flags]
        info["physical_cores"] = len(cores) or None
    elif sys.platform == "darwin":
        info["model"] = _sysctl("machdep.cpu.brand_string")
        cores = _sysctl("hw.physicalcpu")
        info["physical_cores"] = int(cores) if cores and cores.isdigit() else None
        if platform.machine() == "arm64":
            info["flags"] = ["neon"]
    if not info["model"]:
        info["model"] = platform.processor() or None
    if info["physical_cores"] is None:
        try:
            import psutil

            info["physical_cores"] = psutil.cpu_count(logical=False)
        except ImportError:
            pass
    return info


def memory_total_mb() -> int | None:
    meminfo = _read("/proc/meminfo")
    for line in (meminfo or "").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    if sys.platform == "darwin":
        value = _sysctl("hw.memsize")
        return int(value) // (1024 * 1024) if value and value.isdigit() else None
    return None


def cgroup_cpu_quota() -> float | None:
    """CPUs allowed by a cgroup v2 quota (containers), None when unlimited or unknown."""
    text = _read("/sys/fs/cgroup/cpu.max")
    if not text:
        return None
    quota, _, period = text.strip().partition(" ")
    if quota == "max" or not period:
        return None
    try:
        return round(int(quota) / int(period), 2)
    except ValueError:
        return None


def _read(path) -> str | None:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def _sysctl(name) -> str | None:
    try:
        out = subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None
