"""``lifecycle bench`` and ``lifecycle estimate``: speed, memory and context scaling."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from lifecycle.cli._options import workspace_option
from lifecycle.cli._output import emit, emit_json, library_progress, progress, table
from lifecycle.errors import EXIT_FAILURE, EXIT_OK


class ContextSizes(click.ParamType):
    """A comma-separated list of positive token counts; ``8k`` means 8192."""

    name = "N[,N...]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, list):
            return value
        sizes = []
        for part in str(value).split(","):
            text = part.strip().lower()
            scale = 1024 if text.endswith("k") else 1
            try:
                size = int(text.removesuffix("k")) * scale
            except ValueError:
                self.fail(f"{part.strip()!r} is not a number of tokens", param, ctx)
            if size <= 0:
                self.fail(f"context sizes must be positive, got {part.strip()!r}", param, ctx)
            sizes.append(size)
        return sizes


@click.command("bench")
@workspace_option
@click.argument("model")
@click.option("--ctx", "contexts", type=ContextSizes(), help="Context sweep, e.g. 512,2048,8k.")
@click.option("-p", "--n-prompt", type=click.IntRange(min=0), default=512, show_default=True)
@click.option("-n", "--n-gen", type=click.IntRange(min=0), default=128, show_default=True)
@click.option("-r", "--repetitions", type=click.IntRange(min=1), default=5, show_default=True)
@click.option(
    "-d", "--depth", type=click.IntRange(min=0), help="KV cache fill before each test "
    "(default: 0; in a --ctx sweep, the context minus -p and -n)."
)  # fmt: skip
@click.option(
    "--threads", type=click.IntRange(min=1), help="CPU threads (default: lifecycle.toml)."
)
@click.option("--batch", "n_batch", type=click.IntRange(min=1), help="Logical batch size.")
@click.option("--gpu", is_flag=True, help="Offload every layer to the GPU (needs a CUDA build).")
@click.option("--strict", is_flag=True, help="Fail contexts above the model's trained length.")
@click.option("--chart", type=click.Path(dir_okay=False, path_type=Path), help="PNG chart path.")
@click.option("--no-bandwidth", is_flag=True, help="Skip the memory-bandwidth bound.")
@click.option(
    "--parallel", "parallel", type=ContextSizes(), help="Batched rows like "
    "llama-batched-bench: N sequences of -p + -n tokens decoded together, e.g. 1,2,4,8.",
)  # fmt: skip
@click.option(
    "--gpu-bandwidth", "gpu_bandwidth", type=click.FloatRange(min=0, min_open=True),
    help="The GPU's memory bandwidth in GB/s (e.g. 4800 for an H200): bounds GPU rows.",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="No progress on stderr.")
def bench_command(
    workspace_dir: Path | None,
    model: str,
    contexts: list[int] | None,
    n_prompt: int,
    n_gen: int,
    repetitions: int,
    depth: int | None,
    threads: int | None,
    n_batch: int | None,
    gpu: bool,
    strict: bool,
    chart: Path | None,
    no_bandwidth: bool,
    parallel: list[int] | None,
    gpu_bandwidth: float | None,
    as_json: bool,
    quiet: bool,
) -> int:
    """Measure MODEL (a model of lifecycle.toml) like llama-bench: pp/tg tokens/sec, memory.

    Each context point runs in its own process; a context the model or machine cannot hold is
    recorded as failed with the reason. Exit codes: 0 measured (failed sweep points are
    reported, not fatal); 1 every point failed (e.g. the model does not load); 2 usage error.
    """
    from lifecycle.bench import BenchOptions, run_bench
    from lifecycle.config import cache_settings, load_workspace
    from lifecycle.errors import EngineError
    from lifecycle.store import Store
    from lifecycle.variants import resolve_variants

    workspace = load_workspace(workspace_dir)
    store = Store(workspace.home)
    with library_progress(enabled=not (as_json or quiet)):  # a quant level made on the way
        variant = resolve_variants(workspace, store, [model])[0]
    params = variant.modelfile.parameters
    cache = cache_settings(workspace.engine, variant.cache)
    options = BenchOptions(
        n_prompt=n_prompt,
        n_gen=n_gen,
        repetitions=repetitions,
        depth=depth,
        contexts=contexts,
        n_ctx=int(variant.parameter("num_ctx")),
        n_threads=threads or _as_int(params.get("num_thread"), workspace.engine.threads),
        n_batch=n_batch or _as_int(params.get("num_batch"), workspace.engine.batch_size),
        n_gpu_layers=-1 if gpu else _as_int(params.get("num_gpu"), workspace.engine.gpu_layers),
        gpu=gpu,
        engine=workspace.engine.name,
        strict=strict,
        bandwidth=not no_bandwidth,
        parallel=tuple(parallel or ()),
        gpu_bandwidth_bytes_per_s=gpu_bandwidth * 1e9 if gpu_bandwidth else None,
        type_k=cache.type_k,
        type_v=cache.type_v,
        flash_attn=cache.flash_attention,
    )
    result = run_bench(
        variant.blob_path,
        options,
        variant=variant.to_dict(),
        runs_dir=workspace.runs_dir,
        home=workspace.home,
        progress=None if quiet else progress,
    )
    if not contexts and not result.points[0].ok:
        raise EngineError(f"bench of {variant.name} failed: {result.points[0].error}")
    document = result.to_dict()
    if contexts and any(p.ok for p in result.points):
        from lifecycle.charts import context_chart

        path = chart or workspace.root / ".lifecycle" / "bench" / f"{variant.name}-context.png"
        context_chart(document, path)
        document["chart"] = str(path)
        if not quiet:
            progress(f"chart: {path}")
    emit(as_json, document, lambda: render_bench(document))
    return EXIT_OK if any(p.ok for p in result.points) else EXIT_FAILURE


@click.command("estimate")
@workspace_option
@click.argument("target")
@click.option("--ctx", "contexts", type=ContextSizes(), default="2048", show_default=True)
@click.option("--batch", "n_batch", type=click.IntRange(min=1), default=512, show_default=True)
@click.option("--ubatch", "n_ubatch", type=click.IntRange(min=1), default=512, show_default=True)
@click.option(
    "--cache-type-k", "type_k", help="KV cache K type (default: the variant's, else f16)."
)
@click.option(
    "--cache-type-v", "type_v", help="KV cache V type (default: the variant's, else f16)."
)
@click.option(
    "--swa-full/--no-swa-full", default=True, show_default=True,
    help="Full-size sliding-window caches (llama-cpp-python's default; llama-server: off).",
)  # fmt: skip
@click.option(
    "--flash-attn/--no-flash-attn", default=None,
    help="Flash attention, a smaller compute buffer (default: the variant's, else off).",
)  # fmt: skip
@click.option(
    "--parallel", type=click.IntRange(min=1), default=1, show_default=True,
    help="Sequences decoded together (batched eval): each gets --ctx cells of KV cache.",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the estimates as JSON on stdout.")
def estimate_command(
    workspace_dir: Path | None,
    target: str,
    contexts: list[int],
    n_batch: int,
    n_ubatch: int,
    type_k: str | None,
    type_v: str | None,
    swa_full: bool,
    flash_attn: bool | None,
    parallel: int,
    as_json: bool,
) -> int:
    """Memory TARGET needs at each --ctx, from its GGUF header only (nothing is loaded).

    TARGET is a GGUF file, a model or variant of lifecycle.toml, or a tag already in the
    local store.
    """
    from lifecycle.estimate import estimate_file

    path, cache = _resolve_target_cache(target, workspace_dir)
    type_k = type_k or cache.type_k
    type_v = type_v or cache.type_v
    flash_attn = cache.flash_attention if flash_attn is None else flash_attn
    estimates = [
        estimate_file(
            path,
            n_ctx,
            n_batch=n_batch,
            n_ubatch=n_ubatch,
            type_k=type_k,
            type_v=type_v,
            swa_full=swa_full,
            flash_attn=flash_attn,
            n_seq=parallel,
        )
        for n_ctx in contexts
    ]
    for note in sorted({n for e in estimates for n in e.notes}):
        progress(f"warning: {note}")
    if as_json:
        emit_json(
            {"target": target, "path": str(path), "estimates": [e.to_dict() for e in estimates]}
        )
        return EXIT_OK
    rows = [
        [
            e.n_ctx,
            _mib(e.weights_bytes),
            _mib(e.kv_cache_bytes),
            _mib(e.compute_bytes),
            _mib(e.output_bytes),
            _mib(e.total_bytes),
        ]
        for e in estimates
    ]
    headers = ["n_ctx", "weights MiB", "KV MiB", "compute MiB", "output MiB", "total MiB"]
    click.echo(table(headers, rows))
    first = estimates[0]
    swa = ""
    if first.layers_swa:
        cache = "full-size caches" if first.swa_full else f"{first.swa_cells} cells each"
        swa = f", {first.layers_swa} sliding-window layers ({cache})"
    click.echo(
        f"KV cache {first.type_k}/{first.type_v} ({_per_element(first.type_k, first.type_v)} "
        f"bytes per element), flash attention {'on' if first.flash_attn else 'off'}, "
        f"{first.layers_full} full-attention layers{swa}; "
        f"{first.kv_bytes_per_token} bytes per token of context"
    )
    return EXIT_OK


def render_bench(result: dict[str, Any]) -> str:
    """The human report: llama-bench's table, then memory per context, then latency."""
    rows = [
        [
            r["model_type"],
            r.get("backend") or "?",
            r["n_gpu_layers"],
            r["n_ctx"],
            r["n_threads"],
            r["test"],
            f"{r['avg_ts']:.2f} ± {r['stddev_ts']:.2f}",
            _bound_cell(r),
        ]
        for r in result["rows"]
    ]
    headers = ["model", "backend", "ngl", "n_ctx", "threads", "test", "t/s", "of bw bound"]
    lines = [table(headers, rows)]
    notes = sorted(
        {f"{r['test']}: {r['bandwidth_note']}" for r in result["rows"] if r.get("bandwidth_note")}
    )
    notes += sorted(
        {f"{r['test']}: {r['backend_note']}" for r in result["rows"] if r.get("backend_note")}
    )
    lines += [f"note: {n}" for n in notes]
    lines.append("")
    memory_rows = []
    for point in result["points"]:
        mem, est = point["memory"], point["estimate"] or {}
        memory_rows.append(
            [
                point["n_ctx"],
                "ok" if point["ok"] else "FAILED",
                point["load_ms"],
                _mib(mem.get("peak_rss_bytes")),
                _mib(mem.get("kv_cache_bytes")),
                _mib(mem.get("allocated_bytes")),
                _mib(est.get("total_bytes")),
                None
                if point["estimate_error_pct"] is None
                else f"{point['estimate_error_pct']:+.1f}%",
                _mib(mem.get("vram_used_bytes")),
            ]
        )
    headers = [
        "n_ctx", "status", "load ms", "peak RSS MiB", "KV MiB", "allocated MiB",
        "estimate MiB", "est. error", "VRAM MiB",
    ]  # fmt: skip
    lines.append(table(headers, memory_rows))
    opts = result.get("options") or {}
    type_k, type_v = opts.get("type_k", "f16"), opts.get("type_v", "f16")
    lines.append(
        f"KV cache {type_k}/{type_v} ({_per_element(type_k, type_v)} bytes per element), "
        f"flash attention {'on' if opts.get('flash_attn') else 'off'}"
    )
    for point in result["points"]:
        for warning in point["warnings"]:
            lines.append(f"warning: ctx {point['n_ctx']}: {warning}")
        if point["error"]:
            lines.append(f"failed: ctx {point['n_ctx']}: {point['error']}")
    reasons = {p["memory"].get("vram_reason") for p in result["points"] if p["ok"]}
    for reason in sorted(r for r in reasons if r):
        lines.append(f"VRAM: not measured ({reason})")
    rss_reasons = {p.get("estimate_rss_reason") for p in result["points"] if p["ok"]}
    for reason in sorted(r for r in rss_reasons if r):
        lines.append(f"RSS vs estimate: not applicable ({reason})")
    scaling = result.get("scaling")
    if scaling:
        lines.append(_scaling_line(scaling))
    if result.get("batched"):
        lines += ["", _batched_table(result["batched"])]
    bandwidth = result.get("bandwidth")
    if bandwidth:
        lines.append(
            f"memory bandwidth: {bandwidth['read_bytes_per_s'] / 1e9:.1f} GB/s read with "
            f"{bandwidth['threads']} threads ({bandwidth_provenance(bandwidth)})"
        )
    latency = result.get("latency")
    if latency:
        lines.append(
            f"last eval run ({latency['cases']} cases): latency p50/p95/p99 "
            f"{latency['latency_p50_ms']:.0f}/{latency['latency_p95_ms']:.0f}/"
            f"{latency['latency_p99_ms']:.0f} ms; time to first token p50/p95/p99 "
            f"{latency['ttft_p50_ms']:.0f}/{latency['ttft_p95_ms']:.0f}/"
            f"{latency['ttft_p99_ms']:.0f} ms"
        )
    env = result["environment"]
    gpu = f", GPU {env['gpu']}" if env.get("gpu") else ""
    lines.append(f"{env['engine_version']}, {env['cpu']}{gpu}, threads {env['n_threads']}")
    if env.get("gpu_reason") and env.get("gpu_backends"):
        lines.append(f"GPU: {env['gpu_reason']}")
    return "\n".join(lines)


