"""Measurement: tokens/sec, load time, memory and how they scale with the context size.

Speed is measured the way llama.cpp's ``llama-bench`` measures, so the figures compare:
a prompt test decodes ``n_prompt`` synthetic tokens as one prompt (pp), a generation test
decodes ``n_gen`` tokens one at a time (tg), both after the KV cache was filled to ``n_depth``
tokens; one warm-up run, then ``repetitions`` timed runs, mean ± sample stddev. Each sample is
llama.cpp's own timer for that run (``llama_perf_context``: ``t_p_eval`` for pp, ``t_eval`` for
tg); the wall clock of the same runs is kept too. Rows use llama-bench's JSON field names.

Every context point runs in its own subprocess (``python -m lifecycle.bench``): an allocation
failure, an abort inside llama.cpp or the OOM killer then ends that point, which is recorded as
failed with the reason, never the whole run; and the process's peak RSS belongs to that point
alone. Before a point starts, the header-only estimate (:mod:`lifecycle.estimate`) is checked
against the memory available, so a context the machine cannot hold fails without being tried.

Memory per point: RSS before load, after load, at the end and at peak (``ru_maxrss``); the
buffers llama.cpp allocated (weights, KV cache, compute, output, from its load log); VRAM used
by the process through NVML on CUDA machines (``null`` with a reason elsewhere).

Where a point ran is read from llama.cpp's own buffer log, not from what was asked
(:mod:`lifecycle.engines.devices`): each row carries ``backend`` ("CPU", "CUDA0", "CPU+CUDA0"),
and a row asked to run on the CPU that allocated GPU buffers or held VRAM is flagged
(``backend_note`` and a point warning). When a point's KV cache or compute buffers live on a
GPU, RSS comparisons are null with the reason and a sweep compares VRAM growth instead.

Each host-RAM row's tg speed is set against the memory-bandwidth bound
(:mod:`lifecycle.bandwidth`); GPU rows get a bound only from a given GPU bandwidth figure.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from lifecycle.bandwidth import bandwidth_bound, measure_bandwidth
from lifecycle.clock import utc_now as _now
from lifecycle.crashguard import child_environment, die_with_parent
from lifecycle.engines.base import BenchableModel, MeasuredLoadEngine, ParallelBenchModel
from lifecycle.engines.devices import (
    backend_mismatch,
    buffer_placement,
    ggml_devices,
    gpu_environment,
    gpu_memory,
    gpu_unavailable_reason,
    rss_comparison,
    vram_figures,
)
from lifecycle.errors import EngineError, UsageError
from lifecycle.hostinfo import available_memory, peak_rss, physical_cores, reset_peak_rss
from lifecycle.progress import Progress
from lifecycle.results import percentile
from lifecycle.texttable import mib

__all__ = [
    "SCHEMA_VERSION",
    "BenchOptions",
    "BenchResult",
    "ContextPoint",
    "SpeedRow",
    "eval_latency",
    "measure_point",
    "run_bench",
]

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class BenchOptions:
    """What to measure; defaults are llama-bench's (``-p 512 -n 128 -r 5``)."""

    n_prompt: int = 512
    n_gen: int = 128
    repetitions: int = 5
    depth: int | None = None  # None: 0 for one point, "fill the context" in a sweep
    contexts: Sequence[int] | None = None  # None: one point at the variant's num_ctx
    n_ctx: int = 2048  # the context of the single point (the variant's num_ctx)
    n_threads: int = 0  # 0: the engine's default (physical cores)
    n_batch: int = 512
    n_gpu_layers: int = 0
    gpu: bool = False  # --gpu: offload was asked for, so a missing GPU is an error
    engine: str = "llama-cpp"
    warmup: bool = True
    strict: bool = False  # refuse contexts above the trained length instead of warning
    preflight: bool = True  # skip points whose estimate exceeds the available memory
    timeout_s: float = 1800.0  # per context point
    address_space_limit_bytes: int | None = None  # RLIMIT_AS for each point's process
    bandwidth: bool = True  # measure (or reuse) the memory bandwidth
    bandwidth_buffer_bytes: int = 256 * 1024 * 1024  # at least; 4x the last-level cache
    gpu_bandwidth_bytes_per_s: float | None = None  # a known GPU figure bounds GPU rows
    # llama.cpp's extra buffer types (repacked weights): the engine canary turns them off on
    # machines where their kernels crash (see lifecycle.engines.doctor).
    extra_bufts: bool = True
    # Batched rows (llama-batched-bench): N sequences of n_prompt + n_gen tokens decoded
    # together, for each N here, in one context with N sequences' KV cells. Empty: none.
    parallel: tuple[int, ...] = ()
    # KV cache element types and flash attention (the variant's, from config.cache_settings):
    # the cache's size and the attention kernels both follow them.
    type_k: str = "f16"
    type_v: str = "f16"
    flash_attn: bool = False

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["contexts"] = list(self.contexts) if self.contexts is not None else None
        data["parallel"] = list(self.parallel)
        return data


