"""Quant-level comparison: token-level quality, task quality, cost and a verdict, in one report.

``compare`` answers "Q4_K_M or Q8_0?" for one workspace. Each subject (a workspace variant or
a model tag / GGUF path) is measured three ways against a reference (``--reference``,
``lifecycle.toml → compare.reference``, or else the subject with the most bits per weight):

* **Token-level quality** — the statistics ``llama-perplexity --kl-divergence`` prints, on a
  reference text: KL divergence of each position's next-token distribution from the
  reference's (mean ± stderr, median, p90/p95/p99, max), top-token agreement ("same top p"),
  RMS Δp of the actual next token's probability, perplexity and the PPL ratio.
* **Task quality** — an eval run of the golden suites on every workspace variant: pass rate,
  JSON/schema-valid rates, per-case agreement with the reference (same parsed JSON) and the
  cases whose verdict flipped, with both outputs.
* **Cost** — file size, bits per weight, load time, prompt/generation tokens per second from
  the eval run, scoring throughput and peak RSS while the variant was loaded.

The verdict names the smallest subject (by file size) whose quality loss stays inside the
thresholds of ``lifecycle.toml → compare``.

The token statistics themselves (how the text is scored, and how that differs from
llama-perplexity) are :mod:`lifecycle.tokenstats`'s; the report's text, chart and files are
:mod:`lifecycle.comparerender`'s. Variants of an embedding model (retrieval suites) skip the
reference text: they are compared by per-text cosine between their vectors and a retrieval
A/B (:mod:`lifecycle.comparevectors`).
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from lifecycle.config import Workspace
from lifecycle.errors import EngineError, UsageError
from lifecycle.hostinfo import peak_rss, reset_peak_rss
from lifecycle.results import CaseResult, RunRecord
from lifecycle.store import now
from lifecycle.tokenstats import (
    SCORE_MODES,
    ReferenceScores,
    ScoringModel,
    chunk_tokens,
    logits_block,
    score_against,
    score_reference,
    self_stats,
    vocab_mismatch,
)

SCHEMA_VERSION = 1
# lifecycle.toml → compare: its keys, each read by read_compare_settings.
SETTINGS_KEYS = {
    "reference", "text", "ctx", "chunks", "top_k",
    "max_pass_rate_drop", "max_mean_kld", "max_ppl_ratio", "min_same_top_p",
    "min_vector_cosine",
}  # fmt: skip

Progress = Callable[[str], None]
# (label, done, total): a progress bar's update, e.g. the CLI's ProgressBars on a terminal.
Ticker = Callable[[str, int, int | None], None]


@dataclass(frozen=True)
class Thresholds:
    """Quality loss a subject may show against the reference and still be chosen."""

    max_pass_rate_drop: float = 0.02
    max_mean_kld: float = 0.05
    max_ppl_ratio: float | None = None
    min_same_top_p: float | None = None
    # Embedding models: the lowest per-text cosine to the reference's vector (off unless set).
    min_vector_cosine: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CompareOptions:
    """What to compare and how; ``None`` fields fall back to ``lifecycle.toml → compare``."""

    reference: str | None = None
    text: Path | None = None  # None: the packaged reference text
    n_ctx: int | None = None
    chunks: int | None = None  # score only the first N chunks
    score: str = "all"
    top_k: int | None = None
    token_quality: bool = True
    task_quality: bool = True
    suites: Sequence[str] | None = None
    modes: Sequence[str] | None = None
    limit: int | None = None
    threads: int | None = None
    thresholds: Thresholds | None = None


@dataclass(frozen=True)
class CompareSettings:
    """``lifecycle.toml → compare``; ``None``: not set there (the command's defaults apply)."""

    thresholds: Thresholds = field(default_factory=Thresholds)
    reference: str | None = None
    text: Path | None = None  # resolved against the workspace root
    ctx: int | None = None
    chunks: int | None = None
    top_k: int | None = None


@dataclass
class CompareReport:
    """One comparison: the JSON document (:meth:`to_dict`) and the eval run it made.

    ``variants`` holds one entry per subject, reference first, as the JSON has them.
    ``run_record`` is the eval run of the task-quality pass (None without one): saved beside
    the report as ``<id>.run.json``, never inline. ``chart``, ``chart_error`` and
    ``eval_run`` are filled in when the report is saved.
    """

    compare_id: str
    created_at: str
    reference: str
    token_settings: dict[str, Any] | None
    thresholds: Thresholds
    eval_run_id: str | None
    variants: list[CompareEntry]
    verdict: CompareVerdict
    run_record: RunRecord | None = None
    chart: Path | None = None
    chart_error: str | None = None
    eval_run: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        """The document ``lifecycle compare --json`` prints and ``<id>.json`` holds."""
        document: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "kind": "compare",
            "created_at": self.created_at,
            "reference": self.reference,
            "token_settings": self.token_settings,
            "thresholds": self.thresholds.to_dict(),
            "eval_run_id": self.eval_run_id,
            "variants": [v.to_dict() for v in self.variants],
            "verdict": self.verdict.to_dict(),
            "compare_id": self.compare_id,
        }
        if self.chart_error is not None:
            document["chart_error"] = self.chart_error
        document["chart"] = str(self.chart) if self.chart else None
        if self.eval_run is not None:
            document["eval_run"] = str(self.eval_run)
        return document


