"""``[serve]``: the serving box as deployed, and the memory plan of every resident model.

The eval judges one variant at a time; a box serves several at once, each with its own
context size and parallel slots (Ollama's OLLAMA_NUM_PARALLEL multiplies a model's KV cache,
like the llama-cpp engine's ``parallel``). The plan adds up, per resident model, the
estimator's weights + KV cache (× parallel) + compute and output buffers
(:mod:`lifecycle.estimate`), sets the total against the box's memory, and says per model how
far ``num_ctx`` and ``parallel`` could grow with the others resident. ``measure_plan`` loads
them all in this process and reports what llama.cpp allocated next to the plan.

```toml
[serve]
memory = "24GiB"          # or "this-machine": available RAM (cpu), total VRAM (gpu)
device = "cpu"            # "gpu": the budget is VRAM
sla_p95_ms = 4000         # optional default SLA for every model (and sla_ttft_p95_ms)

[serve.models."harbor-triage:q4_k_m-ctx1024"]
parallel = 4              # slots; default [engine] parallel
concurrency = 4           # requests the application keeps in flight; default parallel
# num_ctx, kv_cache_type(_k/_v), flash_attention: default the variant's own
```
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from lifecycle.config import (
    KV_CACHE_TYPES,
    PLAIN_KV_TYPES,
    Workspace,
    cache_settings,
)
from lifecycle.errors import ConfigError, EngineError, UsageError
from lifecycle.estimate import MemoryEstimate, estimate_memory
from lifecycle.gguf import GGUFInfo, read_gguf
from lifecycle.store import Store
from lifecycle.variants import Variant, matrix_caches, resolve_variants, workspace_names

THIS_MACHINE = "this-machine"
DEVICES = ("cpu", "gpu")
# --measure's bar: the plan is trusted when llama.cpp's allocations are within this of it.
MEASURE_TOLERANCE = 0.10
_MAX_PARALLEL = 255  # llama.cpp's sequence limit, one kept for the shared prefix
_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")
_MODEL_KEYS = {
    "num_ctx",
    "parallel",
    "concurrency",
    "kv_cache_type",
    "kv_cache_type_k",
    "kv_cache_type_v",
    "flash_attention",
    "sla_p95_ms",
    "sla_ttft_p95_ms",
}


@dataclass(frozen=True)
class Resident:
    """One model resident on the box, with the settings it is served with."""

    variant: str
    num_ctx: int | None  # None: the variant's own num_ctx
    parallel: int
    concurrency: int
    overrides: dict[str, Any] = field(default_factory=dict)  # KV cache keys (config.CACHE_KEYS)
    sla_p95_ms: float | None = None
    sla_ttft_p95_ms: float | None = None


@dataclass(frozen=True)
class ServeSettings:
    memory_bytes: int | None  # None: this machine
    device: str
    models: tuple[Resident, ...]

    def resident(self, variant: str) -> Resident | None:
        return next((m for m in self.models if m.variant == variant), None)


def parse_size(text: str) -> int:
    """``"24GiB"``, ``"512 MiB"``, ``"1.5GB"`` or a plain byte count as bytes."""
    found = _SIZE.match(text)
    unit = found.group(2).lower() if found else ""
    if not found or unit not in _UNITS:
        raise ValueError(f"cannot read {text!r} as a size (e.g. 24GiB, 512MiB, 8GB)")
    value = int(float(found.group(1)) * _UNITS[unit])
    if value <= 0:
        raise ValueError(f"{text!r} is not a positive size")
    return value


def load_serve_settings(workspace: Workspace) -> ServeSettings | None:
    """``[serve]`` of the workspace's lifecycle.toml; None when it has none."""
    document = workspace.document_reader()
    if "serve" not in document.data:
        return None
    table = document.table("serve")
    table.reject_unknown({"memory", "device", "models", "sla_p95_ms", "sla_ttft_p95_ms"})
    raw = table.data.get("memory", THIS_MACHINE)
    memory: int | None = None
    if isinstance(raw, int) and not isinstance(raw, bool):
        memory = raw
        if memory <= 0:
            raise table.fail("memory", "must be a positive size")
    elif isinstance(raw, str) and raw != THIS_MACHINE:
        try:
            memory = parse_size(raw)
        except ValueError as exc:
            raise table.fail("memory", f"{exc}, or {THIS_MACHINE!r}") from None
    elif not isinstance(raw, str):
        raise table.fail("memory", f"must be a size like '24GiB' or {THIS_MACHINE!r}")
    device = table.choice("device", "cpu", DEVICES)
    sla = table.number("sla_p95_ms", None, minimum=0)
    sla_ttft = table.number("sla_ttft_p95_ms", None, minimum=0)
    models_table = table.table("models")
    if not models_table.data:
        raise table.fail("models", "name at least one resident variant")
    known = workspace_names(workspace)
    caches = matrix_caches(workspace)
    residents = []
    for name in models_table.data:
        m = models_table.table(name)
        if name not in known:
            hint = ", ".join(sorted(known))
            raise models_table.fail(name, f"not a variant of the matrix (known: {hint})")
        m.reject_unknown(_MODEL_KEYS)
        parallel = m.integer("parallel", workspace.engine.parallel, minimum=1)
        if parallel > _MAX_PARALLEL:
            raise m.fail("parallel", f"must be <= {_MAX_PARALLEL} (llama.cpp's sequence limit)")
        num_ctx = m.integer("num_ctx", 0, minimum=1) if "num_ctx" in m.data else None
        overrides = dict(caches.get(name, {}))
        for key in ("kv_cache_type", "kv_cache_type_k", "kv_cache_type_v"):
            if key in m.data:
                overrides[key] = m.choice(key, "f16", KV_CACHE_TYPES)
        if "flash_attention" in m.data:
            overrides["flash_attention"] = m.boolean("flash_attention", False)
        cache = cache_settings(workspace.engine, overrides)
        if cache.type_v not in PLAIN_KV_TYPES and not cache.flash_attention:
            raise m.fail(
                "flash_attention",
                f"a {cache.type_v} V cache needs flash attention in llama.cpp: set it true",
            )
        residents.append(
            Resident(
                variant=name,
                num_ctx=num_ctx,
                parallel=parallel,
                concurrency=m.integer("concurrency", parallel, minimum=1),
                overrides=overrides,
                sla_p95_ms=m.number("sla_p95_ms", sla, minimum=0),
                sla_ttft_p95_ms=m.number("sla_ttft_p95_ms", sla_ttft, minimum=0),
            )
        )
    return ServeSettings(memory_bytes=memory, device=device, models=tuple(residents))


