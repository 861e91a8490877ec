"""``lifecycle loadtest``: latency of one variant under the traffic it will be served.

The golden prompts are replayed against the served configuration: through the in-process
batched decoder (slots = ``parallel``, as Ollama's OLLAMA_NUM_PARALLEL) or an HTTP engine
with clients in flight. Two kinds of traffic:

* **closed loop**: C clients, each sending its next request the moment its last one is
  answered (no think time). Past the slots, requests wait in the queue.
* **open loop**: requests arrive as a Poisson process at a rate (seeded, so the same schedule
  everywhere); the box's queue grows when the rate outruns it, which is where it saturates.

Every request's end-to-end latency counts from its arrival (queueing included); time to first
token from arrival to its first sampled token; time per output token over the rest. The first
``warmup`` requests of each point (in arrival order) are run but excluded: they meet an idle
box. The shared prompt prefix (SYSTEM, few-shot MESSAGEs) is decoded once per point, like a
server's prompt cache.
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lifecycle import __version__
from lifecycle.config import Workspace, cache_settings
from lifecycle.engines import (
    BatchedModel,
    Generation,
    GenerationRequest,
    LoadedModel,
    LoadOptions,
)
from lifecycle.engines.base import runs_concurrently, wait_until_arrived
from lifecycle.engines.served_template import ChecksServedTemplate
from lifecycle.errors import EngineError, UsageError
from lifecycle.latency import goodput, percentiles, poisson_arrivals
from lifecycle.modelfile import serialise
from lifecycle.results import ForeignLoad, host_environment
from lifecycle.serve import Resident, load_serve_settings, resident_estimate
from lifecycle.store import Store
from lifecycle.variants import Variant, resolve_variants

SCHEMA_VERSION = 1
KIND = "loadtest"
HARDWARE_KEYS = ("machine", "cpu", "cpu_count_logical", "cpu_count_physical", "ram_bytes")
LOADTEST_DIR = Path(".lifecycle") / "loadtest"
Progress = Callable[[str], None]


@dataclass(frozen=True)
class LoadtestOptions:
    concurrency: tuple[int, ...] = ()  # closed-loop points (default: the [serve] concurrency)
    rates: tuple[float, ...] = ()  # open-loop points, requests per second
    requests: int = 16  # measured requests per point
    warmup: int = 2  # requests per point run first and excluded
    seed: int = 42
    suite: str | None = None  # default: the model's first suite
    mode: str = "free"
    parallel: int | None = None  # slots (default: [serve], else [engine] parallel)
    engine: str | None = None
    threads: int | None = None
    engine_settings: dict[str, Any] = field(default_factory=dict)
    timeout_s: float | None = None

    def __post_init__(self) -> None:
        if any(c < 1 for c in self.concurrency):
            raise UsageError("concurrency must be at least 1")
        if any(r <= 0 for r in self.rates):
            raise UsageError("arrival rates must be positive (requests per second)")
        if self.requests < 1 or self.warmup < 0:
            raise UsageError("--requests must be at least 1 and --warmup at least 0")


@dataclass(frozen=True)
class Sample:
    """One measured request (milliseconds; arrival in seconds from the point's start)."""

    case: str
    arrival_s: float
    latency_ms: float | None
    ttft_ms: float | None
    tpot_ms: float | None
    completion_tokens: int
    error: str | None = None


@dataclass(frozen=True)
class LoadPoint:
    """One traffic setting: a closed loop of ``concurrency`` clients or an open ``rate``."""

    loop: str  # "closed" | "open"
    concurrency: int | None
    rate: float | None
    requests: int
    completed: int
    errors: int
    latency_ms: dict[str, float]
    ttft_ms: dict[str, float]
    tpot_ms: dict[str, float]
    duration_s: float
    throughput_rps: float | None
    output_tokens_per_s: float | None
    goodput: float | None  # share of requests within sla_p95_ms
    goodput_rps: float | None
    foreign_cpu_share: float
    ttft_source: str  # "engine" (first sampled token) or "estimated" (prompt + one step)
    partial: bool = False
    samples: list[Sample] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_loadtest(
    workspace: Workspace,
    store: Store,
    name: str,
    options: LoadtestOptions,
    progress: Progress,
    *,
    output: Path | None = None,
) -> dict[str, Any]:
    """Load-test variant ``name``; returns the ``lifecycle loadtest --json`` document.

    The document is rewritten to ``output`` after each point, so an engine that dies mid-test
    leaves the points (and samples) taken so far, marked partial. An :class:`EngineError`
    during a point ends the test the same way and is raised after saving.
    """
    from lifecycle.engines import get_engine
    from lifecycle.gguf import read_gguf
    from lifecycle.golden import load_suites
    from lifecycle.runner import EvalOptions, case_request

    (variant,) = resolve_variants(workspace, store, [name])
    if variant.name != name:
        raise UsageError(f"{name!r} names a model; name one variant of it")
    serve_settings = load_serve_settings(workspace)
    resident = serve_settings.resident(name) if serve_settings else None
    engine_name = options.engine or workspace.engine.name
    batched_engine = engine_name == "llama-cpp"
    slots = options.parallel or (resident.parallel if resident else workspace.engine.parallel)
    concurrency = list(options.concurrency) or [resident.concurrency if resident else slots]
    if resident and resident.concurrency not in concurrency:
        concurrency.append(resident.concurrency)  # the gate judges this point
    eval_options = EvalOptions(
        engine=engine_name,
        threads=options.threads,
        parallel=slots,
        timeout_s=options.timeout_s,
        engine_settings=dict(options.engine_settings),
    )
    load_options = _load_options(
        workspace, variant, resident, slots if batched_engine else 1, options.threads
    )
    settings = workspace.models[variant.model]
    suite_name = options.suite or (settings.suites[0] if settings.suites else None)
    if suite_name is None:
        raise UsageError(f"model {variant.model!r} lists no suites in lifecycle.toml")
    (suite,) = load_suites(workspace.evals_dir, [suite_name])
    if options.mode not in suite.modes:
        raise UsageError(f"suite {suite.name!r} has no mode {options.mode!r}: {suite.modes}")
    chat_template = read_gguf(variant.blob_path).chat_template
    cases = list(suite.cases)
    requests = [
        (c.id, case_request(variant, suite, options.mode, c, chat_template, 0, eval_options))
        for c in cases
    ]
    engine = get_engine(engine_name, **options.engine_settings)
    document: dict[str, Any] = {
        "kind": KIND,
        "schema_version": SCHEMA_VERSION,
        "variant": {k: variant.to_dict()[k] for k in ("id", "name", "model", "blob_digest")},
        "suite": suite.name,
        "mode": options.mode,
        "serve": {
            "parallel": slots if batched_engine else None,
            "num_ctx": load_options.n_ctx,
            "concurrency": resident.concurrency if resident else concurrency[0],
            "sla_p95_ms": resident.sla_p95_ms if resident else None,
            "sla_ttft_p95_ms": resident.sla_ttft_p95_ms if resident else None,
            "in_serve_table": resident is not None,
            # The plan's bytes for this model as served (lifecycle plan), kept with the p95.
            "planned_bytes": resident_estimate(workspace, variant, resident).total_bytes
            if resident
            else None,
        },
        "requests": options.requests,
        "warmup": options.warmup,
        "seed": options.seed,
        "environment": {
            "tool_version": __version__,
            "engine": engine_name,
            "engine_version": engine.info().version,
            "threads": load_options.n_threads,
            **{k: v for k, v in host_environment().items() if k in HARDWARE_KEYS},
        },
        "points": [],
        "partial": True,
        "error": None,
    }
    sla = document["serve"]["sla_p95_ms"]
    progress(f"loading {variant.name} (num_ctx {load_options.n_ctx}, {slots} slot(s))")
    model = engine.load(variant.blob_path, load_options)
    if isinstance(model, ChecksServedTemplate):  # the eval's check: whose template is timed
        served = model.served_template(requests[0][1])
        if warning := served.warning(variant.name):
            progress(warning)
        document["environment"]["prompt_template"] = served.label()
    plan: list[tuple[str, int | None, float | None]]
    plan = [("closed", c, None) for c in sorted(set(concurrency))]
    plan += [("open", None, r) for r in options.rates]
    try:
        for index, (loop, clients, rate) in enumerate(plan):
            what = f"{clients} client(s)" if loop == "closed" else f"{rate:g} request(s)/s"
            progress(f"{variant.name}: {loop} loop, {what}, {options.requests} requests")
            schedule = _schedule(requests, options.warmup + options.requests, options.seed + index)
            try:
                point = _run_point(
                    model, schedule, loop, clients, rate, options, sla, options.seed + index
                )
            except _PartialPoint as exc:
                document["points"].append(exc.point.to_dict())
                document["error"] = str(exc)
                _save(document, output)
                raise EngineError(f"{exc} (partial samples kept in {output})") from None
            document["points"].append(point.to_dict())
            _save(document, output)
    finally:
        model.close()
    document["partial"] = False
    document["summary"] = loadtest_figures(document)
    _save(document, output)
    return document


def _load_options(
    workspace: Workspace,
    variant: Variant,
    resident: Resident | None,
    slots: int,
    threads: int | None,
) -> LoadOptions:
    """The variant loaded as the box serves it: the eval's settings, [serve]'s num_ctx, slots
    and KV cache settings."""
    cache = cache_settings(workspace.engine, resident.overrides if resident else variant.cache)
    return LoadOptions(
        n_ctx=(resident.num_ctx if resident else None) or variant.int_parameter("num_ctx"),
        n_parallel=slots,
        n_threads=threads or variant.engine_int("num_thread", workspace.engine.threads),
        n_batch=variant.engine_int("num_batch", workspace.engine.batch_size),
        n_gpu_layers=variant.engine_int("num_gpu", workspace.engine.gpu_layers),
        seed=variant.engine_int("seed", workspace.engine.seed),
        type_k=cache.type_k,
        type_v=cache.type_v,
        flash_attn=cache.flash_attention,
        modelfile=serialise(variant.modelfile),
        model_name=variant.name,
    )


def loadtest_figures(document: dict[str, Any]) -> dict[str, Any]:
    """What the gate and the lock keep of a load test: the closed-loop point at the
    configured concurrency (its p95s), the SLA, and where it was measured."""
    serve = document.get("serve") or {}
    env = document.get("environment") or {}
    wanted = serve.get("concurrency")
    point = next(
        (
            p
            for p in document.get("points", [])
            if p.get("loop") == "closed" and p.get("concurrency") == wanted
        ),
        None,
    )
    figures: dict[str, Any] = {
        "variant_id": (document.get("variant") or {}).get("id"),
        "concurrency": wanted,
        "parallel": serve.get("parallel"),
        "num_ctx": serve.get("num_ctx"),
        "planned_bytes": serve.get("planned_bytes"),
        "sla_p95_ms": serve.get("sla_p95_ms"),
        "sla_ttft_p95_ms": serve.get("sla_ttft_p95_ms"),
        "partial": bool(document.get("partial")) or point is None or bool(point.get("partial")),
        "hardware": {k: env.get(k) for k in HARDWARE_KEYS},
        "engine_version": env.get("engine_version"),
    }
    if point is not None:
        figures.update(
            {
                "latency_p50_ms": point["latency_ms"].get("p50"),
                "latency_p95_ms": point["latency_ms"].get("p95"),
                "latency_p99_ms": point["latency_ms"].get("p99"),
                "ttft_p95_ms": point["ttft_ms"].get("p95"),
                "throughput_rps": point["throughput_rps"],
                "goodput": point["goodput"],
                "foreign_cpu_share": point["foreign_cpu_share"],
            }
        )
    return figures


def default_output(workspace: Workspace, variant: str) -> Path:
    return workspace.root / LOADTEST_DIR / f"{re.sub(r'[^A-Za-z0-9._-]+', '_', variant)}.json"


def _schedule(
    requests: Sequence[tuple[str, GenerationRequest]], count: int, seed: int
) -> list[tuple[str, GenerationRequest]]:
    """``count`` requests drawn from the golden prompts: shuffled (seeded), then cycled."""
    order = list(requests)
    random.Random(seed).shuffle(order)
    return [order[i % len(order)] for i in range(count)]


class _Traffic:
    """When each request arrives: all clients at once then one per answer (closed loop), or
    on a Poisson schedule (open loop). The clock starts at the first question, after the
    engine has prepared (tokenized, decoded the shared prefix)."""

    def __init__(self, count: int, clients: int | None, offsets: list[float] | None) -> None:
        self.clients = clients
        self.offsets = offsets
        self.start: float | None = None
        self.answered: list[float] = []
        self.lock = threading.Lock()

    def arrived(self, index: int) -> float | None:
        with self.lock:
            if self.start is None:
                self.start = time.perf_counter()
            if self.offsets is not None:
                return self.start + self.offsets[index]
            clients = self.clients or 1
            if index < clients:
                return self.start
            k = index - clients  # request k + clients is sent by the client answered k-th
            return self.answered[k] if k < len(self.answered) else None

    def answer(self, at: float) -> None:
        with self.lock:
            self.answered.append(at)


def _run_point(
    model: LoadedModel,
    schedule: list[tuple[str, GenerationRequest]],
    loop: str,
    clients: int | None,
    rate: float | None,
    options: LoadtestOptions,
    sla_ms: float | None,
    seed: int,
) -> LoadPoint:
    count = len(schedule)
    offsets = poisson_arrivals(rate, count, seed) if rate else None
    traffic = _Traffic(count, clients, offsets)
    outcomes: dict[int, tuple[float, Generation | EngineError]] = {}

    def on_result(index: int, outcome: Generation | EngineError) -> None:
        at = time.perf_counter()
        outcomes[index] = (at, outcome)
        traffic.answer(at)

    load = ForeignLoad().start()
    error: EngineError | None = None
    try:
        requests = [r for _, r in schedule]
        if isinstance(model, BatchedModel):
            model.generate_batch(requests, on_result, arrived=traffic.arrived)
        else:
            _run_clients(model, requests, on_result, traffic, clients or min(count, 64))
    except EngineError as exc:
        error = exc
    share = load.share()
    start = traffic.start or 0.0
    samples = []
    ttft_source = "engine"
    for index, (case, _request) in enumerate(schedule):
        arrival = traffic.arrived(index)
        if index not in outcomes or arrival is None:
            continue
        done, outcome = outcomes[index]
        if isinstance(outcome, EngineError):
            samples.append(Sample(case, arrival - start, None, None, None, 0, str(outcome)))
            continue
        latency = (done - arrival) * 1000.0
        served = done - outcome.latency_ms / 1000.0  # when its decoding began
        if outcome.first_token_ms is not None:
            ttft = (served - arrival) * 1000.0 + outcome.first_token_ms
        else:  # an engine without a first-token clock: prompt time plus one decode step
            ttft_source = "estimated"
            step = outcome.generation_ms / max(outcome.eval_tokens, 1)
            ttft = (served - arrival) * 1000.0 + outcome.prompt_ms + step
        n = outcome.completion_tokens
        tpot = (latency - ttft) / (n - 1) if n > 1 else None
        samples.append(Sample(case, arrival - start, latency, ttft, tpot, n))
    samples.sort(key=lambda s: s.arrival_s)
    measured = samples[options.warmup :]
    ok = [s for s in measured if s.error is None]
    latencies = [s.latency_ms for s in ok if s.latency_ms is not None]
    first = min((s.arrival_s for s in measured), default=0.0)
    last = max(
        (s.arrival_s + (s.latency_ms or 0.0) / 1000.0 for s in measured),
        default=first,
    )
    duration = max(last - first, 0.0)
    tokens = sum(s.completion_tokens for s in ok)
    good = goodput(latencies, sla_ms)
    point = LoadPoint(
        loop=loop,
        concurrency=clients,
        rate=rate,
        requests=len(measured),
        completed=len(ok),
        errors=len(measured) - len(ok),
        latency_ms=percentiles(latencies),
        ttft_ms=percentiles([s.ttft_ms for s in ok if s.ttft_ms is not None]),
        tpot_ms=percentiles([s.tpot_ms for s in ok if s.tpot_ms is not None]),
        duration_s=round(duration, 3),
        throughput_rps=round(len(ok) / duration, 3) if duration > 0 else None,
        output_tokens_per_s=round(tokens / duration, 2) if duration > 0 else None,
        goodput=None if good is None else round(good, 4),
        goodput_rps=(
            round(good * len(ok) / duration, 3) if good is not None and duration > 0 else None
        ),
        foreign_cpu_share=share,
        ttft_source=ttft_source,
        partial=error is not None,
        samples=samples,
    )
    if error is not None:
        raise _PartialPoint(str(error), point)
    return point


class _PartialPoint(EngineError):
    """The engine failed during a point; ``point`` holds what was measured before."""

    def __init__(self, message: str, point: LoadPoint) -> None:
        super().__init__(message)
        self.point = point


def _run_clients(
    model: LoadedModel,
    requests: list[GenerationRequest],
    on_result: Callable[[int, Generation | EngineError], None],
    traffic: _Traffic,
    clients: int,
) -> None:
    """Client threads for engines without the batched decoder. A model that cannot take
    requests from threads (one in-process context) serves them one at a time, a one-slot box."""
    shared = None if runs_concurrently(model) else threading.Lock()
    counter = iter(range(len(requests)))
    take = threading.Lock()
    failure: list[BaseException] = []

    def client() -> None:
        while True:
            with take:
                index = next(counter, None)
            if index is None or failure:
                return
            wait_until_arrived(traffic.arrived, index)
            try:
                if shared is not None:
                    with shared:
                        outcome: Generation | EngineError = model.generate(requests[index])
                else:
                    outcome = model.generate(requests[index])
            except EngineError as exc:
                outcome = exc
            except BaseException as exc:  # re-raised in the caller's thread
                failure.append(exc)
                return
            on_result(index, outcome)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(max(clients, 1))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failure:
        raise failure[0]


def _save(document: dict[str, Any], output: Path | None) -> None:
    if output is None:
        return
    import json

    from lifecycle.fsutil import atomic_write_text

    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output, json.dumps(document, indent=2))


