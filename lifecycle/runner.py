"""Eval runs: golden suites on variants through an engine, into a :class:`RunRecord`.

Everything that can be checked without a model is checked first (workspace, Modelfiles,
golden sets, schemas, GGUF headers), so a typo fails in milliseconds, not after a model load.
Each variant is loaded once; its cases run in file order so the shared prefix (system prompt
and few-shot turns) stays in the engine's KV cache.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lifecycle import __version__
from lifecycle import gguf as gguf_reader
from lifecycle import modelfile as mf
from lifecycle.answers import (
    Answer,
    AnswerCache,
    AnswerKey,
    answer_key,
    cacheable,
    max_bytes_from_env,
    prune,
    total_bytes,
)
from lifecycle.checkpoints import CheckpointFile, Checkpoints
from lifecycle.confidence import confidence_signals
from lifecycle.config import CacheSettings, Workspace, cache_settings
from lifecycle.crashguard import note
from lifecycle.engines import (
    BatchedModel,
    CaseTimeout,
    EngineCrashed,
    Generation,
    GenerationRequest,
    LoadedModel,
    LoadOptions,
    ThreadedModel,
    generate_many,
    get_engine,
)
from lifecycle.engines.base import runs_concurrently
from lifecycle.engines.served_template import ChecksServedTemplate, ServedTemplate
from lifecycle.errors import ConfigError, EngineError, GoldenSetError, ModelError, UsageError
from lifecycle.fsutil import atomic_write_text, exclusive_lock
from lifecycle.golden import MODES, GoldenCase, Suite, load_suites, score_output
from lifecycle.hostinfo import physical_cores
from lifecycle.lint import lint_variant
from lifecycle.progress import Progress
from lifecycle.prompt import render_prompt
from lifecycle.results import (
    CaseResult,
    ForeignLoad,
    RunEnvironment,
    RunRecord,
    SuiteSummary,
    VariantRun,
    host_environment,
    overall,
    summarise,
)
from lifecycle.runs import LATEST, RUN_FILE
from lifecycle.store import Store, now
from lifecycle.variants import Variant, resolve_variants

# Engines that run llama.cpp on this machine, whose build the canary must vouch for.
CANARY_ENGINES = ("llama-cpp", "llama-cpp-isolated")
CHECKPOINTS_DIR = Path(".lifecycle") / "checkpoints"
# Where engines that cannot set the KV cache per model take it from (recorded as unknown).
CACHE_ELSEWHERE = {
    "ollama": "the Ollama server's OLLAMA_KV_CACHE_TYPE and OLLAMA_FLASH_ATTENTION",
    "openai": "the server's own flags (llama-server --cache-type-k/-v, --flash-attn)",
}


@dataclass(frozen=True)
class EvalOptions:
    """What to run: models, suites and modes (None = all the workspace declares)."""

    models: Sequence[str] | None = None
    suites: Sequence[str] | None = None
    modes: Sequence[str] | None = None
    engine: str | None = None
    threads: int | None = None
    limit: int | None = None  # first N cases of each suite, for quick checks
    # Only these case ids (e.g. the cases a cascade escalates); None: every case.
    case_ids: Sequence[str] | None = None
    shard: tuple[int, int] | None = None  # (i, n): run every n-th work item from the i-th
    concurrency: int = 1  # cases in flight at once (HTTP engines only)
    # Sequences decoded together in one llama.cpp context (None: the workspace's [engine]
    # parallel). 1 decodes one case at a time, the reference path.
    parallel: int | None = None
    timeout_s: float | None = None  # wall-clock limit per case (None: the engine default)
    engine_settings: dict[str, Any] = field(default_factory=dict)  # e.g. base_url, host
    # Results are appended to this run's files in .lifecycle/checkpoints as they are produced,
    # so an interrupted run resumes where it stopped (see lifecycle.checkpoints); False starts
    # every case afresh.
    resume: bool = True
    canary: bool = True  # run the engine canary (lifecycle doctor) before loading a model
    # Serve answers generated before from .lifecycle/answers (lifecycle.answers) and record
    # new ones; False generates every case (`--no-cache`). Scoring always runs again.
    answers: bool = True

    def __post_init__(self) -> None:
        if self.shard is not None:
            i, n = self.shard
            if n < 1 or not 1 <= i <= n:
                raise UsageError(f"invalid shard {i}/{n}: expected i/n with 1 <= i <= n")


@dataclass(frozen=True)
class _Plan:
    variant: Variant
    suites: list[Suite]
    chat_template: str | None
    embedding: bool = False  # its suites are retrieval suites: loaded to embed (retrieval)


@dataclass
class _Reuse:
    """One variant's cached answers: the key of each work item and the ones found."""

    cache: AnswerCache
    run_id: str
    keys: dict[tuple[str, str, str], AnswerKey] = field(default_factory=dict)
    hits: dict[tuple[str, str, str], Answer] = field(default_factory=dict)


