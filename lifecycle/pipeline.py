"""The weekly smoke: pull → build → eval → bench → gate → pin → report, in one call.

1. Check every tracked tag (the Modelfiles' FROM tags) against what ``models.lock`` pins, and
   pull the tags that moved (skipped with ``offline``).
2. Resolve the variants (their ids hash weights + Modelfile).
3. Eval, reusing cached results: a variant's results are cached under
   ``.lifecycle/cache/eval-<key>.json`` with ``key`` a hash of the variant id, each suite's
   golden-set, schema and suite-file digests, the engine name and build, and the engine
   settings. A changed digest always re-evaluates (unlike a cache keyed by tag name); a model
   with any variant missing from the cache is evaluated whole.
4. A short bench (``[bench]``: pp64/tg16, two repetitions by default, at the variant's
   ``num_ctx``), cached by variant id + engine build + settings; skipped cleanly when the
   engine cannot bench.
5. Gate against the committed baselines, pin what passed (optionally committing on a branch),
   and write the report. The result's exit code is the gate's (0 or 3).

The quant comparison is the run itself: variants of one model side by side in the report.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from lifecycle.baselines import (
    Baseline,
    BaselineCase,
    bench_by_variant,
    load_baselines,
    variant_environment,
)
from lifecycle.clock import utc_now
from lifecycle.config import Workspace, cache_settings
from lifecycle.errors import LifecycleError
from lifecycle.fsutil import atomic_write_text
from lifecycle.gate import GateResult, GateSettings, numeric_changes, read_gate_settings, run_gate
from lifecycle.gaterender import format_margin
from lifecycle.lockfile import LOCK_FILE, read_lock
from lifecycle.pin import PinResult, pin
from lifecycle.progress import Progress
from lifecycle.results import (
    PER_VARIANT_KEYS,
    CaseResult,
    RunEnvironment,
    RunRecord,
    SuiteSummary,
    VariantRun,
    host_environment,
    overall,
)
from lifecycle.store import Store

if TYPE_CHECKING:
    from lifecycle.variants import Variant

# Regressions named one per line in smoke's summary; the rest are in `lifecycle gate`.
MAX_LISTED = 20
# 2: case results carry decision margins (older cached results have none).
CACHE_VERSION = 2


@dataclass(frozen=True)
class SmokeOptions:
    """How the smoke runs; the defaults are the weekly job's."""

    offline: bool = False  # do not check or pull upstream tags
    bench: bool = True
    use_cache: bool = True
    commit: bool = False
    branch: str | None = None  # implies commit
    report_dir: Path | None = None  # default: <workspace>/reports
    threads: int | None = None
    prune: bool = True  # drop lock and baseline entries of variants that left the matrix
    # Cases decoded together. 1 by default: the smoke pins, and its run becomes the baselines,
    # so it decodes one case at a time, the reference path (batched decoding flipped a few
    # example verdicts: other rounding in batched matrix products; see docs/performance.md).
    parallel: int = 1
    # Load-test every [serve] resident at its configured concurrency, so the gate judges the
    # SLA and the pins record the p95 (off by default: minutes of traffic on a CI runner).
    load: bool = False


@dataclass
class SmokeResult:
    """What one smoke did, step by step."""

    upstream: list[dict[str, Any]]
    pulled: list[str]
    evaluated: list[str]  # variants evaluated now
    cached: list[str]  # variants whose results came from the cache
    bench: list[dict[str, Any]]
    bench_skipped: str | None
    record: RunRecord
    run_path: Path
    gate: GateResult
    pins: PinResult
    report: dict[str, str]
    seconds: float
    steps: dict[str, float] = field(default_factory=dict)
    loadtests: list[dict[str, Any]] = field(default_factory=list)  # the documents, per resident
    load_skipped: str | None = "not asked (--load)"

    @property
    def exit_code(self) -> int:
        return self.gate.exit_code

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.gate.passed,
            "exit_code": self.exit_code,
            "headline": self.gate.headline(),
            "upstream": self.upstream,
            "pulled": self.pulled,
            "evaluated": self.evaluated,
            "cached": self.cached,
            "bench_skipped": self.bench_skipped,
            "load": [doc.get("summary") or {} for doc in self.loadtests],
            "load_skipped": self.load_skipped,
            "run_id": self.record.run_id,
            "run": str(self.run_path),
            "summary": self.record.summary,
            "gate": self.gate.to_dict(),
            "pins": self.pins.to_dict(),
            "report": self.report,
            "seconds": round(self.seconds, 3),
            "steps": {k: round(v, 3) for k, v in self.steps.items()},
        }


