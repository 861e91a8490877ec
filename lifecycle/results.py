"""Run records: typed results of an eval run, with a stable wire format.

Each dataclass has ``to_dict`` / ``from_dict``; the top-level :class:`RunRecord` carries a
``schema_version`` and the environment (tool, engine build, threads, seed, hardware, blob and
golden-set digests) so that a change of environment is never mistaken for a model regression.
"""

from __future__ import annotations

import math
import os
import platform
import sys
import time
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, Self, TypedDict

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Document:
    """A typed JSON object of a file the tool writes and reads back (a run record's variant,
    a baseline's cases): keys this tool does not know are kept in ``extra``, and
    ``read_order`` the order they were read in, so that an older or newer file turns back
    into exactly the object it was read from (a key it lacked stays absent), as
    :class:`lifecycle.lockfile.LockEntry` does. Built in code, ``read_order`` is None and every
    field is written, in field order."""

    extra: dict[str, Any] = field(default_factory=dict, kw_only=True)
    read_order: tuple[str, ...] | None = field(
        default=None, kw_only=True, compare=False, repr=False
    )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        names = _document_fields(cls)
        values: dict[str, Any] = {k: data[k] for k in names if k in data}
        values["extra"] = {k: v for k, v in data.items() if k not in names}
        values["read_order"] = tuple(data)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        known = {name: getattr(self, name) for name in _document_fields(type(self))}
        if self.read_order is None:
            return {**known, **self.extra}
        out = {
            k: known[k] if k in known else self.extra[k]
            for k in self.read_order
            if k in known or k in self.extra
        }
        for f in fields(self):  # a field set since the file was read
            if f.name in known and f.name not in out and known[f.name] != _default(f):
                out[f.name] = known[f.name]
        return {**out, **{k: v for k, v in self.extra.items() if k not in out}}


def _document_fields(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls) if f.name not in ("extra", "read_order"))


def _default(f: Any) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


@dataclass(frozen=True)
class VariantInfo(Document):
    """A variant as a run record and a baseline record it (``Variant.to_dict``): identity,
    blob, Modelfile (its digest and canonical text, so a pin can be re-run) and settings.
    Every field may be absent in a file written by an older tool (empty then)."""

    id: str = ""
    name: str = ""
    model: str = ""
    modelfile: str = ""
    modelfile_digest: str = ""
    source: str = ""  # the FROM value as written
    blob_digest: str = ""
    blob_size: int = 0
    revision: str | None = None
    quant: str = ""
    overrides: dict[str, Any] = field(default_factory=dict)
    cache: dict[str, Any] = field(default_factory=dict)
    parameters: dict[str, Any] = field(default_factory=dict)
    modelfile_text: str = ""


