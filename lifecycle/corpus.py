"""Embedding suites' inputs: ``kind = "embedding"`` in ``evals/NAME.toml``, a corpus and queries.

A retrieval suite names a corpus JSONL (``{"id": …, "text": …}`` per line: the documents an
index holds) and a queries JSONL (``{"id": …, "text": …, "relevant": […]}``: what a user
asks and the documents a human would cite). ``relevant`` is a list of corpus ids (each of
relevance 1) or an object of id → graded relevance (a positive number; nDCG uses the grades).
The suite file::

    kind = "embedding"
    corpus = "../golden/kb-corpus.jsonl"
    queries = "../golden/kb-queries.jsonl"
    k = 5                             # cut-off of recall@k and nDCG@k, and of a query's pass
    query_prefix = ""                 # e.g. "search_query: " for models trained with one
    document_prefix = ""
    [threshold]                       # minimum per metric (0..1); absent ones are not gated
    hit_rate = 0.8                    # share of queries with a relevant document in the top k
    recall_at_k = 0.7
    mrr = 0.5
    ndcg_at_k = 0.6

:mod:`lifecycle.golden` turns this into a :class:`~lifecycle.golden.Suite` whose cases are the
queries (mode ``retrieval``); :mod:`lifecycle.retrieval` embeds and scores them. Every error
names the file, and the line or key.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lifecycle.config import TableReader
from lifecycle.errors import GoldenSetError

KIND = "embedding"
MODE = "retrieval"  # the one mode of an embedding suite
METRICS = ("hit_rate", "recall_at_k", "mrr", "ndcg_at_k")
SUITE_KEYS = {
    "kind",
    "description",
    "corpus",
    "queries",
    "k",
    "threshold",
    "query_prefix",
    "document_prefix",
}
MAX_TEXT_CHARS = 20_000  # one corpus or query text; an embedding model reads a passage


@dataclass(frozen=True)
class Document:
    id: str
    text: str
    line: int


@dataclass(frozen=True)
class Query:
    id: str
    text: str
    relevance: Mapping[str, float]  # corpus id -> grade (> 0)
    line: int


@dataclass(frozen=True)
class EmbeddingSpec:
    """What an embedding suite adds to a suite: its corpus, queries, cut-off and thresholds."""

    corpus_path: Path
    queries_path: Path
    corpus: tuple[Document, ...]
    queries: tuple[Query, ...]
    k: int
    thresholds: Mapping[str, float]  # metric name -> minimum
    corpus_digest: str
    queries_digest: str
    query_prefix: str = ""
    document_prefix: str = ""


def read_spec(
    path: Path, reader: TableReader, corpus_path: Path, queries_path: Path
) -> EmbeddingSpec:
    """Validate an embedding suite's keys and read its two files."""
    reader.reject_unknown(SUITE_KEYS)
    k = reader.integer("k", 5, minimum=1)
    thresholds_table = reader.table("threshold")
    thresholds_table.reject_unknown(set(METRICS))
    thresholds: dict[str, float] = {}
    for name in METRICS:
        value = thresholds_table.number(name, None, minimum=0.0, maximum=1.0)
        if value is not None:
            thresholds[name] = float(value)
    prefixes = {}
    for key in ("query_prefix", "document_prefix"):
        value = reader.data.get(key, "")
        if not isinstance(value, str):
            raise reader.fail(key, "must be a string")
        prefixes[key] = value
    corpus, corpus_raw = _read_corpus(corpus_path)
    queries, queries_raw = _read_queries(queries_path, {d.id for d in corpus})
    return EmbeddingSpec(
        corpus_path=corpus_path,
        queries_path=queries_path,
        corpus=tuple(corpus),
        queries=tuple(queries),
        k=k,
        thresholds=thresholds,
        corpus_digest="sha256:" + hashlib.sha256(corpus_raw).hexdigest(),
        queries_digest="sha256:" + hashlib.sha256(queries_raw).hexdigest(),
        **prefixes,
    )


