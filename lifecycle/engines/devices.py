"""Where llama.cpp ran a model: its buffers, its backends and devices, and the GPU's memory.

A bench row says which device it ran on from llama.cpp's own buffer log, not from what was
asked (``n_gpu_layers``), and a run record names a GPU only when llama.cpp can use one. The
device list comes from ``libggml`` through ctypes (llama-cpp-python binds no device API),
VRAM from NVML (``pynvml``) where an NVIDIA driver answers.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lifecycle.envnames import ENV_CUDA_VISIBLE_DEVICES
from lifecycle.texttable import mib

# Buffer types that live in host memory though their name does not start with "CPU".
_HOST_BUFFER_TYPES = ("AMX", "BLAS")


# Backend registries that are not GPUs (a GPU registry with no device means none answered).
_NON_GPU_BACKENDS = ("CPU", "BLAS", "RPC", "AMX", "zDNN", "ZenDNN")


def gpu_memory(pid: int | None) -> dict[str, Any]:
    """VRAM used by ``pid`` (all of the process's compute contexts) through NVML.

    Returns ``vram_used_bytes`` / ``vram_total_bytes`` / ``gpu``, all None with a
    ``vram_reason`` when pynvml is missing or no NVIDIA driver/GPU answers. ``pid=None`` only
    names the GPUs and their total memory.
    """
    empty: dict[str, Any] = {"vram_used_bytes": None, "vram_total_bytes": None, "gpu": None}
    try:
        import pynvml  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return {**empty, "vram_reason": "pynvml is not installed (pip install nvidia-ml-py)"}
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError subclasses: no driver, no device, ...
        return {**empty, "vram_reason": f"no NVIDIA GPU available to NVML: {exc}"}
    try:
        names, total, used = [], 0, 0
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = pynvml.nvmlDeviceGetName(handle)
            names.append(name.decode() if isinstance(name, bytes) else str(name))
            total += int(pynvml.nvmlDeviceGetMemoryInfo(handle).total)
            if pid is not None:
                for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                    if proc.pid == pid and proc.usedGpuMemory is not None:
                        used += int(proc.usedGpuMemory)
        if not names:
            return {**empty, "vram_reason": "NVML reports no GPU"}
        return {
            "vram_used_bytes": used if pid is not None else None,
            "vram_total_bytes": total,
            "gpu": ", ".join(names),
            "vram_reason": None,
        }
    finally:
        pynvml.nvmlShutdown()


def is_host_buffer(name: str) -> bool:
    """Whether a llama.cpp buffer (``"CPU_Mapped model"``, ``"CUDA_Host output"``) is host RAM."""
    device = name.split()[0] if name.split() else name
    return device.startswith("CPU") or device.endswith("_Host") or device in _HOST_BUFFER_TYPES


def buffer_placement(devices: Mapping[str, int] | None) -> dict[str, Any]:
    """Where llama.cpp put a context's buffers, from its load log (``LlamaBuffers.devices``).

    ``devices`` maps ``"<buffer type> <kind>"`` (kinds: model, KV, compute, output) to bytes.
    Returns ``backend`` ("CPU"; the GPU devices, e.g. "CUDA0", when the weights and the KV
    cache are all there; "CPU+CUDA0" when split), ``offload`` ("none"; "full"; "partial":
    layers split; "ops": only compute buffers on a GPU, i.e. llama.cpp ran host-resident
    weights' ops on the GPU), the GPU devices and the bytes on them by kind. ``backend`` is
    None when the buffers are unknown.
    """
    if devices is None:
        return {
            "backend": None,
            "offload": None,
            "gpu_devices": [],
            "gpu_bytes": {},
            "host_bytes": {},
            "gpu_buffer_bytes": None,
        }
    gpu: dict[str, int] = {}
    host: dict[str, int] = {}
    names: set[str] = set()
    for name, size in devices.items():
        parts = name.split()
        kind = parts[-1] if len(parts) > 1 else "other"
        if size <= 0:
            continue
        if is_host_buffer(name):
            host[kind] = host.get(kind, 0) + int(size)
        else:
            gpu[kind] = gpu.get(kind, 0) + int(size)
            names.add(parts[0])
    gpu_devices = sorted(names)
    if not gpu_devices:
        offload, backend = "none", "CPU"
    elif gpu.get("model") and not host.get("KV") and gpu.get("KV"):
        offload, backend = "full", "+".join(gpu_devices)
    elif gpu.get("model") or gpu.get("KV"):
        offload, backend = "partial", "+".join(["CPU", *gpu_devices])
    else:
        offload, backend = "ops", "+".join(["CPU", *gpu_devices])
    return {
        "backend": backend,
        "offload": offload,
        "gpu_devices": gpu_devices,
        "gpu_bytes": gpu,
        "host_bytes": host,
        "gpu_buffer_bytes": sum(gpu.values()),
    }


def backend_mismatch(
    n_gpu_layers: int, placement: Mapping[str, Any], vram_used_bytes: int | None
) -> str | None:
    """Why a point did not run where ``n_gpu_layers`` said it would, or None when it did."""
    offload = placement.get("offload")
    if n_gpu_layers == 0:
        if offload not in (None, "none"):
            kinds = ", ".join(
                f"{kind} {mib(size)}" for kind, size in sorted(placement["gpu_bytes"].items())
            )
            return (
                f"n_gpu_layers 0 asked for the CPU, but llama.cpp allocated buffers on "
                f"{'+'.join(placement['gpu_devices'])} ({kinds}): this row ran partly on the GPU"
            )
        if vram_used_bytes:
            return (
                f"n_gpu_layers 0 asked for the CPU and llama.cpp allocated no GPU buffer, but "
                f"the process held {mib(vram_used_bytes)} of VRAM (a GPU context)"
            )
        return None
    if offload == "none":
        return (
            f"n_gpu_layers {n_gpu_layers} asked for GPU offload, but llama.cpp allocated "
            "every buffer in host memory: this row ran on the CPU"
        )
    return None


def ggml_devices() -> dict[str, Any]:
    """The backends compiled into llama.cpp and the devices they answered with.

    llama-cpp-python 0.3.36 binds no ggml device API, so this calls ``libggml`` through ctypes
    (``ggml_backend_reg_*``, ``ggml_backend_dev_*``; device types: 0 CPU, 1 GPU, 2 IGPU,
    3 ACCEL). Returns ``backends`` (registry name -> device count), ``devices`` (name,
    description, type, memory) and ``reason`` (why it could not be read, else None).
    """
    import ctypes

    empty: dict[str, Any] = {"backends": {}, "devices": [], "reason": None}
    try:
        import llama_cpp

        from lifecycle.engines import compat  # noqa: F401  (picks the CPU backend, loads it)

        llama_cpp.llama_supports_gpu_offload()  # loads dynamic backends when the build has them
        lib = libggml_of_libllama()
        lib.ggml_backend_reg_count.restype = ctypes.c_size_t
        lib.ggml_backend_reg_get.restype = ctypes.c_void_p
        lib.ggml_backend_reg_get.argtypes = [ctypes.c_size_t]
        lib.ggml_backend_reg_name.restype = ctypes.c_char_p
        lib.ggml_backend_reg_name.argtypes = [ctypes.c_void_p]
        lib.ggml_backend_reg_dev_count.restype = ctypes.c_size_t
        lib.ggml_backend_reg_dev_count.argtypes = [ctypes.c_void_p]
        lib.ggml_backend_dev_count.restype = ctypes.c_size_t
        lib.ggml_backend_dev_get.restype = ctypes.c_void_p
        lib.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
        for name in ("ggml_backend_dev_name", "ggml_backend_dev_description"):
            getattr(lib, name).restype = ctypes.c_char_p
            getattr(lib, name).argtypes = [ctypes.c_void_p]
        lib.ggml_backend_dev_type.restype = ctypes.c_int
        lib.ggml_backend_dev_type.argtypes = [ctypes.c_void_p]
        size_p = ctypes.POINTER(ctypes.c_size_t)
        lib.ggml_backend_dev_memory.argtypes = [ctypes.c_void_p, size_p, size_p]
        lib.ggml_backend_dev_memory.restype = None
        backends = {}
        for i in range(int(lib.ggml_backend_reg_count())):
            reg = lib.ggml_backend_reg_get(i)
            backends[(lib.ggml_backend_reg_name(reg) or b"?").decode()] = int(
                lib.ggml_backend_reg_dev_count(reg)
            )
        devices = []
        types = {0: "CPU", 1: "GPU", 2: "IGPU", 3: "ACCEL"}
        for i in range(int(lib.ggml_backend_dev_count())):
            dev = lib.ggml_backend_dev_get(i)
            free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
            lib.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
            devices.append(
                {
                    "name": (lib.ggml_backend_dev_name(dev) or b"").decode(errors="replace"),
                    "description": (lib.ggml_backend_dev_description(dev) or b"").decode(
                        errors="replace"
                    ),
                    "type": types.get(int(lib.ggml_backend_dev_type(dev)), "OTHER"),
                    "memory_total_bytes": int(total.value),
                    "memory_free_bytes": int(free.value),
                }
            )
        return {"backends": backends, "devices": devices, "reason": None}
    except Exception as exc:  # a build without these symbols, or no llama_cpp at all
        return {**empty, "reason": f"llama.cpp's device list could not be read: {exc}"}


def libggml_of_libllama() -> Any:
    """The libggml instance llama.cpp itself uses, whose backend registry is the real one.

    A wheel cannot hold symlinks, so llama-cpp-python ships ``libggml.so`` and ``libggml.so.0``
    as two copies; its ``_ggml`` module loads the first, libllama the second (its soname), and
    the two are separate libraries in the process, each with its own registry. With backends
    compiled in both registries list them; with dynamic backends (every CPU variant) only the
    copy libllama loaded has any.
    """
    import ctypes

    from llama_cpp import _ggml

    soname = Path(_ggml.libggml._name).with_name("libggml.so.0")
    return ctypes.CDLL(str(soname)) if soname.is_file() else _ggml.libggml


def ggml_build() -> dict[str, Any]:
    """The ggml library's version and commit (``ggml_version``/``ggml_commit``) and the
    backends compiled in: the numerics of a llama-cpp-python release follow its vendored
    llama.cpp, which the package version alone does not name. Empty where unreadable."""
    import ctypes

    out: dict[str, Any] = {}
    try:
        from llama_cpp import _ggml

        lib = _ggml.libggml
        for name in ("ggml_version", "ggml_commit"):
            func = getattr(lib, name)
            func.restype = ctypes.c_char_p
            func.argtypes = []
            out[name] = (func() or b"").decode(errors="replace")
    except Exception:  # an older build without these symbols
        return out
    out["backends"] = sorted(ggml_devices()["backends"])
    return out


def _gpu_backends(inventory: Mapping[str, Any]) -> list[str]:
    return sorted(b for b in inventory.get("backends", {}) if b not in _NON_GPU_BACKENDS)


def _gpu_device_names(inventory: Mapping[str, Any]) -> list[str]:
    return [d["name"] for d in inventory.get("devices", []) if d.get("type") in ("GPU", "IGPU")]


def gpu_unavailable_reason(
    gpu_offload: bool, inventory: Mapping[str, Any], nvml: Mapping[str, Any]
) -> str | None:
    """Why ``--gpu`` cannot run here, telling a build without a GPU backend from a GPU backend
    with no device (e.g. ``CUDA_VISIBLE_DEVICES=""``); None when a GPU device answered.

    ``gpu_offload`` is ``llama_supports_gpu_offload()``, which is false in both cases (it asks
    for a GPU *device*); ``inventory`` is :func:`ggml_devices`, ``nvml`` :func:`gpu_memory`.
    """
    if _gpu_device_names(inventory):
        return None
    backends = _gpu_backends(inventory)
    if inventory.get("reason") and not backends:
        if gpu_offload:
            return None
        return f"llama.cpp reports no GPU offload ({inventory['reason']})"
    if backends:
        seen = f"; NVML sees {nvml['gpu']}" if nvml.get("gpu") else ""
        hidden = os.environ.get(ENV_CUDA_VISIBLE_DEVICES)
        why = (
            f" (CUDA_VISIBLE_DEVICES={hidden!r} hides them)"
            if hidden is not None and "CUDA" in backends
            else ""
        )
        return (
            f"no GPU device answered: this llama.cpp build has the {', '.join(backends)} "
            f"backend, which reports 0 devices{why}{seen}"
        )
    return (
        "this llama.cpp build has no GPU backend "
        "(reinstall llama-cpp-python with CMAKE_ARGS=-DGGML_CUDA=on)"
    )


def gpu_environment(inventory: Mapping[str, Any], nvml: Mapping[str, Any]) -> dict[str, Any]:
    """The run environment's GPU fields: the GPU is named only when llama.cpp can use one."""
    devices = [d for d in inventory.get("devices", []) if d.get("type") in ("GPU", "IGPU")]
    reason = None
    if not devices:
        reason = gpu_unavailable_reason(False, inventory, nvml)
    return {
        "gpu": (nvml.get("gpu") or ", ".join(d["description"] for d in devices))
        if devices
        else None,
        "gpu_offload": bool(devices),
        "gpu_devices": devices,
        "gpu_backends": _gpu_backends(inventory),
        "gpu_reason": reason,
    }


def vram_figures(nvml: Mapping[str, Any], inventory: Mapping[str, Any]) -> dict[str, Any]:
    """A point's VRAM fields: NVML's figures when llama.cpp had a GPU device, else null ones
    with the reason (NVML ignores ``CUDA_VISIBLE_DEVICES`` and would name a hidden GPU)."""
    if nvml.get("gpu") is None or _gpu_device_names(inventory) or inventory.get("reason"):
        return dict(nvml)
    return {
        "vram_used_bytes": None,
        "vram_total_bytes": None,
        "gpu": None,
        "vram_reason": f"llama.cpp had no GPU device (NVML sees {nvml['gpu']}, hidden from it)",
    }


def rss_comparison(placement: Mapping[str, Any] | None) -> str | None:
    """Why RSS cannot be compared with the estimate for a point (None: it can).

    RSS is host memory; when the KV cache or the compute buffers live on a GPU, the growth the
    estimate predicts happens in VRAM and RSS barely moves (or shrinks).
    """
    if not placement or placement.get("offload") in (None, "none"):
        return None
    kinds = sorted(k for k in placement.get("gpu_bytes", {}) if k in ("KV", "compute"))
    if not kinds:
        return None
    where = "+".join(placement.get("gpu_devices", [])) or "the GPU"
    return (
        f"{' and '.join(kinds)} buffers are on {where}: RSS does not hold them, "
        "so it is not compared with the estimate (VRAM is)"
    )
