"""Decoding pieces shared by the sequential and the batched llama.cpp paths."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import llama_cpp
import numpy as np

from lifecycle.confidence import value_open
from lifecycle.engines.base import GenerationRequest
from lifecycle.engines.margins import Margins


class Batch:
    """A ``llama_batch`` filled token by token (one sequence id per token)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.batch = llama_cpp.llama_batch_init(capacity, 0, 1)
        self.size = 0

    def __enter__(self) -> Batch:
        return self

    def __exit__(self, *exc: object) -> None:
        llama_cpp.llama_batch_free(self.batch)

    def clear(self) -> None:
        self.size = 0
        self.batch.n_tokens = 0

    def add(self, token: int, pos: int, seq_id: int, *, logits: bool) -> None:
        i = self.size
        b = self.batch
        b.token[i] = token
        b.pos[i] = pos
        b.n_seq_id[i] = 1
        b.seq_id[i][0] = seq_id
        b.logits[i] = 1 if logits else 0
        self.size += 1
        b.n_tokens = self.size


@dataclass
class Scored:
    """Per generated token: its log-probability and where its text starts."""

    logprobs: list[float] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)

    def add(self, logprob: float, *, offset: int) -> None:
        self.logprobs.append(logprob)
        self.offsets.append(offset)


def first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    """Index of the earliest stop sequence in ``text``, or None."""
    positions = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(positions) if positions else None


def wants_logprob(request: GenerationRequest, text: str) -> bool:
    """Whether the token after ``text`` needs its log-probability (see ``logprob_field``)."""
    if not request.logprobs:
        return False
    return request.logprob_field is None or value_open(text, request.logprob_field)


def plain_greedy(request: GenerationRequest) -> bool:
    """Temperature 0 and a neutral repeat penalty: the next token is simply the argmax."""
    return request.temperature <= 0.0 and request.repeat_penalty == 1.0


def best_other(logits: np.ndarray, token: int) -> float:
    """The highest logit of any token but ``token`` (two reductions, no copy of the vocabulary)."""
    before = logits[:token].max(initial=-np.inf)
    after = logits[token + 1 :].max(initial=-np.inf)
    return float(max(before, after))


class SchemaGrammar(Protocol):
    """What the decoders ask of a schema grammar: llama.cpp's GBNF sampler
    (``llama_cpp.Grammar``) or an llguidance matcher (``structured.ForcingGrammar``)."""

    def allows(self, logits: np.ndarray, ids: np.ndarray) -> np.ndarray: ...

    def masked(self, logits: np.ndarray) -> np.ndarray: ...

    def greedy_among_top(self, logits: np.ndarray) -> int | None: ...

    def margin(
        self, logits: np.ndarray, token: int, floor: float = ..., masked: np.ndarray | None = ...
    ) -> float: ...

    def accept(self, token: int) -> None: ...

    def forced(self, room: int) -> list[int]: ...

    def finished(self) -> bool: ...

    def free(self) -> None: ...


def add_forced(
    forced: list[int],
    generated: list[int],
    text: str,
    request: GenerationRequest,
    scored: Scored | None,
    margins: Margins,
    detokenize: Callable[[list[int]], str],
    chain: Any,
) -> str:
    """Append the grammar's ``forced`` tokens to ``generated``; return the new text.

    A forced token had no rival: its step counts as a forced one in the margins (infinite
    margin, as when a grammar allows a single token) and, where a log-probability is asked
    for, it is 0 (certain under the grammar). Its text is part of the output like any other.
    """
    for token in forced:
        margins.add(math.inf, text)
        generated.append(token)
        chain.accept(token)  # the repeat penalty's history holds every token of the output
        if scored is not None:
            scored.add(0.0 if wants_logprob(request, text) else math.nan, offset=len(text))
        text = detokenize(generated)
    return text