@dataclass(frozen=True)
class SpeedRow:
    """One test as llama-bench prints it (``pp512``, ``tg128``, ``pp512 @ d4096``)."""

    test: str
    n_prompt: int
    n_gen: int
    n_depth: int
    n_ctx: int
    n_threads: int
    n_batch: int
    n_ubatch: int
    n_gpu_layers: int
    type_k: str | None
    type_v: str | None
    model_type: str
    model_size: int
    model_n_params: int
    avg_ns: int
    stddev_ns: int
    avg_ts: float
    stddev_ts: float
    samples_ns: list[int]
    samples_ts: list[float]
    wall_avg_ts: float  # the same runs timed by the wall clock around the decode calls
    bandwidth_bound_ts: float | None = None  # tg only: bandwidth / bytes read per token
    bandwidth_fraction: float | None = None  # avg_ts / bandwidth_bound_ts, only when <= 1
    backend: str | None = None  # where it ran, from llama.cpp's buffers: CPU, CUDA0, CPU+CUDA0
    backend_note: str | None = None  # set when that is not what n_gpu_layers asked for
    bandwidth_bytes_per_s: int | None = None  # the figure the bound used
    bandwidth_ratio: float | None = None  # avg_ts / bound, whatever its value
    bandwidth_note: str | None = None  # why there is no bound or no fraction
    # Sequences decoded together (batched rows): avg_ts then counts the tokens of all of them.
    n_parallel: int = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SpeedRow:
        return cls(**_known(cls, data))


@dataclass(frozen=True)
class ContextPoint:
    """One context size: its speed rows and memory, or why it could not be measured."""

    n_ctx: int
    n_depth: int
    ok: bool
    error: str | None
    warnings: list[str]
    load_ms: float | None
    rows: list[SpeedRow]
    memory: dict[str, Any]  # figures in bytes, ``*_bytes``; VRAM null with ``vram_reason``
    estimate: dict[str, Any] | None  # lifecycle.estimate for the same settings
    estimate_error_pct: float | None  # (estimate - llama.cpp's allocation) / allocation
    estimate_rss_error_pct: float | None  # (estimate - peak RSS growth over load) / growth
    backend: str | None = None  # as on its rows
    placement: dict[str, Any] | None = None  # buffer_placement() of llama.cpp's buffers
    estimate_rss_reason: str | None = None  # why there is no RSS comparison
    estimate_note: str | None = None  # what estimate_error_pct compares on this point

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["rows"] = [r.to_dict() for r in self.rows]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ContextPoint:
        known = _known(cls, data)
        known["rows"] = [SpeedRow.from_dict(r) for r in data.get("rows", [])]
        return cls(**known)


@dataclass
class BenchResult:
    """Everything one ``lifecycle bench`` measured."""

    started_at: str
    finished_at: str
    variant: dict[str, Any]
    options: dict[str, Any]
    environment: dict[str, Any]
    points: list[ContextPoint]
    bandwidth: dict[str, Any] | None
    latency: dict[str, Any] | None  # from the last eval run, when there is one
    scaling: dict[str, Any] | None  # estimate vs measured growth across a context sweep
    schema_version: int = SCHEMA_VERSION
    batched: ContextPoint | None = None  # BenchOptions.parallel rows, in a context of their own

    @property
    def rows(self) -> list[SpeedRow]:
        return [row for point in self.points for row in point.rows]

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "variant": self.variant,
            "options": self.options,
            "environment": self.environment,
            "rows": [r.to_dict() for r in self.rows],
            "points": [p.to_dict() for p in self.points],
            "bandwidth": self.bandwidth,
            "latency": self.latency,
            "scaling": self.scaling,
            "batched": self.batched.to_dict() if self.batched else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchResult:
        if data.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"unsupported bench schema_version {data.get('schema_version')!r}")
        return cls(
            started_at=data["started_at"],
            finished_at=data["finished_at"],
            variant=data["variant"],
            options=data["options"],
            environment=data["environment"],
            points=[ContextPoint.from_dict(p) for p in data["points"]],
            bandwidth=data.get("bandwidth"),
            latency=data.get("latency"),
            scaling=data.get("scaling"),
            batched=ContextPoint.from_dict(data["batched"]) if data.get("batched") else None,
        )


