"""Schema mode through llguidance on a real tiny GGUF: the tokens a schema forces are decoded
with the sampled token before them (no sampling step, no decode of their own), outputs stay
valid and written in the golden format, the batched decoder gives the sequential outputs,
decision margins keep their meaning, and a schema llguidance rejects falls back to the GBNF
path with one message.

The tiny model's vocabulary has one token per character, so a forced key like
``"category"`` is many forced tokens: the differences below are large and certain.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import llama_cpp
import numpy as np
import pytest
from conftest import TINY_SCHEMA

from lifecycle.answers import answer_key
from lifecycle.engines import EngineInfo, Generation, GenerationRequest, LoadOptions, get_engine
from lifecycle.engines.llama_cpp import LlamaCppModel
from lifecycle.engines.structured import ENV_DECODER, schema_decoder
from lifecycle.errors import EngineError
from lifecycle.tinymodel import _vocabulary

ENUM_SCHEMA = {
    "type": "object",
    "properties": {"category": {"enum": ["billing", "technical", "sales"]}},
    "required": ["category"],
    "additionalProperties": False,
}
# "uniqueItems" is a keyword llguidance does not implement; llama.cpp's converter ignores it.
REJECTED_SCHEMA = {
    **TINY_SCHEMA,
    "properties": {
        **TINY_SCHEMA["properties"],  # type: ignore[dict-item]
        "tags": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
    },
}
TICKETS = ["charged twice", "API down since noon", "pricing for 40 seats", "refund please"]


def ask(text: str, schema: Any = TINY_SCHEMA, **kwargs: Any) -> GenerationRequest:
    prompt = f"<start_of_turn>user\n{text}<end_of_turn>\n<start_of_turn>model\n"
    return GenerationRequest(
        prompt=prompt,
        json_schema=schema,
        **{"max_tokens": 48, "margin_field": "category", **kwargs},
    )


def load(tiny_model: Path, parallel: int = 1) -> LlamaCppModel:
    options = LoadOptions(n_ctx=512, n_threads=2, n_parallel=parallel)
    model = get_engine("llama-cpp").load(tiny_model, options)
    assert isinstance(model, LlamaCppModel)
    return model


@pytest.fixture(scope="module")
def model(tiny_model: Path) -> Iterator[LlamaCppModel]:
    loaded = load(tiny_model)
    yield loaded
    loaded.close()


def counting_decodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every llama_decode call from here on, by the number of tokens it carried (the real
    function still runs: this only counts)."""
    calls: list[int] = []
    real = llama_cpp.llama_cpp.llama_decode

    def decode(ctx: Any, batch: Any) -> int:
        calls.append(int(batch.n_tokens))
        return int(real(ctx, batch))

    monkeypatch.setattr(llama_cpp.llama_cpp, "llama_decode", decode)  # llama-cpp-python's eval
    monkeypatch.setattr(llama_cpp, "llama_decode", decode)  # the batched decoder
    return calls


