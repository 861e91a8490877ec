"""Crash isolation: the llama-cpp engine in a worker process that really dies.

The crashing GGUF declares zero transformer blocks, which trips
``GGML_ASSERT(hparams.n_layer_all > 0 ...)`` in llama.cpp's loader: in-process that aborts
the Python interpreter; here it is an :class:`EngineCrashed` naming SIGABRT.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from lifecycle.engines import (
    CaseTimeout,
    EngineCrashed,
    GenerationRequest,
    LoadOptions,
    generate_many,
    get_engine,
)
from lifecycle.engines.worker import WorkerModel
from lifecycle.errors import EngineError, GoldenSetError

OPTIONS = LoadOptions(n_ctx=512, n_threads=2)
PROMPT = "<start_of_turn>user\nI was charged twice.<end_of_turn>\n<start_of_turn>model\n"


@pytest.fixture
def model(tiny_model: Path) -> Iterator[WorkerModel]:
    loaded = get_engine("llama-cpp-isolated").load(tiny_model, OPTIONS)
    assert isinstance(loaded, WorkerModel)
    yield loaded
    loaded.close()


def ask(**kwargs: object) -> GenerationRequest:
    return GenerationRequest(**{"prompt": PROMPT, "max_tokens": 16, **kwargs})  # type: ignore[arg-type]


def test_worker_generates_what_the_in_process_engine_generates(
    model: WorkerModel, tiny_model: Path
) -> None:
    local = get_engine("llama-cpp").load(tiny_model, OPTIONS)
    try:
        expected = local.generate(ask())
        tokens = local.tokenize(PROMPT)
    finally:
        local.close()
    result = model.generate(ask())
    assert (result.text, result.completion_tokens) == (expected.text, expected.completion_tokens)
    assert result.prompt_ms > 0 and result.generation_ms > 0
    assert model.tokenize(PROMPT) == tokens
    assert model.n_threads == 2 and model.load_ms > 0
    info = get_engine("llama-cpp-isolated").info()
    assert info.details["isolation"] == "subprocess"


def test_errors_cross_the_pipe_with_their_class(model: WorkerModel) -> None:
    with pytest.raises(GoldenSetError, match="JSON Schema"):
        model.check_schema({"not": {"type": "string"}})
    with pytest.raises(EngineError, match="exceeds num_ctx"):
        model.generate(ask(max_tokens=600))
    assert model.generate(ask()).completion_tokens > 0  # the worker survived both


def test_abort_at_load_is_a_crash_naming_sigabrt(aborting_gguf: Path, tiny_model: Path) -> None:
    engine = get_engine("llama-cpp-isolated")
    with pytest.raises(EngineCrashed) as caught:
        engine.load(aborting_gguf, OPTIONS)
    assert caught.value.signal == "SIGABRT"
    assert "died loading (SIGABRT)" in str(caught.value)
    assert caught.value.path == str(aborting_gguf)
    # This process is unharmed: the next variant loads and generates.
    survivor = engine.load(tiny_model, OPTIONS)
    try:
        assert survivor.generate(ask()).completion_tokens > 0
    finally:
        survivor.close()


def test_worker_killed_mid_generation_fails_that_case_and_the_next_runs(
    model: WorkerModel,
) -> None:
    pid = model.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # freeze it so the kill lands while the case is in flight
    outcome: list[object] = []
    worker = threading.Thread(target=lambda: outcome.append(_attempt(model, ask())))
    worker.start()
    os.kill(pid, signal.SIGKILL)
    worker.join(timeout=60)
    crash = outcome[0]
    assert isinstance(crash, EngineCrashed) and crash.signal == "SIGKILL"
    assert "died in generate (SIGKILL)" in str(crash)
    # The next case starts a fresh worker.
    assert model.generate(ask()).completion_tokens > 0
    assert model.restarts == 1 and model.pid != pid


def test_every_case_has_a_wall_clock_timeout(model: WorkerModel) -> None:
    pid = model.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # a generation that never returns
    with pytest.raises(CaseTimeout) as caught:
        model.generate(ask(timeout_s=0.5))
    assert caught.value.timeout_s == 0.5
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # the stuck worker was killed, not left behind
    assert model.generate(ask()).completion_tokens > 0


def test_runaway_generation_ends_at_max_tokens(model: WorkerModel) -> None:
    result = model.generate(GenerationRequest(prompt="hello", max_tokens=4))
    assert result.finish_reason == "length"
    assert result.completion_tokens == 4


def test_generate_many_runs_a_worker_sequentially_and_keeps_failures_in_place(
    model: WorkerModel,
) -> None:
    results = generate_many(model, [ask(), ask(max_tokens=600), ask()], concurrency=4)
    assert isinstance(results[1], EngineError)
    assert results[0].text == results[2].text  # type: ignore[union-attr]


def test_close_ends_the_worker(tiny_model: Path) -> None:
    loaded = get_engine("llama-cpp-isolated").load(tiny_model, OPTIONS)
    assert isinstance(loaded, WorkerModel)
    pid = loaded.pid
    assert pid is not None
    loaded.close()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def _attempt(model: WorkerModel, request: GenerationRequest) -> object:
    try:
        return model.generate(request)
    except EngineError as exc:
        return exc
