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

How the text is scored, and how that differs from llama-perplexity
-----------------------------------------------------------------
The text is tokenized once (BOS first when the model asks for one) and cut into chunks of
``n_ctx`` tokens; the first token of every chunk is replaced by BOS, and a trailing partial
chunk is dropped — exactly as llama-perplexity does. Each chunk is decoded from an empty
cache. llama-perplexity scores only the second half of each chunk (positions with at least
``n_ctx/2`` tokens of context); here ``score="all"`` (the default) scores every position, as
the issue asks, so PPLs are higher than llama-perplexity's on the same text. ``score=
"second-half"`` reproduces llama-perplexity's selection for a like-for-like cross-check.

Memory stays bounded for large vocabularies: logits are read in blocks of positions
(``chunk_logits``), and of the reference's distribution only the top-``k`` log-probabilities
per position are kept, plus the probability mass of the rest. The KL divergence is then
computed exactly over those ``k`` tokens and treats the rest of the vocabulary as one bin::

    KLD ≈ Σ_{i∈top-k} p_i (log p_i − log q_i) + r · log(r / q_rest)

with ``r = 1 − Σ_top-k p_i`` and ``q_rest`` the candidate's mass outside the reference's top
``k``. By the log-sum inequality this is a lower bound of the full KLD, equal to it when the
reference puts no mass outside its top ``k``; self-comparison gives exactly 0. (llama-
perplexity approximates too: it stores log-probs as 16-bit integers and drops tokens with a
reference log-prob under −16.) The test suite checks it against a full-logit numpy
computation. Measured on the example model (Gemma 3 270M, 262k vocabulary, Q4_0 against
Q4_K_M, one 512-token chunk), mean KLD by ``k``: 32 → 0.262, 128 → 0.310, 1024 → 0.352,
4096 → 0.363; hence the default ``k = 1024`` (about 3% low on that pair; 12 bytes per kept
entry, ~50 MB for the packaged text). Same-top-p, RMS Δp and PPLs do not depend on ``k``.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lifecycle.bench import peak_rss, reset_peak_rss
from lifecycle.config import Workspace, read_toml
from lifecycle.errors import ConfigError, EngineError, UsageError
from lifecycle.store import now

SCHEMA_VERSION = 1
SCORE_MODES = ("all", "second-half")
# Logits read per llama_decode call: bounded bytes, so a 262k vocabulary gets 64 positions.
LOGITS_BLOCK_BYTES = 64 * 1024 * 1024
# Rows of logits reduced at once in numpy (float32 temporaries of rows x n_vocab).
REDUCE_ROWS = 16

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
class TokenQuality:
    """llama-perplexity's KL-divergence statistics for one subject against the reference.

    Rates (``same_top_p``, ``rms_dp``) are fractions, not percentages.
    """

    positions: int
    kld_mean: float
    kld_stderr: float
    kld_median: float
    kld_p90: float
    kld_p95: float
    kld_p99: float
    kld_max: float
    same_top_p: float
    same_top_p_stderr: float
    rms_dp: float
    rms_dp_stderr: float
    ppl: float
    ppl_stderr: float
    ppl_reference: float
    ppl_ratio: float
    ppl_ratio_stderr: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "kld": {
                "mean": self.kld_mean,
                "stderr": self.kld_stderr,
                "median": self.kld_median,
                "p90": self.kld_p90,
                "p95": self.kld_p95,
                "p99": self.kld_p99,
                "max": self.kld_max,
            },
            "same_top_p": self.same_top_p,
            "same_top_p_stderr": self.same_top_p_stderr,
            "rms_dp": self.rms_dp,
            "rms_dp_stderr": self.rms_dp_stderr,
            "ppl": self.ppl,
            "ppl_stderr": self.ppl_stderr,
            "ppl_reference": self.ppl_reference,
            "ppl_ratio": self.ppl_ratio,
            "ppl_ratio_stderr": self.ppl_ratio_stderr,
            "positions": self.positions,
        }


@dataclass
class ReferenceScores:
    """What is kept of the reference's distributions: per scored position, its top-k."""

    tokens: list[int]  # the chunked token stream (BOS already placed per chunk)
    n_vocab: int
    top_ids: list[np.ndarray] = field(default_factory=list)  # per chunk: (positions, k) int
    top_logp: list[np.ndarray] = field(default_factory=list)  # (positions, k) float64
    rest: list[np.ndarray] = field(default_factory=list)  # (positions,) mass outside top-k
    argmax: list[np.ndarray] = field(default_factory=list)  # (positions,) top token id
    target_logp: list[np.ndarray] = field(default_factory=list)  # log p(actual next token)