def _batched_table(point: dict[str, Any]) -> str:
    """llama-batched-bench's view: per N, prompt and generation tokens/s over all sequences."""
    if not point["ok"]:
        return f"batched: FAILED: {point['error']}"
    by_n: dict[int, dict[str, dict[str, Any]]] = {}
    for row in point["rows"]:
        kind = "pp" if row["n_prompt"] else "tg"
        by_n.setdefault(row["n_parallel"], {})[kind] = row
    single = by_n.get(1, {}).get("tg", {}).get("avg_ts")
    rows = []
    for n, kinds in sorted(by_n.items()):
        pp, tg = kinds.get("pp"), kinds.get("tg")
        rows.append(
            [
                n,
                pp and f"{pp['avg_ts']:.1f}",
                tg and f"{tg['avg_ts']:.1f}",
                tg and f"{tg['avg_ts'] / n:.1f}",
                f"{tg['avg_ts'] / single:.2f}x" if tg and single else None,
            ]
        )
    mem = point["memory"]
    headers = ["N", "pp t/s (all)", "tg t/s (all)", "tg t/s per seq", "tg vs N=1"]
    return (
        f"batched decoding (one context, {point['n_ctx']} tokens per sequence, "
        f"KV {_mib(mem.get('kv_cache_bytes'))} MiB for the largest N):\n" + table(headers, rows)
    )