def counting_samples(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every sampling step (the real sampler runs; the chosen tokens are recorded)."""
    chosen: list[int] = []
    real = LlamaCppModel.sample

    def sample(self: LlamaCppModel, *args: Any, **kwargs: Any) -> tuple[int, float, float]:
        result = real(self, *args, **kwargs)
        chosen.append(result[0])
        return result

    monkeypatch.setattr(LlamaCppModel, "sample", sample)
    return chosen


def test_forced_tokens_skip_sampling_steps_and_decodes(
    model: LlamaCppModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert schema_decoder().startswith("llguidance")
    request = ask(TICKETS[0], ENUM_SCHEMA)
    decodes, samples = counting_decodes(monkeypatch), counting_samples(monkeypatch)
    fast = model.generate(request)
    fast_decodes, fast_samples, first_decode = len(decodes), len(samples), decodes[0]
    monkeypatch.setenv(ENV_DECODER, "gbnf")
    decodes.clear()
    samples.clear()
    slow = model.generate(request)

    assert json.loads(fast.text)["category"] in {"billing", "technical", "sales"}
    assert fast.finish_reason == "stop"
    # {"category": " and the rest of the category after its first letter, "} too: forced.
    assert fast.forced_tokens is not None and fast.forced_tokens >= len('{"category": ""}')
    assert slow.forced_tokens == 0
    # Every token but the forced ones was sampled (the schema ends the answer: no EOS step).
    assert fast_samples == fast.completion_tokens - fast.forced_tokens
    assert fast_samples <= len("technical")
    # One decode for the prompt (with the opening forced text), one per sampled token that
    # did not end the answer: the forced tokens went in with the token before them.
    assert fast_decodes == fast_samples
    assert first_decode > len('{"category": "')  # the prompt's decode carried the opening
    # The GBNF path samples, and decodes, every token on its own.
    assert len(samples) >= slow.completion_tokens >= len('{"category":""}')
    assert len(decodes) >= slow.completion_tokens


def test_outputs_follow_the_schema_in_the_golden_format(model: LlamaCppModel) -> None:
    finished = 0
    for ticket in TICKETS:
        for schema in (TINY_SCHEMA, ENUM_SCHEMA):
            result = model.generate(ask(ticket, schema, max_tokens=64))
            assert result.text.startswith('{"category": "')
            if result.finish_reason == "length":
                continue  # a random model may write digits up to the limit
            finished += 1
            parsed = json.loads(result.text)
            jsonschema.validate(parsed, schema)
            # json.dumps's separators and no other whitespace: the golden answers' format.
            assert set(parsed) == set(json.loads(json.dumps(parsed)))
            bare = result.text.replace('", "', "").replace('": ', "").replace(", ", "")
            assert not any(c.isspace() for c in bare), result.text
    assert finished >= len(TICKETS)


def test_batched_outputs_equal_sequential_ones(tiny_model: Path) -> None:
    requests = [ask(t, s, logprobs=True) for t in TICKETS for s in (TINY_SCHEMA, ENUM_SCHEMA)]
    requests.append(ask(TICKETS[0], None))  # free mode decodes alongside
    sequential = load(tiny_model)
    try:
        alone = [sequential.generate(r) for r in requests]
    finally:
        sequential.close()
    batched = load(tiny_model, parallel=4)
    together: dict[int, Generation | EngineError] = {}
    try:
        batched.generate_batch(requests, together.__setitem__)
    finally:
        batched.close()
    for i, want in enumerate(alone):
        got = together[i]
        assert isinstance(got, Generation), got
        assert (got.text, got.finish_reason, got.completion_tokens, got.forced_tokens) == (
            want.text,
            want.finish_reason,
            want.completion_tokens,
            want.forced_tokens,
        ), f"request {i}"
        assert got.eval_tokens == want.eval_tokens
        assert got.margin_step == want.margin_step
        assert got.margin == pytest.approx(want.margin, abs=0.05)
        if requests[i].logprobs:
            assert want.token_logprobs is not None and got.token_logprobs is not None
            assert got.token_logprobs == pytest.approx(want.token_logprobs, abs=1e-3)
        assert got.generation_ms > 0 and got.prompt_ms > 0
    assert alone[-1].forced_tokens is None  # free mode: nothing to force


def test_a_forced_step_has_no_rival_and_a_sampled_one_its_exact_gap(model: LlamaCppModel) -> None:
    """Under the enum schema the only choice is the category's first letter: the margin is
    the gap between the three letters' logits after the prompt and the forced opening,
    recorded at the step after the forced tokens; every forced step counts, with no rival."""
    request = ask(TICKETS[1], ENUM_SCHEMA)
    result = model.generate(request)
    grammar = model.schema_grammar(ENUM_SCHEMA)
    assert grammar is not None
    opening = grammar.forced(64)
    assert model.detokenize_completion(opening, [], errors="strict") == '{"category": "'
    *_, logits = model.chunk_logits(model.tokenize(request.prompt) + opening, block=256)
    pieces = _vocabulary()[0]
    # Each letter is a token of its own and a byte token: both spell it, both are allowed.
    ids = [pieces.index(c) for c in "bts"] + [pieces.index(f"<0x{ord(c):02X}>") for c in "bts"]
    firsts = sorted((float(logits[-1][i]) for i in ids), reverse=True)
    assert result.margin_step == len(opening)
    assert result.margin == pytest.approx(firsts[0] - firsts[1], abs=2e-3)
    assert result.field_margin == result.margin


def test_a_schema_llguidance_rejects_takes_the_gbnf_path_said_once(
    model: LlamaCppModel, capfd: pytest.CaptureFixture[str]
) -> None:
    results = [model.generate(ask(t, REJECTED_SCHEMA)) for t in TICKETS[:2]]
    err = capfd.readouterr().err
    assert err.count("llguidance cannot compile the JSON Schema") == 1
    assert "uniqueItems" in err and "GBNF" in err
    for result in results:
        assert result.forced_tokens == 0  # sampled token by token under llama.cpp's grammar
        assert result.text.startswith("{")
    model.check_schema(REJECTED_SCHEMA)
    assert "llguidance" not in capfd.readouterr().err


def test_the_decoder_keys_schema_answers_only() -> None:
    def key(request: GenerationRequest, decoder: str) -> str:
        info = EngineInfo("llama-cpp", "v", {"schema_decoder": decoder, "ggml_commit": "x"})
        return answer_key(request, blob_digest="d", engine=info, load=LoadOptions(), cpu="c").digest

    schema, free = ask("x"), ask("x", None)
    assert key(schema, "gbnf") != key(schema, "llguidance 1.9.1")
    assert key(free, "gbnf") == key(free, "llguidance 1.9.1")


def test_eval_reports_forced_and_sampled_tokens(
    tiny_workspace: Path,
    run_cli: Callable[..., tuple[int, str, str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(ENV_DECODER)  # the workspace fixture asks for GBNF: the default here
    code, out, _ = run_cli("eval", "-C", str(tiny_workspace), "--json")
    assert code == 0, out
    run = json.loads(out)
    schema = [s for s in run["summaries"] if s["mode"] == "schema"]
    free = [s for s in run["summaries"] if s["mode"] == "free"]
    assert schema[0]["forced_tokens"] > 0 and schema[0]["sampled_tokens"] > 0
    assert free[0]["forced_tokens"] is None
    cases = [c for c in run["cases"] if c["mode"] == "schema"]
    assert run["summary"]["forced_tokens"] == sum(c["forced_tokens"] for c in cases)
    assert np.sum([c["completion_tokens"] for c in cases]) == (
        run["summary"]["forced_tokens"] + run["summary"]["sampled_tokens"]
    )
    assert run["environment"]["engine_details"]["schema_decoder"].startswith("llguidance")
    code, out, _ = run_cli("eval", "-C", str(tiny_workspace), "--no-cache")
    assert code == 0
    assert f"schema tokens: {run['summary']['sampled_tokens']} sampled" in out
