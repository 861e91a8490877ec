"""Prompt-lookup drafting (free greedy decoding) on a real tiny GGUF.

Drafting must give plain decoding's answers: the same text, tokens, finish reason and
recorded log-probabilities, and decision margins computed from each accepted token's own
verify row (equal up to the batch's rounding). The random-weight tiny model loops on byte
patterns, so its prompts' n-grams recur and drafts are accepted as well as rejected.
"""

from __future__ import annotations

import math

import llama_cpp
import pytest
from conftest import TINY_SCHEMA

from lifecycle.engines import Generation, GenerationRequest, LoadOptions, compat, get_engine
from lifecycle.engines.drafting import (
    DraftSettings,
    DraftStats,
    PromptLookup,
    draft_settings,
    free_drafting,
    request_drafts,
)
from lifecycle.engines.llama_cpp import LlamaCppModel
from lifecycle.envnames import ENV_FREE_DRAFT
from lifecycle.errors import EngineError

PREFIX = "<start_of_turn>user\nRoute tickets to billing, technical or sales.<end_of_turn>\n" * 4
TEXTS = ["ticket 1", "I was charged twice", "abc abc abc abc", "How much for 200 seats?"]


def ask(text: str, **kwargs: object) -> GenerationRequest:
    prompt = f"{PREFIX}<start_of_turn>user\n{text}<end_of_turn>\n<start_of_turn>model\n"
    return GenerationRequest(prompt=prompt, **{"max_tokens": 40, **kwargs})  # type: ignore[arg-type]


# Greedy requests with and without a repeat penalty, with log-probabilities and a routed
# field, and a stop sequence: every one drafts.
FREE = [
    ask(text, repeat_penalty=penalty, logprobs=i % 2 == 0, margin_field="category")
    for i, text in enumerate(TEXTS)
    for penalty in (1.0, 1.1)
] + [ask("ticket 1", stop=("y*y*",)), ask("abc", max_tokens=3)]


def generate_all(
    model: LlamaCppModel,
    requests: list[GenerationRequest],
    monkeypatch: pytest.MonkeyPatch,
    mode: str,
) -> tuple[list[Generation], DraftStats]:
    monkeypatch.setenv(ENV_FREE_DRAFT, mode)
    before = DraftStats(**vars(model.draft_stats))
    outcomes: dict[int, Generation | EngineError] = {}
    model.generate_batch(requests, outcomes.__setitem__)
    after = model.draft_stats
    stats = DraftStats(
        after.verify_steps - before.verify_steps,
        after.drafted - before.drafted,
        after.accepted - before.accepted,
    )
    out = []
    for index in range(len(requests)):
        outcome = outcomes[index]
        assert isinstance(outcome, Generation), outcome
        out.append(outcome)
    return out, stats


def assert_same_answers(plain: list[Generation], drafted: list[Generation]) -> None:
    for a, b in zip(plain, drafted, strict=True):
        assert b.text == a.text
        assert b.completion_tokens == a.completion_tokens
        assert b.finish_reason == a.finish_reason
        assert b.eval_tokens == a.eval_tokens  # each output token's logits led to a choice
        assert b.margin_step == a.margin_step
        assert b.margin == pytest.approx(a.margin, abs=1e-3)
        if a.field_margin is None:
            assert b.field_margin is None
        else:
            assert b.field_margin == pytest.approx(a.field_margin, abs=1e-3)
        if a.token_logprobs is None:
            assert b.token_logprobs is None
        else:
            assert b.token_offsets == a.token_offsets
            assert b.token_logprobs is not None
            for x, y in zip(a.token_logprobs, b.token_logprobs, strict=True):
                assert math.isnan(x) == math.isnan(y)
                if not math.isnan(x):
                    assert y == pytest.approx(x, abs=1e-3)


# --- the lookup itself ---


def test_a_draft_continues_the_latest_earlier_occurrence_of_the_longest_suffix() -> None:
    settings = DraftSettings(max_draft=4, max_ngram=3, min_ngram=1)
    lookup = PromptLookup([1, 2, 3, 9, 9, 1, 2, 3, 7, 8, 5, 2, 3], settings)
    # "2 3" ends the sequence; "5 2 3" never occurred before, "2 3" did twice: the latest wins.
    assert lookup.draft(10) == [7, 8, 5, 2]
    assert lookup.draft(2) == [7, 8]
    lookup.add(4)  # "3 4" and "4" never occurred: nothing to draft
    assert lookup.draft(4) == []
    assert lookup.draft(0) == []


def test_a_longer_match_beats_a_more_recent_shorter_one() -> None:
    settings = DraftSettings(max_draft=2, max_ngram=3, min_ngram=1)
    lookup = PromptLookup([4, 5, 6, 10, 11, 6, 20, 21, 4, 5, 6], settings)
    assert lookup.draft(5) == [10, 11]  # "4 5 6" → 10 11, not "6" → 20 21


def test_the_draft_runs_into_the_output_written_so_far() -> None:
    lookup = PromptLookup([7, 1, 2], DraftSettings(max_draft=8, max_ngram=2, min_ngram=1))
    for token in (7, 1):
        lookup.add(token)
    assert lookup.draft(8) == [2, 7, 1]  # the continuation stops at the sequence's end


