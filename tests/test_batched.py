"""Batched decoding (continuous batching in one llama.cpp context) on a real tiny GGUF.

Every comparison is against the sequential path on the same engine build: the texts,
finish reasons and token counts of each case must be the same, whatever order the batched
cases finish in.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import TINY_SCHEMA

from lifecycle.engines import (
    CaseTimeout,
    Generation,
    GenerationRequest,
    LoadOptions,
    get_engine,
)
from lifecycle.engines.llama_cpp import LlamaCppModel
from lifecycle.errors import EngineError

PREFIX = "<start_of_turn>user\nRoute tickets to billing, technical or sales.<end_of_turn>\n" * 4


def ask(text: str, **kwargs: object) -> GenerationRequest:
    prompt = f"{PREFIX}<start_of_turn>user\n{text}<end_of_turn>\n<start_of_turn>model\n"
    return GenerationRequest(prompt=prompt, **{"max_tokens": 20, **kwargs})  # type: ignore[arg-type]


def run_batch(
    model: LlamaCppModel, requests: list[GenerationRequest]
) -> tuple[dict[int, Generation | EngineError], list[int], list[list[int]]]:
    """Outcomes by request index, the order they finished in, and each step's live set."""
    outcomes: dict[int, Generation | EngineError] = {}
    order: list[int] = []
    steps: list[list[int]] = []

    def done(index: int, outcome: Generation | EngineError) -> None:
        assert index not in outcomes, f"request {index} reported twice"
        outcomes[index] = outcome
        order.append(index)

    model.generate_batch(requests, done, steps.append)
    return outcomes, order, steps


MIXED = [
    ask(
        f"ticket {i} " * (1 + i % 3),
        json_schema=TINY_SCHEMA if i % 2 else None,
        logprobs=i % 3 == 0,
    )
    for i in range(10)
]


def test_batched_outputs_equal_sequential_ones(
    sequential: LlamaCppModel, batched: LlamaCppModel
) -> None:
    expected = [sequential.generate(r) for r in MIXED]
    outcomes, _, _ = run_batch(batched, MIXED)
    assert sorted(outcomes) == list(range(len(MIXED)))
    for i, want in enumerate(expected):
        got = outcomes[i]
        assert isinstance(got, Generation), got
        assert (got.text, got.finish_reason, got.completion_tokens) == (
            want.text,
            want.finish_reason,
            want.completion_tokens,
        ), f"request {i}"
        if MIXED[i].json_schema and got.finish_reason == "stop":
            assert set(json.loads(got.text)) == {"category", "confidence"}
        if want.token_logprobs is not None:
            assert got.token_logprobs is not None
            assert got.token_logprobs == pytest.approx(want.token_logprobs, abs=1e-3)
        assert got.work_ms is not None and got.work_ms > 0
        assert got.generation_ms > 0 and got.prompt_ms > 0


def test_continuous_batching_fills_free_slots_and_never_exceeds_them(
    batched: LlamaCppModel,
) -> None:
    # Short and long cases alternate: a short one's slot must go to the next waiting case
    # while the long ones are still decoding.
    requests = [ask(f"case {i}", max_tokens=2 if i % 2 else 24) for i in range(9)]
    outcomes, order, steps = run_batch(batched, requests)
    assert all(isinstance(o, Generation) for o in outcomes.values())
    assert max(len(live) for live in steps) == 4
    assert all(len(live) <= 4 for live in steps)
    admitted_while_0_ran = {i for live in steps if 0 in live for i in live}
    assert 4 in admitted_while_0_ran, "case 4 waited for the whole first group to finish"
    assert order != sorted(order)
    for i, request in enumerate(requests):
        outcome = outcomes[i]
        assert isinstance(outcome, Generation)
        assert outcome.completion_tokens <= request.max_tokens


def test_shared_prefix_is_decoded_once(batched: LlamaCppModel) -> None:
    requests = [ask(f"ticket {i}", max_tokens=3) for i in range(6)]
    outcomes, _, _ = run_batch(batched, requests)
    for outcome in outcomes.values():
        assert isinstance(outcome, Generation)
        # Only the case's own tokens after the shared system/few-shot prefix.
        assert 0 < outcome.prompt_eval_tokens < outcome.prompt_tokens // 4