def loadtest_chart(document: dict[str, Any], path: Path) -> Path:
    """Latency percentiles against load: closed loop by clients, open loop by arrival rate,
    with the SLA as a line, so a reader sees where the box saturates."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = document.get("points", [])
    panels = [
        ("closed", "concurrency", "concurrent clients (closed loop)"),
        ("open", "rate", "arrival rate, requests/s (open loop, Poisson)"),
    ]
    shown = [p for p in panels if any(q["loop"] == p[0] for q in points)]
    fig, axes = plt.subplots(1, len(shown), figsize=(5.5 * len(shown), 4), squeeze=False)
    sla = (document.get("serve") or {}).get("sla_p95_ms")
    for ax, (loop, key, label) in zip(axes[0], shown, strict=True):
        rows = sorted((p for p in points if p["loop"] == loop), key=lambda p: p[key])
        xs = [p[key] for p in rows]
        for q, style in (("p50", "o-"), ("p95", "s-"), ("p99", "^--")):
            ax.plot(xs, [p["latency_ms"].get(q) for p in rows], style, label=f"latency {q}")
        ax.plot(xs, [p["ttft_ms"].get("p95") for p in rows], "x:", label="TTFT p95")
        if sla:
            ax.axhline(sla, color="red", linewidth=1, label=f"SLA p95 {sla:g} ms")
        ax.set(xlabel=label, ylabel="ms")
        ax.set_xticks(xs)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    variant = (document.get("variant") or {}).get("name", "")
    env = document.get("environment") or {}
    fig.suptitle(f"{variant}: latency under load ({env.get('cpu', '')})", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