def test_the_setting_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_FREE_DRAFT, "off")
    assert draft_settings() is None and free_drafting() == "off"
    monkeypatch.setenv(ENV_FREE_DRAFT, "prompt-lookup")
    assert draft_settings() == DraftSettings()
    assert free_drafting() == "prompt-lookup k=4 n=1-3"
    monkeypatch.setenv(ENV_FREE_DRAFT, "prompt-lookup:8")
    assert free_drafting() == "prompt-lookup k=8 n=1-3"
    monkeypatch.setenv(ENV_FREE_DRAFT, "on")
    assert draft_settings() == DraftSettings()
    # Only greedy free-mode requests draft.
    assert request_drafts(ask("x")) == DraftSettings()
    assert request_drafts(ask("x", repeat_penalty=1.1)) == DraftSettings()
    assert request_drafts(ask("x", temperature=0.7)) is None
    assert request_drafts(ask("x", json_schema=TINY_SCHEMA)) is None


def test_the_engine_details_name_the_drafting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_FREE_DRAFT, "prompt-lookup:6")
    assert get_engine("llama-cpp").info().details["free_drafting"] == "prompt-lookup k=6 n=1-3"
    monkeypatch.setenv(ENV_FREE_DRAFT, "off")
    assert get_engine("llama-cpp").info().details["free_drafting"] == "off"


# --- decoding ---


def test_sequential_drafting_gives_plain_decodings_answers(
    sequential: LlamaCppModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain, none = generate_all(sequential, FREE, monkeypatch, "off")
    drafted, stats = generate_all(sequential, FREE, monkeypatch, "prompt-lookup")
    assert none == DraftStats()
    assert_same_answers(plain, drafted)
    # Drafts were made, some accepted and some rejected (so both paths ran).
    assert 0 < stats.accepted < stats.drafted
    assert drafted[-2].finish_reason == "stop" and drafted[-1].completion_tokens == 3


def test_batched_drafting_gives_plain_decodings_answers(
    sequential: LlamaCppModel,
    batched: LlamaCppModel,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plain, _ = generate_all(sequential, FREE, monkeypatch, "off")
    drafted, stats = generate_all(batched, FREE, monkeypatch, "prompt-lookup:4")
    assert 0 < stats.accepted < stats.drafted
    assert_same_answers(plain, drafted)


def test_rejected_drafts_leave_the_kv_cache(
    sequential: LlamaCppModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a drafted generation the cache holds exactly the positions llama-cpp-python's
    record says it holds, so the next prompt's prefix reuse sees no stale draft."""
    monkeypatch.setenv(ENV_FREE_DRAFT, "prompt-lookup")
    before = sequential.draft_stats.drafted - sequential.draft_stats.accepted
    sequential.generate(FREE[2])
    assert sequential.draft_stats.drafted - sequential.draft_stats.accepted > before
    llm = sequential._llm
    memory = llama_cpp.llama_get_memory(compat.context_ptr(llm))
    assert llama_cpp.llama_memory_seq_pos_max(memory, 0) == llm.n_tokens - 1
    # And the next case, reusing that prefix, answers as it would alone.
    monkeypatch.setenv(ENV_FREE_DRAFT, "off")
    after_draft = sequential.generate(FREE[4])
    sequential.clear()
    fresh = sequential.generate(FREE[4])
    assert after_draft.text == fresh.text


def test_schema_and_sampled_requests_do_not_draft(
    sequential: LlamaCppModel, batched: LlamaCppModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    requests = [ask("ticket 1", json_schema=TINY_SCHEMA), ask("ticket 1", temperature=0.8)]
    for model in (sequential, batched):
        plain, _ = generate_all(model, requests, monkeypatch, "off")
        drafted, stats = generate_all(model, requests, monkeypatch, "prompt-lookup")
        assert stats == DraftStats()
        assert [g.text for g in drafted] == [g.text for g in plain]


# --- the setting as a runtime fact ---


def test_drafting_keys_the_answers_it_decodes_and_only_those(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from lifecycle.answers import answer_key

    engine = get_engine("llama-cpp")

    def key(request: GenerationRequest, mode: str) -> str:
        monkeypatch.setenv(ENV_FREE_DRAFT, mode)
        info = engine.info()
        return answer_key(
            request, blob_digest="sha256:0", engine=info, load=LoadOptions(), cpu="x"
        ).digest

    free, schema, sampled = ask("x"), ask("x", json_schema=TINY_SCHEMA), ask("x", temperature=0.7)
    assert key(free, "off") != key(free, "prompt-lookup") != key(free, "prompt-lookup:8")
    assert key(schema, "off") == key(schema, "prompt-lookup")
    assert key(sampled, "off") == key(sampled, "prompt-lookup")


def test_a_change_of_drafting_is_a_numeric_runtime_change() -> None:
    from lifecycle.gate import numeric_changes
    from lifecycle.runtime import runtime_changes

    on = "prompt-lookup k=4 n=1-3"
    # A record from before the setting existed decoded without drafts.
    assert runtime_changes(
        {"engine": "llama-cpp"}, {"engine": "llama-cpp", "free_drafting": on}
    ) == [f"free-mode drafting off → {on}"]
    assert (
        runtime_changes({"engine": "llama-cpp"}, {"engine": "llama-cpp", "free_drafting": "off"})
        == []
    )
    base = {"engine": "llama-cpp", "engine_version": "v"}
    assert numeric_changes(base, {**base, "free_drafting": on}) == ["free_drafting"]
    assert numeric_changes(base, {**base, "free_drafting": "off"}) == []