@dataclass
class PositionStats:
    """Per-position values of one subject against the reference, over every scored chunk."""

    kld: list[np.ndarray] = field(default_factory=list)
    nll: list[np.ndarray] = field(default_factory=list)
    nll_reference: list[np.ndarray] = field(default_factory=list)
    same_top: list[np.ndarray] = field(default_factory=list)
    dp: list[np.ndarray] = field(default_factory=list)

    def summary(self) -> TokenQuality:
        """Aggregate exactly as llama-perplexity's ``kl_divergence`` does."""
        kld = np.concatenate(self.kld)
        nll = np.concatenate(self.nll)
        nll_ref = np.concatenate(self.nll_reference)
        same = np.concatenate(self.same_top).astype(np.float64)
        dp = np.concatenate(self.dp)
        n = len(kld)
        log_ppl, log_ppl_unc = _mean_and_uncertainty(nll)
        log_ppl_ref, log_ppl_ref_unc = _mean_and_uncertainty(nll_ref)
        cov = _covariance(nll, nll_ref)
        ratio_unc = math.sqrt(
            max(log_ppl_unc**2 + log_ppl_ref_unc**2 - 2.0 * cov, 0.0)
        )  # ln(PPL ratio) uncertainty, propagated through exp below
        kld_mean, kld_unc = _mean_and_uncertainty(kld)
        mse, mse_unc = _mean_and_uncertainty(dp * dp)
        rms = math.sqrt(mse)
        top = float(same.mean()) if n else 0.0
        ratio = math.exp(log_ppl - log_ppl_ref)
        return TokenQuality(
            positions=n,
            kld_mean=kld_mean,
            kld_stderr=kld_unc,
            kld_median=float(np.median(kld)),
            kld_p90=_percentile(kld, 0.90),
            kld_p95=_percentile(kld, 0.95),
            kld_p99=_percentile(kld, 0.99),
            kld_max=float(kld.max()),
            same_top_p=top,
            same_top_p_stderr=math.sqrt(top * (1 - top) / (n - 1)) if n > 1 else 0.0,
            rms_dp=rms,
            rms_dp_stderr=0.5 / rms * mse_unc if rms > 0 else 0.0,
            ppl=math.exp(log_ppl),
            ppl_stderr=math.exp(log_ppl) * log_ppl_unc,
            ppl_reference=math.exp(log_ppl_ref),
            ppl_ratio=ratio,
            ppl_ratio_stderr=ratio * ratio_unc,
        )


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
) -> dict[str, Any]:
    """Compare ``names`` (variants, model names, tags or GGUF paths); return the JSON report.

    Everything that can fail without a model (names, text file, quant names, config) fails
    before any model loads. ``progress`` gets a line per step; ``ticker`` a count of scored
    chunks per subject while the reference text is scored (the longest step).
    """
    from lifecycle.store import Store

    options = options or CompareOptions()
    say = progress or (lambda _msg: None)
    if not names:
        raise UsageError("name at least one variant, model or tag to compare")
    if options.score not in SCORE_MODES:
        raise UsageError(f"unknown score mode {options.score!r}; use one of {SCORE_MODES}")
    settings = read_compare_settings(workspace) if workspace else {}
    thresholds = options.thresholds or settings.get("thresholds") or Thresholds()
    n_ctx = options.n_ctx or settings.get("ctx") or 512
    top_k = options.top_k or settings.get("top_k") or 1024
    chunks = options.chunks or settings.get("chunks")
    if n_ctx < 8:
        raise UsageError(f"--ctx {n_ctx} is too small to score (at least 8 tokens)")
    text_path = options.text or settings.get("text")
    text, text_label = load_text(text_path) if options.token_quality else ("", "")

    if store is None:
        from lifecycle.config import lifecycle_home

        store = Store(workspace.home if workspace else lifecycle_home())
    subjects = resolve_subjects(names, workspace, store)
    reference = _pick_reference(subjects, options.reference or settings.get("reference"))
    infos = {s.name: _gguf_summary(s.path) for s in subjects}
    if reference.name != subjects[0].name:
        subjects = [reference, *[s for s in subjects if s.name != reference.name]]

    entries: dict[str, dict[str, Any]] = {
        s.name: {
            **s.describe(),
            "quant": infos[s.name]["file_type"],
            "is_reference": s.name == reference.name,
            "token_quality": None,
            "token_quality_skipped": None,
            "task_quality": None,
            "task_quality_skipped": None,
            "cost": {
                "file_size_bytes": s.path.stat().st_size,
                "bits_per_weight": infos[s.name]["bits_per_weight"],
            },
        }
        for s in subjects
    }

    text_settings: dict[str, Any] = {}
    if options.token_quality:
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

    run_id = None
    run_record = None
    if options.task_quality:
        run_record = _task_pass(subjects, reference, entries, workspace, options, say)
        run_id = run_record.run_id if run_record else None

    measured = {
        "token_quality": options.token_quality,
        "task_quality": any(e["task_quality"] for e in entries.values()),
    }
    for entry in entries.values():
        entry["checks"] = _checks(entry, thresholds, measured)
        entry["within_thresholds"] = all(c["ok"] for c in entry["checks"])
    verdict = _verdict(list(entries.values()), reference.name)
    created = now()
    report: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "kind": "compare",
        "created_at": created,
        "reference": reference.name,
        "token_settings": text_settings or None,
        "thresholds": thresholds.to_dict(),
        "eval_run_id": run_id,
        "variants": list(entries.values()),
        "verdict": verdict,
    }
    report["compare_id"] = _compare_id(created, report)
    if run_record is not None:
        report["_run_record"] = run_record  # saved by save_report, never serialised inline
    return report


