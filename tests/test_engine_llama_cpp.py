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
    # A valid JSON Schema whose pattern llama.cpp's converter cannot turn into a grammar.
    schema = {"type": "object", "properties": {"code": {"type": "string", "pattern": "[A-Z]+"}}}
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