def run_smoke(
    workspace: Workspace,
    options: SmokeOptions | None = None,
    *,
    store: Store | None = None,
    progress: Progress | None = None,
) -> SmokeResult:
    """Run the whole smoke on ``workspace``; see the module docstring."""
    from lifecycle.baselines import baseline_path
    from lifecycle.engines import get_engine
    from lifecycle.golden import load_suites
    from lifecycle.pin import check_repository
    from lifecycle.report import build_report, write_report
    from lifecycle.runner import EvalOptions, run_eval, save_run
    from lifecycle.variants import resolve_variants

    options = options or SmokeOptions()
    store = store or Store(workspace.home)
    say = progress or (lambda _msg: None)
    root = workspace.root
    started = time.perf_counter()
    steps: dict[str, float] = {}
    settings = read_gate_settings(workspace)  # a config typo fails first
    commit = options.commit or options.branch is not None
    if commit:  # refuse a dirty lock or a mid-merge repository before any work
        check_repository(
            root, [root / LOCK_FILE, *(baseline_path(root, m) for m in workspace.models)]
        )

    mark = time.perf_counter()
    upstream, pulled = ([], []) if options.offline else _pull_moved(workspace, store, say)
    steps["upstream"] = time.perf_counter() - mark

    mark = time.perf_counter()
    variants = resolve_variants(workspace, store)
    engine_info = get_engine(workspace.engine.name).info()
    keys: dict[str, str] = {}
    embedders: set[str] = set()  # variants that only embed: nothing to bench or load-test
    for variant in variants:
        suites = load_suites(workspace.evals_dir, list(workspace.models[variant.model].suites))
        keys[variant.name] = _eval_key(variant, suites, engine_info, workspace, options)
        if suites and all(s.embedding is not None for s in suites):
            embedders.add(variant.name)
    cache_dir = root / ".lifecycle" / "cache"
    slices: dict[str, dict[str, Any]] = {}
    if options.use_cache:
        for name, key in keys.items():
            cached = _read_json(cache_dir / f"eval-{key}.json")
            if cached is not None and cached.get("cache_version") == CACHE_VERSION:
                slices[name] = cached
    stale_models = sorted({v.model for v in variants if v.name not in slices})
    cached_names = [v.name for v in variants if v.model not in stale_models]
    fresh: RunRecord | None = None
    if stale_models:
        say(f"eval: {', '.join(stale_models)} (cached: {', '.join(cached_names) or 'none'})")
        fresh = run_eval(
            workspace,
            EvalOptions(
                models=stale_models,
                threads=options.threads,
                parallel=options.parallel,
                # Per-case answers (lifecycle.answers): variants that differ only in num_ctx
                # share them, and a changed golden set generates only its new cases.
                answers=options.use_cache,
            ),
            store=store,
            progress=say,
        )
        for run in fresh.variants:
            name = run.variant.name
            piece = _slice(fresh, name)
            slices[name] = piece
            engine_failed = run.error or any(c.errored for c in fresh.cases if c.variant == name)
            if name in keys and not engine_failed:  # only verdicts are cached, never failures
                atomic_write_text(cache_dir / f"eval-{keys[name]}.json", json.dumps(piece) + "\n")
    else:
        say(f"eval: every variant cached ({', '.join(cached_names)})")
    record = _combine([slices[v.name] for v in variants], fresh, [keys[v.name] for v in variants])
    run_path = save_run(record, workspace.runs_dir)
    steps["eval"] = time.perf_counter() - mark

    mark = time.perf_counter()
    bench_docs: list[dict[str, Any]] = []
    bench_skipped = None if options.bench else "disabled (--no-bench)"
    if options.bench:
        try:
            # llama-bench's figures are generation speeds: an embedding model has none to
            # measure (and one that cannot generate would fail the bench of every variant).
            for variant in [v for v in variants if v.name not in embedders]:
                bench_docs.append(_bench(variant, workspace, engine_info, cache_dir, options, say))
        except LifecycleError as exc:
            bench_skipped = f"bench failed, skipped: {exc}"
            bench_docs = []
            say(bench_skipped)
    steps["bench"] = time.perf_counter() - mark

    mark = time.perf_counter()
    load_docs: list[dict[str, Any]] = []
    load_skipped: str | None = "not asked (--load)"
    if options.load:
        load_docs, load_skipped = _load_tests(workspace, store, variants, options, say)
        steps["load"] = time.perf_counter() - mark

    mark = time.perf_counter()
    figures = bench_by_variant(bench_docs + load_docs)
    gate = gate_workspace(
        workspace, record, settings=settings, bench=figures, store=store, progress=say
    )
    pins = pin(
        root,
        record,
        gate,
        store,
        bench=figures,
        commit=commit,
        branch=options.branch,
        keep=workspace_variant_names(workspace) if options.prune else None,
    )
    steps["gate_pin"] = time.perf_counter() - mark

    mark = time.perf_counter()
    from lifecycle.pin import quant_of

    quants = {v.name: quant_of(store, v.blob_digest) for v in variants}
    report = build_report(
        record, gate, pins=pins.to_dict(), bench=bench_docs + load_docs, quants=quants
    )
    html_path, md_path = write_report(report, options.report_dir or root / "reports")
    steps["report"] = time.perf_counter() - mark
    return SmokeResult(
        upstream=upstream,
        pulled=pulled,
        evaluated=[v.name for v in variants if v.name not in cached_names],
        cached=cached_names,
        bench=bench_docs,
        bench_skipped=bench_skipped,
        record=record,
        run_path=run_path,
        gate=gate,
        pins=pins,
        report={"html": str(html_path), "markdown": str(md_path)},
        seconds=time.perf_counter() - started,
        steps=steps,
        loadtests=load_docs,
        load_skipped=load_skipped,
    )