def run_bench(
    model_path: Path,
    options: BenchOptions,
    *,
    variant: dict[str, Any] | None = None,
    runs_dir: Path | None = None,
    home: Path | None = None,
    progress: Progress | None = None,
) -> BenchResult:
    """Measure ``model_path`` at each context size of ``options``; see the module docstring.

    Points that fail are recorded with their reason. ``runs_dir`` (a workspace's run records)
    adds eval latency percentiles for ``variant['name']``; ``home`` caches the bandwidth.
    Raises :class:`UsageError` for impossible settings, before anything is loaded.
    """
    from lifecycle.engines import get_engine
    from lifecycle.estimate import estimate_memory
    from lifecycle.gguf import read_gguf
    from lifecycle.results import host_environment

    say = progress or (lambda _msg: None)
    _check_options(options)
    info = read_gguf(model_path)  # a corrupt file fails here, not inside a worker
    started = _now()
    engine = get_engine(options.engine)
    engine_info = engine.info()
    threads = options.n_threads or physical_cores()
    contexts = list(options.contexts) if options.contexts else [options.n_ctx]
    if options.contexts is None and _needed(options, options.depth or 0) > options.n_ctx:
        raise UsageError(
            f"-p {options.n_prompt} / -n {options.n_gen} with --depth {options.depth or 0} "
            f"do not fit in num_ctx {options.n_ctx}"
        )
    if options.engine in ("llama-cpp", "llama-cpp-isolated"):
        from lifecycle.engines.doctor import extra_bufts_for

        name = str((variant or {}).get("name") or model_path.name)
        digest = (variant or {}).get("blob_digest")
        options = replace(
            options,
            extra_bufts=extra_bufts_for(
                model_path,
                name=name,
                digest=str(digest) if digest else None,
                n_gpu_layers=options.n_gpu_layers,
                home=home,
                say=say,
            ),
        )
    inventory = ggml_devices()
    nvml = gpu_memory(None)
    if options.gpu:
        reason = gpu_unavailable_reason(
            bool(engine_info.details.get("gpu_offload")), inventory, nvml
        )
        if reason:
            raise UsageError(f"--gpu was asked for, but {reason}")

    bandwidth = None
    probe: Callable[[int], dict[str, Any]] | None = None
    if options.bandwidth:
        say("measuring memory bandwidth (cached per machine)")
        bandwidth = measure_bandwidth(
            threads, home=home, buffer_bytes=options.bandwidth_buffer_bytes
        )

        def probe(working_set: int) -> dict[str, Any]:
            return measure_bandwidth(
                threads,
                home=home,
                buffer_bytes=options.bandwidth_buffer_bytes,
                working_set_bytes=working_set,
            )

    points = []
    for n_ctx in contexts:
        depth = _depth_for(options, n_ctx)
        warnings: list[str] = []
        estimate = estimate_memory(info, n_ctx, n_batch=options.n_batch, **_cache_kwargs(options))
        if estimate.exceeds_trained_context:
            message = f"context {n_ctx} is above the model's trained context {info.context_length}"
            if options.strict:
                points.append(_failed(n_ctx, depth, message + " (--strict)", estimate.to_dict()))
                say(f"ctx {n_ctx}: skipped, {message}")
                continue
            warnings.append(message + "; measured anyway")
        if options.preflight:
            available = available_memory()
            if estimate.total_bytes > available:
                reason = (
                    f"estimated {mib(estimate.total_bytes)} exceeds the "
                    f"{mib(available)} of memory available"
                )
                points.append(_failed(n_ctx, depth, reason, estimate.to_dict()))
                say(f"ctx {n_ctx}: not run, {reason}")
                continue
        tests = f"pp{options.n_prompt} tg{options.n_gen} x{options.repetitions}"
        say(f"ctx {n_ctx}: depth {depth}, {tests}")
        spec = {
            "model_path": str(model_path),
            "n_ctx": n_ctx,
            "depth": depth,
            "n_threads": threads,
            "options": options.to_dict(),
        }
        point = _run_point_process(spec, options)
        point = _finish_point(point, estimate.to_dict(), warnings, probe, options)
        points.append(point)
        where = f" on {point.backend}" if point.backend else ""
        say(f"ctx {n_ctx}: " + (f"ok{where}" if point.ok else f"FAILED: {point.error}"))
        for warning in point.warnings:
            say(f"ctx {n_ctx}: warning: {warning}")

    batched = None
    if options.parallel:
        levels = ", ".join(map(str, options.parallel))
        say(f"batched: N = {levels}, pp{options.n_prompt} + tg{options.n_gen} per sequence")
        n_ctx = options.n_ctx
        spec = {
            "model_path": str(model_path),
            "n_ctx": n_ctx,
            "depth": 0,
            "n_threads": threads,
            "options": options.to_dict(),
            "batched": True,
        }
        estimate = estimate_memory(
            info,
            n_ctx,
            n_batch=options.n_batch,
            n_seq=max(options.parallel),
            **_cache_kwargs(options),
        )
        batched = _run_point_process(spec, options)
        batched = replace(batched, estimate=estimate.to_dict())
        say("batched: " + ("ok" if batched.ok else f"FAILED: {batched.error}"))

    environment = {
        "tool": "lifecycle",
        "engine": engine_info.name,
        "engine_version": engine_info.version,
        "engine_details": dict(engine_info.details),
        "n_threads": threads,
        "n_batch": options.n_batch,
        "n_gpu_layers": options.n_gpu_layers,
        "extra_bufts": options.extra_bufts,
        **gpu_environment(inventory, nvml),
        **host_environment(),
    }
    latency = None
    if runs_dir is not None and variant is not None:
        latency = eval_latency(runs_dir, str(variant.get("name", "")))
    return BenchResult(
        started_at=started,
        finished_at=_now(),
        variant=variant or {"path": str(model_path)},
        options=options.to_dict(),
        environment=environment,
        points=points,
        bandwidth=bandwidth,
        latency=latency,
        scaling=_scaling(points),
        batched=batched,
    )