def run_eval(
    workspace: Workspace,
    options: EvalOptions | None = None,
    *,
    store: Store | None = None,
    progress: Progress | None = None,
    variants: Sequence[Variant] | None = None,
) -> RunRecord:
    """Run the selected suites on the selected variants and return the run record.

    ``variants`` runs exactly those (e.g. a pinned variant rebuilt from its baseline) instead
    of resolving the workspace's matrix.
    """
    options = options or EvalOptions()
    store = store or Store(workspace.home)
    say = progress or (lambda _msg: None)
    for mode in options.modes or ():
        if mode not in MODES:
            raise UsageError(f"unknown mode {mode!r}; modes: {', '.join(MODES)}")

    started = now()
    plans = _plan(workspace, store, options, say, variants)
    engine = get_engine(options.engine or workspace.engine.name, **options.engine_settings)
    engine_info = engine.info()

    variant_runs: list[VariantRun] = []
    summaries: list[SuiteSummary] = []
    cases: list[CaseResult] = []
    total_load_ms = 0.0
    threads_used: dict[str, int] = {}
    parallel_used: dict[str, int] = {}
    engine_modes: dict[str, bool] = {}  # variant -> extra buffer types on (the canary's call)
    # variant -> KV cache settings it ran with; None where the engine cannot say (a server)
    caches: dict[str, dict[str, Any] | None] = {}
    foreign: dict[str, float] = {}  # variant -> CPU share other processes used meanwhile
    templates: dict[str, str] = {}  # variant -> whose chat template a server's answers test
    checkpoints = Checkpoints(workspace.root / CHECKPOINTS_DIR, enabled=options.resume)
    golden_sets = {
        s.name: {"golden_digest": s.golden_digest, "schema_digest": s.schema_digest}
        for p in plans
        for s in p.suites
    }
    blobs = {p.variant.name: p.variant.blob_digest for p in plans}
    # Named now: the answers this run generates are cached under it ("from cache (run X)").
    run_id = _run_id(started, blobs, golden_sets)
    answers = (
        AnswerCache.of_workspace(workspace.root, warn=say)
        if options.answers and cacheable(engine.name)
        else None
    )
    retrieval: dict[str, dict[str, Any]] = {}
    slot = 0  # position in the (variant, suite, mode, case) order that shards slice
    for plan in plans:
        variant = plan.variant
        if plan.embedding:  # retrieval suites run whole, in the first shard
            if options.shard is None or options.shard[0] == 1:
                # Imported here: vectors and retrieval metrics are for embedding suites only.
                from lifecycle.retrieval import run_embedding_variant

                embedded = run_embedding_variant(
                    engine,
                    variant,
                    plan.suites,
                    _load_options(workspace, variant, options),
                    say,
                    limit=options.limit,
                )
                variant_runs.append(embedded.run)
                summaries += embedded.summaries
                cases += embedded.cases
                threads_used[variant.name] = embedded.threads
                total_load_ms += embedded.run.load_ms or 0.0
                retrieval[variant.name] = embedded.suites
            continue
        work = _work_items(plan, options)
        in_this_shard = [_in_shard(slot + k, options.shard) for k in range(len(work))]
        slot += len(work)
        if not any(in_this_shard):
            continue
        load_options = _load_options(workspace, variant, options)
        caches[variant.name] = _applied_cache(engine.name, variant.name, load_options, say)
        note(variant=variant.name, digest=variant.blob_digest)
        try:
            if options.canary and engine.name in CANARY_ENGINES:
                load_options = _checked_load_options(workspace, variant, load_options, say)
            engine_modes[variant.name] = load_options.extra_bufts
            reuse = _find_answers(
                answers, run_id, plan, work, in_this_shard, engine_info, load_options, options
            )
            load = ForeignLoad().start()
            model: LoadedModel | None = None
            if reuse is not None and len(reuse.hits) == sum(in_this_shard):
                say(f"{variant.name}: every answer is cached; the model is not loaded")
            else:
                check_batched_memory(variant.blob_path, load_options)
                say(
                    f"loading {variant.name} ({variant.blob_digest[:19]}, "
                    f"num_ctx {load_options.n_ctx})"
                )
                model = engine.load(variant.blob_path, load_options)
        except EngineError as exc:
            # One variant that cannot load (or crashes the engine loading) must not take the
            # rest of the run down with it; the run records why and `eval` exits 1.
            say(f"error: {variant.name}: {exc}")
            variant_runs.append(VariantRun(variant=variant.info(), load_ms=None, error=str(exc)))
            continue
        if model is None:  # what the engine would have run with: it is in the answers' keys
            threads_used[variant.name] = load_options.n_threads or physical_cores()
            parallel_used[variant.name] = load_options.n_parallel
        else:
            threads_used[variant.name] = (
                model.n_threads if isinstance(model, ThreadedModel) else load_options.n_threads
            )
            parallel_used[variant.name] = model.parallel if isinstance(model, BatchedModel) else 1
            total_load_ms += model.load_ms
            if isinstance(model, ChecksServedTemplate):
                first = next(item for item, keep in zip(work, in_this_shard, strict=True) if keep)
                templates[variant.name] = _served_template(
                    model, plan, first, load_options, options, say
                )
        try:
            for suite, mode in _groups(plan, options):
                selected = [
                    case
                    for (s, m, case), keep in zip(work, in_this_shard, strict=True)
                    if keep and s is suite and m == mode
                ]
                if not selected:
                    continue
                checkpoint = checkpoints.group(
                    _group_key(variant, suite, mode, engine_info, load_options)
                )
                results = _run_group(
                    model,
                    variant,
                    suite,
                    mode,
                    selected,
                    plan,
                    options,
                    say,
                    load_options.seed,
                    checkpoint,
                    reuse,
                )
                cases.extend(results)
                summaries.append(
                    summarise(
                        results,
                        variant=variant.name,
                        suite=suite.name,
                        mode=mode,
                        threshold=suite.thresholds.get(mode),
                        concurrency=options.concurrency,
                    )
                )
        finally:
            if model is not None:
                model.close()
        foreign[variant.name] = load.share()
        load_ms = round(model.load_ms, 2) if model is not None else 0.0
        variant_runs.append(VariantRun(variant=variant.info(), load_ms=load_ms))

    environment: RunEnvironment = {
        "tool": "lifecycle",
        "tool_version": __version__,
        "engine": engine_info.name,
        "engine_version": engine_info.version,
        "engine_details": dict(engine_info.details),
        "threads": threads_used,
        "parallel": parallel_used,
        "extra_bufts": engine_modes,
        "kv_cache_type_k": {n: c["kv_cache_type_k"] if c else None for n, c in caches.items()},
        "kv_cache_type_v": {n: c["kv_cache_type_v"] if c else None for n, c in caches.items()},
        "flash_attention": {n: c["flash_attention"] if c else None for n, c in caches.items()},
        "foreign_cpu_share": foreign,
        "prompt_template": templates,
        "schema_decoder": engine_info.details.get("schema_decoder"),
        "free_drafting": engine_info.details.get("free_drafting"),
        "batch_size": workspace.engine.batch_size,
        "gpu_layers": workspace.engine.gpu_layers,
        "seed": workspace.engine.seed,
        "blobs": blobs,
        **host_environment(),
    }
    finished = now()
    if answers is not None and answers.written:
        bound = max_bytes_from_env()
        if total_bytes(answers.directory) > bound:
            prune(answers.directory, bound)
    checkpoints.finish()  # a complete run needs no resume point
    return RunRecord(
        run_id=run_id,
        started_at=started,
        finished_at=finished,
        environment=environment,
        golden_sets=golden_sets,
        variants=variant_runs,
        summaries=summaries,
        cases=cases,
        summary=overall(summaries, cases, total_load_ms),
        shard=f"{options.shard[0]}/{options.shard[1]}" if options.shard else None,
        retrieval=retrieval,
    )