def require_serve_settings(workspace: Workspace) -> ServeSettings:
    settings = load_serve_settings(workspace)
    if settings is None:
        raise ConfigError(
            "no [serve] table: name the resident variants and the memory budget",
            path=workspace.config_path,
            field="serve",
        )
    return settings


@dataclass(frozen=True)
class PlannedModel:
    """One resident model in the plan: its settings, its bytes, and how far it could grow."""

    variant: str
    modelfile: str
    num_ctx: int
    parallel: int
    concurrency: int
    type_k: str
    type_v: str
    flash_attention: bool
    weights_bytes: int
    kv_cache_bytes: int
    compute_bytes: int
    output_bytes: int
    total_bytes: int
    # With every other model resident as planned: the largest num_ctx at this parallel, and
    # the largest parallel at this num_ctx (None: not even 1 fits).
    max_num_ctx: int | None
    max_parallel: int | None
    context_length: int | None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ServingPlan:
    device: str
    budget_bytes: int
    budget_source: str
    models: list[PlannedModel]
    total_bytes: int
    headroom_bytes: int
    overflow: str | None  # the model that does not fit and by how much
    ollama: dict[str, str]
    # Per variant: the PARAMETER line its Modelfile (or matrix axis) needs for the plan.
    modelfile_parameters: dict[str, str]
    notes: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return self.overflow is None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["fits"] = self.fits
        return data


