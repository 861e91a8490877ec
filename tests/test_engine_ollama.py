"""The ollama engine against a loopback server implementing Ollama's API on the real engine.

``tests/ollama_server.py`` speaks the documented endpoints with real llama.cpp generation
underneath; what it proves and what it cannot is said in its docstring.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import TINY_MODELFILE, TINY_SCHEMA
from ollama_server import VERSION, OllamaState, start_ollama_server

from lifecycle import modelfile as mf
from lifecycle.engines import (
    EngineCrashed,
    GenerationRequest,
    LoadOptions,
    generate_many,
    get_engine,
)
from lifecycle.engines.ollama import (
    OllamaEngine,
    OllamaModel,
    _crash_signal,
    _ollama_url,
    blob_digest,
    create_request,
    ollama_model_name,
)
from lifecycle.errors import EngineError, GoldenSetError, UsageError
from lifecycle.prompt import render_prompt

CASE = ({"role": "user", "content": "I was charged twice this month."},)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, OllamaState]]:
    server, state = start_ollama_server(tmp_path_factory.mktemp("ollama"))
    host, port = server.server_address[:2]
    yield f"http://{host}:{port}", state
    server.shutdown()
    for name in list(state.loaded):
        state.unload(name)


@pytest.fixture(scope="module")
def blob(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny GGUF under a store-style name (``sha256-<hex>``)."""
    digest = blob_digest(tiny_model)
    path = tmp_path_factory.mktemp("store") / digest.replace(":", "-")
    shutil.copy(tiny_model, path)
    return path


@pytest.fixture(scope="module")
def model(daemon: tuple[str, OllamaState], blob: Path) -> Iterator[OllamaModel]:
    engine = get_engine("ollama", host=daemon[0])
    options = LoadOptions(n_ctx=1024, n_threads=2, modelfile=TINY_MODELFILE, model_name="tiny")
    loaded = engine.load(blob, options)
    assert isinstance(loaded, OllamaModel)
    yield loaded
    loaded.close()


def request(**kwargs: object) -> GenerationRequest:
    fields: dict[str, object] = {
        "prompt": "",
        "messages": CASE,
        "max_tokens": 48,
        "stop": ("<end_of_turn>",),
        "seed": 7,
    }
    return GenerationRequest(**{**fields, **kwargs})  # type: ignore[arg-type]


def test_info_records_the_daemon_version(daemon: tuple[str, OllamaState]) -> None:
    info = get_engine("ollama", host=daemon[0]).info()
    assert info.name == "ollama"
    assert info.version == f"ollama {VERSION}"
    assert info.details["host"] == daemon[0]


def test_load_uploads_the_blob_once_and_creates_the_variant(
    daemon: tuple[str, OllamaState], blob: Path, model: OllamaModel
) -> None:
    url, state = daemon
    uploads = state.uploads
    digest = blob_digest(blob)
    creates = [b for m, p, b in state.requests if p == "/api/create"]
    assert creates[-1]["files"] == {f"{blob.name}.gguf": digest}
    assert creates[-1]["system"] == "Reply with JSON only."
    assert creates[-1]["parameters"]["stop"] == ["<end_of_turn>"]
    assert creates[-1]["messages"][0] == {"role": "user", "content": "Refund my last invoice"}
    assert model.name.startswith("lifecycle-tiny:")
    # A second load of the same blob finds it in the daemon (HEAD 200): no second upload.
    again = OllamaEngine(url).load(
        blob, LoadOptions(n_ctx=1024, modelfile=TINY_MODELFILE, model_name="tiny")
    )
    again.close()
    assert state.uploads == uploads
    assert ("HEAD", f"/api/blobs/{digest}", None) in state.requests