def save_run(record: RunRecord, runs_dir: Path) -> Path:
    """Write ``runs_dir/<run_id>/run.json`` atomically; ``latest.json`` names the newest run.

    Two runs at once in one workspace both save: ``latest.json`` is then the one that
    finished last, not whichever happened to save last (decided under a lock).
    """
    run_dir = runs_dir / record.run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(record.to_dict(), indent=2, ensure_ascii=False) + "\n"
    path = run_dir / RUN_FILE
    atomic_write_text(path, text)
    with exclusive_lock(runs_dir / ".latest.lock"):
        # finished_at has one-second resolution: within the same second the run saving now
        # finished last (a random run id must not break the tie).
        if record.finished_at >= _finished(runs_dir / LATEST):
            atomic_write_text(runs_dir / LATEST, text)
    return path


def _finished(path: Path) -> str:
    """``finished_at`` of the run record at ``path``; empty when there is none."""
    try:
        return str(json.loads(path.read_text(encoding="utf-8"))["finished_at"])
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def _plan(
    workspace: Workspace,
    store: Store,
    options: EvalOptions,
    say: Progress,
    variants: Sequence[Variant] | None = None,
) -> list[_Plan]:
    """Resolve variants, load suites and read GGUF headers before any model is loaded."""
    plans = []
    if variants is None:
        variants = resolve_variants(workspace, store, list(options.models or []) or None)
    for variant in variants:
        settings = workspace.models[variant.model]
        names = list(options.suites or settings.suites)
        if not names:
            raise UsageError(f"model {variant.model!r} lists no suites in lifecycle.toml")
        suites = load_suites(workspace.evals_dir, names)
        if any(s.embedding for s in suites):
            plans.append(_Plan(variant, suites, None, embedding=_all_retrieval(variant, suites)))
            continue
        info = gguf_reader.read_gguf(variant.blob_path)
        plans.append(_Plan(variant=variant, suites=suites, chat_template=info.chat_template))
        for finding in lint_variant(variant, info, names):
            say(f"warning: {finding.variant}: {finding.message} [{finding.check}]")
        # Render one prompt now so a broken TEMPLATE fails before the model loads.
        render_prompt(
            variant.modelfile,
            suites[0].cases[0].messages,
            chat_template=info.chat_template,
            modelfile_path=variant.modelfile_path,
        )
    return plans