def measure_point(spec: dict[str, Any]) -> dict[str, Any]:
    """Measure one context point in this process (the subprocess side of :func:`run_bench`).

    ``spec`` holds ``model_path``, ``n_ctx``, ``depth``, ``n_threads`` and ``options`` (a
    :class:`BenchOptions` as a dict). Returns a :class:`ContextPoint` as a dict without the
    estimate; failures to load or decode are returned as a failed point.
    """
    import psutil

    from lifecycle.engines import LoadOptions, get_engine

    opts = BenchOptions(**{k: v for k, v in spec["options"].items() if k in _OPTION_NAMES})
    n_ctx, depth, threads = int(spec["n_ctx"]), int(spec["depth"]), int(spec["n_threads"])
    process = psutil.Process()
    engine = get_engine(opts.engine)  # imports the engine's libraries before the baseline
    reset_peak_rss()
    memory: dict[str, Any] = {"rss_before_load_bytes": process.memory_info().rss}
    load = engine.load_measured if isinstance(engine, MeasuredLoadEngine) else engine.load
    batched = bool(spec.get("batched"))
    load_options = LoadOptions(
        n_ctx=n_ctx,
        n_threads=threads,
        n_batch=opts.n_batch,
        n_gpu_layers=opts.n_gpu_layers,
        extra_bufts=opts.extra_bufts,
        n_parallel=max(opts.parallel) if batched else 1,
        type_k=opts.type_k,
        type_v=opts.type_v,
        flash_attn=opts.flash_attn,
    )
    try:
        model: Any = load(Path(spec["model_path"]), load_options)
    except EngineError as exc:
        return _failed(n_ctx, depth, str(exc), None).to_dict()
    try:
        memory["rss_after_load_bytes"] = process.memory_info().rss
        if not isinstance(model, BenchableModel):
            raise EngineError(f"engine {opts.engine!r} cannot run llama-bench-style tests")
        info = model.model_info()
        buffers = model.buffer_bytes()
        rows = []
        if batched:
            for n_seq in opts.parallel:
                rows += _run_batched(model, n_seq, opts, info, buffers, threads)
        for kind, n_tokens in (("pp", opts.n_prompt), ("tg", opts.n_gen)):
            if n_tokens > 0 and not batched:
                rows.append(_run_test(model, kind, n_tokens, depth, opts, info, buffers, threads))
        memory["rss_end_bytes"] = process.memory_info().rss
        memory["peak_rss_bytes"] = peak_rss()
        memory.update(_buffer_figures(buffers, info))
        memory.update(vram_figures(gpu_memory(os.getpid()), ggml_devices()))
        memory["rss_growth_bytes"] = memory["rss_end_bytes"] - memory["rss_after_load_bytes"]
        memory["model_rss_bytes"] = memory["peak_rss_bytes"] - memory["rss_before_load_bytes"]
        place = buffer_placement(getattr(buffers, "devices", None))
        note = backend_mismatch(opts.n_gpu_layers, place, memory.get("vram_used_bytes"))
        rows = [_relabel(row, place["backend"], note) for row in rows]
        return ContextPoint(
            n_ctx=n_ctx,
            n_depth=depth,
            ok=True,
            error=None,
            warnings=[note] if note else [],
            load_ms=round(float(model.load_ms), 2),
            rows=rows,
            memory=memory,
            estimate=None,
            estimate_error_pct=None,
            estimate_rss_error_pct=None,
            backend=place["backend"],
            placement=place,
        ).to_dict()
    except EngineError as exc:
        return _failed(n_ctx, depth, str(exc), None).to_dict()
    finally:
        model.close()


