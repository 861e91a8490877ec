"""The llama-cpp engine against a real (tiny) GGUF: grammar, prefix reuse, timings, limits."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import TINY_SCHEMA

from lifecycle.engines import GenerationRequest, LoadOptions, get_engine
from lifecycle.engines.llama_cpp import LlamaCppModel
from lifecycle.errors import EngineError, GoldenSetError, UsageError

PREFIX = "<start_of_turn>user\nRoute tickets to billing, technical or sales.<end_of_turn>\n" * 4


@pytest.fixture(scope="module")
def model(tiny_model: Path) -> Iterator[LlamaCppModel]:
    loaded = get_engine("llama-cpp").load(tiny_model, LoadOptions(n_ctx=1024, n_threads=2))
    assert isinstance(loaded, LlamaCppModel)
    yield loaded
    loaded.close()


def ask(model: LlamaCppModel, text: str, **kwargs: object) -> GenerationRequest:
    prompt = f"{PREFIX}<start_of_turn>user\n{text}<end_of_turn>\n<start_of_turn>model\n"
    return GenerationRequest(prompt=prompt, **{"max_tokens": 64, **kwargs})  # type: ignore[arg-type]


def test_schema_constrained_output_parses_and_follows_the_grammar(model: LlamaCppModel) -> None:
    result = model.generate(ask(model, "charged twice", json_schema=TINY_SCHEMA))
    parsed = json.loads(result.text)
    assert set(parsed) == {"category", "confidence"}
    assert parsed["category"] in {"billing", "technical", "sales"}
    assert result.finish_reason == "stop"
    assert result.completion_tokens > 0 and result.eval_tokens > 0
    assert result.prompt_ms > 0 and result.generation_ms > 0


def test_free_output_of_a_random_model_is_not_json(model: LlamaCppModel) -> None:
    result = model.generate(ask(model, "charged twice", max_tokens=12))
    assert result.finish_reason == "length" and result.completion_tokens == 12
    with pytest.raises(json.JSONDecodeError):
        json.loads(result.text)


def test_greedy_generation_is_deterministic(model: LlamaCppModel) -> None:
    first = model.generate(ask(model, "API down", json_schema=TINY_SCHEMA))
    model.generate(ask(model, "something else entirely", max_tokens=5))
    again = model.generate(ask(model, "API down", json_schema=TINY_SCHEMA))
    assert first.text == again.text


def test_shared_prefix_is_not_evaluated_again(model: LlamaCppModel) -> None:
    model.generate(ask(model, "first ticket", max_tokens=4))
    second = model.generate(ask(model, "second ticket", max_tokens=4))
    # Only the tokens after the shared system/few-shot prefix are evaluated.
    assert 0 < second.prompt_eval_tokens < second.prompt_tokens // 2


def test_stop_sequence_ends_generation(model: LlamaCppModel) -> None:
    full = model.generate(ask(model, "x", json_schema=TINY_SCHEMA))
    assert ":" in full.text
    stopped = model.generate(ask(model, "x", json_schema=TINY_SCHEMA, stop=(":",)))
    assert stopped.text == full.text[: full.text.index(":")]
    assert stopped.finish_reason == "stop"


def test_uncompilable_schema_is_an_error_not_a_fallback(model: LlamaCppModel) -> None:
    # A valid JSON Schema whose pattern neither llguidance (no look-around) nor llama.cpp's
    # converter (unanchored) can turn into a grammar.
    schema = {
        "type": "object",
        "properties": {"code": {"type": "string", "pattern": "(?=A)[A-Z]+"}},
    }
    with pytest.raises(GoldenSetError, match="cannot be compiled to a grammar"):
        model.check_schema(schema)
    with pytest.raises(GoldenSetError):
        model.generate(ask(model, "x", json_schema=schema))


def test_prompt_longer_than_context_is_an_engine_error(model: LlamaCppModel) -> None:
    with pytest.raises(EngineError, match="exceeds num_ctx 1024"):
        model.generate(GenerationRequest(prompt="word " * 2000, max_tokens=8))


def test_not_a_gguf_is_a_clear_error(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"not a model at all" * 100)
    with pytest.raises(EngineError, match="could not load the model"):
        get_engine("llama-cpp").load(bogus, LoadOptions(n_ctx=256))


def test_unknown_engine_suggests_the_closest() -> None:
    with pytest.raises(
        UsageError, match=r"unknown engine 'llama_cpp' \(did you mean 'llama-cpp'\?\)"
    ):
        get_engine("llama_cpp")


def test_engine_info_names_the_build() -> None:
    info = get_engine("llama-cpp").info()
    assert info.name == "llama-cpp" and info.version.startswith("llama-cpp-python 0.")
    assert "AVX" in info.details["system_info"] or "NEON" in info.details["system_info"]


def test_greedy_under_a_grammar_probes_the_top_logits_and_agrees_with_the_full_mask(
    model: LlamaCppModel,
) -> None:
    import numpy as np

    from lifecycle.engines.llama_cpp import GRAMMAR_PROBE

    grammar = model.grammar_sampler(model.gbnf_for(TINY_SCHEMA))
    try:
        n_vocab = model._llm.n_vocab()
        every = np.arange(n_vocab)
        rng = np.random.default_rng(7)
        decided = 0
        for trial in range(200):
            logits = rng.normal(size=n_vocab).astype(np.float32)
            if trial % 3 == 0:  # ties at the top, the cut-off and everywhere
                logits = np.round(logits).astype(np.float32)
            allowed = grammar.allows(logits, every)
            expected = int(np.argmax(np.where(allowed, logits, -np.inf)))  # first max: lower id
            # The (cached) mask is the grammar's verdict on every token.
            assert np.array_equal(np.isfinite(grammar.masked(logits)), allowed)
            found = grammar.greedy_among_top(logits)
            if found is not None:
                decided += 1
                assert found == expected, trial
        # At the start of a JSON object few tokens are allowed: many draws have none among the
        # top GRAMMAR_PROBE and fall back to the mask; the others are decided by the probe.
        assert n_vocab > GRAMMAR_PROBE
        assert decided > 0
        # Every top logit equal and the allowed token far below: nothing to decide here.
        only = np.full(n_vocab, 5.0, dtype=np.float32)
        only[int(np.flatnonzero(allowed)[0])] = -5.0
        assert grammar.greedy_among_top(only) is None
    finally:
        grammar.free()


def test_grammar_masks_are_cached_by_state_and_differ_between_states(
    model: LlamaCppModel,
) -> None:
    import numpy as np

    gbnf = model.gbnf_for(TINY_SCHEMA)
    first, second = model.grammar_sampler(gbnf), model.grammar_sampler(gbnf)
    try:
        logits = np.zeros(model._llm.n_vocab(), dtype=np.float32)
        start = np.isfinite(first.masked(logits))
        brace = int(np.flatnonzero(start)[0])
        for grammar in (first, second):
            grammar.accept(brace)
        after = np.isfinite(first.masked(logits))
        assert not np.array_equal(start, after)  # another state, another mask
        # The second sampler reached the same state: its mask comes from the cache and
        # agrees with what its own grammar says of every token.
        assert np.array_equal(np.isfinite(second.masked(logits)), after)
        assert np.array_equal(second.allows(logits, np.arange(len(logits))), after)
    finally:
        first.free()
        second.free()


def test_the_private_llama_cpp_python_api_the_engine_uses_is_still_there(
    model: LlamaCppModel,
) -> None:
    """The engine reaches into llama-cpp-python's internals (its sampler wrapper, the
    context and model handles, the token record): an upgrade that moves them must fail
    here, by name, not as a TypeError mid-eval (0.3.33's add_penalties took 4 arguments)."""
    import inspect

    from llama_cpp._internals import LlamaSampler

    llm = model._llm
    assert llm._ctx.ctx and llm._model.vocab and model.context and model.vocab
    assert hasattr(llm, "_input_ids") and isinstance(llm.n_tokens, int)
    for method in ("add_penalties", "add_greedy", "add_top_k", "add_top_p", "add_min_p"):
        assert callable(getattr(LlamaSampler, method, None)), method
    for method in ("add_temp", "add_dist", "sample", "accept", "close"):
        assert callable(getattr(LlamaSampler, method, None)), method
    assert len(inspect.signature(LlamaSampler.add_penalties).parameters) in (5, 6)
    chain = model.sampler_chain(GenerationRequest(prompt="x", max_tokens=1, repeat_penalty=1.1))
    chain.close()
