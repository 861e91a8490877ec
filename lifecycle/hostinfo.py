"""Facts about this host: CPU cores, CPU model and ISA flags, RAM.

The bottom layer (no engine, no llama_cpp): bench, doctor, run records and the llama.cpp
engine all read the host from here, so importing any of them never needs llama_cpp and
the CPU model is read one way everywhere.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import sys
from pathlib import Path
from typing import Any


def physical_cores() -> int:
    """Physical CPU cores: llama.cpp's default thread count and the one runs record."""
    import psutil

    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def cpu_info() -> tuple[str, set[str]]:
    """The CPU model name and its ``/proc/cpuinfo`` flags (empty where there is no such file)."""
    model, flags = "", set[str]()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name") and not model:
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return model or platform.processor() or platform.machine(), flags


def ram_bytes() -> int:
    """Total physical memory."""
    import psutil

    return int(psutil.virtual_memory().total)


def available_memory() -> int:
    import psutil

    return int(psutil.virtual_memory().available)


def reset_peak_rss() -> None:
    """Start the peak-RSS high-water mark afresh (Linux >= 4.0; elsewhere a no-op)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5", encoding="ascii")


def peak_rss() -> int:
    """The process's peak RSS: VmHWM on Linux (resettable), else ``ru_maxrss``."""
    try:
        for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if platform.system() == "Darwin" else peak * 1024)  # Linux reports KiB


def last_level_cache_bytes() -> int | None:
    """The machine's last-level CPU cache, summed over its instances (Linux sysfs; else None).

    On a many-chiplet CPU each chiplet has its own L3; their sum is what a multi-threaded
    decode can keep in cache, which is why a model smaller than it can beat RAM bandwidth.
    """
    seen: dict[tuple[int, str], int] = {}
    root = Path("/sys/devices/system/cpu")
    for index in root.glob("cpu[0-9]*/cache/index[0-9]*"):
        try:
            level = int((index / "level").read_text().strip())
            if (index / "type").read_text().strip() == "Instruction":
                continue
            text = (index / "size").read_text().strip().upper()
            shared = (index / "shared_cpu_list").read_text().strip()
        except (OSError, ValueError):
            continue
        scale = {"K": 1024, "M": 1024**2, "G": 1024**3}.get(text[-1:], 1)
        try:
            size = int(text.rstrip("KMG")) * scale
        except ValueError:
            continue
        seen[(level, shared)] = size
    if not seen:
        return None
    top = max(level for level, _ in seen)
    return sum(size for (level, _), size in seen.items() if level == top)


# CPU features that decide which ggml kernels a build may contain (/proc/cpuinfo names).
ISA_FLAGS = (
    "avx",
    "avx2",
    "fma",
    "f16c",
    "bmi2",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512vbmi",
    "avx_vnni",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
)


def host_cpu() -> dict[str, Any]:
    """CPU model, the ISA flags that matter to ggml, and whether AMX is usable here."""
    model, flags = cpu_info()
    advertised = "amx_tile" in flags
    return {
        "model": model,
        "machine": platform.machine(),
        "flags": [f for f in ISA_FLAGS if f in flags],
        "amx_advertised": advertised,
        "amx_usable": amx_usable() if advertised else False,
    }


def amx_usable() -> bool | None:
    """Whether the kernel grants this process AMX tile data (Linux x86-64), None if unknown.

    Linux hands out the AMX register state only on request (``arch_prctl`` with
    ``ARCH_REQ_XCOMP_PERM``); a VM that hides AMX from the guest refuses the request even
    though cpuinfo lists the ``amx_tile`` flag. ggml makes the same request before using AMX.
    """
    if sys.platform != "linux" or platform.machine() != "x86_64":
        return None
    sys_arch_prctl, arch_req_xcomp_perm, xfeature_xtiledata = 158, 0x1023, 18
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.syscall(sys_arch_prctl, arch_req_xcomp_perm, xfeature_xtiledata)) == 0
    except (OSError, AttributeError):
        return None