def render_summary(result: SmokeResult) -> str:
    """The one summary the smoke prints at the end."""
    lines = []
    moved = [u for u in result.upstream if u["status"] != "unchanged"]
    lines.append(
        f"upstream: {len(result.upstream)} tag(s) checked, {len(moved)} moved"
        + (f", pulled {', '.join(result.pulled)}" if result.pulled else "")
    )
    lines.append(
        f"eval: {len(result.evaluated)} variant(s) evaluated, {len(result.cached)} from cache; "
        f"{result.record.summary.get('passed')}/{result.record.summary.get('cases')} cases passed"
    )
    cached_bench = sum(1 for doc in result.bench if doc.get("cached"))
    measured = len(result.bench) - cached_bench
    lines.append(
        "bench: "
        + (result.bench_skipped or f"{measured} variant(s) measured, {cached_bench} from cache")
    )
    if result.load_skipped and result.load_skipped != "not asked (--load)":
        lines.append(f"load: {result.load_skipped}")
    for doc in result.loadtests:
        fig = doc.get("summary") or {}
        lines.append(
            f"load {doc['variant']['name']}: p50/p95/p99 "
            + "/".join(_ms(fig.get(f"latency_{q}_ms")) for q in ("p50", "p95", "p99"))
            + f" ms at concurrency {fig.get('concurrency')}"
            + (f" (SLA p95 {fig['sla_p95_ms']:g} ms)" if fig.get("sla_p95_ms") else "")
            + (" PARTIAL" if fig.get("partial") else "")
        )
    for v in result.gate.variants:
        state = v.status + ("" if v.passed else ": " + "; ".join(v.failures))
        lines.append(f"gate {v.variant}: {state}")
    lines.append(f"regressions: {len(result.gate.regressions)}")
    for r in result.gate.regressions[:MAX_LISTED]:
        margins = (
            f" (margin {format_margin(r.baseline_margin)} → {format_margin(r.margin)})"
            if r.baseline_margin is not None or r.margin is not None
            else ""
        )
        lines.append(f"  {r.variant} {r.suite}/{r.mode} {r.case}{margins}: {r.reason}")
    if len(result.gate.regressions) > MAX_LISTED:
        lines.append(f"  ... {len(result.gate.regressions) - MAX_LISTED} more (lifecycle gate)")
    if result.gate.environment_flips:
        judged: dict[str, int] = {}
        for flip in result.gate.environment_flips:
            judged[flip.judged] = judged.get(flip.judged, 0) + 1
        lines.append(
            "flipped across an environment change: "
            + ", ".join(f"{n} {kind}" for kind, n in sorted(judged.items()))
        )
    for c in result.pins.changes:
        detail = f" ({'; '.join(c.reasons)})" if c.reasons else ""
        lines.append(f"pin {c.variant}: {c.status}{detail}")
    if result.pins.commit:
        on = f" on {result.pins.branch}" if result.pins.branch else ""
        lines.append(f"commit: {result.pins.commit[:12]}{on}")
    lines.append(f"report: {result.report['html']}")
    if result.gate.engine_failed:
        verdict = "ENGINE FAILED (no verdict on the failed variants)"
    else:
        verdict = "PASS" if result.gate.passed else "FAIL"
    lines.append(f"verdict: {verdict} — {result.gate.headline()} ({result.seconds:.1f} s)")
    return "\n".join(lines)