def test_stop_sequences_and_limits_are_per_sequence(
    sequential: LlamaCppModel, batched: LlamaCppModel
) -> None:
    full = sequential.generate(ask("x", json_schema=TINY_SCHEMA))
    requests = [
        ask("x", json_schema=TINY_SCHEMA),
        ask("x", json_schema=TINY_SCHEMA, stop=(":",)),
        ask("x", json_schema=TINY_SCHEMA, max_tokens=3),
    ]
    outcomes, _, _ = run_batch(batched, requests)
    whole, stopped, short = (outcomes[i] for i in range(3))
    assert isinstance(whole, Generation) and whole.text == full.text
    assert isinstance(stopped, Generation) and stopped.finish_reason == "stop"
    assert stopped.text == full.text[: full.text.index(":")]
    assert isinstance(short, Generation) and short.finish_reason == "length"
    assert short.completion_tokens == 3


def test_a_case_too_long_for_its_context_fails_alone(batched: LlamaCppModel) -> None:
    requests = [
        ask("fine", max_tokens=4),
        ask("long " * 400, max_tokens=4),
        ask("ok", max_tokens=4),
    ]
    outcomes, _, _ = run_batch(batched, requests)
    assert isinstance(outcomes[1], EngineError) and "exceeds num_ctx 512" in str(outcomes[1])
    assert isinstance(outcomes[0], Generation) and isinstance(outcomes[2], Generation)


def test_a_timed_out_sequence_ends_while_the_others_finish(
    sequential: LlamaCppModel, batched: LlamaCppModel
) -> None:
    requests = [ask("a", max_tokens=12), ask("b", max_tokens=12, timeout_s=1e-6), ask("c")]
    outcomes, _, _ = run_batch(batched, requests)
    assert isinstance(outcomes[1], CaseTimeout)
    for i in (0, 2):
        outcome = outcomes[i]
        assert isinstance(outcome, Generation)
        assert outcome.text == sequential.generate(requests[i]).text


def test_the_context_is_usable_sequentially_after_a_batch(
    sequential: LlamaCppModel, batched: LlamaCppModel
) -> None:
    run_batch(batched, MIXED[:5])
    request = ask("after the batch", json_schema=TINY_SCHEMA)
    assert batched.generate(request).text == sequential.generate(request).text


def test_more_sequences_than_llama_cpp_allows_is_an_error(tiny_model: Path) -> None:
    with pytest.raises(EngineError, match=r"more sequences than llama\.cpp allows"):
        get_engine("llama-cpp").load(tiny_model, LoadOptions(n_ctx=256, n_parallel=4096))


def test_bench_batched_rows_account_for_every_sequence_kv(tiny_model: Path) -> None:
    from lifecycle.bench import BenchOptions, run_bench

    options = BenchOptions(
        n_prompt=16, n_gen=8, repetitions=1, n_ctx=512, n_threads=2, bandwidth=False,
        parallel=(1, 2, 4),
    )  # fmt: skip
    result = run_bench(tiny_model, options)
    single, batched = result.points[0], result.batched
    assert single.ok and batched is not None and batched.ok, batched and batched.error
    assert [(r.test, r.n_parallel) for r in batched.rows] == [
        ("pp16 x1", 1), ("tg8 x1", 1), ("pp16 x2", 2), ("tg8 x2", 2), ("pp16 x4", 4), ("tg8 x4", 4),
    ]  # fmt: skip
    assert all(r.avg_ts > 0 for r in batched.rows)
    # The batched context holds num_ctx cells for each of the 4 sequences.
    assert batched.memory["kv_cache_bytes"] == 4 * single.memory["kv_cache_bytes"]
    assert batched.estimate is not None
    assert batched.estimate["kv_cache_bytes"] == batched.memory["kv_cache_bytes"]
    assert result.to_dict()["batched"]["rows"][1]["n_parallel"] == 1


