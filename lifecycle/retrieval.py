"""Retrieval suites: embed a corpus and its queries, rank, and score recall@k, MRR and nDCG@k.

A suite of ``kind = "embedding"`` (inputs: :mod:`lifecycle.corpus`) runs on a variant loaded
in embedding mode (:class:`lifecycle.engines.base.EmbeddingModel`). Every text, documents and
queries together, goes to the engine in one call (the engine packs many texts per decode).
Vectors are L2-normalised here, whatever the engine returned, so a score is a cosine.

Each query is one case in mode ``retrieval``: it passes when a relevant document is among the
top ``k`` (a hit). Its output is the top-k ids; ``parsed`` holds its rank and metrics, which
baselines keep, so the gate recomputes both runs' metrics over the same queries. Its decision
margin is the cosine gap that decided the hit (the best relevant document against the k-th
best other one) divided by :data:`TEMPERATURE`: the logit gap of a softmax over the corpus,
the unit the gate's ``noise_margin`` speaks.

Metrics, per query then averaged over queries (``rel(d)`` the grade of document d, 0 when not
relevant; ranks from 1; ties broken by corpus order):

- recall@k = |relevant in the top k| / |relevant|;
- reciprocal rank = 1 / rank of the first relevant document (MRR is its mean);
- nDCG@k = DCG@k / ideal DCG@k with DCG@k = sum over ranks i <= k of rel(d_i) / log2(i + 1)
  (linear gains, as trec_eval's ndcg_cut);
- hit rate = share of queries with a relevant document in the top k (the pass rate).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lifecycle.baselines import BaselineCase
from lifecycle.checks import Check
from lifecycle.corpus import METRICS, MODE
from lifecycle.engines.base import EmbeddingEngine, EmbeddingModel, LoadOptions, ThreadedModel
from lifecycle.errors import EngineError, ModelError, UsageError
from lifecycle.golden import Suite
from lifecycle.results import CaseResult, SuiteSummary, VariantRun, summarise
from lifecycle.variants import Variant
from lifecycle.vectors import encode_vector

# Cosine gaps become logits at this temperature (contrastive embedding models train at
# 0.01-0.05): a gap of 0.025 is 0.5 logits, the gate's default noise margin.
TEMPERATURE = 0.05
NORMALISATION = "l2"  # applied here to every vector before scoring and storing


@dataclass
class EmbeddingOutcome:
    """One variant's retrieval suites: what the runner adds to its run record."""

    run: VariantRun
    summaries: list[SuiteSummary] = field(default_factory=list)
    cases: list[CaseResult] = field(default_factory=list)
    # suite name -> what lifecycle.vectors and the gate need: k, metrics, thresholds,
    # pooling, dimension and every text's digest and float16 vector (RunRecord.retrieval).
    suites: dict[str, dict[str, Any]] = field(default_factory=dict)
    threads: int = 0


# --- metrics -------------------------------------------------------------------------------


def ranking(scores: np.ndarray) -> list[int]:
    """Corpus indices by descending score; equal scores keep corpus order."""
    return [int(i) for i in np.lexsort((np.arange(len(scores)), -scores))]


def recall_at_k(ranked: Sequence[str], relevance: Mapping[str, float], k: int) -> float:
    return sum(1 for d in ranked[:k] if d in relevance) / len(relevance)


def reciprocal_rank(ranked: Sequence[str], relevance: Mapping[str, float]) -> float:
    for i, doc in enumerate(ranked, start=1):
        if doc in relevance:
            return 1.0 / i
    return 0.0


def ndcg_at_k(ranked: Sequence[str], relevance: Mapping[str, float], k: int) -> float:
    dcg = sum(relevance.get(d, 0.0) / math.log2(i + 1) for i, d in enumerate(ranked[:k], 1))
    ideal = sorted(relevance.values(), reverse=True)[:k]
    best = sum(g / math.log2(i + 1) for i, g in enumerate(ideal, 1))
    return dcg / best if best > 0 else 0.0


def query_scores(ranked: Sequence[str], relevance: Mapping[str, float], k: int) -> dict[str, Any]:
    """One query's rank of its first relevant document and its metrics (rounded to 6 places:
    a baseline keeps them, and digits beyond float noise would only churn it)."""
    rank = next((i for i, d in enumerate(ranked, 1) if d in relevance), None)
    return {
        "top": list(ranked[:k]),
        "rank": rank,
        "hit": rank is not None and rank <= k,
        "recall_at_k": round(recall_at_k(ranked, relevance, k), 6),
        "reciprocal_rank": round(reciprocal_rank(ranked, relevance), 6),
        "ndcg_at_k": round(ndcg_at_k(ranked, relevance, k), 6),
    }