def _all_retrieval(variant: Variant, suites: list[Suite]) -> bool:
    """A model is loaded either to generate or to embed: its suites must agree."""
    mixed = [s.name for s in suites if s.embedding is None]
    if mixed:
        raise ConfigError(
            f"model {variant.model!r} lists retrieval and generation suites together "
            f"({', '.join(s.name for s in suites)}): an embedding model gets its own "
            '[models.NAME] with only kind = "embedding" suites'
        )
    return True


def _group_key(
    variant: Variant, suite: Suite, mode: str, engine_info: Any, load: LoadOptions
) -> str:
    """What makes two runs of a group interchangeable: weights, cases, engine, settings, CPU."""
    parts = [
        variant.id,
        suite.name,
        suite.golden_digest,
        suite.schema_digest,
        hashlib.sha256(suite.path.read_bytes()).hexdigest(),
        mode,
        engine_info.name,
        engine_info.version,
        [load.n_ctx, load.n_threads, load.n_batch, load.n_gpu_layers, load.seed, load.n_parallel],
        load.extra_bufts,
        [load.type_k, load.type_v, load.flash_attn],
        host_environment().get("cpu"),
    ]
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def _find_answers(
    cache: AnswerCache | None,
    run_id: str,
    plan: _Plan,
    work: list[tuple[Suite, str, GoldenCase]],
    in_this_shard: list[bool],
    engine_info: Any,
    load: LoadOptions,
    options: EvalOptions,
) -> _Reuse | None:
    """Key every work item of this variant and look its answer up (None: no cache)."""
    if cache is None:
        return None
    reuse = _Reuse(cache=cache, run_id=run_id)
    cpu = host_environment().get("cpu")
    variant = plan.variant
    for (suite, mode, case), keep in zip(work, in_this_shard, strict=True):
        if not keep:
            continue
        request = case_request(variant, suite, mode, case, plan.chat_template, load.seed, options)
        key = answer_key(
            request, blob_digest=variant.blob_digest, engine=engine_info, load=load, cpu=cpu
        )
        reuse.keys[(suite.name, mode, case.id)] = key
        hit = cache.lookup(key)
        if hit is not None:
            reuse.hits[(suite.name, mode, case.id)] = hit
    return reuse


