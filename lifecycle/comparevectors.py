"""Quant comparison of an embedding model: per-text cosine between variants, retrieval A/B.

A chat model's quant levels are compared by next-token KL divergence on a reference text
(:mod:`lifecycle.tokenstats`). An embedding model has no next token that matters: what a
quantization changes is the vector each text gets, and through it the ranking. So when the
subjects of ``lifecycle compare`` are variants of a model whose suites are retrieval suites
(``kind = "embedding"``), :mod:`lifecycle.compare` runs their suites once (its task pass) and
this module reads that run:

* **vectors** — for every text both variants embedded with the same wording (corpus documents
  and queries alike), the cosine between the subject's vector and the reference's: min, p5
  and median over texts, and the text that moved most. The vectors are the run record's
  (unit length, float16: about 1e-7 of cosine lost to storage);
* **retrieval A/B** — per suite, hit rate, recall@k, MRR and nDCG@k of the subject and of the
  reference, and the difference (subject minus reference).

The thresholds are ``lifecycle.toml → compare``'s: ``max_pass_rate_drop`` bounds every
metric's drop (the hit rate is the pass rate), as the gate's ``max_pass_rate_drop`` does, and
``min_vector_cosine`` (off unless set) the lowest per-text cosine.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lifecycle.corpus import METRICS
from lifecycle.errors import UsageError
from lifecycle.results import RunRecord
from lifecycle.vectors import cosines, decode_vector, drift_summary

# Why the reference-text pass does not run on an embedding model.
TOKEN_SKIP = (
    "an embedding model: compared by its vectors (per-text cosine) and retrieval suites, "
    "not by next-token KL divergence"
)


def is_embedding_comparison(subjects: Sequence[Any], workspace: Any) -> bool:
    """True when the workspace variants among ``subjects`` belong to embedding models.

    Raises UsageError when embedding and chat variants are mixed: their quality is measured
    in different units, so no verdict could rank them together.
    """
    if workspace is None:
        return False
    from lifecycle.golden import load_suites

    kinds: dict[str, bool] = {}
    for subject in subjects:
        variant = getattr(subject, "variant", None)
        if subject.kind != "variant" or variant is None or variant.model in kinds:
            continue
        names = list(workspace.models[variant.model].suites)
        suites = load_suites(workspace.evals_dir, names) if names else []
        kinds[variant.model] = bool(suites) and all(s.embedding for s in suites)
    if len(set(kinds.values())) > 1:
        embedding = sorted(m for m, e in kinds.items() if e)
        chat = sorted(m for m, e in kinds.items() if not e)
        raise UsageError(
            f"cannot compare embedding model(s) {', '.join(embedding)} with chat model(s) "
            f"{', '.join(chat)}: compare quant levels of one kind at a time"
        )
    return any(kinds.values())


def text_cosines(
    reference: Mapping[str, Mapping[str, Any]], subject: Mapping[str, Mapping[str, Any]]
) -> tuple[list[str], np.ndarray] | str:
    """(text keys, cosines) over the texts both variants embedded with the same wording;
    or why none can be compared. Arguments are ``RunRecord.retrieval[variant]``."""
    keys: list[str] = []
    ref_rows: list[np.ndarray] = []
    rows: list[np.ndarray] = []
    for suite in sorted(set(reference) & set(subject)):
        ref_texts = reference[suite].get("texts") or {}
        texts = subject[suite].get("texts") or {}
        for key in sorted(set(ref_texts) & set(texts)):
            (ref_digest, ref_encoded), (digest, encoded) = ref_texts[key], texts[key]
            if ref_digest != digest:
                continue
            ref_vector, vector = decode_vector(ref_encoded), decode_vector(encoded)
            if ref_vector.size != vector.size:
                return f"dimension {ref_vector.size} (reference) vs {vector.size}"
            keys.append(f"{suite} {key}")
            ref_rows.append(ref_vector)
            rows.append(vector)
    if not keys:
        return "no text was embedded by both"
    return keys, cosines(np.stack(ref_rows), np.stack(rows))


def embedding_quality(record: RunRecord, reference: str, name: str) -> dict[str, Any] | None:
    """The subject's vectors against the reference's and both sides' retrieval metrics.

    None when the run holds no retrieval suites for ``name`` (e.g. it failed to load).
    """
    suites = record.retrieval.get(name) or {}
    if not suites:
        return None
    ref_suites = record.retrieval.get(reference) or {}
    quality: dict[str, Any] = {
        "pooling": sorted({str(info.get("pooling")) for info in suites.values()}),
        "dimension": next(iter(suites.values())).get("dimension"),
        "vectors": None,
        "vectors_skipped": None,
        "retrieval": {},
    }
    if name != reference:
        paired = text_cosines(ref_suites, suites) if ref_suites else "the reference has no vectors"
        if isinstance(paired, str):
            quality["vectors_skipped"] = paired
        else:
            keys, values = paired
            quality["vectors"] = {
                "texts": len(keys),
                **drift_summary(values.tolist()),
                "worst": keys[int(np.argmin(values))],
            }
    for suite, info in sorted(suites.items()):
        metrics = dict(info.get("metrics") or {})
        ref_metrics = dict((ref_suites.get(suite) or {}).get("metrics") or {})
        difference = {
            m: round(metrics[m] - ref_metrics[m], 4)
            for m in METRICS
            if m in metrics and m in ref_metrics
        }
        quality["retrieval"][suite] = {
            "k": info.get("k"),
            "metrics": metrics,
            "reference_metrics": ref_metrics,
            "difference": difference,
        }
    return quality


def embedding_rules(
    quality: Mapping[str, Any] | None,
    is_reference: bool,
    max_metric_drop: float,
    min_vector_cosine: float | None,
) -> list[tuple[str, str, float | None, Any, str]]:
    """The compare checks of an embedding subject (its ``embedding_quality``), as
    :func:`lifecycle.compare._checks`'s rules (name, dimension, limit, value, "max"/"min"):
    each metric's drop, the lowest cosine."""
    rules: list[tuple[str, str, float | None, Any, str]] = []
    if min_vector_cosine is not None and not is_reference:
        low = (quality or {}).get("vectors") or {}
        rules.append(("min_cosine", "embedding_quality", min_vector_cosine, low.get("min"), "min"))
    for suite, ab in sorted(((quality or {}).get("retrieval") or {}).items()):
        for metric in METRICS[1:]:  # the hit rate's drop is the task pass's pass_rate_drop
            delta = ab["difference"].get(metric)
            drop = 0.0 if is_reference else None if delta is None else max(0.0, -delta)
            rules.append((f"{suite} {metric}_drop", "embedding_quality", max_metric_drop,
                          None if drop is None else round(drop, 4), "max"))  # fmt: skip
    return rules


def embed_rate(record: RunRecord, name: str) -> float | None:
    """Texts embedded per second by ``name`` in the run (documents and queries together).

    Each query carries an equal share of its suite's embedding wall time, so the shares of a
    suite's queries add up to the time all its texts took.
    """
    texts = sum(
        len(info.get("texts") or {}) for info in (record.retrieval.get(name) or {}).values()
    )
    ms = sum(c.latency_ms or 0.0 for c in record.cases if c.variant == name and not c.errored)
    return round(texts / (ms / 1000.0), 1) if texts and ms > 0 else None


__all__ = [
    "TOKEN_SKIP",
    "embed_rate",
    "embedding_quality",
    "embedding_rules",
    "is_embedding_comparison",
    "text_cosines",
]
