"""Decision margins from the real engine on the tiny model: exact where they can be checked
against llama.cpp's logits independently, the same through the sequential and batched
decoders, and unchanged by the shortcuts that skip exact figures nobody needs."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_SCHEMA

from lifecycle.engines import Generation, GenerationRequest, LoadOptions, get_engine
from lifecycle.engines.llama_cpp import LlamaCppModel
from lifecycle.engines.margins import Margins, server_margins

TICKETS = ["charged twice", "API down since noon", "pricing for 40 seats", "refund please"]


@pytest.fixture(scope="module")
def model(tiny_model: Path) -> Iterator[LlamaCppModel]:
    loaded = get_engine("llama-cpp").load(tiny_model, LoadOptions(n_ctx=1024, n_threads=2))
    assert isinstance(loaded, LlamaCppModel)
    yield loaded
    loaded.close()


def request(text: str, **kwargs: object) -> GenerationRequest:
    prompt = f"<start_of_turn>user\n{text}<end_of_turn>\n<start_of_turn>model\n"
    return GenerationRequest(prompt=prompt, **{"max_tokens": 24, **kwargs})  # type: ignore[arg-type]


def top_gap(model: LlamaCppModel, prompt: str) -> float:
    """top-1 minus top-2 logit after ``prompt``, from a plain forward pass of llama.cpp."""
    tokens = model.tokenize(prompt)
    *_, last = model.chunk_logits(tokens, block=len(tokens))
    first, second = np.sort(last[-1].astype(np.float64))[-2:][::-1]
    return float(first - second)


@pytest.mark.parametrize("ticket", TICKETS)
def test_the_first_step_margin_is_the_top_logit_gap(model: LlamaCppModel, ticket: str) -> None:
    req = request(ticket, max_tokens=1)
    generation = model.generate(req)
    assert generation.margin_step == 0
    assert generation.margin == pytest.approx(top_gap(model, req.prompt), abs=2e-3)


def test_the_margin_is_the_smallest_step_gap(model: LlamaCppModel) -> None:
    """Greedy outputs of k tokens are prefixes of each other, so the margin over k steps is
    the smallest of the first k steps' gaps: never rising with k, and falling exactly at
    the step it names."""
    previous = math.inf
    for k in range(1, 10):
        generation = model.generate(request(TICKETS[0], max_tokens=k))
        assert generation.margin is not None and generation.margin <= previous + 1e-6
        if generation.margin < previous - 1e-6:
            assert generation.margin_step == k - 1
        previous = generation.margin


def test_schema_margins_are_exact_despite_the_shortcuts(
    model: LlamaCppModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bounds are reported instead of exact gaps only where they cannot be the smallest:
    asking for every step's exact gap changes no recorded figure."""
    reqs = [request(t, json_schema=TINY_SCHEMA, margin_field="category") for t in TICKETS]
    quick = [model.generate(r) for r in reqs]
    monkeypatch.setattr(Margins, "floor", lambda self, text: math.inf)
    exact = [model.generate(r) for r in reqs]
    for a, b in zip(quick, exact, strict=True):
        assert a.text == b.text
        assert (a.margin, a.margin_step, a.field_margin) == (
            b.margin,
            b.margin_step,
            b.field_margin,
        )
        assert a.margin is not None and a.margin >= 0.0  # greedy takes the best allowed token
        assert a.field_margin is not None and a.field_margin >= a.margin


def test_batched_and_sequential_decoding_record_the_same_margins(tiny_model: Path) -> None:
    reqs = [request(t, json_schema=TINY_SCHEMA, margin_field="category") for t in TICKETS]
    reqs += [request(t) for t in TICKETS]
    engine = get_engine("llama-cpp")
    sequential = engine.load(tiny_model, LoadOptions(n_ctx=1024, n_threads=2))
    try:
        alone = [sequential.generate(r) for r in reqs]
    finally:
        sequential.close()
    batched = engine.load(tiny_model, LoadOptions(n_ctx=1024, n_threads=2, n_parallel=4))
    together: dict[int, Generation] = {}
    try:
        batched.generate_batch(reqs, lambda i, g: together.__setitem__(i, g))  # type: ignore[arg-type]
    finally:
        batched.close()
    for i, one in enumerate(alone):
        other = together[i]
        assert isinstance(other, Generation)
        if other.text != one.text:
            continue  # batching may flip a near tie; that is what margins are for
        assert other.margin == pytest.approx(one.margin, abs=0.05)
        assert other.margin_step == one.margin_step


def test_server_alternatives_give_margins_and_their_absence_gives_none() -> None:
    entries = [
        {"token": "{", "logprob": -0.01, "top_logprobs": [
            {"token": "{", "logprob": -0.01}, {"token": " ", "logprob": -4.6}]},
        {"token": '"', "logprob": -0.2, "top_logprobs": [
            {"token": '"', "logprob": -0.2}, {"token": "'", "logprob": -1.9}]},
        # Only the chosen token listed: no rival the server would name (forced).
        {"token": "c", "logprob": -0.001, "top_logprobs": [{"token": "c", "logprob": -0.001}]},
    ]  # fmt: skip
    margins = server_margins(entries, '{"c', "c")
    assert margins is not None
    assert margins.summary() == (pytest.approx(1.7), 1, None)
    # Byte tokens sent as "" (llama-cpp-python's server): two different tokens share that
    # text; the rival is still counted, the field's margin is dropped (offsets unknown).
    bytes_only = [
        {"token": "", "logprob": -0.5, "top_logprobs": [
            {"token": "", "logprob": -0.5}, {"token": "", "logprob": -0.9}]},
    ]  # fmt: skip
    margins = server_margins(bytes_only, "é", "category")
    assert margins is not None and margins.summary() == (pytest.approx(0.4), 0, None)
    del entries[1]["top_logprobs"]
    assert server_margins(entries, '{"c', None) is None
    assert server_margins(None, "", None) is None