def _served_template(
    model: ChecksServedTemplate,
    plan: _Plan,
    first: tuple[Suite, str, GoldenCase],
    load: LoadOptions,
    options: EvalOptions,
    say: Progress,
) -> str:
    """Check, on the variant's first case, whether the server renders it as the Modelfile
    does; say so before the run when it does not. Returns the run record's label."""
    suite, mode, case = first
    request = case_request(plan.variant, suite, mode, case, plan.chat_template, load.seed, options)
    try:
        found = model.served_template(request)
    except EngineError as exc:
        found = ServedTemplate("server", None, f"the check failed: {exc}")
    warning = found.warning(plan.variant.name)
    if warning:
        say(warning)
    return found.label()


def _checked_load_options(
    workspace: Workspace, variant: Variant, load: LoadOptions, say: Progress
) -> LoadOptions:
    """Ask the engine canary whether (and how) this model runs here; raise if it cannot."""
    from dataclasses import replace

    from lifecycle.engines.doctor import extra_bufts_for

    extra_bufts = extra_bufts_for(
        variant.blob_path,
        name=variant.name,
        digest=variant.blob_digest,
        n_gpu_layers=load.n_gpu_layers,
        home=workspace.home,
        say=say,
    )
    return replace(load, extra_bufts=extra_bufts)


def check_batched_memory(blob: Path, load: LoadOptions, available_bytes: int | None = None) -> None:
    """Refuse a batched load whose N sequences' KV cache cannot fit in memory, naming the need.

    Each of the ``n_parallel`` sequences gets ``num_ctx`` cells, so the cache grows N-fold;
    checked against available host memory (CPU-only loads) before llama.cpp tries.
    """
    if load.n_parallel < 2 or load.n_gpu_layers != 0:
        return
    import psutil

    from lifecycle.estimate import estimate_memory

    try:
        need = estimate_memory(
            gguf_reader.read_gguf(blob), load.n_ctx, n_batch=load.n_batch, n_seq=load.n_parallel
        )
    except ModelError:
        return  # a header the estimate cannot read: llama.cpp's own load decides

    available = (
        available_bytes if available_bytes is not None else psutil.virtual_memory().available
    )
    if need.total_bytes > available:
        mib = 1024 * 1024
        raise EngineError(
            f"parallel {load.n_parallel} x num_ctx {load.n_ctx} needs about "
            f"{need.total_bytes // mib} MiB (KV cache {need.kv_cache_bytes // mib} MiB), "
            f"{available // mib} MiB of memory is available: lower [engine] parallel "
            "(or --parallel) or num_ctx",
            path=blob,
        )