def plan_serving(
    workspace: Workspace,
    store: Store,
    settings: ServeSettings,
    *,
    budget_override: int | None = None,
) -> ServingPlan:
    """The memory plan of ``settings``' resident models (GGUF headers only, nothing loaded)."""
    variants = {
        v.name: v for v in resolve_variants(workspace, store, [m.variant for m in settings.models])
    }
    budget, source = _budget(settings, budget_override)
    sized: list[tuple[Resident, Variant, GGUFInfo, MemoryEstimate, dict[str, Any]]] = []
    for resident in settings.models:
        variant = variants[resident.variant]
        info = read_gguf(variant.blob_path)
        options = _estimate_options(workspace, variant, resident)
        n_ctx = resident.num_ctx or variant.int_parameter("num_ctx")
        sized.append((resident, variant, info, estimate_memory(info, n_ctx, **options), options))
    total = sum(e.total_bytes for *_, e, _o in sized)
    models = []
    for resident, variant, info, est, options in sized:
        others = total - est.total_bytes
        room = budget - others
        notes = list(est.notes)
        max_ctx = _largest(
            partial(_total, info, options, "n_ctx"), room, est.context_length or 1 << 20
        )
        if max_ctx is not None and est.context_length and max_ctx == est.context_length:
            notes.append(f"max num_ctx is the model's trained context {est.context_length}")
        at_ctx = {**options, "n_ctx": est.n_ctx}
        max_parallel = _largest(partial(_total, info, at_ctx, "n_seq"), room, _MAX_PARALLEL)
        if max_parallel == _MAX_PARALLEL:
            notes.append(f"max parallel is llama.cpp's limit of {_MAX_PARALLEL} sequences")
        models.append(
            PlannedModel(
                variant=resident.variant,
                modelfile=_relative(workspace, variant.modelfile_path),
                num_ctx=est.n_ctx,
                parallel=resident.parallel,
                concurrency=resident.concurrency,
                type_k=est.type_k,
                type_v=est.type_v,
                flash_attention=est.flash_attn,
                weights_bytes=est.weights_bytes,
                kv_cache_bytes=est.kv_cache_bytes,
                compute_bytes=est.compute_bytes,
                output_bytes=est.output_bytes,
                total_bytes=est.total_bytes,
                max_num_ctx=max_ctx,
                max_parallel=max_parallel,
                context_length=est.context_length,
                notes=notes,
            )
        )
    overflow = None
    running = 0
    for model in models:
        running += model.total_bytes
        if running > budget:
            overflow = (
                f"{model.variant} does not fit: {_mib(running)} with it resident against the "
                f"{_mib(budget)} budget ({source}), over by {_mib(running - budget)}"
            )
            break
    notes = []
    if settings.device == "gpu":
        notes.append(
            "the estimate models llama.cpp's CPU buffers; on a GPU each device also reserves "
            "its own compute buffer, so leave headroom"
        )
    ollama, notes_ollama = _ollama_settings(models)
    return ServingPlan(
        device=settings.device,
        budget_bytes=budget,
        budget_source=source,
        models=models,
        total_bytes=total,
        headroom_bytes=budget - total,
        overflow=overflow,
        ollama=ollama,
        modelfile_parameters={m.variant: f"PARAMETER num_ctx {m.num_ctx}" for m in models},
        notes=notes + notes_ollama,
    )


def resident_estimate(workspace: Workspace, variant: Variant, resident: Resident) -> MemoryEstimate:
    """The plan's estimate for one resident model (what ``pin`` records with its latency)."""
    n_ctx = resident.num_ctx or variant.int_parameter("num_ctx")
    options = _estimate_options(workspace, variant, resident)
    return estimate_memory(read_gguf(variant.blob_path), n_ctx, **options)


def _estimate_options(workspace: Workspace, variant: Variant, resident: Resident) -> dict[str, Any]:
    """The estimator's arguments for a resident model as the llama-cpp engine would load it."""
    cache = cache_settings(workspace.engine, resident.overrides)
    n_batch = variant.engine_int("num_batch", workspace.engine.batch_size)
    return {
        "n_batch": n_batch,
        "n_ubatch": min(n_batch, 512),  # llama-cpp-python's default physical batch
        "type_k": cache.type_k,
        "type_v": cache.type_v,
        "flash_attn": cache.flash_attention,
        "n_seq": resident.parallel,
    }


