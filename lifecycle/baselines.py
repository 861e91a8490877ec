"""Baselines: what the pinned variants did, in ``baselines/<model>.json`` next to ``models.lock``.

:mod:`lifecycle.pin` writes them (with the lock), :mod:`lifecycle.gate` reads them. One file
per model, one entry per variant name (a slot of the variant matrix)::

    {
      "schema_version": 1,
      "model": "harbor-triage",
      "variants": {
        "harbor-triage:q4_k_m": {
          "variant": {"name": …, "id": …, "blob_digest": …, "modelfile_text": …, …},
          "run_id": "…",
          "environment": {"engine": …, "engine_version": …, "cpu": …, "threads": …, …},
          "golden_sets": {"triage": {"golden_digest": …, "schema_digest": …}},
          "summaries": [{"suite": …, "mode": …, "pass_rate": …, …}],
          "cases": [{"suite": …, "mode": …, "id": …, "passed": …, "output": …, …}],
          "bench": {"tg_tokens_per_s": …, "peak_rss_bytes": …, …} | null
        }
      }
    }

:class:`BaselineFile` is one file and :class:`Baseline` one variant entry; both turn back into
exactly the dict they were read from (pin renders it with sorted keys), so re-pinning
identical results leaves the file byte for byte as it was.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from lifecycle.errors import UsageError
from lifecycle.journal import recover
from lifecycle.results import (
    PER_VARIANT_KEYS,
    CaseResult,
    Document,
    RunRecord,
    SuiteSummary,
    VariantInfo,
)

BASELINE_SCHEMA_VERSION = 1
BASELINES_DIR = "baselines"
# Per-case confidence signals a baseline keeps (present only for suites with [calibration]).
CALIBRATION_CASE_KEYS = ("stated_confidence", "answer_probability", "routed_correct")
# Per-case decision margins (absent when the engine gave no logits, or in baselines pinned
# before margins): the gate's evidence for telling noise from a regression.
MARGIN_CASE_KEYS = ("margin", "margin_step", "field_margin")

CaseKey = tuple[str, str, str]  # (suite, mode, case id)


class JudgedCase(Protocol):
    """What the gate reads of a case, a run's (:class:`lifecycle.results.CaseResult`) or a
    baseline's (:class:`BaselineCase`)."""

    @property
    def suite(self) -> str: ...
    @property
    def mode(self) -> str: ...
    @property
    def id(self) -> str: ...
    @property
    def passed(self) -> bool: ...
    @property
    def output(self) -> str: ...
    @property
    def parsed(self) -> Any: ...
    @property
    def margin(self) -> float | None: ...
    @property
    def field_margin(self) -> float | None: ...
    @property
    def routed_correct(self) -> bool | None: ...
    @property
    def stated_confidence(self) -> float | None: ...
    @property
    def answer_probability(self) -> float | None: ...


@dataclass(frozen=True)
class BaselineCase(Document):
    """One case of a baseline: a run's case without its timings (so that re-pinning identical
    results is an identical file). The confidence signals and margins are written only when
    the run had them; a key an older file lacks stays absent (see :class:`Document`)."""

    suite: str
    mode: str
    id: str
    passed: bool
    reason: str = ""
    output: str = ""
    parsed: Any = None
    expected: Any = None
    json_valid: bool = False
    schema_valid: bool = False
    diff: str | None = None
    stated_confidence: float | None = None
    answer_probability: float | None = None
    routed_correct: bool | None = None
    margin: float | None = None
    margin_step: int | None = None
    field_margin: float | None = None

    @classmethod
    def of(cls, case: CaseResult) -> BaselineCase:
        """The baseline form of a run's case."""
        return cls.from_dict(
            {
                "suite": case.suite,
                "mode": case.mode,
                "id": case.id,
                "passed": case.passed,
                "reason": case.reason,
                "output": case.output,
                "parsed": case.parsed,
                "expected": case.expected,
                "json_valid": case.json_valid,
                "schema_valid": case.schema_valid,
                "diff": case.diff,
                # Confidence signals (suites with [calibration] only), so that the gate can
                # recompute the baseline's calibration figures under the current table.
                **{
                    key: getattr(case, key)
                    for key in (*CALIBRATION_CASE_KEYS, *MARGIN_CASE_KEYS)
                    if getattr(case, key) is not None
                },
            }
        )

    @property
    def key(self) -> CaseKey:
        return (self.suite, self.mode, self.id)


@dataclass(frozen=True)
class Baseline:
    """One variant's entry in a baseline file: what a later gate compares a run against.

    ``summaries`` are the run's own; ``cases`` the run's without timings (:class:`BaselineCase`).
    """

    variant: VariantInfo
    run_id: str
    environment: dict[str, Any]
    golden_sets: dict[str, Any] = field(default_factory=dict)
    summaries: list[SuiteSummary] = field(default_factory=list)
    cases: list[BaselineCase] = field(default_factory=list)
    bench: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # keys a newer tool wrote: kept
    # The directory the entry was read from, where its vector sidecar lies (lifecycle.vectors);
    # None when not read from a file. Not part of the entry's data.
    directory: Path | None = field(default=None, compare=False)

    @property
    def variant_id(self) -> str | None:
        """The content id of the pinned variant (weights + Modelfile)."""
        return self.variant.id or None

    def case_map(self) -> dict[CaseKey, BaselineCase]:
        """The cases by (suite, mode, id)."""
        return {c.key: c for c in self.cases}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Baseline:
        return cls(
            variant=VariantInfo.from_dict(data.get("variant") or {}),
            run_id=str(data.get("run_id") or ""),
            environment=data.get("environment") or {},
            golden_sets=data.get("golden_sets") or {},
            summaries=[SuiteSummary.from_dict(x) for x in data.get("summaries") or []],
            cases=[BaselineCase.from_dict(x) for x in data.get("cases") or []],
            bench=data.get("bench"),
            extra={k: v for k, v in data.items() if k not in _BASELINE_KEYS},
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "variant": self.variant.to_dict(),
            "run_id": self.run_id,
            "environment": self.environment,
            "golden_sets": self.golden_sets,
            "summaries": [x.to_dict() for x in self.summaries],
            "cases": [x.to_dict() for x in self.cases],
            "bench": self.bench,
            **self.extra,
        }