def _load_tests(
    workspace: Workspace,
    store: Store,
    variants: list[Variant],
    options: SmokeOptions,
    say: Progress,
) -> tuple[list[dict[str, Any]], str | None]:
    """The load test of every [serve] resident this smoke evaluated, at its concurrency.
    Returns the documents and, when some could not be measured, why."""
    from lifecycle.loadtest import LoadtestOptions, default_output, run_loadtest
    from lifecycle.serve import load_serve_settings

    serve = load_serve_settings(workspace)
    if serve is None:
        return [], "no [serve] table in lifecycle.toml: nothing to load-test"
    docs: list[dict[str, Any]] = []
    for variant in variants:
        resident = serve.resident(variant.name)
        if resident is None:
            continue
        output = default_output(workspace, variant.name)
        load = LoadtestOptions(concurrency=(resident.concurrency,), threads=options.threads)
        try:
            docs.append(run_loadtest(workspace, store, variant.name, load, say, output=output))
        except LifecycleError as exc:
            # Like a failed bench: said, and the gate says the SLA was not judged. The partial
            # samples stay in the load test's file.
            return docs, f"load test of {variant.name} failed: {exc}"
    return docs, None


def _ms(value: Any) -> str:
    return "-" if value is None else f"{float(value):.0f}"


def gate_workspace(
    workspace: Workspace,
    record: RunRecord,
    *,
    settings: GateSettings | None = None,
    bench: dict[str, dict[str, Any]] | None = None,
    store: Store | None = None,
    progress: Progress | None = None,
) -> GateResult:
    """Gate ``record`` against the workspace: its baselines, its pins, and this machine.

    Where a variant's weights or prompt changed *and* the environment differs from its
    baseline's (CPU, engine build, CPU kernels), the pinned variant is evaluated here first,
    so that regressions compare like with like (cached per environment).
    """
    root = workspace.root
    settings = settings or read_gate_settings(workspace)
    baselines = load_baselines(root)
    pinned = set(read_lock(root / LOCK_FILE).variants)
    references = reference_runs(
        workspace, record, baselines, store or Store(workspace.home), progress or (lambda _m: None)
    )
    return run_gate(record, baselines, settings, bench=bench, pinned=pinned, references=references)