def _bound_cell(row: dict[str, Any]) -> str | None:
    """The bound column: a fraction only when it is one (<= 100 %); else why not, briefly."""
    if row.get("bandwidth_fraction") is not None:
        return f"{row['bandwidth_fraction']:.0%}"
    if row.get("bandwidth_ratio") is not None:
        return f"n/a ({row['bandwidth_ratio']:.1f}x, see note)"
    if row.get("n_gen") and row.get("bandwidth_note"):
        return "n/a (see note)"
    return None


def _scaling_line(scaling: dict[str, Any]) -> str:
    def pct(value: float | None) -> str:
        return "n/a" if value is None else f"{value:+.1f}%"

    span = f"context {scaling['from_n_ctx']} -> {scaling['to_n_ctx']}"
    parts = [
        f"estimate +{_mib(scaling['estimate_growth_bytes'])} MiB",
        f"vs llama.cpp's buffers {pct(scaling.get('estimate_vs_allocated_error_pct'))}",
    ]
    if scaling.get("peak_rss_growth_bytes") is not None:
        parts.append(f"vs peak RSS {pct(scaling.get('estimate_vs_rss_error_pct'))}")
    elif scaling.get("rss_reason"):
        parts.append(f"RSS n/a ({scaling['rss_reason']})")
    if scaling.get("vram_growth_bytes") is not None:
        parts.append(f"vs VRAM {pct(scaling.get('estimate_vs_vram_error_pct'))}")
    return f"{span}: " + ", ".join(parts)


