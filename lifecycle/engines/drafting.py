"""Prompt-lookup drafting: free-mode greedy decoding that guesses its next tokens from the prompt.

A few-shot JSON answer repeats text its prompt already holds (``{"category": "``,
``", "confidence": 0.9}``). After each sampled token the decoder looks the last few tokens
up in the sequence's own tokens (prompt and output so far), takes what followed their most
recent earlier occurrence as a draft, and decodes the sampled token and the draft in one
``llama_decode`` with logits at every position. Greedy verification then reads those rows in
order: while the model's greedy choice (its argmax, after the repeat penalty if any) equals
the next draft token, that token is accepted without a decode step of its own; the first
choice that differs is the model's own next token, and the KV cache positions of the
rejected draft tokens are removed (``llama_memory_seq_rm``). llama.cpp ships the same idea
as its n-gram lookup decoding (``llama-lookup``, and n-gram drafts in ``llama-server``).

The accepted tokens are the ones plain greedy decoding would choose on the same logits; but
the logits come from a batch of several tokens, whose matrix products round differently from
one token's, so a near tie can flip (as with batched decoding). That is why the setting is a
runtime fact (:func:`free_drafting`: the run environment, the lock's runtime, the answer
cache key of free greedy answers), and every accepted token's decision margin and
log-probability are computed from its own row of the verify batch, as a sampled token's are.

Only greedy decoding without a schema drafts (temperature 0; a repeat penalty is applied on
each verify row after the tokens accepted before it, as plain decoding applies it); schema
mode fast-forwards the tokens its grammar forces instead (:mod:`lifecycle.engines.structured`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from lifecycle.engines.base import GenerationRequest
from lifecycle.envnames import ENV_FREE_DRAFT

# The longest and shortest n-gram looked up (the longest that matches wins), and the most
# draft tokens verified in one decode. Every verify row costs a product with the output
# matrix (Gemma 3: 262k tokens x 640), so long drafts that are mostly rejected cost more than
# they save: on the example 92 % of 4-token drafts were accepted, 60 % of 8-token ones.
MAX_NGRAM = 3
MIN_NGRAM = 1
MAX_DRAFT = 4
# Off unless LIFECYCLE_FREE_DRAFT asks for it (see docs/performance.md for why).
DEFAULT = "off"


@dataclass(frozen=True)
class DraftSettings:
    """How drafts are made: n-gram sizes looked up and the longest draft."""

    max_draft: int = MAX_DRAFT
    max_ngram: int = MAX_NGRAM
    min_ngram: int = MIN_NGRAM

    def describe(self) -> str:
        return f"prompt-lookup k={self.max_draft} n={self.min_ngram}-{self.max_ngram}"


def draft_settings() -> DraftSettings | None:
    """The drafting this process uses in free greedy decoding, None when off.

    ``LIFECYCLE_FREE_DRAFT``: ``off`` (or ``0``), ``on`` / ``prompt-lookup`` (the defaults
    above), or ``prompt-lookup:K`` for drafts of at most K tokens. Read at every call (a test
    or a benchmark may change it between generations)."""
    value = os.environ.get(ENV_FREE_DRAFT, DEFAULT).strip().lower()
    if value in ("", "off", "0", "no", "false"):
        return None
    name, _, size = value.partition(":")
    if name not in ("on", "1", "yes", "true", "prompt-lookup"):
        return None
    if size.strip().isdigit() and int(size) > 0:
        return DraftSettings(max_draft=int(size))
    return DraftSettings()


def request_drafts(request: GenerationRequest) -> DraftSettings | None:
    """The drafting for one request: free mode (no schema) and greedy (temperature 0, with or
    without a repeat penalty: the chain's choice on each verify row is then the one plain
    decoding makes after the same accepted tokens); None otherwise or when off."""
    if request.json_schema or request.temperature > 0.0:
        return None
    return draft_settings()


def free_drafting() -> str:
    """The free-mode drafting of this process, as recorded in the engine details and keys:
    ``"off"`` or ``"prompt-lookup k=4 n=1-3"``."""
    settings = draft_settings()
    return "off" if settings is None else settings.describe()


@dataclass
class DraftStats:
    """What drafting did over a model's generations (for benchmarks and the report)."""

    verify_steps: int = 0  # decodes that carried a draft
    drafted: int = 0  # draft tokens decoded
    accepted: int = 0  # draft tokens the model's argmax agreed with

    def add(self, drafted: int, accepted: int) -> None:
        self.verify_steps += 1 if drafted else 0
        self.drafted += drafted
        self.accepted += accepted

    @property
    def acceptance(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0


class PromptLookup:
    """The n-gram index of one sequence's tokens (prompt, then each output token appended).

    For each n-gram it keeps where the token after its most recent occurrence stands, so a
    lookup of the sequence's last n tokens costs one dict access per n tried."""

    def __init__(self, tokens: Sequence[int], settings: DraftSettings) -> None:
        self.settings = settings
        self.tokens: list[int] = []
        self._next: dict[tuple[int, ...], int] = {}
        for token in tokens:
            self.add(token)

    def add(self, token: int) -> None:
        """Append ``token``: every n-gram that ends just before it now has a continuation."""
        tokens = self.tokens
        end = len(tokens)
        tokens.append(token)
        for n in range(self.settings.min_ngram, self.settings.max_ngram + 1):
            if n > end:
                break
            self._next[tuple(tokens[end - n : end])] = end

    def draft(self, limit: int) -> list[int]:
        """Up to ``limit`` tokens that followed the latest earlier occurrence of the longest
        suffix n-gram found (empty when none is found)."""
        limit = min(limit, self.settings.max_draft)
        if limit <= 0:
            return []
        tokens = self.tokens
        end = len(tokens)
        for n in range(min(self.settings.max_ngram, end), self.settings.min_ngram - 1, -1):
            start = self._next.get(tuple(tokens[end - n :]))
            if start is not None:
                return tokens[start : min(start + limit, end)]
        return []