def reference_runs(
    workspace: Workspace,
    record: RunRecord,
    baselines: dict[str, Baseline],
    store: Store,
    say: Progress,
) -> dict[str, list[BaselineCase]]:
    """The pinned variants evaluated on this machine, where the gate needs them (by name)."""
    from lifecycle.runner import EvalOptions, run_eval
    from lifecycle.variants import pinned_variant, resolve_variants

    out: dict[str, list[BaselineCase]] = {}
    for run in record.variants:
        name = run.variant.name
        base = baselines.get(name)
        if base is None or run.error or base.variant_id == run.variant.id:
            continue
        changed = numeric_changes(base.environment, variant_environment(record.environment, name))
        if not changed:
            continue
        modes = sorted({c.mode for c in record.cases if c.variant == name})
        key_parts = [
            CACHE_VERSION,
            base.variant_id,
            record.golden_sets,
            modes,
            variant_environment(record.environment, name),
        ]
        key = hashlib.sha256(json.dumps(key_parts, sort_keys=True, default=str).encode())
        path = workspace.root / ".lifecycle" / "cache" / f"reference-{key.hexdigest()[:24]}.json"
        cached = _read_json(path)
        if cached is not None:
            out[name] = [BaselineCase.from_dict(c) for c in cached["cases"]]
            continue
        # A run made before the matrix changed may name a variant the workspace no longer
        # has: there is nothing to rebuild, so the stored baseline stands. Any other error
        # while resolving (a broken Modelfile, a store problem) is the user's to see.
        if name not in workspace_variant_names(workspace):
            say(f"gate {name}: no longer in this workspace's matrix; stored baseline used")
            continue
        (current,) = resolve_variants(workspace, store, [name])
        pinned = pinned_variant(current, base.variant, store)
        if pinned is None:
            say(f"gate {name}: the pinned variant cannot be rebuilt here; stored baseline used")
            continue
        say(
            f"gate {name}: environment changed ({', '.join(changed)}); evaluating the pinned "
            "variant here for a like-for-like baseline"
        )
        # Like for like: decoded the way the run under judgement was (batched or not).
        parallel = variant_environment(record.environment, name).get("parallel")
        reference = run_eval(
            workspace,
            EvalOptions(modes=modes or None, parallel=parallel if isinstance(parallel, int) else 1),
            store=store,
            progress=say,
            variants=[pinned],
        )
        if reference.variants and reference.variants[0].error:
            continue
        cases = [BaselineCase.of(c) for c in reference.cases if not c.errored]
        atomic_write_text(path, json.dumps({"cases": [c.to_dict() for c in cases]}) + "\n")
        out[name] = cases
    return out


def workspace_variant_names(workspace: Workspace) -> set[str]:
    """Every variant name the workspace's matrices expand to (what pins may exist for)."""
    from lifecycle.variants import matrix_names

    return {name for settings in workspace.models.values() for name in matrix_names(settings)}


# --- steps -----------------------------------------------------------------------------------


def _pull_moved(
    workspace: Workspace, store: Store, say: Progress
) -> tuple[list[dict[str, Any]], list[str]]:
    """Check tracked tags against the lock (or the store) and pull those that moved."""
    from lifecycle import sources

    pinned = read_lock(workspace.root / LOCK_FILE).by_tag()
    changes, pulled = [], []
    for tag in sources.tracked_tags(workspace):
        key = str(sources.canonical(tag))
        baseline = pinned[key].manifest() if key in pinned else None
        change = sources.check(store, tag, baseline=baseline)
        changes.append(change.to_dict())
        current = store.read_manifest(sources.canonical(tag))
        have = (
            current is not None and current.digest == change.new_digest and store.has_all(current)
        )
        if change.changed and not have:
            say(f"pull {key}: {change.status} ({change.new_digest})")
            sources.pull(store, tag)
            pulled.append(key)
        else:
            say(f"upstream {key}: {change.status}")
    return changes, pulled