def eval_latency(runs_dir: Path, variant_name: str) -> dict[str, Any] | None:
    """Per-case latency percentiles of ``variant_name`` in the last eval run (``latest.json``).

    ``ttft_ms`` (time to first token) is the case's prompt-evaluation time plus one mean
    decode step (``prompt_ms + generation_ms / eval_tokens``): the prompt pass yields the
    first token's logits, and one decode step later that token has been sampled and fed back.
    It slightly over-states what a streaming client sees and ignores template rendering.
    Returns None when there is no run record or no case of that variant.
    """
    path = runs_dir / "latest.json"
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    cases = [c for c in record.get("cases", []) if c.get("variant") == variant_name]
    if not cases:
        return None
    latency = [float(c["latency_ms"]) for c in cases]
    ttft = [
        float(c["prompt_ms"]) + float(c["generation_ms"]) / max(int(c["eval_tokens"]), 1)
        for c in cases
    ]
    figures: dict[str, Any] = {"run_id": record.get("run_id"), "cases": len(cases)}
    for name, values in (("latency", latency), ("ttft", ttft)):
        for q in (50, 95, 99):
            figures[f"{name}_p{q}_ms"] = round(percentile(values, q), 2)
    return figures


def _relabel(row: SpeedRow, backend: str | None, note: str | None) -> SpeedRow:
    data = row.to_dict()
    data["backend"], data["backend_note"] = backend, note
    return SpeedRow.from_dict(data)


# --- helpers ------------------------------------------------------------------------------

_OPTION_NAMES = {f.name for f in fields(BenchOptions)}


def _cache_kwargs(options: BenchOptions) -> dict[str, Any]:
    """The estimate's KV cache arguments for what the bench loads."""
    return {"type_k": options.type_k, "type_v": options.type_v, "flash_attn": options.flash_attn}


def _check_options(options: BenchOptions) -> None:
    if options.n_prompt < 0 or options.n_gen < 0 or options.n_prompt + options.n_gen == 0:
        raise UsageError("-p and -n must be >= 0 and not both 0")
    if options.repetitions < 1:
        raise UsageError("-r must be at least 1")
    if options.depth is not None and options.depth < 0:
        raise UsageError("--depth must be >= 0")
    for n_ctx in options.contexts or [options.n_ctx]:
        if n_ctx <= 0:
            raise UsageError(f"context sizes must be positive, got {n_ctx}")


def _needed(options: BenchOptions, depth: int) -> int:
    """Context the tests need at ``depth``: each test runs alone on a cache filled to depth."""
    return depth + max(options.n_prompt, options.n_gen)


def _depth_for(options: BenchOptions, n_ctx: int) -> int:
    if options.depth is not None:
        return options.depth
    if options.contexts is None:
        return 0
    # A sweep fills the cache so that the tests run at the far end of each context.
    return max(0, n_ctx - options.n_prompt - options.n_gen)