def _lines(path: Path, what: str) -> tuple[list[tuple[int, dict[str, Any]]], bytes]:
    """The JSON objects of a JSONL file with their line numbers (blank lines skipped)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise GoldenSetError(f"cannot read {what}: {exc.strerror}", path=path) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise GoldenSetError("not UTF-8", path=path, line=line) from None
    out = []
    for number, line_text in enumerate(text.splitlines(), start=1):
        if not line_text.strip():
            continue
        try:
            item = json.loads(line_text, parse_constant=_no_constant)
        except ValueError as exc:
            raise GoldenSetError(f"malformed JSON ({exc})", path=path, line=number) from None
        if not isinstance(item, dict):
            raise GoldenSetError("each line must be a JSON object", path=path, line=number)
        out.append((number, item))
    if not out:
        raise GoldenSetError(f"{what} has no entries", path=path)
    return out, raw


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _id_and_text(item: dict[str, Any], path: Path, line: int, allowed: set[str]) -> tuple[str, str]:
    for key in item:
        if key not in allowed:
            raise GoldenSetError(
                f"unknown key (expected one of: {', '.join(sorted(allowed))})",
                path=path,
                line=line,
                field=key,
            )
    item_id, text = item.get("id"), item.get("text")
    if not isinstance(item_id, str) or not item_id:
        raise GoldenSetError("'id' must be a non-empty string", path=path, line=line, field="id")
    if not isinstance(text, str) or not text.strip():
        raise GoldenSetError(
            f"{item_id!r}: 'text' must be a non-empty string", path=path, line=line, field="text"
        )
    if len(text) > MAX_TEXT_CHARS:
        raise GoldenSetError(
            f"{item_id!r}: the text has {len(text):,} characters, over the limit of "
            f"{MAX_TEXT_CHARS:,}",
            path=path,
            line=line,
            field="text",
        )
    return item_id, text


def _read_corpus(path: Path) -> tuple[list[Document], bytes]:
    items, raw = _lines(path, "corpus")
    docs: list[Document] = []
    seen: dict[str, int] = {}
    for line, item in items:
        doc_id, text = _id_and_text(item, path, line, {"id", "text", "tags"})
        if doc_id in seen:
            raise GoldenSetError(
                f"duplicate document id {doc_id!r} (first on line {seen[doc_id]})",
                path=path,
                line=line,
                field="id",
            )
        seen[doc_id] = line
        docs.append(Document(doc_id, text, line))
    return docs, raw


def _read_queries(path: Path, corpus_ids: set[str]) -> tuple[list[Query], bytes]:
    items, raw = _lines(path, "queries")
    queries: list[Query] = []
    seen: dict[str, int] = {}
    for line, item in items:
        query_id, text = _id_and_text(item, path, line, {"id", "text", "relevant", "tags"})
        if query_id in seen:
            raise GoldenSetError(
                f"duplicate query id {query_id!r} (first on line {seen[query_id]})",
                path=path,
                line=line,
                field="id",
            )
        seen[query_id] = line
        relevance = _relevance(item.get("relevant"), query_id, path, line)
        missing = [doc for doc in relevance if doc not in corpus_ids]
        if missing:
            raise GoldenSetError(
                f"query {query_id!r} names relevant id {missing[0]!r}, which is not in the corpus",
                path=path,
                line=line,
                field="relevant",
            )
        queries.append(Query(query_id, text, relevance, line))
    return queries, raw


def _relevance(value: Any, query_id: str, path: Path, line: int) -> dict[str, float]:
    def fail(message: str) -> GoldenSetError:
        return GoldenSetError(
            f"query {query_id!r}: {message}", path=path, line=line, field="relevant"
        )

    if isinstance(value, list):
        if not value or not all(isinstance(v, str) and v for v in value):
            raise fail("'relevant' must be a non-empty list of corpus ids")
        return dict.fromkeys(value, 1.0)
    if isinstance(value, dict):
        if not value:
            raise fail("'relevant' names no document")
        out = {}
        for doc, grade in value.items():
            ok = isinstance(grade, int | float) and not isinstance(grade, bool)
            if not ok or not math.isfinite(grade) or grade <= 0:
                raise fail(f"the grade of {doc!r} must be a positive number")
            out[doc] = float(grade)
        return out
    raise fail("'relevant' (a list of corpus ids, or an object of id → grade) is required")
