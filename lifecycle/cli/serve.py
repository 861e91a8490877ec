"""``lifecycle plan`` and ``lifecycle loadtest``: the serving box's memory and latency."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from lifecycle.cli._options import template_option, workspace_option
from lifecycle.cli._output import emit, library_progress, progress, table
from lifecycle.errors import EXIT_GATE_FAILED, EXIT_OK, UsageError


class _Numbers(click.ParamType):
    """A comma-separated list of positive numbers."""

    name = "N[,N...]"

    def __init__(self, kind: type) -> None:
        self.kind = kind

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, list):
            return value
        out = []
        for part in str(value).split(","):
            try:
                number = self.kind(part.strip())
            except ValueError:
                self.fail(f"{part.strip()!r} is not a number", param, ctx)
            if number <= 0:
                self.fail(f"must be positive, got {part.strip()!r}", param, ctx)
            out.append(number)
        return out


@click.command("plan")
@workspace_option
@click.option("--memory", "memory", help="Budget instead of [serve] memory, e.g. 300MiB.")
@click.option(
    "--measure", is_flag=True, help="Load every resident model at once here; compare with the plan."
)
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON on stdout.")
def plan_command(
    workspace_dir: Path | None, memory: str | None, measure: bool, as_json: bool
) -> int:
    """Memory plan of the models resident on the serving box ([serve] in lifecycle.toml).

    Per model: weights + KV cache (x parallel) + compute buffers, the total against the
    budget, and the largest num_ctx and parallel that still fit with the others resident;
    the Ollama settings that reproduce it. Exit codes: 0 fits; 3 does not fit (nothing is
    loaded); 2 config error; 1 --measure could not load.
    """
    from lifecycle.config import load_workspace
    from lifecycle.serve import measure_plan, parse_size, plan_serving, require_serve_settings
    from lifecycle.store import Store

    workspace = load_workspace(workspace_dir)
    settings = require_serve_settings(workspace)
    budget = None
    if memory is not None:
        try:
            budget = parse_size(memory)
        except ValueError as exc:
            raise UsageError(f"--memory: {exc}") from None
    store = Store(workspace.home)
    with library_progress(enabled=not as_json):
        plan = plan_serving(workspace, store, settings, budget_override=budget)
    document = plan.to_dict()
    if measure and plan.fits:
        document["measured"] = measure_plan(workspace, store, settings, plan, progress)
    elif measure:
        document["measured"] = None
        progress("not measured: the plan does not fit, so nothing is loaded")
    emit(as_json, document, lambda: render_plan(document))
    return EXIT_OK if plan.fits else EXIT_GATE_FAILED


def render_plan(doc: dict[str, Any]) -> str:
    rows = [
        [
            m["variant"],
            m["num_ctx"],
            m["parallel"],
            f"{m['type_k']}/{m['type_v']}" + (" fa" if m["flash_attention"] else ""),
            _mib(m["weights_bytes"]),
            _mib(m["kv_cache_bytes"]),
            _mib(m["compute_bytes"] + m["output_bytes"]),
            _mib(m["total_bytes"]),
            m["max_num_ctx"] if m["max_num_ctx"] is not None else "-",
            m["max_parallel"] if m["max_parallel"] is not None else "-",
        ]
        for m in doc["models"]
    ]
    headers = [
        "variant", "num_ctx", "parallel", "KV type", "weights MiB", "KV MiB", "compute MiB",
        "total MiB", "max num_ctx", "max parallel",
    ]  # fmt: skip
    lines = [table(headers, rows)]
    lines.append(
        f"total {_mib(doc['total_bytes'])} MiB of {_mib(doc['budget_bytes'])} MiB "
        f"({doc['device']}, {doc['budget_source']}); headroom {_mib(doc['headroom_bytes'])} MiB"
    )
    lines.append("FITS" if doc["fits"] else f"DOES NOT FIT: {doc['overflow']}")
    lines.append("")
    lines.append("Ollama: " + " ".join(f"{k}={v}" for k, v in sorted(doc["ollama"].items())))
    files = {m["variant"]: m["modelfile"] for m in doc["models"]}
    for variant, line in doc["modelfile_parameters"].items():
        lines.append(f"{variant} ({files[variant]}): {line}")
    for note in doc["notes"] + [n for m in doc["models"] for n in m["notes"]]:
        lines.append(f"note: {note}")
    measured = doc.get("measured")
    if measured:
        lines.append("")
        rows = [
            [
                m["variant"],
                _mib(m["planned_bytes"]),
                _mib(m["allocated_bytes"]),
                _mib(m["rss_growth_bytes"]),
                _mib(m["vram_bytes"]),
                "-" if m["error_pct"] is None else f"{m['error_pct']:+.1f}%",
            ]
            for m in measured["models"]
        ]
        headers = ["variant", "planned MiB", "allocated MiB", "RSS growth MiB", "VRAM MiB", "plan"]
        lines.append(table(headers, rows))
        error = measured["error_pct"]
        verdict = "within" if measured["within_tolerance"] else "NOT within"
        lines.append(
            f"measured ({measured['measured_as']}, all loaded at once): "
            f"{_mib(measured['measured_bytes'])} MiB; the plan is "
            + ("-" if error is None else f"{error:+.1f}%")
            + f", {verdict} {measured['tolerance_pct']:g}%. RSS grew "
            f"{_mib(measured['rss_growth_bytes'])} MiB: mapped weights and buffers are "
            "resident only once touched"
        )
    return "\n".join(lines)


@click.command("loadtest")
@workspace_option
@click.argument("variant")
@click.option(
    "-c", "--concurrency", type=_Numbers(int), help="Closed-loop clients, e.g. 1,2,4 "
    "(default: the [serve] concurrency, else the slots)."
)  # fmt: skip
@click.option("--rates", type=_Numbers(float), help="Open-loop Poisson arrival rates, req/s.")
@click.option("-n", "--requests", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--warmup", type=click.IntRange(min=0), default=2, show_default=True)
@click.option("--seed", type=int, default=42, show_default=True, help="Arrivals and prompt order.")
@click.option("--suite", help="Golden set whose prompts are replayed (default: the first).")
@click.option("--mode", type=click.Choice(["free", "schema"]), default="free", show_default=True)
@click.option("--parallel", type=click.IntRange(min=1), help="Slots (default: [serve]).")
@click.option("--engine", help="Engine (default: lifecycle.toml).")
@click.option("--base-url", help="openai engine: the server's URL.")
@click.option("--host", help="ollama engine: the daemon's URL.")
@template_option
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads.")
@click.option("--chart", type=click.Path(dir_okay=False, path_type=Path), help="PNG path.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
def loadtest_command(
    workspace_dir: Path | None,
    variant: str,
    concurrency: list[int] | None,
    rates: list[float] | None,
    requests: int,
    warmup: int,
    seed: int,
    suite: str | None,
    mode: str,
    parallel: int | None,
    engine: str | None,
    base_url: str | None,
    host: str | None,
    template: str | None,
    threads: int | None,
    chart: Path | None,
    as_json: bool,
) -> int:
    """Latency of VARIANT under load: golden prompts replayed as served ([serve]).

    Closed loop with C clients (-c 1,2,4) and open loop at Poisson arrival rates (--rates);
    p50/p90/p95/p99 latency, time to first token, time per output token, throughput and
    goodput (share within [serve] sla_p95_ms). Writes .lifecycle/loadtest/<variant>.json and a
    PNG; pass the JSON to `gate`/`pin` with --bench to judge and record the SLA. Exit codes:
    0 measured; 1 the engine failed (samples so far kept, marked partial); 2 usage error.
    """
    from lifecycle.config import load_workspace
    from lifecycle.loadtest import LoadtestOptions, default_output, loadtest_chart, run_loadtest
    from lifecycle.store import Store

    workspace = load_workspace(workspace_dir)
    given = (("base_url", base_url), ("host", host), ("template", template))
    settings = {k: v for k, v in given if v}
    options = LoadtestOptions(
        concurrency=tuple(concurrency or ()),
        rates=tuple(rates or ()),
        requests=requests,
        warmup=warmup,
        seed=seed,
        suite=suite,
        mode=mode,
        parallel=parallel,
        engine=engine,
        threads=threads,
        engine_settings=settings,
    )
    output = default_output(workspace, variant)
    with library_progress(enabled=not as_json):
        document = run_loadtest(
            workspace, Store(workspace.home), variant, options, progress, output=output
        )
    path = chart or output.with_suffix(".png")
    loadtest_chart(document, path)
    document["chart"] = str(path)
    progress(f"result: {output}; chart: {path}")
    emit(as_json, document, lambda: render_loadtest(document))
    return EXIT_OK


def render_loadtest(doc: dict[str, Any]) -> str:
    serve, env = doc["serve"], doc["environment"]
    rows = []
    for p in doc["points"]:
        lat, ttft, tpot = p["latency_ms"], p["ttft_ms"], p["tpot_ms"]
        rows.append(
            [
                p["loop"],
                p["concurrency"] if p["loop"] == "closed" else f"{p['rate']:g}/s",
                f"{p['completed']}/{p['requests']}",
                "/".join(_ms(lat.get(q)) for q in ("p50", "p90", "p95", "p99")),
                "/".join(_ms(ttft.get(q)) for q in ("p50", "p95")),
                _ms(tpot.get("p50")),
                p["throughput_rps"],
                p["output_tokens_per_s"],
                "-" if p["goodput"] is None else f"{p['goodput']:.0%}",
                f"{p['foreign_cpu_share']:.0%}",
            ]
        )
    headers = [
        "loop", "load", "ok", "latency p50/p90/p95/p99 ms", "TTFT p50/p95", "TPOT p50",
        "req/s", "tok/s", "goodput", "busy",
    ]  # fmt: skip
    sla = serve.get("sla_p95_ms")
    lines = [
        f"{doc['variant']['name']}: {doc['suite']}/{doc['mode']} prompts, "
        f"{serve['parallel'] or '-'} slot(s), num_ctx {serve['num_ctx']}, "
        f"{doc['requests']} requests per point after {doc['warmup']} warm-up request(s) "
        "(excluded)",
        table(headers, rows),
        f"SLA p95 {sla:g} ms (goodput: share of requests within it)"
        if sla
        else "no [serve] sla_p95_ms for this variant: goodput not computed",
        f"{env['engine_version']}, {env['cpu']}, threads {env['threads']}; busy = CPU share "
        "other processes used during the point",
    ]
    if any(p["ttft_source"] == "estimated" for p in doc["points"]):
        lines.append("TTFT estimated as prompt time + one decode step (the engine has no clock)")
    return "\n".join(lines)


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:.1f}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"