_BASELINE_KEYS = ("variant", "run_id", "environment", "golden_sets", "summaries", "cases", "bench")


@dataclass
class BaselineFile:
    """``baselines/<model>.json``: the baselines of one model's pinned variants, by name."""

    model: str
    variants: dict[str, Baseline] = field(default_factory=dict)
    schema_version: int = BASELINE_SCHEMA_VERSION

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], model: str = "") -> BaselineFile:
        return cls(
            model=str(data.get("model", model)),
            variants={
                str(name): Baseline.from_dict(entry)
                for name, entry in (data.get("variants") or {}).items()
            },
            schema_version=int(data.get("schema_version", BASELINE_SCHEMA_VERSION)),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "model": self.model,
            "variants": {name: entry.to_dict() for name, entry in self.variants.items()},
        }


def baseline_path(root: Path, model: str) -> Path:
    """``baselines/<model>.json`` under the workspace root."""
    if not model or "/" in model or "\\" in model or model.startswith("."):
        raise UsageError(f"model name {model!r} cannot name a baseline file")
    return root / BASELINES_DIR / f"{model}.json"


def read_baseline_file(path: Path, model: str = "") -> BaselineFile | None:
    """The baseline file at ``path``; None when it is not of this tool's schema version.

    Raises UsageError (naming the file) when it cannot be read or is not JSON.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read baseline: {exc}", path=path) from None
    if not isinstance(data, dict) or data.get("schema_version") != BASELINE_SCHEMA_VERSION:
        return None
    return BaselineFile.from_dict(data, model)


def load_baselines(root: Path) -> dict[str, Baseline]:
    """Every committed baseline variant entry, by variant name (empty when none exist)."""
    recover(root)  # a pin cut short between its renames is finished first
    entries: dict[str, Baseline] = {}
    directory = root / BASELINES_DIR
    if not directory.is_dir():
        return entries
    for path in sorted(directory.glob("*.json")):
        document = read_baseline_file(path)
        if document is None:
            raise UsageError(
                f"unsupported baseline (schema_version {BASELINE_SCHEMA_VERSION} expected)",
                path=path,
            )
        entries.update({k: replace(v, directory=directory) for k, v in document.variants.items()})
    return entries


def baseline_entry(record: RunRecord, variant_name: str, bench: dict[str, Any] | None) -> Baseline:
    """The baseline of one variant from a run: what a later gate compares against.

    Per-case timings are left out (only summaries keep speed) so that re-pinning identical
    results is an identical file.
    """
    run = next(v for v in record.variants if v.variant.name == variant_name)
    suites = sorted({c.suite for c in record.cases if c.variant == variant_name})
    return Baseline(
        variant=run.variant,
        run_id=record.run_id,
        environment=variant_environment(record.environment, variant_name),
        golden_sets={s: record.golden_sets[s] for s in suites if s in record.golden_sets},
        summaries=[s for s in record.summaries if s.variant == variant_name],
        cases=[BaselineCase.of(c) for c in record.cases if c.variant == variant_name],
        bench=bench,
    )


def variant_environment(environment: Mapping[str, Any], variant_name: str) -> dict[str, Any]:
    """The run environment as it applied to one variant (its thread count, its blob, ...)."""
    env = {k: v for k, v in environment.items() if k not in PER_VARIANT_KEYS}
    for key in PER_VARIANT_KEYS:
        if key == "blobs" or key not in environment:
            continue
        value = environment[key]
        env[key] = value.get(variant_name) if isinstance(value, dict) else value
    return env


def bench_figures(document: dict[str, Any]) -> dict[str, Any] | None:
    """The gate's figures from a ``lifecycle bench --json`` document (its first good point).

    Returns None when no point was measured. Speeds are llama-bench's mean tokens/sec.
    A ``lifecycle loadtest --json`` document gives its SLA figures under ``loadtest``.
    """
    if document.get("kind") == "loadtest":
        summary = document.get("summary")
        return {"loadtest": summary} if isinstance(summary, dict) else None
    points = [p for p in document.get("points", []) if p.get("ok")]
    if not points:
        return None
    point = points[0]
    figures: dict[str, Any] = {"n_ctx": point.get("n_ctx")}
    for row in point.get("rows", []):
        kind = "tg" if row.get("n_gen") else "pp"
        figures[f"{kind}_tokens_per_s"] = row.get("avg_ts")
    memory = point.get("memory") or {}
    for key in ("peak_rss_bytes", "model_rss_bytes", "allocated_bytes", "vram_used_bytes"):
        figures[key] = memory.get(key)
    figures["engine_version"] = (document.get("environment") or {}).get("engine_version")
    return figures


def bench_by_variant(documents: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Bench figures keyed by the variant name each bench document names."""
    out: dict[str, dict[str, Any]] = {}
    for doc in documents:
        name = (doc.get("variant") or {}).get("name")
        figures = bench_figures(doc)
        if name and figures:  # a bench and a load test of one variant both count
            out.setdefault(str(name), {}).update(figures)
    return out