def _groups(plan: _Plan, options: EvalOptions) -> list[tuple[Suite, str]]:
    return [
        (suite, mode)
        for suite in plan.suites
        for mode in suite.modes
        if not options.modes or mode in options.modes
    ]


def _work_items(plan: _Plan, options: EvalOptions) -> list[tuple[Suite, str, GoldenCase]]:
    """Every (suite, mode, case) of a variant, in the order runs and shards use."""
    items = []
    for suite, mode in _groups(plan, options):
        selected = suite.cases[: options.limit] if options.limit else suite.cases
        if options.case_ids is not None:
            wanted = set(options.case_ids)
            selected = tuple(c for c in selected if c.id in wanted)
        items += [(suite, mode, case) for case in selected]
    return items


def _in_shard(slot: int, shard: tuple[int, int] | None) -> bool:
    # Round-robin keeps every shard's share of each variant (and of slow cases) even.
    return shard is None or slot % shard[1] == shard[0] - 1


def _load_options(workspace: Workspace, variant: Variant, options: EvalOptions) -> LoadOptions:
    params = variant.modelfile.parameters

    def setting(name: str, default: int) -> int:
        return variant.int_parameter(name) if name in params else default

    engine = options.engine or workspace.engine.name
    parallel = options.parallel if options.parallel is not None else workspace.engine.parallel
    cache = cache_settings(workspace.engine, variant.cache)
    return LoadOptions(
        n_ctx=variant.int_parameter("num_ctx"),
        # Only the in-process llama.cpp engine batches sequences; the others run one case at
        # a time (HTTP engines have --concurrency instead).
        n_parallel=parallel if engine == "llama-cpp" else 1,
        n_threads=options.threads or setting("num_thread", workspace.engine.threads),
        n_batch=setting("num_batch", workspace.engine.batch_size),
        n_gpu_layers=setting("num_gpu", workspace.engine.gpu_layers),
        seed=setting("seed", workspace.engine.seed),
        use_mmap=bool(params.get("use_mmap", True)),
        type_k=cache.type_k,
        type_v=cache.type_v,
        flash_attn=cache.flash_attention,
        modelfile=mf.serialise(variant.modelfile),
        model_name=variant.name,
    )


def _applied_cache(
    engine: str, variant: str, load: LoadOptions, say: Progress
) -> dict[str, Any] | None:
    """The KV cache settings the run records for a variant: what the llama.cpp engines were
    given; None (unknown) for a server, which takes them from its own configuration."""
    cache = CacheSettings(load.type_k, load.type_v, load.flash_attn)
    if engine in CANARY_ENGINES:
        return cache.to_dict()
    if cache != CacheSettings():
        where = CACHE_ELSEWHERE.get(engine, "the server's configuration")
        say(
            f"warning: {variant}: the {engine} engine cannot set the KV cache type or flash "
            f"attention per model; they come from {where} (recorded as unknown)"
        )
    return None