def _run_test(
    model: Any,
    kind: str,
    n_tokens: int,
    depth: int,
    opts: BenchOptions,
    info: dict[str, Any],
    buffers: Any,
    threads: int,
) -> SpeedRow:
    if depth + n_tokens > int(info["n_ctx"]):
        raise EngineError(
            f"{kind}{n_tokens} at depth {depth} needs {depth + n_tokens} tokens of context, "
            f"the context holds {info['n_ctx']}"
        )
    run = model.decode_prompt if kind == "pp" else model.decode_tokens
    model.clear()
    if depth:
        model.decode_prompt(depth, seed=1)
    if opts.warmup:  # llama-bench warms up with the whole prompt, or with one generated token
        run(n_tokens if kind == "pp" else 1, seed=2)
    perf_ns: list[int] = []
    wall_ns: list[int] = []
    for rep in range(opts.repetitions):
        model.truncate(depth)
        timing = run(n_tokens, seed=100 + rep)
        perf_ns.append(int(timing.perf_ns))
        wall_ns.append(int(timing.wall_ns))
    label = f"{kind}{n_tokens}" + (f" @ d{depth}" if depth else "")
    context = _RowContext(opts, info, buffers, threads)
    return context.row(label, kind, n_tokens, n_tokens, perf_ns, wall_ns, depth=depth)


def _run_batched(
    model: Any,
    n_seq: int,
    opts: BenchOptions,
    info: dict[str, Any],
    buffers: Any,
    threads: int,
) -> list[SpeedRow]:
    """llama-batched-bench's test at one N: each of ``n_seq`` sequences decodes an
    ``n_prompt`` prompt (all prompts batched together), then ``n_gen`` steps of one token per
    sequence. Two rows: prompt and generation tokens per second summed over the sequences."""
    if not isinstance(model, ParallelBenchModel):
        raise EngineError(f"engine {opts.engine!r} cannot decode sequences in parallel")
    if opts.warmup:
        model.decode_parallel(min(opts.n_prompt, 16), 1, n_seq, seed=2)
    pp_ns: list[int] = []
    tg_ns: list[int] = []
    for rep in range(opts.repetitions):
        pp, tg = model.decode_parallel(opts.n_prompt, opts.n_gen, n_seq, seed=100 + rep)
        pp_ns.append(pp)
        tg_ns.append(tg)
    context = _RowContext(opts, info, buffers, threads)
    return [
        # Wall-clock timed: llama.cpp's perf counters do not split a batch by sequence.
        context.row(f"{kind}{per_seq} x{n_seq}", kind, per_seq, per_seq * n_seq, ns, ns, n_seq)
        for kind, per_seq, ns in (("pp", opts.n_prompt, pp_ns), ("tg", opts.n_gen, tg_ns))
        if per_seq > 0
    ]


@dataclass(frozen=True)
class _RowContext:
    """What every speed row of one loaded model shares."""

    opts: BenchOptions
    info: dict[str, Any]
    buffers: Any
    threads: int

    def row(
        self,
        label: str,
        kind: str,
        per_seq: int,
        tokens: int,
        perf_ns: list[int],
        wall_ns: list[int],
        n_parallel: int = 1,
        *,
        depth: int = 0,
    ) -> SpeedRow:
        """A row of ``tokens`` decoded per run, timed by ``perf_ns`` (and the wall clock)."""
        rates = [tokens * 1e9 / ns for ns in perf_ns]
        wall_ts = [tokens * 1e9 / ns for ns in wall_ns]
        info = self.info
        return SpeedRow(
            test=label,
            n_prompt=per_seq if kind == "pp" else 0,
            n_gen=per_seq if kind == "tg" else 0,
            n_depth=depth,
            n_ctx=int(info["n_ctx"]),
            n_threads=self.threads,
            n_batch=int(info["n_batch"]),
            n_ubatch=int(info["n_ubatch"]),
            n_gpu_layers=self.opts.n_gpu_layers,
            type_k=getattr(self.buffers, "type_k", None),
            type_v=getattr(self.buffers, "type_v", None),
            model_type=str(info["model_type"]),
            model_size=int(info["model_size"]),
            model_n_params=int(info["model_n_params"]),
            avg_ns=int(_mean(perf_ns)),
            stddev_ns=int(_stdev(perf_ns)),
            avg_ts=round(_mean(rates), 3),
            stddev_ts=round(_stdev(rates), 3),
            samples_ns=perf_ns,
            samples_ts=[round(t, 3) for t in rates],
            wall_avg_ts=round(_mean(wall_ts), 3),
            n_parallel=n_parallel,
        )