@dataclass(frozen=True)
class CaseResult:
    """One golden case run once in one mode on one variant."""

    variant: str
    suite: str
    mode: str
    id: str
    passed: bool
    reason: str
    output: str
    parsed: Any
    expected: Any
    json_valid: bool
    schema_valid: bool
    fields_matched: bool
    schema_error: str | None
    mismatches: list[str]
    diff: str | None
    latency_ms: float
    prompt_tokens: int
    completion_tokens: int
    prompt_eval_tokens: int
    prompt_ms: float
    eval_tokens: int
    generation_ms: float
    finish_reason: str  # "stop", "length" (hit max_tokens) or "error" (engine failed)
    schema_enforced: bool | None = None  # False: a server returned output off the schema
    # The group's wall time divided by its cases: with concurrency, throughput is
    # cases / sum(wall_share_ms), while latency_ms is each request's own time.
    wall_share_ms: float = 0.0
    # Confidence signals for cascade calibration (a suite with [calibration]; see
    # lifecycle.confidence). None when not asked for or unavailable; the *_note says why.
    stated_confidence: float | None = None
    stated_confidence_note: str | None = None
    answer_probability: float | None = None
    answer_probability_note: str | None = None
    routed_correct: bool | None = None  # the routed field's value matched the expected one
    # Decision margins (logit gap between the chosen token and the best other allowed one;
    # see lifecycle.engines.decoding.Margins): the smallest over the output, its step, and
    # the smallest over the routed field's value. None: unknown (the engine gave no logits).
    margin: float | None = None
    margin_step: int | None = None
    field_margin: float | None = None
    # The run whose cached answer this case was scored on (lifecycle.answers); None: the
    # answer was generated by this run.
    cached_from: str | None = None
    # Schema mode: output tokens the grammar forced (decoded without a sampling step); the
    # other completion_tokens were sampled. None: not schema mode, or the engine cannot say.
    forced_tokens: int | None = None

    @property
    def errored(self) -> bool:
        """The engine gave no answer (crash, timeout): not a verdict on the model."""
        return self.finish_reason == "error"

    @classmethod
    def engine_error(
        cls, *, variant: str, suite: str, mode: str, id: str, reason: str, expected: Any
    ) -> CaseResult:
        """A case the engine could not answer (crash, timeout, no usable output): failed,
        no output, ``errored`` (never a verdict on the model)."""
        return cls(
            variant=variant,
            suite=suite,
            mode=mode,
            id=id,
            passed=False,
            reason=reason,
            output="",
            parsed=None,
            expected=expected,
            json_valid=False,
            schema_valid=False,
            fields_matched=False,
            schema_error=None,
            mismatches=[],
            diff=None,
            latency_ms=0.0,
            prompt_tokens=0,
            completion_tokens=0,
            prompt_eval_tokens=0,
            prompt_ms=0.0,
            eval_tokens=0,
            generation_ms=0.0,
            finish_reason="error",
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CaseResult:
        return cls(**_known(cls, data))


@dataclass(frozen=True)
class SuiteSummary(Document):
    """Aggregates over the cases of one (variant, suite, mode). Read from a file, it keeps
    the keys it was read with (see :class:`Document`): a baseline pinned by an older tool
    round-trips unchanged."""

    variant: str
    suite: str
    mode: str
    cases: int
    passed: int
    pass_rate: float
    json_valid_rate: float
    schema_valid_rate: float
    threshold: float | None
    met_threshold: bool
    latency_p50_ms: float
    latency_p95_ms: float
    prompt_tokens_per_s: float | None
    generation_tokens_per_s: float | None
    prompt_tokens: int
    completion_tokens: int
    truncated: int  # outputs that hit max_tokens
    errors: int = 0  # cases the engine failed on (crash, timeout)
    concurrency: int = 1
    cases_per_s: float | None = None  # throughput under that concurrency
    completion_tokens_per_s: float | None = None
    # Seconds of generation behind generation_tokens_per_s: only answers generated in this
    # run are timed (one from the answer cache carries another run's, maybe busy, timings).
    generation_s: float | None = None
    # Output tokens the schema forced and the ones sampled, over the cases whose engine says
    # (CaseResult.forced_tokens); None when none does.
    forced_tokens: int | None = None
    sampled_tokens: int | None = None


@dataclass(frozen=True)
class VariantRun:
    """A variant as it was run: identity, load time, and what went wrong if it could not run."""

    variant: VariantInfo
    load_ms: float | None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"variant": self.variant.to_dict(), "load_ms": self.load_ms, "error": self.error}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VariantRun:
        return cls(
            variant=VariantInfo.from_dict(data.get("variant") or {}),
            load_ms=data.get("load_ms"),
            error=data.get("error"),
        )


class HostEnvironment(TypedDict, total=False):
    """The machine a run or a bench ran on (:func:`host_environment`)."""

    python: str
    platform: str
    machine: str
    cpu: str
    cpu_count_logical: int | None
    cpu_count_physical: int | None
    ram_bytes: int | None