@dataclass
class CompareEntry:
    """One subject's entry in a comparison, filled in pass by pass: the text pass
    (``token_quality``), the eval pass (``task_quality``), an embedding comparison's
    retrieval pass (``embedding_quality``), then the checks against the thresholds. A pass
    that could not measure a subject says why in its ``*_skipped``. ``cost`` gathers the
    file's size and what each pass measured of speed and memory."""

    name: str
    kind: str  # "variant" or "file"
    path: str
    digest: str | None
    quant: str | None
    is_reference: bool
    cost: dict[str, Any]
    token_quality: dict[str, Any] | None = None
    token_quality_skipped: str | None = None
    task_quality: TaskQuality | None = None
    task_quality_skipped: str | None = None
    # An embedding comparison (lifecycle.comparevectors) has these; None: not one.
    embedding_quality: dict[str, Any] | None = None
    embedding_quality_skipped: str | None = None
    embedding: bool = False
    checks: list[CompareCheck] = field(default_factory=list)

    @property
    def within_thresholds(self) -> bool:
        return all(c.ok for c in self.checks)

    def skipped(self, dimension: str) -> str | None:
        """Why the pass of ``dimension`` ("token_quality", ...) measured nothing."""
        return {
            "token_quality": self.token_quality_skipped,
            "task_quality": self.task_quality_skipped,
            "embedding_quality": self.embedding_quality_skipped,
        }.get(dimension)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "path": self.path,
            "digest": self.digest,
            "quant": self.quant,
            "is_reference": self.is_reference,
            "token_quality": self.token_quality,
            "token_quality_skipped": self.token_quality_skipped,
            "task_quality": self.task_quality.to_dict() if self.task_quality else None,
            "task_quality_skipped": self.task_quality_skipped,
            "cost": self.cost,
        }
        if self.embedding:
            out["embedding_quality"] = self.embedding_quality
            if self.embedding_quality is None:
                out["embedding_quality_skipped"] = self.embedding_quality_skipped
        out["checks"] = [c.to_dict() for c in self.checks]
        out["within_thresholds"] = self.within_thresholds
        return out


@dataclass(frozen=True)
class Flip:
    """A golden case whose verdict differs from the reference's: ``fixed`` or ``broken``."""

    suite: str
    mode: str
    id: str
    change: Literal["fixed", "broken"]
    reference_passed: bool
    passed: bool
    reference_output: str
    output: str
    reason: str  # why the failing side failed

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SuiteQuality:
    """One suite/mode's rates in the eval pass."""

    suite: str
    mode: str
    cases: int
    pass_rate: float
    json_valid_rate: float
    schema_valid_rate: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TaskQuality:
    """A subject's golden-set results in the eval pass, and how they compare with the
    reference's: same parsed JSON (``agreement``; None without a reference variant), the
    flipped verdicts, and the pass rate's drop (what ``max_pass_rate_drop`` bounds)."""

    cases: int
    passed: int
    pass_rate: float
    json_valid_rate: float
    schema_valid_rate: float
    agreement: int | None = None
    agreement_rate: float | None = None
    flipped: list[Flip] = field(default_factory=list)
    suites: list[SuiteQuality] = field(default_factory=list)
    pass_rate_drop: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "cases": self.cases,
            "passed": self.passed,
            "pass_rate": self.pass_rate,
            "json_valid_rate": self.json_valid_rate,
            "schema_valid_rate": self.schema_valid_rate,
            "agreement": self.agreement,
            "agreement_rate": self.agreement_rate,
            "flipped": [f.to_dict() for f in self.flipped],
            "suites": [s.to_dict() for s in self.suites],
            "pass_rate_drop": self.pass_rate_drop,
        }