def test_eval_batched_gives_the_sequential_verdicts_and_records_n(
    tiny_workspace: Path, run_cli: Callable[..., tuple[int, str, str]]
) -> None:
    runs = {}
    for n in (1, 3):
        code, out, err = run_cli(
            "eval", "-C", str(tiny_workspace), "--parallel", str(n), "--json", "--no-resume"
        )
        assert code == 0, err
        runs[n] = json.loads(out)
    assert runs[1]["environment"]["parallel"] == {"tiny": 1}
    assert runs[3]["environment"]["parallel"] == {"tiny": 3}

    def verdicts(doc: dict[str, Any]) -> list[tuple[str, str, bool, str]]:
        return [(c["mode"], c["id"], c["passed"], c["output"]) for c in doc["cases"]]

    assert verdicts(runs[3]) == verdicts(runs[1])
    # Each case carries its share of the batched steps; the shares add up to the decode work.
    shares = [c["wall_share_ms"] for c in runs[3]["cases"]]
    assert all(s > 0 for s in shares)
    by_mode = {s["mode"]: s for s in runs[3]["summaries"]}
    assert by_mode["schema"]["generation_tokens_per_s"] > 0


def test_more_parallel_kv_than_memory_holds_is_refused_naming_the_need(tiny_model: Path) -> None:
    from lifecycle.runner import check_batched_memory

    mib = 1024 * 1024
    batched = LoadOptions(n_ctx=2048, n_parallel=64)
    with pytest.raises(EngineError, match=r"parallel 64 x num_ctx 2048 needs about \d+ MiB") as err:
        check_batched_memory(tiny_model, batched, available_bytes=64 * mib)
    assert "KV cache 128 MiB" in str(err.value)  # 64 x 2048 cells x 1 KiB per cell
    check_batched_memory(tiny_model, batched, available_bytes=4096 * mib)  # fits
    check_batched_memory(tiny_model, LoadOptions(n_ctx=2048), available_bytes=1)  # sequential


def test_logprobs_only_where_the_routed_value_is_written(
    sequential: LlamaCppModel, batched: LlamaCppModel
) -> None:
    """logprob_field skips the vocabulary pass elsewhere; the answer probability is unchanged."""
    from lifecycle.confidence import answer_probability

    full = ask("refund", json_schema=TINY_SCHEMA, max_tokens=48, logprobs=True)
    lean = ask("refund", json_schema=TINY_SCHEMA, max_tokens=48, logprobs=True,
               logprob_field="category")  # fmt: skip
    everywhere = sequential.generate(full)
    assert everywhere.token_logprobs is not None
    parsed = json.loads(everywhere.text)
    want, why = answer_probability(
        everywhere.text, parsed, "category", everywhere.token_logprobs, everywhere.token_offsets
    )
    assert want is not None, why
    outcomes, _, _ = run_batch(batched, [lean])
    for got in (sequential.generate(lean), outcomes[0]):
        assert isinstance(got, Generation) and got.text == everywhere.text
        assert got.token_logprobs is not None
        skipped = sum(1 for v in got.token_logprobs if v != v)  # NaN: not computed
        assert 0 < skipped < len(got.token_logprobs)
        value, _ = answer_probability(
            got.text, parsed, "category", got.token_logprobs, got.token_offsets
        )
        assert value == pytest.approx(want, abs=1e-3)


def test_prompts_of_slots_freed_in_one_step_go_into_one_decode(batched: LlamaCppModel) -> None:
    """#24 item 6: four cases of equal length finish in the same step; the two waiting
    cases are admitted together and their prompt tokens share the next decode (with no
    sequence left generating, that decode carries nothing else)."""
    from collections import Counter

    from lifecycle.engines.batched import BatchedDecoder
    from lifecycle.engines.decoding import Batch

    batches: list[Counter[int]] = []

    class Recording(BatchedDecoder):
        def _decode(self, batch: Batch) -> None:
            b = batch.batch
            batches.append(Counter(int(b.seq_id[i][0]) for i in range(batch.size)))
            super()._decode(batch)

    # The tiny model writes no end-of-generation token within 4 tokens: all run to the limit.
    requests = [ask(f"case {i}", max_tokens=4) for i in range(6)]
    outcomes: dict[int, Generation | EngineError] = {}
    decoder = Recording(batched, 4)
    decoder.run(requests, outcomes.__setitem__)
    assert all(isinstance(o, Generation) and o.completion_tokens == 4 for o in outcomes.values())
    prompts = [[seq for seq, n in batch.items() if n > 1] for batch in batches if batch]
    # The prefix alone, then the first four prompts together, ..., then the last two.
    assert prompts[0] == [4]  # the shared prefix's own sequence
    assert len(prompts[1]) == 4
    assert [len(p) for p in prompts[2:] if p] == [2]
