"""Decoding pieces shared by the sequential and the batched llama.cpp paths."""

from __future__ import annotations

from dataclasses import dataclass, field

import llama_cpp

from lifecycle.confidence import value_open
from lifecycle.engines.base import GenerationRequest


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
