"""Facts about this host: CPU cores, CPU model and ISA flags, RAM.

The bottom layer (no engine, no llama_cpp): bench, doctor, run records and the llama.cpp
engine all read the host from here, so importing any of them never needs llama_cpp and
the CPU model is read one way everywhere.
"""

from __future__ import annotations

import os
import platform


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