class RunEnvironment(HostEnvironment, total=False):
    """What a run record says it ran under, so that a change of environment is never taken
    for a model regression. The ``PER_VARIANT_KEYS`` map variant names to that variant's
    value; :func:`lifecycle.baselines.variant_environment` flattens them for one variant.
    Keys are optional: older records lack the newer ones."""

    tool: str
    tool_version: str
    engine: str
    engine_version: str
    engine_details: dict[str, Any]
    threads: dict[str, int]
    parallel: dict[str, int]
    extra_bufts: dict[str, bool]
    # KV cache element types and flash attention per variant; None: the engine (a server)
    # could not say. Absent in records from before they were settings (f16, f16, off).
    kv_cache_type_k: dict[str, str | None]
    kv_cache_type_v: dict[str, str | None]
    flash_attention: dict[str, bool | None]
    foreign_cpu_share: dict[str, float]
    # Whose chat template a served model's answers test, per variant (engines that render
    # prompts themselves): modelfile, server, server-differs or server-unknown.
    prompt_template: dict[str, str]
    # Schema mode's decoder in this process ("llguidance 1.9.1" or "gbnf"; None: a server
    # enforces the schema). Older llama.cpp records lack it: they used GBNF.
    schema_decoder: str | None
    # Free greedy decoding's prompt-lookup drafting ("off", "prompt-lookup k=4 n=1-3"; None: a
    # server engine). Older llama.cpp records lack it: they decoded without drafts.
    free_drafting: str | None
    batch_size: int
    gpu_layers: int
    seed: int
    blobs: dict[str, str]