def test_chat_sends_messages_and_the_daemon_renders_the_modelfile(
    daemon: tuple[str, OllamaState], model: OllamaModel, tiny_model: Path
) -> None:
    _url, state = daemon
    result = model.generate(request())
    chat = [b for m, p, b in state.requests if p == "/api/chat" and b.get("messages")][-1]
    # Only the case's conversation travels; SYSTEM and MESSAGE history live in the daemon.
    assert chat["messages"] == [dict(m) for m in CASE]
    assert chat["keep_alive"] == "30m"
    assert chat["options"]["num_predict"] == 48
    assert chat["options"]["stop"] == ["<end_of_turn>"]
    assert chat["options"]["num_ctx"] == 1024
    # The same text as the embedded engine generates from the locally rendered prompt.
    prompt = render_prompt(mf.parse(TINY_MODELFILE), list(CASE), chat_template=None)
    local = get_engine("llama-cpp").load(tiny_model, LoadOptions(n_ctx=1024, n_threads=2))
    try:
        expected = local.generate(request(prompt=prompt, messages=None))
    finally:
        local.close()
    assert result.text == expected.text
    assert result.completion_tokens == expected.completion_tokens
    assert result.prompt_tokens > 0 and result.eval_tokens == result.completion_tokens
    assert result.prompt_ms > 0 and result.generation_ms > 0 and result.latency_ms > 0


def test_schema_goes_in_format_and_output_is_validated(
    daemon: tuple[str, OllamaState], model: OllamaModel
) -> None:
    model.check_schema(TINY_SCHEMA)
    result = model.generate(request(json_schema=TINY_SCHEMA, max_tokens=64))
    chat = [b for m, p, b in daemon[1].requests if p == "/api/chat"][-1]
    assert chat["format"] == TINY_SCHEMA
    assert result.finish_reason == "stop"
    assert set(json.loads(result.text)) == {"category", "confidence"}
    assert result.schema_enforced is True


def test_a_schema_the_daemon_cannot_compile_is_a_golden_set_error(model: OllamaModel) -> None:
    with pytest.raises(GoldenSetError, match="JSON Schema"):
        model.check_schema({"not": {"type": "string"}})


def test_runaway_generation_ends_at_max_tokens(model: OllamaModel) -> None:
    result = model.generate(request(max_tokens=3, stop=()))
    assert result.finish_reason == "length"
    assert result.completion_tokens == 3


def test_memory_comes_from_api_ps(model: OllamaModel, blob: Path) -> None:
    assert model.memory() == {"size": blob.stat().st_size, "size_vram": 0}


def test_concurrent_cases_keep_request_order(model: OllamaModel) -> None:
    texts = [f"Ticket {i}: the invoice is wrong." for i in range(4)]
    requests = [request(messages=({"role": "user", "content": t},)) for t in texts]
    sequential = [model.generate(r) for r in requests]
    parallel = generate_many(model, requests, concurrency=4)
    assert [g.text for g in parallel] == [g.text for g in sequential]  # type: ignore[union-attr]


def test_unknown_model_and_unreachable_daemon_are_engine_errors(
    model: OllamaModel, blob: Path
) -> None:
    missing = OllamaModel(model.engine, "lifecycle-nope:0", LoadOptions())
    with pytest.raises(EngineError, match="not found"):
        missing.generate(request())
    with pytest.raises(EngineError, match="cannot reach"):
        OllamaEngine("http://127.0.0.1:9").info()
    with pytest.raises(EngineError, match="Modelfile"):
        OllamaEngine("http://127.0.0.1:9").load(blob, LoadOptions())
    with pytest.raises(UsageError, match="takes no setting 'base_url'"):
        get_engine("ollama", base_url="http://x")


def test_runner_crash_messages_name_the_signal() -> None:
    # Ollama's wording for a runner that died (llm/server.go wraps os.ProcessState).
    detail = "llama runner process has terminated: signal: aborted (core dumped)"
    assert _crash_signal(detail) == "SIGABRT"
    assert _crash_signal("llama runner process has terminated: signal: segmentation fault") == (
        "SIGSEGV"
    )
    assert _crash_signal("model 'x' not found") is None
    assert issubclass(EngineCrashed, EngineError)


def test_names_hosts_and_create_bodies() -> None:
    assert _ollama_url("0.0.0.0") == "http://127.0.0.1:11434"
    assert _ollama_url("example.org:8080") == "http://example.org:8080"
    assert _ollama_url("https://ollama.internal/") == "https://ollama.internal:11434"
    name = ollama_model_name("Tiny@Q8_0 / fast", TINY_MODELFILE)
    assert name.startswith("lifecycle-tiny-q8_0-fast:") and len(name.split(":")[1]) == 12
    body = create_request("m:1", "sha256:" + "0" * 64, mf.parse(TINY_MODELFILE), "x")
    assert body["files"] == {"x.gguf": "sha256:" + "0" * 64}
    assert body["parameters"]["num_ctx"] == 1024 and body["stream"] is False