def _buffer_figures(buffers: Any, info: dict[str, Any]) -> dict[str, Any]:
    if buffers is None:
        return {
            "weights_bytes": int(info["model_size"]),
            "kv_cache_bytes": None,
            "compute_buffer_bytes": None,
            "output_buffer_bytes": None,
            "allocated_bytes": None,
        }
    return {
        "weights_bytes": int(info["model_size"]),
        "weights_buffer_bytes": int(buffers.model_bytes),
        "kv_cache_bytes": int(buffers.kv_cache_bytes),
        "kv_cells": list(buffers.kv_cells),
        "compute_buffer_bytes": int(buffers.compute_bytes),
        "output_buffer_bytes": int(buffers.output_bytes),
        # What the estimate models: weights as stored plus the context's buffers.
        "allocated_bytes": int(info["model_size"])
        + int(buffers.kv_cache_bytes)
        + int(buffers.compute_bytes)
        + int(buffers.output_bytes),
    }


def _run_point_process(spec: dict[str, Any], options: BenchOptions) -> ContextPoint:
    """Run :func:`measure_point` in a fresh interpreter; its death becomes a failed point."""
    with tempfile.TemporaryDirectory(prefix="lifecycle-bench-") as tmp:
        out = Path(tmp) / "point.json"
        spec = {**spec, "output": str(out)}
        env = child_environment()
        package_root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "lifecycle.bench"],
                input=json.dumps(spec),
                capture_output=True,
                text=True,
                env=env,
                timeout=options.timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired:
            reason = f"timed out after {options.timeout_s:.0f} s"
            return _failed(spec["n_ctx"], spec["depth"], reason, None)
        if proc.returncode == 0 and out.is_file():
            return ContextPoint.from_dict(json.loads(out.read_text(encoding="utf-8")))
        return _failed(spec["n_ctx"], spec["depth"], _death_reason(proc), None)


def _death_reason(proc: subprocess.CompletedProcess[str]) -> str:
    code = proc.returncode
    if code < 0:
        import signal

        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else code
        why = f"the measuring process was killed by {name}"
        if name == "SIGKILL":
            why += " (often the out-of-memory killer)"
    else:
        why = f"the measuring process exited with status {code}"
    lines = [line for line in (proc.stderr or "").strip().splitlines() if line.strip()]
    return f"{why}: {lines[-1].strip()}" if lines else why


def _finish_point(
    point: ContextPoint,
    estimate: dict[str, Any],
    warnings: list[str],
    probe: Callable[[int], dict[str, Any]] | None,
    options: BenchOptions,
) -> ContextPoint:
    memory = point.memory
    placement = point.placement
    allocated = memory.get("allocated_bytes")
    error_pct = _error_pct(estimate["total_bytes"], allocated)
    estimate_note = None
    if placement and placement.get("offload") not in (None, "none"):
        estimate_note = (
            "the estimate models the CPU backend; with buffers on "
            f"{'+'.join(placement['gpu_devices'])} llama.cpp also reserves compute buffers per "
            "device, so the allocation can exceed it"
        )
    rss_reason = rss_comparison(placement) if point.ok else None
    rss_pct = None
    if point.ok and rss_reason is None:
        rss_pct = _error_pct(estimate["total_bytes"], memory.get("model_rss_bytes"))
        if rss_pct is None:
            rss_reason = "RSS did not grow over the load"
    rows = point.rows
    if probe is not None or options.gpu_bandwidth_bytes_per_s:
        rows = [_with_bound(row, probe, estimate, placement, options) for row in rows]
    return ContextPoint(
        n_ctx=point.n_ctx,
        n_depth=point.n_depth,
        ok=point.ok,
        error=point.error,
        warnings=warnings + point.warnings,
        load_ms=point.load_ms,
        rows=rows,
        memory=memory,
        estimate=estimate,
        estimate_error_pct=error_pct if point.ok else None,
        estimate_rss_error_pct=rss_pct,
        backend=point.backend,
        placement=placement,
        estimate_rss_reason=rss_reason,
        estimate_note=estimate_note,
    )