@dataclass
class RunRecord:
    """Everything one ``lifecycle eval`` produced."""

    run_id: str
    started_at: str
    finished_at: str
    environment: RunEnvironment
    golden_sets: dict[str, dict[str, str]]
    variants: list[VariantRun]
    summaries: list[SuiteSummary]
    cases: list[CaseResult]
    schema_version: int = SCHEMA_VERSION
    summary: dict[str, Any] = field(default_factory=dict)
    shard: str | None = None  # "i/n" for one shard of a sharded run; None when whole
    # Retrieval suites (lifecycle.retrieval) by variant, then suite: k, metrics, thresholds,
    # pooling and each text's digest and float16 vector (what lifecycle.vectors pins).
    retrieval: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """Every (variant, suite, mode) met its threshold and every variant ran."""
        return all(s.met_threshold for s in self.summaries) and not any(
            v.error for v in self.variants
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "run_id": self.run_id,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "passed": self.passed,
            "shard": self.shard,
            "summary": self.summary,
            "summaries": [s.to_dict() for s in self.summaries],
            "variants": [v.to_dict() for v in self.variants],
            "golden_sets": self.golden_sets,
            "environment": self.environment,
            "cases": [c.to_dict() for c in self.cases],
            **({"retrieval": self.retrieval} if self.retrieval else {}),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunRecord:
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ValueError(f"unsupported run record schema_version {version!r}")
        return cls(
            run_id=data["run_id"],
            started_at=data["started_at"],
            finished_at=data["finished_at"],
            environment=data["environment"],
            golden_sets=data["golden_sets"],
            variants=[VariantRun.from_dict(v) for v in data["variants"]],
            summaries=[SuiteSummary.from_dict(s) for s in data["summaries"]],
            cases=[CaseResult.from_dict(c) for c in data["cases"]],
            summary=data.get("summary", {}),
            shard=data.get("shard"),
            retrieval=data.get("retrieval") or {},
        )


def merge_runs(records: list[RunRecord]) -> RunRecord:
    """Combine the shards of one sharded run into the run an unsharded eval would record.

    Shards must agree on what was evaluated (golden-set digests, variants) and on the engine
    build; cases are concatenated in shard order and every summary is recomputed.
    """
    if not records:
        raise ValueError("nothing to merge")
    first = records[0]
    for other in records[1:]:
        if other.golden_sets != first.golden_sets:
            raise ValueError(f"run {other.run_id} evaluated different golden sets")
        if other.environment.get("engine_version") != first.environment.get("engine_version"):
            raise ValueError(f"run {other.run_id} used a different engine build")
    seen: set[tuple[str, str, str, str]] = set()
    cases: list[CaseResult] = []
    for record in records:
        for case in record.cases:
            key = (case.variant, case.suite, case.mode, case.id)
            if key in seen:
                raise ValueError(f"case {'/'.join(key)} appears in more than one shard")
            seen.add(key)
            cases.append(case)
    thresholds = {(s.variant, s.suite, s.mode): s.threshold for r in records for s in r.summaries}
    summaries = [
        summarise(
            [c for c in cases if (c.variant, c.suite, c.mode) == group],
            variant=group[0],
            suite=group[1],
            mode=group[2],
            threshold=threshold,
        )
        for group, threshold in thresholds.items()
    ]
    variants: dict[str, VariantRun] = {}
    for record in records:
        for run in record.variants:
            variants.setdefault(run.variant.id, run)
    threads: dict[str, Any] = {}
    for record in records:
        threads.update(record.environment.get("threads", {}))
    load_ms = sum(v.load_ms or 0.0 for v in variants.values())
    return RunRecord(
        run_id=first.run_id.split("-")[0] + "-merged-" + str(len(records)),
        started_at=min(r.started_at for r in records),
        finished_at=max(r.finished_at for r in records),
        environment={**first.environment, "threads": threads},
        golden_sets=first.golden_sets,
        variants=list(variants.values()),
        summaries=summaries,
        cases=cases,
        summary=overall(summaries, cases, load_ms),
        retrieval={k: v for r in records for k, v in r.retrieval.items()},
    )


def summarise(
    cases: list[CaseResult],
    *,
    variant: str,
    suite: str,
    mode: str,
    threshold: float | None,
    concurrency: int = 1,
) -> SuiteSummary:
    """Aggregate case results; token rates come from the engine's own timings, over the
    answers generated in this run (cached ones were timed by another run)."""
    n = len(cases)
    passed = sum(c.passed for c in cases)
    timed = [c for c in cases if c.cached_from is None]
    wall_s = sum(c.wall_share_ms for c in timed) / 1000.0
    prompt_ms = sum(c.prompt_ms for c in timed)
    gen_ms = sum(c.generation_ms for c in timed)
    prompt_evaluated = sum(c.prompt_eval_tokens for c in timed)
    decoded = sum(c.eval_tokens for c in timed)
    pass_rate = passed / n if n else 0.0
    counts = forced_and_sampled(cases)
    return SuiteSummary(
        variant=variant,
        suite=suite,
        mode=mode,
        cases=n,
        passed=passed,
        pass_rate=round(pass_rate, 4),
        json_valid_rate=round(sum(c.json_valid for c in cases) / n, 4) if n else 0.0,
        schema_valid_rate=round(sum(c.schema_valid for c in cases) / n, 4) if n else 0.0,
        threshold=threshold,
        met_threshold=threshold is None or pass_rate >= threshold,
        latency_p50_ms=round(percentile([c.latency_ms for c in timed], 50), 2),
        latency_p95_ms=round(percentile([c.latency_ms for c in timed], 95), 2),
        prompt_tokens_per_s=_rate(prompt_evaluated, prompt_ms),
        generation_tokens_per_s=_rate(decoded, gen_ms),
        prompt_tokens=sum(c.prompt_tokens for c in cases),
        completion_tokens=sum(c.completion_tokens for c in cases),
        truncated=sum(c.finish_reason == "length" for c in cases),
        errors=sum(c.finish_reason == "error" for c in cases),
        concurrency=concurrency,
        cases_per_s=round(len(timed) / wall_s, 3) if wall_s > 0 else None,
        completion_tokens_per_s=(
            round(sum(c.completion_tokens for c in timed) / wall_s, 2) if wall_s > 0 else None
        ),
        generation_s=round(gen_ms / 1000.0, 3),
        forced_tokens=counts["forced_tokens"],
        sampled_tokens=counts["sampled_tokens"],
    )


def forced_and_sampled(cases: list[CaseResult]) -> dict[str, int | None]:
    """Output tokens the schema forced and those sampled, over the cases that say."""
    known = [c for c in cases if c.forced_tokens is not None]
    if not known:
        return {"forced_tokens": None, "sampled_tokens": None}
    forced = sum(c.forced_tokens or 0 for c in known)
    return {
        "forced_tokens": forced,
        "sampled_tokens": sum(c.completion_tokens for c in known) - forced,
    }


def overall(
    summaries: list[SuiteSummary], cases: list[CaseResult], load_ms: float
) -> dict[str, Any]:
    """The run-wide summary printed at the top of ``--json``."""
    n = len(cases)
    timed = [c for c in cases if c.cached_from is None]
    prompt_ms = sum(c.prompt_ms for c in timed)
    gen_ms = sum(c.generation_ms for c in timed)
    return {
        "cases": n,
        "passed": sum(c.passed for c in cases),
        "pass_rate": round(sum(c.passed for c in cases) / n, 4) if n else 0.0,
        "json_valid_rate": round(sum(c.json_valid for c in cases) / n, 4) if n else 0.0,
        "schema_valid_rate": round(sum(c.schema_valid for c in cases) / n, 4) if n else 0.0,
        "latency_p50_ms": round(percentile([c.latency_ms for c in timed], 50), 2),
        "latency_p95_ms": round(percentile([c.latency_ms for c in timed], 95), 2),
        "prompt_tokens_per_s": _rate(sum(c.prompt_eval_tokens for c in timed), prompt_ms),
        "generation_tokens_per_s": _rate(sum(c.eval_tokens for c in timed), gen_ms),
        "load_ms": round(load_ms, 2),
        "thresholds_met": all(s.met_threshold for s in summaries),
        **forced_and_sampled(cases),
    }


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


# Environment keys recorded per variant ({variant name: value}) rather than per run.
PER_VARIANT_KEYS = (
    "threads",
    "parallel",
    "blobs",
    "extra_bufts",
    "kv_cache_type_k",
    "kv_cache_type_v",
    "flash_attention",
    "foreign_cpu_share",
    "prompt_template",
)


class ForeignLoad:
    """How much of the machine other processes used while a block of work ran.

    llama.cpp's threads wait for each other at every step, so another busy process slows a
    decode far more than its own share of the CPU (measured here: one busy core cut a
    2-thread decode from 52 to 21 tokens/s, while a numpy probe slowed 38 %). Speeds taken
    on a busy machine are therefore not comparable with a baseline: the gate does not judge
    them, and says why. ``start()`` then ``share()``: the CPU time of processes outside this
    process tree, as a share of every CPU over the wall time.
    """

    def start(self) -> ForeignLoad:
        import psutil

        self._busy = _busy_seconds(psutil.cpu_times())
        self._own = _tree_cpu_seconds()
        self._wall = time.monotonic()
        return self

    def share(self) -> float:
        import psutil

        wall = time.monotonic() - self._wall
        cpus = psutil.cpu_count() or 1
        busy = _busy_seconds(psutil.cpu_times()) - self._busy
        own = _tree_cpu_seconds() - self._own
        if wall <= 0:
            return 0.0
        return round(max(0.0, busy - own) / (wall * cpus), 3)


def _busy_seconds(times: Any) -> float:
    idle = getattr(times, "idle", 0.0) + getattr(times, "iowait", 0.0)
    return float(sum(times)) - idle


def _tree_cpu_seconds() -> float:
    import psutil

    me = psutil.Process()
    total = 0.0
    for proc in [me, *_descendants(me)]:
        try:
            t = proc.cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system
    mine = me.cpu_times()
    return total + mine.children_user + mine.children_system


def _descendants(me: Any) -> list[Any]:
    """``me``'s descendant processes (psutil ``Process`` objects). Linux lists each thread's
    children in ``/proc/<pid>/task/<tid>/children``: a few small reads, where psutil's
    ``children(recursive=True)`` reads the stat file of every process on the machine (tens
    of milliseconds on a busy host, twice per run). Elsewhere, psutil's scan."""
    import psutil

    if not os.path.exists(f"/proc/{me.pid}/task/{me.pid}/children"):
        return list(me.children(recursive=True))
    found: dict[int, None] = {}
    pending = [me.pid]
    while pending:
        for child in _children_of(pending.pop()):
            if child not in found and child != me.pid:
                found[child] = None
                pending.append(child)
    processes = []
    for pid in found:
        try:
            processes.append(psutil.Process(pid))
        except psutil.Error:
            continue  # ended meanwhile
    return processes


def _children_of(pid: int) -> list[int]:
    children: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return children  # ended meanwhile
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", encoding="ascii") as handle:
                children.extend(int(c) for c in handle.read().split())
        except OSError:
            continue  # a thread that ended meanwhile
    return children


def host_environment() -> HostEnvironment:
    """Hardware and interpreter facts recorded with every run."""
    import psutil

    from lifecycle.hostinfo import cpu_info, ram_bytes

    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": cpu_info()[0],
        "cpu_count_logical": os.cpu_count(),
        "cpu_count_physical": psutil.cpu_count(logical=False),
        "ram_bytes": ram_bytes(),
    }


def _rate(tokens: int, ms: float) -> float | None:
    return round(tokens / (ms / 1000.0), 2) if ms > 0 and tokens > 0 else None


def _known(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in names}