def _run_group(
    model: LoadedModel | None,
    variant: Variant,
    suite: Suite,
    mode: str,
    cases: list[GoldenCase],
    plan: _Plan,
    options: EvalOptions,
    say: Progress,
    seed: int,
    checkpoint: CheckpointFile | None = None,
    reuse: _Reuse | None = None,
) -> list[CaseResult]:
    """Run one (suite, mode) group of cases; engine failures become errored cases.

    Cases already in ``checkpoint`` (an interrupted earlier run of the same group) are taken from
    it; each new verdict is appended to it as soon as it is known. Cases whose answer
    ``reuse`` found are scored on it (``model`` is None when every case's answer was found);
    each new answer is added to its cache.
    """
    if mode == "schema" and model is not None:
        try:
            model.check_schema(suite.schema)
        except GoldenSetError:
            raise
        except EngineError as exc:  # e.g. a server that ignores JSON Schemas
            return [_failed(variant, suite, mode, c, f"schema not enforced: {exc}") for c in cases]
    done = checkpoint.load() if checkpoint is not None else {}
    reused = [done[c.id] for c in cases if c.id in done]
    if reused:
        say(f"[{variant.name} {suite.name}/{mode}] resumed {len(reused)} case(s) from a checkpoint")
    order = {case.id: i for i, case in enumerate(cases)}
    total = len(cases)
    cases = [c for c in cases if c.id not in done]
    hits = {} if reuse is None else reuse.hits
    cached = [c for c in cases if (suite.name, mode, c.id) in hits]
    cases = [c for c in cases if (suite.name, mode, c.id) not in hits]
    requests = [
        case_request(variant, suite, mode, c, plan.chat_template, seed, options) for c in cases
    ]
    results: list[CaseResult] = list(reused)

    def record(
        case: GoldenCase,
        outcome: Generation | EngineError,
        wall_share_s: float,
        cached_from: str | None = None,
    ) -> None:
        if isinstance(outcome, EngineError):
            result = _failed(variant, suite, mode, case, _engine_failure(outcome))
        else:
            result = _scored(variant, suite, mode, case, outcome, wall_share_s, cached_from)
            if reuse is not None and cached_from is None:
                reuse.cache.store(reuse.keys[(suite.name, mode, case.id)], outcome, reuse.run_id)
            if checkpoint is not None:
                checkpoint.append(result)
        results.append(result)
        mark = "ERROR" if result.errored else "pass" if result.passed else "FAIL"
        source = f", from cache (run {cached_from})" if cached_from else ""
        say(
            f"[{variant.name} {suite.name}/{mode} {len(results)}/{total}] "
            f"{case.id}: {mark} ({result.latency_ms:.0f} ms{source}) {result.reason}"
        )

    for case in cached:
        # No engine time in this run: its share of the wall time is nil.
        answer = hits[(suite.name, mode, case.id)]
        record(case, answer.generation, 0.0, answer.run_id)
    if not cases:
        pass
    elif model is None:
        raise AssertionError("a variant with answers to generate was not loaded")
    elif isinstance(model, BatchedModel) and model.parallel > 1:
        # Continuous batching: cases finish out of order; each is recorded as it finishes.
        def finished(index: int, outcome: Generation | EngineError) -> None:
            work_ms = outcome.work_ms if isinstance(outcome, Generation) else None
            record(cases[index], outcome, (work_ms or 0.0) / 1000.0)

        def live(indices: list[int]) -> None:
            note(case=",".join(cases[i].id for i in indices), phase="generation")

        answered: set[int] = set()

        def finished_once(index: int, outcome: Generation | EngineError) -> None:
            answered.add(index)
            finished(index, outcome)

        try:
            model.generate_batch(requests, finished_once, live)
        except EngineError as exc:
            # The batch itself failed (e.g. no room in the KV cache): every case it had not
            # answered yet is an error with that reason; the answered ones stand.
            for index in range(len(cases)):
                if index not in answered:
                    finished(index, exc)
    elif options.concurrency > 1 and runs_concurrently(model):
        started = time.perf_counter()
        outcomes = generate_many(model, requests, concurrency=options.concurrency)
        share = (time.perf_counter() - started) / len(cases)
        for case, outcome in zip(cases, outcomes, strict=True):
            record(case, outcome, share)
    else:
        # One at a time, in file order: the shared prompt prefix stays in the KV cache, and
        # each verdict is reported as soon as it is known.
        for case, request in zip(cases, requests, strict=True):
            note(case=case.id, phase="prompt")
            started = time.perf_counter()
            (outcome,) = generate_many(model, [request])
            record(case, outcome, time.perf_counter() - started)
    return sorted(results, key=lambda r: order[r.id])