def _with_bound(
    row: SpeedRow,
    probe: Callable[[int], dict[str, Any]] | None,
    estimate: dict[str, Any],
    placement: dict[str, Any] | None,
    options: BenchOptions,
) -> SpeedRow:
    """tg rows: speed against the memory bandwidth / bytes read per token.

    A token reads every weight once plus the KV cache it attends to: ``depth`` tokens' K and V
    on full-attention layers (sliding-window layers read at most their window, ignored here).
    """
    if row.n_gen == 0:
        return row
    per_token = row.model_size + row.n_depth * int(estimate["kv_bytes_per_token"])
    offload = placement.get("offload") if placement else None
    host_side = offload == "none" or (offload is None and row.n_gpu_layers == 0)
    host = probe(per_token) if probe is not None and host_side else None
    figures = bandwidth_bound(
        per_token, row.avg_ts, offload, row.n_gpu_layers, host, options.gpu_bandwidth_bytes_per_s
    )
    return SpeedRow.from_dict({**row.to_dict(), **figures})


def _scaling(points: list[ContextPoint]) -> dict[str, Any] | None:
    """How memory grew from the smallest to the largest measured context, vs the estimate.

    Peak RSS is compared only when both points kept their KV cache and compute buffers in host
    memory; otherwise the VRAM growth NVML measured is (``rss_reason`` says why).
    """
    done = sorted((p for p in points if p.ok and p.estimate), key=lambda p: p.n_ctx)
    if len(done) < 2:
        return None
    first, last = done[0], done[-1]
    assert first.estimate is not None and last.estimate is not None

    def growth(point: ContextPoint, key: str) -> int | None:
        value = point.memory.get(key)
        return int(value) if value is not None else None

    est = last.estimate["total_bytes"] - first.estimate["total_bytes"]
    allocated = _diff(growth(last, "allocated_bytes"), growth(first, "allocated_bytes"))
    reason = rss_comparison(last.placement) or rss_comparison(first.placement)
    rss = vram = None
    vram_reason = None
    if reason is None:
        rss = _diff(growth(last, "peak_rss_bytes"), growth(first, "peak_rss_bytes"))
        if rss is not None and rss <= 0:
            reason, rss = "peak RSS did not grow with the context", None
        vram_reason = "the KV cache and compute buffers are in host memory"
    else:
        vram = _diff(growth(last, "vram_used_bytes"), growth(first, "vram_used_bytes"))
        if vram is None:
            vram_reason = last.memory.get("vram_reason") or "VRAM was not measured"
        elif vram <= 0:
            vram_reason, vram = "VRAM did not grow with the context", None
    return {
        "from_n_ctx": first.n_ctx,
        "to_n_ctx": last.n_ctx,
        "estimate_growth_bytes": est,
        "allocated_growth_bytes": allocated,
        "peak_rss_growth_bytes": rss,
        "vram_growth_bytes": vram,
        "estimate_vs_allocated_error_pct": _error_pct(est, allocated),
        "estimate_vs_rss_error_pct": _error_pct(est, rss),
        "estimate_vs_vram_error_pct": _error_pct(est, vram),
        "rss_reason": reason,
        "vram_reason": vram_reason,
    }


def _failed(n_ctx: int, depth: int, reason: str, estimate: dict[str, Any] | None) -> ContextPoint:
    return ContextPoint(
        n_ctx=n_ctx,
        n_depth=depth,
        ok=False,
        error=reason,
        warnings=[],
        load_ms=None,
        rows=[],
        memory={},
        estimate=estimate,
        estimate_error_pct=None,
        estimate_rss_error_pct=None,
    )


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _stdev(values: Sequence[float]) -> float:
    """Sample standard deviation, 0 for fewer than two values (llama-bench's ``stdev``)."""
    if len(values) < 2:
        return 0.0
    mean = _mean(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _error_pct(estimate: int | None, measured: int | None) -> float | None:
    """(estimate - measured) / measured in percent; None unless both are known and measured > 0."""
    if estimate is None or measured is None or measured <= 0:
        return None
    return round((estimate - measured) / measured * 100.0, 2)


def _diff(a: int | None, b: int | None) -> int | None:
    return a - b if a is not None and b is not None else None


def _known(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in names}


def _worker_main() -> int:
    """``python -m lifecycle.bench``: read a spec on stdin, write the point to spec['output']."""
    from lifecycle.fsutil import atomic_write_text

    spec = json.loads(sys.stdin.read())
    limit = spec["options"].get("address_space_limit_bytes")
    if limit:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (int(limit), int(limit)))
    result = measure_point(spec)
    atomic_write_text(Path(spec["output"]), json.dumps(result))
    return 0


if __name__ == "__main__":
    die_with_parent()
    sys.exit(_worker_main())