def suite_metrics(parsed: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Mean metrics over queries' ``parsed`` dicts (empty for none)."""
    if not parsed:
        return {}
    n = len(parsed)
    return {
        "hit_rate": round(sum(bool(p.get("hit")) for p in parsed) / n, 4),
        "recall_at_k": round(sum(float(p.get("recall_at_k", 0.0)) for p in parsed) / n, 4),
        "mrr": round(sum(float(p.get("reciprocal_rank", 0.0)) for p in parsed) / n, 4),
        "ndcg_at_k": round(sum(float(p.get("ndcg_at_k", 0.0)) for p in parsed) / n, 4),
    }


def decision_gap(scores: np.ndarray, relevant: Sequence[int], k: int) -> float | None:
    """The cosine gap that decided a query's hit: its best relevant document's score against
    the k-th best score among the others (a hit exactly when the gap is positive). None when
    fewer than k other documents exist: then every query hits, whatever the scores."""
    others = np.delete(scores, list(relevant))
    if len(others) < k:
        return None
    kth = np.sort(others)[::-1][k - 1]
    return float(abs(max(scores[i] for i in relevant) - kth))


# --- running -------------------------------------------------------------------------------


def embedding_texts(suite: Suite) -> list[tuple[str, str]]:
    """(key, text as embedded) for every document then every query of an embedding suite."""
    spec = suite.embedding
    if spec is None:
        raise ValueError(f"suite {suite.name} is not an embedding suite")
    return [(f"corpus/{d.id}", spec.document_prefix + d.text) for d in spec.corpus] + [
        (f"query/{q.id}", spec.query_prefix + q.text) for q in spec.queries
    ]


def text_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def run_embedding_variant(
    engine: Any,
    variant: Variant,
    suites: Sequence[Suite],
    load: LoadOptions,
    say: Callable[[str], None],
    *,
    limit: int | None = None,
) -> EmbeddingOutcome:
    """Load ``variant`` for embeddings and run its retrieval suites.

    A model that cannot load (or names no pooling) is the variant's error, as a generation
    load failure is; vectors of the wrong dimension or with NaN make their cases errors.
    """
    if not isinstance(engine, EmbeddingEngine):
        raise UsageError(f"engine {engine.name!r} cannot embed (retrieval suites need one)")
    pooling = variant.modelfile.parameters.get("pooling")
    try:
        say(f"loading {variant.name} for embeddings ({variant.blob_digest[:19]})")
        model = engine.load_embedding(
            variant.blob_path, load, pooling if isinstance(pooling, str) else None
        )
    except (EngineError, ModelError) as exc:  # ModelError: no pooling named anywhere
        say(f"error: {variant.name}: {exc}")
        return EmbeddingOutcome(VariantRun(variant=variant.info(), load_ms=None, error=str(exc)))
    outcome = EmbeddingOutcome(VariantRun(variant=variant.info(), load_ms=round(model.load_ms, 2)))
    threads = model.n_threads if isinstance(model, ThreadedModel) else load.n_threads
    outcome.threads = int(threads)
    try:
        for suite in suites:
            cases, info = _run_suite(model, variant, suite, limit)
            spec = suite.embedding
            assert spec is not None
            metrics = suite_metrics([c.parsed for c in cases if not c.errored and c.parsed])
            info.update(k=spec.k, metrics=metrics, thresholds=dict(spec.thresholds))
            outcome.cases += cases
            outcome.suites[suite.name] = info
            outcome.summaries.append(
                summarise(
                    cases,
                    variant=variant.name,
                    suite=suite.name,
                    mode=MODE,
                    threshold=suite.thresholds.get(MODE),
                )
            )
            shown = ", ".join(f"{k} {v:.3f}" for k, v in metrics.items())
            say(f"[{variant.name} {suite.name}/{MODE}] {len(cases)} queries: {shown}")
    finally:
        model.close()
    return outcome


def _run_suite(
    model: EmbeddingModel, variant: Variant, suite: Suite, limit: int | None
) -> tuple[list[CaseResult], dict[str, Any]]:
    spec = suite.embedding
    assert spec is not None
    queries = spec.queries[:limit] if limit else spec.queries
    texts = embedding_texts(suite)
    texts = texts[: len(spec.corpus)] + texts[len(spec.corpus) :][: len(queries)]
    info: dict[str, Any] = {
        "pooling": model.pooling,
        "normalisation": NORMALISATION,
        "engine_normalised": model.normalised,
        "texts": {},
    }
    started = time.perf_counter()
    try:
        raw = model.embed([text for _key, text in texts])
    except EngineError as exc:
        return [_errored(variant, suite, q, f"engine error: {exc}") for q in queries], info
    wall_ms = (time.perf_counter() - started) * 1000.0
    if len(raw) != len(texts):
        reason = f"engine error: {len(raw)} vectors for {len(texts)} texts"
        return [_errored(variant, suite, q, reason) for q in queries], info
    dimension = len(raw[0]) if raw else 0
    problems: dict[str, str] = {}
    unit: list[np.ndarray | None] = []
    for (key, _text), vector in zip(texts, raw, strict=True):
        array = np.asarray(vector, dtype=np.float64)
        norm = float(np.linalg.norm(array)) if array.size else 0.0
        if array.ndim != 1 or array.size != dimension:
            problems[key] = f"vector of dimension {array.size}, not {dimension} like the others"
        elif not np.all(np.isfinite(array)):
            problems[key] = "vector with NaN or infinite components"
        elif norm == 0.0:
            problems[key] = "zero vector (no direction to compare)"
        unit.append(None if key in problems else array / norm)
    info["dimension"] = dimension
    for (key, text), unit_vector in zip(texts, unit, strict=True):
        if unit_vector is not None:
            info["texts"][key] = [text_digest(text), encode_vector(unit_vector)]
    n_docs = len(spec.corpus)
    bad_docs = [k for k in problems if k.startswith("corpus/")]
    if bad_docs:
        reason = f"engine error: {bad_docs[0]}: {problems[bad_docs[0]]}"
        return [_errored(variant, suite, q, reason) for q in queries], info
    docs = np.stack([v for v in unit[:n_docs] if v is not None])
    ids = [d.id for d in spec.corpus]
    index = {doc_id: i for i, doc_id in enumerate(ids)}
    share = wall_ms / max(len(queries), 1)
    results = []
    for query, query_vector in zip(queries, unit[n_docs:], strict=True):
        key = f"query/{query.id}"
        if query_vector is None:
            results.append(_errored(variant, suite, query, f"engine error: {problems[key]}"))
            continue
        scores = docs @ query_vector
        ranked = [ids[i] for i in ranking(scores)]
        scored = query_scores(ranked, query.relevance, spec.k)
        gap = decision_gap(scores, [index[d] for d in query.relevance], spec.k)
        results.append(_case(variant, suite, query, scored, gap, share))
    return results, info


def _case(
    variant: Variant,
    suite: Suite,
    query: Any,
    scored: dict[str, Any],
    gap: float | None,
    share_ms: float,
) -> CaseResult:
    spec = suite.embedding
    assert spec is not None
    if scored["hit"]:
        reason = "ok"
    elif scored["rank"] is None:
        reason = "no relevant document ranked"
    else:
        reason = f"no relevant document in the top {spec.k} (the first is at rank {scored['rank']})"
    return CaseResult(
        variant=variant.name,
        suite=suite.name,
        mode=MODE,
        id=query.id,
        passed=bool(scored["hit"]),
        reason=reason,
        output=json.dumps(scored["top"]),
        parsed=scored,
        expected={"relevant": dict(query.relevance)},
        json_valid=True,
        schema_valid=True,
        fields_matched=bool(scored["hit"]),
        schema_error=None,
        mismatches=[] if scored["hit"] else [reason],
        diff=None,
        latency_ms=round(share_ms, 2),
        prompt_tokens=0,
        completion_tokens=0,
        prompt_eval_tokens=0,
        prompt_ms=0.0,
        eval_tokens=0,
        generation_ms=0.0,
        finish_reason="stop",
        wall_share_ms=round(share_ms, 2),
        margin=None if gap is None else round(gap / TEMPERATURE, 4),
    )


def _errored(variant: Variant, suite: Suite, query: Any, reason: str) -> CaseResult:
    """A query the engine gave no usable vector for: an error, never a verdict."""
    return CaseResult.engine_error(
        variant=variant.name,
        suite=suite.name,
        mode=MODE,
        id=query.id,
        reason=reason,
        expected={"relevant": dict(query.relevance)},
    )


# --- the gate's retrieval checks ---------------------------------------------------------


def retrieval_checks(
    record: Any,
    name: str,
    base_cases: Mapping[tuple[str, str, str], BaselineCase] | None,
    *,
    max_drop: float,
    noise_margin: float,
    numeric: bool,
    same_weights: bool,
    causes: Sequence[str] = (),
    vectors: Mapping[tuple[str, str], tuple[np.ndarray, np.ndarray]] | None = None,
) -> list[Check]:
    """Metric thresholds and metric drops of one variant's retrieval suites.

    A drop is measured over the queries both runs have. Across a numeric environment change
    (another CPU, engine build) with the same weights, a query is left out, as the gate does
    for pass rates, when it was a near tie in both runs (hit margins under ``noise_margin``)
    or when its ranking moved only through near ties: given both runs' vectors
    (``vectors``: (suite, text key) -> (pinned, now), :func:`lifecycle.vectors.baseline_pairs`),
    every pair of documents whose order decides a metric (a relevant one against one of
    another grade) and changed order had a cosine gap under ``noise_margin`` x
    :data:`TEMPERATURE` in both runs.
    """
    out: list[Check] = []
    suites = (getattr(record, "retrieval", None) or {}).get(name) or {}
    for suite, info in sorted(suites.items()):
        cases = {
            c.id: c
            for c in record.cases
            if c.variant == name and c.suite == suite and c.mode == MODE and not c.errored
        }
        metrics = suite_metrics([c.parsed for c in cases.values() if c.parsed])
        for metric, floor in sorted((info.get("thresholds") or {}).items()):
            value = metrics.get(metric)
            if value is None:
                continue
            ok = value >= floor
            out.append(
                _check(
                    f"{metric}",
                    name,
                    suite,
                    "pass" if ok else "fail",
                    f"{metric} {value:.3f} "
                    + ("meets" if ok else "is under")
                    + f" the suite threshold {floor:.3f}",
                    current=value,
                    threshold=floor,
                )
            )
        if not base_cases:
            continue
        pairs = []
        for case_id, case in cases.items():
            old = base_cases.get((suite, MODE, case_id))
            if old is None or not isinstance(old.parsed, dict) or not case.parsed:
                continue
            was, now = old.margin, case.margin
            near_tie = (
                was is not None and now is not None and was < noise_margin and now < noise_margin
            )
            if (
                numeric
                and same_weights
                and (
                    near_tie
                    or (
                        vectors is not None
                        and old.parsed != case.parsed
                        and moved_by_near_ties(
                            vectors,
                            suite,
                            case_id,
                            dict(case.expected.get("relevant") or {}),
                            noise_margin * TEMPERATURE,
                        )
                    )
                )
            ):
                continue
            pairs.append((old.parsed, case.parsed))
        if not pairs:
            continue
        before = suite_metrics([p for p, _ in pairs])
        after = suite_metrics([n for _, n in pairs])
        for metric in METRICS[1:]:  # hit_rate is the pass rate, which the gate judges
            drop = before[metric] - after[metric]
            ok = drop <= max_drop + 1e-9
            out.append(
                _check(
                    f"{metric}_drop",
                    name,
                    suite,
                    "pass" if ok else "fail",
                    f"{metric} {before[metric]:.3f} → {after[metric]:.3f} over {len(pairs)} "
                    f"queries (allowed drop {max_drop:.3f})",
                    current=after[metric],
                    threshold=max_drop,
                    baseline=before[metric],
                    cause=", ".join(causes) or None if not ok else None,
                )
            )
    return out


def moved_by_near_ties(
    vectors: Mapping[tuple[str, str], tuple[np.ndarray, np.ndarray]],
    suite: str,
    query_id: str,
    relevance: Mapping[str, float],
    bound: float,
) -> bool:
    """Whether every change in a query's ranking that can move its metrics is a near tie:
    each (relevant document, document of another grade) pair that swapped order between the
    pinned and the current vectors had a cosine gap under ``bound`` in both. False when a
    vector is missing (a text changed since the pin): then the change is judged as it is."""
    query = vectors.get((suite, f"query/{query_id}"))
    docs = {key[1].removeprefix("corpus/"): v for key, v in vectors.items() if key[0] == suite}
    docs = {doc: v for doc, v in docs.items() if not doc.startswith("query/")}
    if query is None or any(doc not in docs for doc in relevance):
        return False
    then = {doc: float(v[0] @ query[0]) for doc, v in docs.items()}
    now = {doc: float(v[1] @ query[1]) for doc, v in docs.items()}
    for relevant, grade in relevance.items():
        for other in docs:
            if other == relevant or relevance.get(other, 0.0) == grade:
                continue
            gap_then = then[relevant] - then[other]
            gap_now = now[relevant] - now[other]
            swapped = (gap_then > 0) != (gap_now > 0)
            if swapped and not (abs(gap_then) < bound and abs(gap_now) < bound):
                return False
    return True


def _check(check: str, variant: str, suite: str, status: str, message: str, **values: Any) -> Check:
    return Check(
        name=check,
        variant=variant,
        status=status,
        message=message,
        suite=suite,
        mode=MODE,
        **values,
    )
