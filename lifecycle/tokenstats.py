"""Token-level statistics of one model against a reference, as llama-perplexity prints them.

KL divergence of each position's next-token distribution (mean ± stderr, median,
p90/p95/p99, max), top-token agreement ("same top p"), RMS Δp of the actual next token's
probability, perplexity and the PPL ratio, computed in numpy from a model's logits: any
object with ``text_tokens`` and ``chunk_logits`` (:class:`ScoringModel`) will do, so this
module needs no engine. :mod:`lifecycle.compare` loads the models and puts the figures
in its report.

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

import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from lifecycle.errors import UsageError

SCORE_MODES = ("all", "second-half")
# Logits read per llama_decode call: bounded bytes, so a 262k vocabulary gets 64 positions.
LOGITS_BLOCK_BYTES = 64 * 1024 * 1024
# Rows of logits reduced at once in numpy (float32 temporaries of rows x n_vocab).
REDUCE_ROWS = 16


@runtime_checkable
class ScoringModel(Protocol):
    """What the statistics need of a loaded model (the llama.cpp engine's models have it)."""

    def text_tokens(self, text: str) -> tuple[list[int], int, int | None]: ...

    def chunk_logits(self, tokens: list[int], block: int) -> Iterator[np.ndarray]: ...


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
        """``kld`` (its seven figures without the prefix) first, ``positions`` last."""
        flat = asdict(self)
        positions = flat.pop("positions")
        kld = {
            key.removeprefix("kld_"): flat.pop(key) for key in list(flat) if key.startswith("kld_")
        }
        return {"kld": kld, **flat, "positions": positions}


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
    model: ScoringModel,
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
    model: ScoringModel,
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


def _scored_rows(
    model: ScoringModel, tokens: list[int], n_ctx: int, score: str, block: int
) -> Iterator[tuple[int, np.ndarray, np.ndarray, bool]]:
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


def self_stats(ref: ReferenceScores) -> PositionStats:
    """The reference against itself, by definition: no divergence, every top token agrees."""
    return PositionStats(
        kld=[np.zeros(len(a)) for a in ref.argmax],
        nll=[-t for t in ref.target_logp],
        nll_reference=[-t for t in ref.target_logp],
        same_top=[np.ones(len(a), dtype=bool) for a in ref.argmax],
        dp=[np.zeros(len(a)) for a in ref.argmax],
    )


def vocab_mismatch(
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


__all__ = [
    "LOGITS_BLOCK_BYTES",
    "SCORE_MODES",
    "PositionStats",
    "ReferenceScores",
    "ScoringModel",
    "TokenQuality",
    "chunk_tokens",
    "logits_block",
    "score_against",
    "score_reference",
    "self_stats",
    "vocab_mismatch",
]