@dataclass(frozen=True)
class CompareCheck:
    """One threshold against a subject's measurement; unmeasured (``value`` None) is not
    within, and ``note`` says why it was not measured."""

    check: str
    value: float | None
    limit: float
    ok: bool
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "check": self.check,
            "value": self.value,
            "limit": self.limit,
            "ok": self.ok,
        }
        if self.value is None:
            out["note"] = self.note
        return out


@dataclass(frozen=True)
class CompareVerdict:
    """The smallest subject within the thresholds (``choice``; None: none is), every subject
    within them, and one sentence."""

    choice: str | None
    within: list[str]
    summary: str

    def to_dict(self) -> dict[str, Any]:
        return {"choice": self.choice, "within": self.within, "summary": self.summary}


@dataclass(frozen=True)
class Subject:
    """One thing being compared: a workspace variant, or a GGUF named by tag or path."""

    name: str
    kind: str  # "variant" or "file"
    path: Path
    digest: str | None
    variant: Any = None  # lifecycle.variants.Variant for workspace variants

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "path": str(self.path), "digest": self.digest}


# --- the whole comparison --------------------------------------------------------------------


def compare(
    names: Sequence[str],
    options: CompareOptions | None = None,
    *,
    workspace: Workspace | None = None,
    store: Any = None,
    progress: Progress | None = None,
    ticker: Ticker | None = None,
) -> CompareReport:
    """Compare ``names`` (variants, model names, tags or GGUF paths); return the report.

    Everything that can fail without a model (names, text file, quant names, config) fails
    before any model loads. ``progress`` gets a line per step; ``ticker`` a count of scored
    chunks per subject while the reference text is scored (the longest step).
    """
    from lifecycle import comparevectors
    from lifecycle.store import Store

    options = options or CompareOptions()
    say = progress or (lambda _msg: None)
    if not names:
        raise UsageError("name at least one variant, model or tag to compare")
    if options.score not in SCORE_MODES:
        raise UsageError(f"unknown score mode {options.score!r}; use one of {SCORE_MODES}")
    settings = read_compare_settings(workspace) if workspace else CompareSettings()
    thresholds = options.thresholds or settings.thresholds
    n_ctx = options.n_ctx or settings.ctx or 512
    top_k = options.top_k or settings.top_k or 1024
    chunks = options.chunks or settings.chunks
    if n_ctx < 8:
        raise UsageError(f"--ctx {n_ctx} is too small to score (at least 8 tokens)")
    text_path = options.text or settings.text
    text, text_label = load_text(text_path) if options.token_quality else ("", "")

    if store is None:
        from lifecycle.config import lifecycle_home

        store = Store(workspace.home if workspace else lifecycle_home())
    subjects = resolve_subjects(names, workspace, store)
    embedding = comparevectors.is_embedding_comparison(subjects, workspace)
    if embedding and not options.task_quality:
        raise UsageError(
            "an embedding model is compared by running its retrieval suites: drop --no-eval"
        )
    reference = _pick_reference(subjects, options.reference or settings.reference)
    infos = {s.name: _gguf_summary(s.path) for s in subjects}
    if reference.name != subjects[0].name:
        subjects = [reference, *[s for s in subjects if s.name != reference.name]]

    entries: dict[str, CompareEntry] = {
        s.name: CompareEntry(
            name=s.name,
            kind=s.kind,
            path=str(s.path),
            digest=s.digest,
            quant=infos[s.name]["file_type"],
            is_reference=s.name == reference.name,
            cost={
                "file_size_bytes": s.path.stat().st_size,
                "bits_per_weight": infos[s.name]["bits_per_weight"],
            },
        )
        for s in subjects
    }

    text_settings: dict[str, Any] = {}
    if embedding:
        for entry in entries.values():
            entry.token_quality_skipped = comparevectors.TOKEN_SKIP
    elif options.token_quality:
        threads = options.threads or (workspace.engine.threads if workspace else 0)
        text_settings = _token_pass(
            subjects,
            reference,
            entries,
            text,
            n_ctx,
            chunks,
            options.score,
            top_k,
            threads,
            say,
            ticker or (lambda _label, _done, _total: None),
        )
        text_settings["text"] = text_label

    run_record = None
    if options.task_quality:
        run_record = _task_pass(subjects, reference, entries, workspace, options, say)
    if embedding:
        for name, entry in entries.items():
            quality = (
                comparevectors.embedding_quality(run_record, reference.name, name)
                if run_record
                else None
            )
            entry.embedding = True
            entry.embedding_quality = quality
            if quality is None:
                entry.embedding_quality_skipped = (
                    entry.task_quality_skipped or "the variant has no retrieval results"
                )
            entry.cost["texts_per_s"] = (
                comparevectors.embed_rate(run_record, name) if run_record else None
            )

    measured = {
        "token_quality": options.token_quality and not embedding,
        "task_quality": any(e.task_quality for e in entries.values()),
    }
    for entry in entries.values():
        entry.checks = _checks(entry, thresholds, measured)
    created = now()
    return CompareReport(
        compare_id=_compare_id(created, list(entries.values())),
        created_at=created,
        reference=reference.name,
        token_settings=text_settings or None,
        thresholds=thresholds,
        eval_run_id=run_record.run_id if run_record else None,
        variants=list(entries.values()),
        verdict=_verdict(list(entries.values()), reference.name),
        run_record=run_record,
    )