def _budget(settings: ServeSettings, override: int | None) -> tuple[int, str]:
    if override is not None:
        return override, "--memory"
    if settings.memory_bytes is not None:
        return settings.memory_bytes, "[serve] memory"
    if settings.device == "gpu":
        from lifecycle.engines.devices import gpu_memory

        nvml = gpu_memory(None)
        if nvml.get("vram_total_bytes") is None:
            raise UsageError(
                f"[serve] memory = {THIS_MACHINE!r} on a GPU, but no GPU answers: "
                f"{nvml.get('vram_reason')}; give the budget in bytes (e.g. 24GiB)"
            )
        return int(nvml["vram_total_bytes"]), f"this machine: total VRAM of {nvml['gpu']}"
    from lifecycle.hostinfo import available_memory

    return available_memory(), "this machine: RAM available now"


def _total(info: GGUFInfo, options: dict[str, Any], key: str, value: int) -> int:
    """The estimate's total with ``options[key]`` set to ``value``."""
    args = {**options, key: value}
    n_ctx = args.pop("n_ctx", None)
    return estimate_memory(info, int(n_ctx), **args).total_bytes


def _largest(size: Callable[[int], int], room: int, ceiling: int) -> int | None:
    """The largest n in 1..ceiling with ``size(n) <= room`` (size grows with n)."""
    if size(1) > room:
        return None
    low, high = 1, ceiling
    while low < high:
        mid = (low + high + 1) // 2
        if size(mid) <= room:
            low = mid
        else:
            high = mid - 1
    return low


def _ollama_settings(models: list[PlannedModel]) -> tuple[dict[str, str], list[str]]:
    """The Ollama server environment that reproduces the plan, and where it cannot."""
    notes = []
    parallels = {m.parallel for m in models}
    types = {(m.type_k, m.type_v) for m in models}
    out = {
        "OLLAMA_MAX_LOADED_MODELS": str(len(models)),
        "OLLAMA_NUM_PARALLEL": str(max(parallels)),
        "OLLAMA_CONTEXT_LENGTH": str(max(m.num_ctx for m in models)),
        "OLLAMA_FLASH_ATTENTION": "1" if any(m.flash_attention for m in models) else "0",
    }
    if len(parallels) > 1:
        notes.append(
            "Ollama applies one OLLAMA_NUM_PARALLEL to every model: the largest is given, which "
            "allocates more KV cache than this plan for the others"
        )
    kinds = {k for k, v in types if k == v}
    if len(types) == 1 and kinds and next(iter(kinds)) in ("f16", "q8_0", "q4_0"):
        out["OLLAMA_KV_CACHE_TYPE"] = next(iter(kinds))
    else:
        notes.append(
            "the KV cache types differ per model or between K and V: Ollama takes one "
            "OLLAMA_KV_CACHE_TYPE (f16, q8_0 or q4_0) for K and V of every model"
        )
    if any(m.flash_attention for m in models) and not all(m.flash_attention for m in models):
        notes.append("Ollama's OLLAMA_FLASH_ATTENTION is server-wide: on for every model")
    return out, notes