def read_compare_settings(workspace: Workspace) -> dict[str, Any]:
    """``lifecycle.toml → compare``: reference, thresholds, text, ctx, chunks, top_k."""
    path = workspace.config_path
    table = read_toml(path).get("compare", {})
    if not isinstance(table, dict):
        raise ConfigError("must be a table", path=path, field="compare")
    known = {
        "reference", "text", "ctx", "chunks", "top_k",
        "max_pass_rate_drop", "max_mean_kld", "max_ppl_ratio", "min_same_top_p",
    }  # fmt: skip
    for key in table:
        if key not in known:
            raise ConfigError(
                f"unknown key (expected one of: {', '.join(sorted(known))})",
                path=path,
                field=f"compare.{key}",
            )

    def number(key: str, default: float | None) -> float | None:
        value = table.get(key, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ConfigError("must be a non-negative number", path=path, field=f"compare.{key}")
        return float(value)

    def integer(key: str) -> int | None:
        value = table.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError("must be a positive integer", path=path, field=f"compare.{key}")
        return value

    settings: dict[str, Any] = {
        "thresholds": Thresholds(
            max_pass_rate_drop=number("max_pass_rate_drop", 0.02) or 0.0,
            max_mean_kld=number("max_mean_kld", 0.05) or 0.0,
            max_ppl_ratio=number("max_ppl_ratio", None),
            min_same_top_p=number("min_same_top_p", None),
        ),
        "ctx": integer("ctx"),
        "chunks": integer("chunks"),
        "top_k": integer("top_k"),
    }
    for key in ("reference", "text"):
        value = table.get(key)
        if value is not None and not isinstance(value, str):
            raise ConfigError("must be a string", path=path, field=f"compare.{key}")
        settings[key] = value
    if settings["text"]:
        settings["text"] = workspace.root / settings["text"]
    return settings


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


def save_report(report: dict[str, Any], directory: Path) -> tuple[Path, Path | None]:
    """Write ``<id>.json`` (and the eval run as ``<id>.run.json``) and the chart ``<id>.png``."""
    from lifecycle.fsutil import atomic_write_text

    directory.mkdir(parents=True, exist_ok=True)
    record = report.pop("_run_record", None)
    base = directory / report["compare_id"]
    chart: Path | None = None
    try:
        chart = comparison_chart(report, base.with_suffix(".png"))
    except (ImportError, ValueError, OSError) as exc:  # the report matters more than the chart
        report["chart_error"] = str(exc)
    report["chart"] = str(chart) if chart else None
    if record is not None:
        run_path = base.with_name(base.name + ".run.json")
        atomic_write_text(run_path, json.dumps(record.to_dict(), indent=2) + "\n")
        report["eval_run"] = str(run_path)
    path = base.with_suffix(".json")
    atomic_write_text(path, json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return path, chart


# --- token-level quality -----------------------------------------------------------------------


def chunk_tokens(
    text_tokens: list[int], bos: int | None, n_ctx: int, chunks: int | None
) -> list[int]:
    """llama-perplexity's chunking: BOS first, whole chunks only, BOS over each chunk's start."""
    tokens = ([bos] if bos is not None else []) + list(text_tokens)
    n_chunk = len(tokens) // n_ctx
    if n_chunk < 2:
        raise UsageError(
            f"the reference text is {len(tokens)} tokens; at least 2 x n_ctx = {2 * n_ctx} are "
            "needed (use a longer --text or a smaller --ctx)"
        )
    if chunks is not None:
        n_chunk = min(n_chunk, chunks)
    tokens = tokens[: n_chunk * n_ctx]
    if bos is not None:
        for start in range(0, len(tokens), n_ctx):
            tokens[start] = bos
    return tokens


def score_reference(
    model: Any,
    tokens: list[int],
    n_ctx: int,
    score: str,
    top_k: int,
    block: int,
    on_chunk: Callable[[int], None] | None = None,
) -> ReferenceScores:
    """One pass of the reference model: keep its top-k log-probs per scored position.

    ``on_chunk`` is called with the number of chunks done after each one.
    """
    _, n_vocab, _ = model.text_tokens("")
    ref = ReferenceScores(tokens=tokens, n_vocab=n_vocab)
    k = min(top_k, n_vocab)
    parts: dict[str, list[np.ndarray]] = {}
    for _index, rows, targets, last in _scored_rows(model, tokens, n_ctx, score, block):
        lse = _logsumexp(rows)
        ids = _top_ids(rows, k)
        logp = np.take_along_axis(rows, ids, axis=1).astype(np.float64) - lse[:, None]
        parts.setdefault("ids", []).append(ids.astype(np.int32))
        parts.setdefault("logp", []).append(logp)
        parts.setdefault("rest", []).append(np.clip(1.0 - np.exp(logp).sum(axis=1), 0.0, 1.0))
        parts.setdefault("top", []).append(np.argmax(rows, axis=1))
        parts.setdefault("target", []).append(_gather(rows, targets) - lse)
        if last:  # the chunk is complete: keep it as one array per quantity
            ref.top_ids.append(np.concatenate(parts.pop("ids")))
            ref.top_logp.append(np.concatenate(parts.pop("logp")))
            ref.rest.append(np.concatenate(parts.pop("rest")))
            ref.argmax.append(np.concatenate(parts.pop("top")))
            ref.target_logp.append(np.concatenate(parts.pop("target")))
            if on_chunk:
                on_chunk(len(ref.argmax))
    return ref


def score_against(
    model: Any,
    ref: ReferenceScores,
    n_ctx: int,
    score: str,
    block: int,
    on_chunk: Callable[[int], None] | None = None,
) -> PositionStats:
    """One pass of a candidate model, compared position by position with the reference."""
    stats = PositionStats()
    parts: dict[str, list[np.ndarray]] = {"kld": [], "nll": [], "same": [], "dp": []}
    done = 0
    for index, rows, targets, last in _scored_rows(model, ref.tokens, n_ctx, score, block):
        sl = slice(done, done + len(rows))
        done += len(rows)
        lse = _logsumexp(rows)
        ids = ref.top_ids[index][sl]
        logp = ref.top_logp[index][sl]
        logq = np.take_along_axis(rows, ids, axis=1).astype(np.float64) - lse[:, None]
        rest_p = ref.rest[index][sl]
        rest_q = np.clip(1.0 - np.exp(logq).sum(axis=1), 1e-300, 1.0)
        kld = (np.exp(logp) * (logp - logq)).sum(axis=1)
        tail = rest_p > 0
        kld[tail] += rest_p[tail] * (np.log(rest_p[tail]) - np.log(rest_q[tail]))
        target_logq = _gather(rows, targets) - lse
        parts["kld"].append(kld)
        parts["nll"].append(-target_logq)
        parts["same"].append(np.argmax(rows, axis=1) == ref.argmax[index][sl])
        parts["dp"].append(np.exp(target_logq) - np.exp(ref.target_logp[index][sl]))
        if last:
            stats.kld.append(np.concatenate(parts["kld"]))
            stats.nll.append(np.concatenate(parts["nll"]))
            stats.nll_reference.append(-ref.target_logp[index])
            stats.same_top.append(np.concatenate(parts["same"]))
            stats.dp.append(np.concatenate(parts["dp"]))
            parts = {key: [] for key in parts}
            done = 0
            if on_chunk:
                on_chunk(len(stats.kld))
    return stats


def logits_block(n_vocab: int, n_ctx: int) -> int:
    """Positions per decode so one block of float32 logits stays within LOGITS_BLOCK_BYTES."""
    return max(1, min(n_ctx, LOGITS_BLOCK_BYTES // (4 * n_vocab)))


def _scored_rows(model: Any, tokens: list[int], n_ctx: int, score: str, block: int) -> Any:
    """Yield ``(chunk index, logits rows, their target tokens, last of the chunk?)``.

    Rows arrive a few at a time (at most REDUCE_ROWS), so no more than one decode block of
    logits is alive. Position ``j`` of a chunk predicts token ``j + 1``; ``all`` scores
    ``0 .. n_ctx-2``, ``second-half`` scores ``n_ctx/2 .. n_ctx-2`` like llama-perplexity.
    """
    first = 0 if score == "all" else n_ctx // 2
    for index, start in enumerate(range(0, len(tokens), n_ctx)):
        chunk = tokens[start : start + n_ctx]
        pos = 0
        for logits in model.chunk_logits(chunk, block):
            lo, hi = max(first, pos), min(pos + len(logits), n_ctx - 1)
            for row in range(lo, hi, REDUCE_ROWS):
                end = min(row + REDUCE_ROWS, hi)
                targets = np.asarray(chunk[row + 1 : end + 1])
                yield index, logits[row - pos : end - pos], targets, end == n_ctx - 1
            pos += len(logits)


def _top_ids(rows: np.ndarray, k: int) -> np.ndarray:
    """Ids of each row's ``k`` largest logits (unordered).

    A full partition of a 262k vocabulary costs milliseconds per row; the top ``k`` almost
    always lie within a few nats of the maximum, so partition only those candidates and fall
    back to the whole row when there are fewer than ``k`` of them.
    """
    n_vocab = rows.shape[1]
    if k >= n_vocab:
        return np.broadcast_to(np.arange(n_vocab), rows.shape).copy()
    out = np.empty((len(rows), k), dtype=np.int64)
    for i, row in enumerate(rows):
        near = np.flatnonzero(row >= row.max() - 10.0)
        if len(near) < k:
            out[i] = np.argpartition(row, n_vocab - k)[n_vocab - k :]
        else:
            out[i] = near[np.argpartition(row[near], len(near) - k)[len(near) - k :]]
    return out


def _logsumexp(rows: np.ndarray) -> np.ndarray:
    """Row-wise log Σ exp in float64 (exp of float32 shifted logits, summed in float64)."""
    peak = rows.max(axis=1)
    total = np.exp(rows - peak[:, None]).sum(axis=1, dtype=np.float64)
    return peak.astype(np.float64) + np.log(total)


def _gather(rows: np.ndarray, ids: np.ndarray) -> np.ndarray:
    return rows[np.arange(len(rows)), ids].astype(np.float64)


def _mean_and_uncertainty(values: np.ndarray) -> tuple[float, float]:
    """llama-perplexity's mean ± standard error (0 for ten values or fewer)."""
    n = len(values)
    if n < 1:
        return 0.0, 0.0
    mean = float(values.mean())
    var = float((values * values).mean()) - mean * mean
    return mean, math.sqrt(var / (n - 1)) if var > 0 and n > 10 else 0.0


def _covariance(a: np.ndarray, b: np.ndarray) -> float:
    n = len(a)
    if n < 10:
        return 0.0
    return (float((a * b).mean()) - float(a.mean()) * float(b.mean())) / (n - 1)


def _percentile(values: np.ndarray, fraction: float) -> float:
    # Linear interpolation between order statistics, as llama-perplexity (and numpy) do.
    return float(np.quantile(values, fraction))


def _token_pass(
    subjects: list[Subject],
    reference: Subject,
    entries: dict[str, dict[str, Any]],
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
            entry["token_quality_skipped"] = "the reference could not be scored"
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
                stats = _self_stats(ref_scores)
                settings.update(
                    tokens=len(text_ids) + (bos is not None),
                    chunks=len(ref_tokens) // n_ctx,
                    n_vocab=n_vocab,
                    block=block,
                )
            else:
                assert ref_scores is not None
                reason = _vocab_mismatch(ref_scores, ref_tokens, text_ids, bos, n_vocab, n_ctx)
                if reason:
                    entry["token_quality_skipped"] = reason
                    say(f"warning: {subject.name}: {reason}")
                    stats = None
                else:
                    scored_from = time.perf_counter()
                    stats = score_against(model, ref_scores, n_ctx, score, block, on_chunk=tick)
            if stats is not None:
                quality = stats.summary()
                entry["token_quality"] = quality.to_dict()
                seconds = time.perf_counter() - scored_from
                entry["cost"]["score_tokens_per_s"] = round(len(ref_tokens) / seconds, 2)
        finally:
            model.close()
        entry["cost"]["load_ms"] = round(load_ms, 2)
        entry["cost"]["token_pass_s"] = round(time.perf_counter() - started, 3)
        entry["cost"]["peak_rss_bytes"] = peak_rss()
        entry["cost"]["model_rss_bytes"] = max(0, peak_rss() - rss_before)
    settings["scored_positions"] = sum(len(a) for a in ref_scores.argmax) if ref_scores else 0
    return settings


def _self_stats(ref: ReferenceScores) -> PositionStats:
    """The reference against itself, by definition: no divergence, every top token agrees."""
    return PositionStats(
        kld=[np.zeros(len(a)) for a in ref.argmax],
        nll=[-t for t in ref.target_logp],
        nll_reference=[-t for t in ref.target_logp],
        same_top=[np.ones(len(a), dtype=bool) for a in ref.argmax],
        dp=[np.zeros(len(a)) for a in ref.argmax],
    )


def _vocab_mismatch(
    ref: ReferenceScores,
    ref_tokens: list[int],
    text_ids: list[int],
    bos: int | None,
    n_vocab: int,
    n_ctx: int,
) -> str | None:
    if n_vocab != ref.n_vocab:
        return (
            f"different vocabulary ({n_vocab} tokens vs the reference's {ref.n_vocab}): "
            "token-level comparison is meaningless; task quality is still compared"
        )
    ours = ([bos] if bos is not None else []) + text_ids
    ours = ours[: len(ref_tokens)]
    if bos is not None:
        for start in range(0, len(ours), n_ctx):
            ours[start] = bos
    if ours != ref_tokens:
        return (
            "the tokenizer differs from the reference's (the text tokenizes differently): "
            "token-level comparison is meaningless; task quality is still compared"
        )
    return None


def _load(engine: Any, subject: Subject, options: Any) -> Any:
    from dataclasses import replace

    from lifecycle.doctor import extra_bufts_for

    extra_bufts = extra_bufts_for(subject.path, name=subject.name, digest=subject.digest)
    model = engine.load(subject.path, replace(options, extra_bufts=extra_bufts))
    if not hasattr(model, "chunk_logits"):
        raise EngineError(f"engine {engine.name} cannot read per-position logits")
    return model


def _rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


# --- task quality ------------------------------------------------------------------------------


def _task_pass(
    subjects: list[Subject],
    reference: Subject,
    entries: dict[str, dict[str, Any]],
    workspace: Workspace | None,
    options: CompareOptions,
    say: Progress,
) -> Any:
    """One eval run of every workspace variant; fill task_quality and the eval-run costs."""
    from lifecycle.runner import EvalOptions, run_eval

    variants = [s for s in subjects if s.kind == "variant"]
    for subject in subjects:
        if subject.kind != "variant":
            entries[subject.name]["task_quality_skipped"] = (
                "not a workspace variant: golden suites run on variants (Modelfile + suites)"
            )
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
    by_variant: dict[str, list[Any]] = {}
    for case in record.cases:
        by_variant.setdefault(case.variant, []).append(case)
    load_ms = {run.variant.get("name"): run.load_ms for run in record.variants}
    ref_cases = (
        {(c.suite, c.mode, c.id): c for c in by_variant.get(reference.name, [])}
        if reference.kind == "variant"
        else {}
    )
    ref_rate = _rate([c.passed for c in by_variant.get(reference.name, [])])
    for subject in variants:
        cases = by_variant.get(subject.name, [])
        quality = _task_quality(cases, ref_cases, subject.name == reference.name)
        quality["suites"] = [
            {
                "suite": s.suite,
                "mode": s.mode,
                "cases": s.cases,
                "pass_rate": s.pass_rate,
                "json_valid_rate": s.json_valid_rate,
                "schema_valid_rate": s.schema_valid_rate,
            }
            for s in record.summaries
            if s.variant == subject.name
        ]
        quality["pass_rate_drop"] = round(ref_rate - quality["pass_rate"], 6) if ref_cases else None
        entries[subject.name]["task_quality"] = quality
        cost = entries[subject.name]["cost"]
        cost["eval_load_ms"] = load_ms.get(subject.name)
        cost["prompt_tokens_per_s"] = _per_s(
            sum(c.prompt_eval_tokens for c in cases), sum(c.prompt_ms for c in cases)
        )
        cost["generation_tokens_per_s"] = _per_s(
            sum(c.eval_tokens for c in cases), sum(c.generation_ms for c in cases)
        )
    return record


def _task_quality(
    cases: list[Any], ref_cases: dict[Any, Any], is_reference: bool
) -> dict[str, Any]:
    quality: dict[str, Any] = {
        "cases": len(cases),
        "passed": sum(c.passed for c in cases),
        "pass_rate": _rate([c.passed for c in cases]),
        "json_valid_rate": _rate([c.json_valid for c in cases]),
        "schema_valid_rate": _rate([c.schema_valid for c in cases]),
        "agreement": None,
        "agreement_rate": None,
        "flipped": [],
    }
    if not ref_cases:
        return quality
    same = 0
    paired = 0
    for case in cases:
        ref = ref_cases.get((case.suite, case.mode, case.id))
        if ref is None:
            continue
        paired += 1
        same += _same_json(case, ref)
        if case.passed != ref.passed and not is_reference:
            quality["flipped"].append(
                {
                    "suite": case.suite,
                    "mode": case.mode,
                    "id": case.id,
                    "change": "fixed" if case.passed else "broken",
                    "reference_passed": ref.passed,
                    "passed": case.passed,
                    "reference_output": ref.output,
                    "output": case.output,
                    "reason": case.reason if not case.passed else ref.reason,
                }
            )
    quality["agreement"] = same
    quality["agreement_rate"] = round(same / paired, 4) if paired else None
    return quality


def _same_json(case: Any, ref: Any) -> bool:
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
    entry: dict[str, Any], thresholds: Thresholds, measured: dict[str, bool]
) -> list[dict[str, Any]]:
    """Each threshold against the entry's measurement; unmeasured counts as not within."""
    token = entry["token_quality"]
    task = entry["task_quality"]
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
        drop = task["pass_rate_drop"] if task else None
        if entry["is_reference"] and task:
            drop = 0.0
        rules.append(("pass_rate_drop", "task_quality", thresholds.max_pass_rate_drop, drop, "max"))
    checks = []
    for name, dimension, limit, value, sense in rules:
        if limit is None:
            continue
        if value is None:
            why = entry.get(f"{dimension}_skipped") or "not measured"
            checks.append({"check": name, "value": None, "limit": limit, "ok": False,
                           "note": why})  # fmt: skip
            continue
        ok = value <= limit + 1e-12 if sense == "max" else value >= limit - 1e-12
        checks.append({"check": name, "value": value, "limit": limit, "ok": bool(ok)})
    return checks


def _verdict(entries: list[dict[str, Any]], reference: str) -> dict[str, Any]:
    within = [e for e in entries if e["within_thresholds"]]
    if not within:
        return {"choice": None, "within": [], "summary": "no variant stays within the thresholds"}
    choice = min(within, key=lambda e: e["cost"]["file_size_bytes"])
    ref = next(e for e in entries if e["name"] == reference)
    size = choice["cost"]["file_size_bytes"]
    parts = [f"{_mib(size)} vs {_mib(ref['cost']['file_size_bytes'])} for the reference"]
    for check in choice["checks"]:
        parts.append(f"{check['check']} {check['value']:.4g} (limit {check['limit']:g})")
    summary = (
        f"{choice['name']} is the smallest within thresholds: " + ", ".join(parts)
        if choice["name"] != reference
        else f"only the reference {reference} stays within thresholds"
        if len(within) == 1
        else f"{reference} (the reference) is already the smallest within thresholds"
    )
    return {"choice": choice["name"], "within": [e["name"] for e in within], "summary": summary}


def _mib(size: int) -> str:
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


def _compare_id(created: str, report: dict[str, Any]) -> str:
    stamp = created.replace("-", "").replace(":", "")
    salt = json.dumps([[e["digest"] for e in report["variants"]], time.time_ns()])
    return f"{stamp}-{hashlib.sha256(salt.encode()).hexdigest()[:8]}"


# --- chart -------------------------------------------------------------------------------------


def comparison_chart(report: dict[str, Any], path: Path) -> Path:
    """Quality vs size (mean KLD, pass rate) and speed per subject, as a PNG (matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = report["variants"]
    fig, (quality, speed) = plt.subplots(1, 2, figsize=(11, 4))
    sizes = [e["cost"]["file_size_bytes"] / 2**20 for e in entries]
    klds = [(e["token_quality"] or {}).get("kld", {}).get("mean") for e in entries]
    for x, y, e in zip(sizes, klds, entries, strict=True):
        if y is not None:
            quality.scatter([x], [y], marker="o", color="tab:blue")
            quality.annotate(e["name"], (x, y), textcoords="offset points", xytext=(4, 4),
                             fontsize=8)  # fmt: skip
    quality.set(xlabel="file size (MiB)", ylabel="mean KLD vs reference (lower is better)")
    quality.set_title("quality vs size")
    rates = [(e["task_quality"] or {}).get("pass_rate") for e in entries]
    if any(r is not None for r in rates):
        twin = quality.twinx()
        points = [(x, r) for x, r in zip(sizes, rates, strict=True) if r is not None]
        twin.scatter([x for x, _ in points], [r for _, r in points], marker="s", color="tab:green")
        twin.set_ylabel("golden pass rate (squares)")
        twin.set_ylim(-0.05, 1.05)
    labels = [e["name"] for e in entries]
    xs = np.arange(len(entries))
    width = 0.27
    for offset, key, label in (
        (-width, "prompt_tokens_per_s", "prompt (eval)"),
        (0.0, "generation_tokens_per_s", "generation (eval)"),
        (width, "score_tokens_per_s", "scoring (text)"),
    ):
        values = [e["cost"].get(key) or 0.0 for e in entries]
        speed.bar(xs + offset, values, width, label=label)
    speed.set_xticks(xs, labels, rotation=15, fontsize=8)
    speed.set(ylabel="tokens/s")
    speed.set_title("speed")
    speed.legend(fontsize=8)
    fig.suptitle(f"lifecycle compare (reference {report['reference']})")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def render_report(report: dict[str, Any]) -> str:
    """The human report: token quality, then task quality and cost, then the verdict.

    Two tables of at most ~100 columns rather than one of ~190: the model name every row
    shares is printed once above them, and each row carries only what differs.
    """
    from lifecycle.charts import bar_labels
    from lifecycle.texttable import table

    entries = report["variants"]
    common, short = bar_labels([e["name"] for e in entries])
    names = [
        s + (" (ref)" if e["is_reference"] else "") for s, e in zip(short, entries, strict=True)
    ]
    token_rows, task_rows = [], []
    for name, e in zip(names, entries, strict=True):
        t = e["token_quality"]
        q = e["task_quality"]
        c = e["cost"]
        token_rows.append(
            [
                name,
                e["quant"] or "-",
                None if c["bits_per_weight"] is None else round(c["bits_per_weight"], 2),
                None if not t else f"{t['kld']['mean']:.4f}±{t['kld']['stderr']:.4f}",
                None if not t else f"{t['kld']['p99']:.3f}",
                None if not t else f"{100 * t['same_top_p']:.1f}%",
                None if not t else f"{100 * t['rms_dp']:.1f}%",
                None if not t else _ppl(t["ppl"]),
                None if not t else f"{t['ppl_ratio']:.3f}",
            ]
        )
        task_rows.append(
            [
                name,
                _mib(c["file_size_bytes"]),
                None if not q else f"{q['pass_rate']:.0%}",
                None if not q or q["agreement_rate"] is None else f"{q['agreement_rate']:.0%}",
                None if not q else len(q["flipped"]),
                c.get("generation_tokens_per_s"),
                None if c.get("load_ms") is None else round(c["load_ms"]),
                None if not c.get("peak_rss_bytes") else _mib(c["peak_rss_bytes"]),
                "yes" if e["within_thresholds"] else "no",
            ]
        )
    token_headers = [
        "variant", "quant", "bpw", "mean KLD", "p99 KLD", "same top", "RMS Δp", "PPL", "PPL ratio",
    ]  # fmt: skip
    task_headers = [
        "variant", "size", "pass", "agree", "flips", "gen tok/s", "load ms", "peak RSS", "within",
    ]  # fmt: skip
    lines = [f"model: {common}", ""] if common else []
    lines += ["token quality (reference text):", table(token_headers, token_rows), ""]
    lines += ["task quality (golden set) and cost:", table(task_headers, task_rows), ""]
    for e in report["variants"]:
        for key in ("token_quality_skipped", "task_quality_skipped"):
            if e[key]:
                lines.append(f"{e['name']}: {key.split('_skipped')[0].replace('_', ' ')}: {e[key]}")
        for flip in (e["task_quality"] or {}).get("flipped", []):
            lines.append(
                f"{e['name']} {flip['suite']}/{flip['mode']} {flip['id']}: {flip['change']} "
                f"({flip['reason']})"
            )
            lines.append(f"    reference: {_short(flip['reference_output'])}")
            lines.append(f"    {e['name']}: {_short(flip['output'])}")
    settings = report.get("token_settings")
    if settings:
        lines.append(
            f"text: {settings['text']}; {settings['tokens']} tokens, {settings['chunks']} chunks "
            f"of {settings['n_ctx']}, {settings['scored_positions']} positions scored "
            f"({settings['score']}), reference top-{settings['top_k']} kept"
        )
    lines.append("verdict: " + report["verdict"]["summary"])
    return "\n".join(lines)


def _ppl(value: float) -> str:
    # A random or broken model's perplexity runs to 20 digits; keep the column narrow.
    return f"{value:.2f}" if value < 1e5 else f"{value:.2e}"


def _short(text: str, width: int = 90) -> str:
    text = text.strip().replace("\n", "\\n")
    return text if len(text) <= width else text[: width - 3] + "..."


__all__ = [
    "CompareOptions",
    "PositionStats",
    "ReferenceScores",
    "Thresholds",
    "TokenQuality",
    "chunk_tokens",
    "compare",
    "comparison_chart",
    "load_text",
    "logits_block",
    "read_compare_settings",
    "render_report",
    "resolve_subjects",
    "save_report",
    "score_against",
    "score_reference",
]