def read_compare_settings(workspace: Workspace) -> CompareSettings:
    """``lifecycle.toml → compare``: reference, thresholds, text, ctx, chunks, top_k."""
    reader = workspace.document_reader().table("compare")
    reader.reject_unknown(SETTINGS_KEYS)

    def number(key: str, default: float | None) -> float | None:
        value = reader.data.get(key, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise reader.fail(key, "must be a non-negative number")
        return float(value)

    def integer(key: str) -> int | None:
        value = reader.data.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise reader.fail(key, "must be a positive integer")
        return value

    thresholds = Thresholds(
        max_pass_rate_drop=number("max_pass_rate_drop", 0.02) or 0.0,
        max_mean_kld=number("max_mean_kld", 0.05) or 0.0,
        max_ppl_ratio=number("max_ppl_ratio", None),
        min_same_top_p=number("min_same_top_p", None),
        min_vector_cosine=number("min_vector_cosine", None),
    )
    ctx, chunks, top_k = integer("ctx"), integer("chunks"), integer("top_k")
    reference, text = reader.string("reference", None), reader.string("text", None)
    return CompareSettings(
        thresholds=thresholds,
        reference=reference,
        text=reader.confined_path("text", text, root=workspace.root) if text else None,
        ctx=ctx,
        chunks=chunks,
        top_k=top_k,
    )


def load_text(path: Path | None) -> tuple[str, str]:
    """The reference text and a label for the report (the packaged text when ``path`` is None)."""
    if path is None:
        resource = importlib.resources.files("lifecycle") / "data" / "reference.txt"
        text = resource.read_text(encoding="utf-8")
        label = "lifecycle:data/reference.txt"
    else:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise UsageError("reference text not found", path=path) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read the reference text: {exc}", path=path) from None
        label = str(path)
    if not text.strip():
        raise UsageError("the reference text is empty", path=path)
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return text, f"{label} (sha256:{digest[:16]})"


def resolve_subjects(
    names: Sequence[str], workspace: Workspace | None, store: Any
) -> list[Subject]:
    """Workspace variants (or every variant of a model), tags, or GGUF paths, in order."""
    from lifecycle.targets import resolve_target

    subjects: list[Subject] = []
    for name in names:
        target = resolve_target(name, store, workspace=workspace)
        if target is None:
            if workspace is not None:
                from lifecycle.variants import resolve_variants

                resolve_variants(workspace, store, [name])  # raises with a did-you-mean
            raise UsageError(
                f"unknown variant, tag or file {name!r} (outside a workspace, name a tag such as "
                "file:model.gguf or hf:owner/repo:Q4_K_M, or a GGUF path)"
            )
        subjects += [
            Subject(v.name, "variant", v.blob_path, v.blob_digest, v) for v in target.variants
        ] or [Subject(name, "file", target.path, target.digest)]
    seen: set[str] = set()
    unique = []
    for subject in subjects:
        if subject.name not in seen:
            seen.add(subject.name)
            unique.append(subject)
    return unique


# --- token-level quality -----------------------------------------------------------------------


def _token_pass(
    subjects: list[Subject],
    reference: Subject,
    entries: dict[str, CompareEntry],
    text: str,
    n_ctx: int,
    chunks: int | None,
    score: str,
    top_k: int,
    threads: int,
    say: Progress,
    ticker: Ticker,
) -> dict[str, Any]:
    """Score the reference text with every subject; fill token_quality and load/RSS costs."""
    from lifecycle.engines import LoadOptions, get_engine

    engine = get_engine("llama-cpp")
    ref_scores: ReferenceScores | None = None
    ref_tokens: list[int] = []
    settings: dict[str, Any] = {"n_ctx": n_ctx, "score": score, "top_k": top_k}
    for subject in subjects:
        entry = entries[subject.name]
        if ref_scores is None and subject is not reference:
            entry.token_quality_skipped = "the reference could not be scored"
            continue
        say(f"scoring the reference text with {subject.name}")
        rss_before = _rss()
        reset_peak_rss()
        started = time.perf_counter()
        # The block size needs the vocabulary size before the load; the header has it.
        vocab_size = _gguf_summary(subject.path)["vocab_size"] or 262_144
        block = logits_block(vocab_size, n_ctx)
        options = LoadOptions(n_ctx=n_ctx, n_threads=threads, n_batch=block)
        model = _load(engine, subject, options)
        load_ms = model.load_ms
        try:
            text_ids, n_vocab, bos = model.text_tokens(text)
            whole = (len(text_ids) + (bos is not None)) // n_ctx
            total = min(whole, chunks) if chunks else whole
            label = f"scoring text: {subject.name}"

            def tick(done: int, label: str = label, total: int = total) -> None:
                ticker(label, done, total)

            if subject is reference:
                ref_tokens = chunk_tokens(text_ids, bos, n_ctx, chunks)
                scored_from = time.perf_counter()
                ref_scores = score_reference(
                    model, ref_tokens, n_ctx, score, top_k, block, on_chunk=tick
                )
                stats = self_stats(ref_scores)
                settings.update(
                    tokens=len(text_ids) + (bos is not None),
                    chunks=len(ref_tokens) // n_ctx,
                    n_vocab=n_vocab,
                    block=block,
                )
            else:
                assert ref_scores is not None
                reason = vocab_mismatch(ref_scores, ref_tokens, text_ids, bos, n_vocab, n_ctx)
                if reason:
                    entry.token_quality_skipped = reason
                    say(f"warning: {subject.name}: {reason}")
                    stats = None
                else:
                    scored_from = time.perf_counter()
                    stats = score_against(model, ref_scores, n_ctx, score, block, on_chunk=tick)
            if stats is not None:
                quality = stats.summary()
                entry.token_quality = quality.to_dict()
                seconds = time.perf_counter() - scored_from
                entry.cost["score_tokens_per_s"] = round(len(ref_tokens) / seconds, 2)
        finally:
            model.close()
        entry.cost["load_ms"] = round(load_ms, 2)
        entry.cost["token_pass_s"] = round(time.perf_counter() - started, 3)
        entry.cost["peak_rss_bytes"] = peak_rss()
        entry.cost["model_rss_bytes"] = max(0, peak_rss() - rss_before)
    settings["scored_positions"] = sum(len(a) for a in ref_scores.argmax) if ref_scores else 0
    return settings


def _load(engine: Any, subject: Subject, options: Any) -> Any:
    from dataclasses import replace

    from lifecycle.engines.doctor import extra_bufts_for

    extra_bufts = extra_bufts_for(subject.path, name=subject.name, digest=subject.digest)
    model = engine.load(subject.path, replace(options, extra_bufts=extra_bufts))
    if not isinstance(model, ScoringModel):
        raise EngineError(f"engine {engine.name} cannot read per-position logits")
    return model


def _rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


# --- task quality ------------------------------------------------------------------------------


def _task_pass(
    subjects: list[Subject],
    reference: Subject,
    entries: dict[str, CompareEntry],
    workspace: Workspace | None,
    options: CompareOptions,
    say: Progress,
) -> RunRecord | None:
    """One eval run of every workspace variant; fill task_quality and the eval-run costs."""
    from lifecycle.runner import EvalOptions, run_eval

    variants = [s for s in subjects if s.kind == "variant"]
    for subject in subjects:
        if subject.kind != "variant":
            why = "not a workspace variant: golden suites run on variants (Modelfile + suites)"
            entries[subject.name].task_quality_skipped = why
    if not variants or workspace is None:
        return None
    record = run_eval(
        workspace,
        EvalOptions(
            models=[s.name for s in variants],
            suites=options.suites,
            modes=options.modes,
            threads=options.threads,
            limit=options.limit,
        ),
        progress=say,
    )
    by_variant: dict[str, list[CaseResult]] = {}
    for case in record.cases:
        by_variant.setdefault(case.variant, []).append(case)
    load_ms = {run.variant.name: run.load_ms for run in record.variants}
    ref_cases = (
        {(c.suite, c.mode, c.id): c for c in by_variant.get(reference.name, [])}
        if reference.kind == "variant"
        else {}
    )
    ref_rate = _rate([c.passed for c in by_variant.get(reference.name, [])])
    for subject in variants:
        cases = by_variant.get(subject.name, [])
        quality = _task_quality(cases, ref_cases, subject.name == reference.name)
        suites = [
            SuiteQuality(
                s.suite, s.mode, s.cases, s.pass_rate, s.json_valid_rate, s.schema_valid_rate
            )
            for s in record.summaries
            if s.variant == subject.name
        ]
        drop = round(ref_rate - quality.pass_rate, 6) if ref_cases else None
        entries[subject.name].task_quality = replace(quality, suites=suites, pass_rate_drop=drop)
        cost = entries[subject.name].cost
        cost["eval_load_ms"] = load_ms.get(subject.name)
        cost["prompt_tokens_per_s"] = _per_s(
            sum(c.prompt_eval_tokens for c in cases), sum(c.prompt_ms for c in cases)
        )
        cost["generation_tokens_per_s"] = _per_s(
            sum(c.eval_tokens for c in cases), sum(c.generation_ms for c in cases)
        )
    return record


def _task_quality(
    cases: list[CaseResult],
    ref_cases: dict[tuple[str, str, str], CaseResult],
    is_reference: bool,
) -> TaskQuality:
    rates = TaskQuality(
        cases=len(cases),
        passed=sum(c.passed for c in cases),
        pass_rate=_rate([c.passed for c in cases]),
        json_valid_rate=_rate([c.json_valid for c in cases]),
        schema_valid_rate=_rate([c.schema_valid for c in cases]),
    )
    if not ref_cases:
        return rates
    same = 0
    paired = 0
    flipped = []
    for case in cases:
        ref = ref_cases.get((case.suite, case.mode, case.id))
        if ref is None:
            continue
        paired += 1
        same += _same_json(case, ref)
        if case.passed != ref.passed and not is_reference:
            flipped.append(
                Flip(
                    suite=case.suite,
                    mode=case.mode,
                    id=case.id,
                    change="fixed" if case.passed else "broken",
                    reference_passed=ref.passed,
                    passed=case.passed,
                    reference_output=ref.output,
                    output=case.output,
                    reason=case.reason if not case.passed else ref.reason,
                )
            )
    agreement_rate = round(same / paired, 4) if paired else None
    return replace(rates, agreement=same, agreement_rate=agreement_rate, flipped=flipped)


def _same_json(case: CaseResult, ref: CaseResult) -> bool:
    """Same parsed JSON (both parsed); outputs that did not parse agree only when identical."""
    if case.json_valid and ref.json_valid:
        return bool(case.parsed == ref.parsed)
    return bool(case.json_valid == ref.json_valid and case.output.strip() == ref.output.strip())


def _rate(flags: list[bool]) -> float:
    return round(sum(flags) / len(flags), 4) if flags else 0.0


def _per_s(tokens: int, ms: float) -> float | None:
    return round(tokens / (ms / 1000.0), 2) if tokens > 0 and ms > 0 else None


# --- verdict -----------------------------------------------------------------------------------


def _checks(
    entry: CompareEntry, thresholds: Thresholds, measured: dict[str, bool]
) -> list[CompareCheck]:
    """Each threshold against the entry's measurement; unmeasured counts as not within."""
    token = entry.token_quality
    task = entry.task_quality
    rules: list[tuple[str, str, float | None, Any, str]] = []
    if measured["token_quality"]:
        rules.append(("mean_kld", "token_quality", thresholds.max_mean_kld,
                      token and token["kld"]["mean"], "max"))  # fmt: skip
        if thresholds.max_ppl_ratio is not None:
            rules.append(("ppl_ratio", "token_quality", thresholds.max_ppl_ratio,
                          token and token["ppl_ratio"], "max"))  # fmt: skip
        if thresholds.min_same_top_p is not None:
            rules.append(("same_top_p", "token_quality", thresholds.min_same_top_p,
                          token and token["same_top_p"], "min"))  # fmt: skip
    if measured["task_quality"]:
        drop = task.pass_rate_drop if task else None
        if entry.is_reference and task:
            drop = 0.0
        rules.append(("pass_rate_drop", "task_quality", thresholds.max_pass_rate_drop, drop, "max"))
    if entry.embedding:
        from lifecycle.comparevectors import embedding_rules

        rules += embedding_rules(
            entry.embedding_quality,
            entry.is_reference,
            thresholds.max_pass_rate_drop,
            thresholds.min_vector_cosine,
        )
    checks = []
    for name, dimension, limit, value, sense in rules:
        if limit is None:
            continue
        if value is None:
            why = entry.skipped(dimension) or "not measured"
            checks.append(CompareCheck(name, None, limit, False, why))
            continue
        ok = value <= limit + 1e-12 if sense == "max" else value >= limit - 1e-12
        checks.append(CompareCheck(name, value, limit, bool(ok)))
    return checks


def _verdict(entries: list[CompareEntry], reference: str) -> CompareVerdict:
    within = [e for e in entries if e.within_thresholds]
    if not within:
        return CompareVerdict(None, [], "no variant stays within the thresholds")
    choice = min(within, key=lambda e: e.cost["file_size_bytes"])
    ref = next(e for e in entries if e.name == reference)
    size = choice.cost["file_size_bytes"]
    parts = [f"{mib(size)} vs {mib(ref.cost['file_size_bytes'])} for the reference"]
    for check in choice.checks:
        parts.append(f"{check.check} {check.value:.4g} (limit {check.limit:g})")
    summary = (
        f"{choice.name} is the smallest within thresholds: " + ", ".join(parts)
        if choice.name != reference
        else f"only the reference {reference} stays within thresholds"
        if len(within) == 1
        else f"{reference} (the reference) is already the smallest within thresholds"
    )
    return CompareVerdict(choice.name, [e.name for e in within], summary)


def mib(size: int) -> str:
    """A file size as the report writes it (``123.4 MiB``)."""
    return f"{size / 2**20:.1f} MiB"


def _pick_reference(subjects: list[Subject], wanted: str | None) -> Subject:
    """``wanted`` by name, else the subject with the most bits per weight (first on a tie)."""
    if wanted:
        for subject in subjects:
            if subject.name == wanted:
                return subject
        names = ", ".join(s.name for s in subjects)
        raise UsageError(f"reference {wanted!r} is not one of the compared subjects ({names})")
    return max(subjects, key=lambda s: _gguf_summary(s.path)["bits_per_weight"] or 0.0)


def _gguf_summary(path: Path) -> dict[str, Any]:
    from lifecycle.gguf import read_gguf

    info = read_gguf(path)
    bpw = info.bits_per_weight
    return {
        "file_type": info.file_type,
        "bits_per_weight": round(bpw, 3) if bpw else None,
        "vocab_size": info.vocab_size,
    }


def _compare_id(created: str, entries: list[CompareEntry]) -> str:
    stamp = created.replace("-", "").replace(":", "")
    salt = json.dumps([[e.digest for e in entries], time.time_ns()])
    return f"{stamp}-{hashlib.sha256(salt.encode()).hexdigest()[:8]}"


__all__ = [
    "CompareCheck",
    "CompareEntry",
    "CompareOptions",
    "CompareReport",
    "CompareSettings",
    "CompareVerdict",
    "Flip",
    "SuiteQuality",
    "TaskQuality",
    "Thresholds",
    "compare",
    "load_text",
    "mib",
    "read_compare_settings",
    "resolve_subjects",
]