@dataclass(frozen=True)
class MeasuredModel:
    variant: str
    planned_bytes: int
    allocated_bytes: int | None  # llama.cpp's logged weights + KV + compute + output
    rss_growth_bytes: int  # RSS grown by loading it (weights are mapped: pages not read yet
    # are not resident)
    vram_bytes: int | None
    error_pct: float | None  # allocated (or VRAM on GPU) against the plan

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure_plan(
    workspace: Workspace,
    store: Store,
    settings: ServeSettings,
    plan: ServingPlan,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """Load every resident model at once in this process and compare with the plan.

    Refuses when the plan does not fit, and (exit 1) when this machine has not the memory
    the plan needs right now: a measurement must never OOM-kill the user's machine.
    """
    import psutil

    from lifecycle.engines import LoadOptions, get_engine
    from lifecycle.engines.base import BenchableModel, MeasuredLoadEngine
    from lifecycle.engines.devices import gpu_memory
    from lifecycle.hostinfo import available_memory

    if not plan.fits:  # the CLI exits 3 before this; a library caller gets the same refusal
        raise UsageError(f"not measured: the plan does not fit ({plan.overflow})")
    if settings.device == "cpu" and plan.total_bytes > available_memory():
        raise EngineError(
            f"not measured: the plan needs {_mib(plan.total_bytes)} and this machine has "
            f"{_mib(available_memory())} available"
        )
    engine = get_engine(workspace.engine.name)
    load = engine.load_measured if isinstance(engine, MeasuredLoadEngine) else engine.load
    variants = {
        v.name: v for v in resolve_variants(workspace, store, [m.variant for m in plan.models])
    }
    process = psutil.Process()
    loaded: list[Any] = []
    measured: list[MeasuredModel] = []
    gpu = settings.device == "gpu"
    try:
        for model in plan.models:
            variant = variants[model.variant]
            progress(
                f"loading {model.variant} (num_ctx {model.num_ctx}, parallel {model.parallel})"
            )
            before = process.memory_info().rss
            vram_before = gpu_memory(os.getpid()).get("vram_used_bytes") if gpu else None
            handle = load(
                variant.blob_path,
                LoadOptions(
                    n_ctx=model.num_ctx,
                    n_parallel=model.parallel,
                    n_threads=workspace.engine.threads,
                    n_batch=variant.engine_int("num_batch", workspace.engine.batch_size),
                    n_gpu_layers=-1 if gpu else 0,
                    type_k=model.type_k,
                    type_v=model.type_v,
                    flash_attn=model.flash_attention,
                ),
            )
            loaded.append(handle)
            rss = process.memory_info().rss - before
            buffers = handle.buffer_bytes() if isinstance(handle, BenchableModel) else None
            allocated = None
            if buffers is not None and isinstance(handle, BenchableModel):
                allocated = (
                    int(handle.model_info()["model_size"])
                    + int(buffers.kv_cache_bytes)
                    + int(buffers.compute_bytes)
                    + int(buffers.output_bytes)
                )
            vram = None
            if gpu:
                now = gpu_memory(os.getpid()).get("vram_used_bytes")
                vram = None if now is None else int(now) - int(vram_before or 0)
            against = vram if gpu else allocated
            measured.append(
                MeasuredModel(
                    variant=model.variant,
                    planned_bytes=model.total_bytes,
                    allocated_bytes=allocated,
                    rss_growth_bytes=rss,
                    vram_bytes=vram,
                    error_pct=_pct(model.total_bytes, against),
                )
            )
        total_measured = [m.vram_bytes if gpu else m.allocated_bytes for m in measured]
        total = None if None in total_measured else sum(int(v or 0) for v in total_measured)
        error = _pct(plan.total_bytes, total)
        return {
            "models": [m.to_dict() for m in measured],
            "planned_bytes": plan.total_bytes,
            "measured_bytes": total,
            "measured_as": "VRAM (NVML)" if gpu else "llama.cpp's allocated buffers",
            "rss_growth_bytes": sum(m.rss_growth_bytes for m in measured),
            "error_pct": error,
            "tolerance_pct": MEASURE_TOLERANCE * 100,
            "within_tolerance": error is not None and abs(error) <= MEASURE_TOLERANCE * 100,
        }
    finally:
        for handle in loaded:
            handle.close()


def _pct(planned: int, measured: int | None) -> float | None:
    """How far the plan is from the measurement, as a percentage of the measurement."""
    if not measured:
        return None
    return round((planned - measured) / measured * 100.0, 2)


def _mib(value: int) -> str:
    return f"{value / 2**20:.1f} MiB"


def _relative(workspace: Workspace, path: Path) -> str:
    root = workspace.root
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)