def case_request(
    variant: Variant,
    suite: Suite,
    mode: str,
    case: GoldenCase,
    chat_template: str | None,
    seed: int,
    options: EvalOptions,
) -> GenerationRequest:
    """The engine request for one golden case on one variant (also used to escalate one)."""
    prompt = render_prompt(
        variant.modelfile,
        case.messages,
        chat_template=chat_template,
        modelfile_path=variant.modelfile_path,
    )
    stop = variant.modelfile.parameters.get("stop", [])
    num_predict = variant.int_parameter("num_predict")
    max_tokens = min(suite.max_tokens, num_predict) if num_predict > 0 else suite.max_tokens
    return GenerationRequest(
        prompt=prompt,
        max_tokens=max_tokens,
        stop=tuple(stop) if isinstance(stop, list) else (),
        temperature=variant.float_parameter("temperature"),
        seed=variant.int_parameter("seed") if "seed" in variant.modelfile.parameters else seed,
        top_k=variant.int_parameter("top_k"),
        top_p=variant.float_parameter("top_p"),
        min_p=variant.float_parameter("min_p"),
        repeat_penalty=variant.float_parameter("repeat_penalty"),
        json_schema=suite.schema if mode == "schema" else None,
        # Engines that render templates themselves (ollama, openai) get the conversation.
        messages=tuple(case.messages),
        timeout_s=options.timeout_s,
        # The routed field's probability needs each token's log-probability (costs a softmax).
        logprobs=bool(suite.calibration and suite.calibration.routed_field),
        logprob_field=suite.calibration.routed_field if suite.calibration else None,
        margin_field=suite.calibration.routed_field if suite.calibration else None,
    )


def _scored(
    variant: Variant,
    suite: Suite,
    mode: str,
    case: GoldenCase,
    generation: Generation,
    wall_share_s: float,
    cached_from: str | None = None,
) -> CaseResult:
    score = score_output(suite, case, generation.text)
    return CaseResult(
        variant=variant.name,
        suite=suite.name,
        mode=mode,
        id=case.id,
        passed=score.passed,
        reason=score.reason,
        output=generation.text,
        parsed=score.parsed,
        expected=dict(case.expected),
        json_valid=score.json_valid,
        schema_valid=score.schema_valid,
        fields_matched=score.fields_matched,
        schema_error=score.schema_error,
        mismatches=list(score.mismatches),
        diff=score.diff,
        latency_ms=round(generation.latency_ms, 2),
        prompt_tokens=generation.prompt_tokens,
        completion_tokens=generation.completion_tokens,
        prompt_eval_tokens=generation.prompt_eval_tokens,
        prompt_ms=round(generation.prompt_ms, 3),
        eval_tokens=generation.eval_tokens,
        generation_ms=round(generation.generation_ms, 3),
        finish_reason=generation.finish_reason,
        schema_enforced=generation.schema_enforced,
        wall_share_ms=round(wall_share_s * 1000.0, 2),
        margin=generation.margin,
        margin_step=generation.margin_step,
        field_margin=generation.field_margin,
        cached_from=cached_from,
        forced_tokens=generation.forced_tokens,
        **confidence_signals(suite, case, generation, score.parsed),
    )


def _failed(variant: Variant, suite: Suite, mode: str, case: GoldenCase, reason: str) -> CaseResult:
    """A case the engine could not answer (crash, timeout, refused schema): failed, no output."""
    return CaseResult.engine_error(
        variant=variant.name,
        suite=suite.name,
        mode=mode,
        id=case.id,
        reason=reason,
        expected=dict(case.expected),
    )


def _engine_failure(error: EngineError) -> str:
    if isinstance(error, EngineCrashed):
        return f"engine crashed ({error.signal or 'unknown signal'}): {error.message}"
    if isinstance(error, CaseTimeout):
        return f"timed out after {error.timeout_s:g} s"
    return f"engine error: {error}"


def _run_id(started: str, blobs: dict[str, str], golden: dict[str, Any]) -> str:
    stamp = started.replace("-", "").replace(":", "")
    salt = json.dumps([blobs, golden, time.time_ns()], sort_keys=True)
    return f"{stamp}-{hashlib.sha256(salt.encode()).hexdigest()[:8]}"