def _per_element(type_k: str, type_v: str) -> str:
    from lifecycle.estimate import kv_type_bytes

    k, v = f"{kv_type_bytes(type_k):g}", f"{kv_type_bytes(type_v):g}"
    return k if k == v else f"{k}/{v}"


def _resolve_target_cache(target: str, workspace_dir: Path | None) -> tuple[Path, Any]:
    """The target's GGUF and the KV cache settings it runs with: a workspace variant's (the
    first, for a model), else llama.cpp's defaults (f16, no flash attention)."""
    from lifecycle.config import CacheSettings, cache_settings, load_workspace
    from lifecycle.errors import ConfigError
    from lifecycle.store import Store
    from lifecycle.targets import resolve_target

    try:
        workspace = load_workspace(workspace_dir)
    except ConfigError:
        return _resolve_target(target, workspace_dir), CacheSettings()
    found = resolve_target(target, Store(workspace.home), workspace=workspace, pull=False)
    if found is None or not found.variants:
        return _resolve_target(target, workspace_dir), cache_settings(workspace.engine)
    return found.path, cache_settings(workspace.engine, found.variants[0].cache)


def _resolve_target(target: str, workspace_dir: Path | None) -> Path:
    """A GGUF path, a workspace model's blob, or a tag's blob in the local store (no pull)."""
    from lifecycle.config import lifecycle_home, load_workspace
    from lifecycle.errors import ConfigError, UsageError
    from lifecycle.store import Store
    from lifecycle.tags import parse_tag
    from lifecycle.targets import resolve_target

    try:
        workspace = load_workspace(workspace_dir)
    except ConfigError:
        workspace = None
    store = Store(workspace.home if workspace else lifecycle_home())
    found = resolve_target(target, store, workspace=workspace, pull=False)
    if found is not None:
        return found.path
    if ":" in target:
        parse_tag(target)  # not a workspace name: a malformed tag says what is wrong with it
    raise UsageError(
        f"{target!r} is not a GGUF file, a model or variant of lifecycle.toml, or a tag"
    )


def _as_int(value: object, default: int) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else default


def _mib(value: int | None) -> float | None:
    return None if value is None else round(value / 1024 / 1024, 1)


def bandwidth_provenance(bandwidth: dict[str, Any]) -> str:
    """When and how the bandwidth figure was taken, so a low one can be told from a slow RAM."""
    from lifecycle.bandwidth import BANDWIDTH_MAX_FOREIGN_SHARE

    share = bandwidth.get("foreign_cpu_share")
    if isinstance(share, int | float):
        load = f"other processes used {share:.0%} of the CPU meanwhile"
        if share > BANDWIDTH_MAX_FOREIGN_SHARE:
            load += ": it may read low"
    else:
        load = "load unknown"
    if bandwidth.get("cached"):
        age = bandwidth.get("age_s")
        when = f"cached, measured {bandwidth.get('measured_at')}"
        if isinstance(age, int | float):
            when += f" ({_ago(age)})"
        return f"{when}; {load}"
    redo = f"; re-measured: the cached figure was {bandwidth['remeasured']}"
    return f"measured now; {load}" + (redo if bandwidth.get("remeasured") else "")


def _ago(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.0f} h ago"
    return f"{seconds / 86400:.0f} days ago"