def _eval_key(
    variant: Any,
    suites: list[Any],
    engine_info: Any,
    workspace: Workspace,
    options: SmokeOptions,
) -> str:
    parts = {
        "cache_version": CACHE_VERSION,
        "variant_id": variant.id,
        "suites": [
            {
                "name": s.name,
                "golden": s.golden_digest,
                "schema": s.schema_digest,
                "suite_file": _file_digest(s.path),
            }
            for s in suites
        ],
        "engine": [engine_info.name, engine_info.version],
        # A rebuilt engine of the same version, or another KV cache type, decodes differently.
        "ggml_commit": engine_info.details.get("ggml_commit"),
        # llguidance's forced tokens or llama.cpp's GBNF grammar: other schema-mode answers.
        "schema_decoder": engine_info.details.get("schema_decoder"),
        # Free-mode drafting (verify batches round differently); absent when off.
        **{k: v for k, v in engine_info.details.items() if k == "free_drafting" and v != "off"},
        "cache": cache_settings(workspace.engine, variant.cache).to_dict(),
        # Greedy outputs can differ across CPUs (other kernels): results are per machine kind.
        "host": [host_environment().get("machine"), host_environment().get("cpu")],
        "settings": [
            options.threads or workspace.engine.threads,
            workspace.engine.batch_size,
            workspace.engine.seed,
            workspace.engine.gpu_layers,
            options.parallel,  # batched decoding can round differently
        ],
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def _bench(
    variant: Any,
    workspace: Workspace,
    engine_info: Any,
    cache_dir: Path,
    options: SmokeOptions,
    say: Progress,
) -> dict[str, Any]:
    from lifecycle.bench import BenchOptions, run_bench

    engine, short = workspace.engine, workspace.bench
    cache = cache_settings(engine, variant.cache)
    bench_options = BenchOptions(
        n_prompt=short.n_prompt,
        n_gen=short.n_gen,
        repetitions=short.repetitions,
        n_ctx=int(variant.parameter("num_ctx")),
        n_threads=options.threads or variant.engine_int("num_thread", engine.threads),
        n_batch=variant.engine_int("num_batch", engine.batch_size),
        n_gpu_layers=variant.engine_int("num_gpu", engine.gpu_layers),
        engine=engine.name,
        bandwidth=False,
        type_k=cache.type_k,
        type_v=cache.type_v,
        flash_attn=cache.flash_attention,
        timeout_s=600.0,
    )
    key_parts = [CACHE_VERSION, variant.id, engine_info.version, bench_options.to_dict()]
    key = hashlib.sha256(json.dumps(key_parts, sort_keys=True).encode()).hexdigest()[:24]
    path = cache_dir / f"bench-{key}.json"
    if options.use_cache and (cached := _read_json(path)) is not None:
        say(f"bench {variant.name}: cached")
        return {**cached, "cached": True}
    say(
        f"bench {variant.name}: pp{short.n_prompt} tg{short.n_gen} x{short.repetitions}"
        f" at num_ctx {bench_options.n_ctx}"
    )
    result = run_bench(variant.blob_path, bench_options, variant=variant.to_dict(), progress=say)
    document = result.to_dict()
    if not any(p.ok for p in result.points):
        raise LifecycleError(f"{variant.name}: {result.points[0].error}")
    atomic_write_text(path, json.dumps(document) + "\n")
    return document


def _slice(record: RunRecord, name: str) -> dict[str, Any]:
    """One variant's part of a run record, as cached."""
    run = next(v for v in record.variants if v.variant.name == name)
    suites = {c.suite for c in record.cases if c.variant == name}
    return {
        "cache_version": CACHE_VERSION,
        "run_id": record.run_id,
        "variant": run.to_dict(),
        "environment": record.environment,
        "golden_sets": {s: d for s, d in record.golden_sets.items() if s in suites},
        "summaries": [s.to_dict() for s in record.summaries if s.variant == name],
        "cases": [c.to_dict() for c in record.cases if c.variant == name],
        "retrieval": record.retrieval.get(name) or {},
    }


def _combine(pieces: list[dict[str, Any]], fresh: RunRecord | None, keys: list[str]) -> RunRecord:
    """One run record from per-variant slices (cached or fresh), in workspace order."""
    variants = [VariantRun.from_dict(p["variant"]) for p in pieces]
    summaries = [SuiteSummary.from_dict(s) for p in pieces for s in p["summaries"]]
    cases = [CaseResult.from_dict(c) for p in pieces for c in p["cases"]]
    environment = dict(fresh.environment if fresh else pieces[0]["environment"])
    per_variant: dict[str, dict[str, Any]] = {key: {} for key in PER_VARIANT_KEYS}
    golden: dict[str, Any] = {}
    for p in pieces:
        name = p["variant"]["variant"]["name"]
        for key, values in per_variant.items():
            recorded = p["environment"].get(key)
            if isinstance(recorded, dict) and name in recorded:
                values[name] = recorded[name]
        golden.update(p["golden_sets"])
    environment.update(per_variant)
    if fresh is not None and len(pieces) == len(fresh.variants):
        run_id = fresh.run_id
    else:
        # All (or part) from the cache: a run id derived from the cache keys, so an unchanged
        # workspace gives the same run twice.
        digest = hashlib.sha256("\n".join(keys).encode()).hexdigest()[:8]
        run_id = f"{fresh.run_id}+cache" if fresh else f"cached-{digest}"
    now = utc_now()
    load_ms = sum(v.load_ms or 0.0 for v in variants)
    return RunRecord(
        run_id=run_id,
        started_at=fresh.started_at if fresh else now,
        finished_at=fresh.finished_at if fresh else now,
        environment=cast(RunEnvironment, environment),  # merged from records of one schema
        golden_sets=golden,
        variants=variants,
        summaries=summaries,
        cases=cases,
        summary=overall(summaries, cases, load_ms),
        retrieval={
            p["variant"]["variant"]["name"]: p["retrieval"] for p in pieces if p.get("retrieval")
        },
    )


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _file_digest(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
