"""The openai engine against llama-cpp-python's own OpenAI-compatible server on loopback.

The server (``python -m llama_cpp.server``) is real: it loads the tiny GGUF, applies the GGUF's
chat template and constrains output with its own grammar code. It speaks llama.cpp's
``json_object`` + ``schema`` dialect and silently falls back to plain JSON for a schema it
cannot compile — exactly the behaviour the engine must notice.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import TINY_MODELFILE, TINY_SCHEMA
from tinymodel import write_tiny_llama

from lifecycle.engines import CaseTimeout, GenerationRequest, LoadOptions, generate_many, get_engine
from lifecycle.engines.openai import OpenAIEngine, OpenAIModel, SchemaNotEnforced, _with_v1
from lifecycle.errors import EngineError, UsageError

for _extra in ("uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings"):
    pytest.importorskip(_extra, reason="llama-cpp-python[server] extras are not installed")

GEMMA_TEMPLATE = (
    "{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else 'user' }}"
    "\n{{ m['content'] }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
CASE = ({"role": "user", "content": "I was charged twice this month."},)
# llama-cpp-python's converter cannot compile lookahead; its server then falls back to JSON.
UNCOMPILABLE = {
    "type": "object",
    "properties": {"code": {"type": "string", "pattern": "^(?=x)x+$"}},
    "required": ["code"],
    "additionalProperties": False,
}


def start_llama_server(model: Path, *, n_ctx: int = 1024) -> tuple[subprocess.Popen[bytes], str]:
    """``python -m llama_cpp.server`` on a free loopback port, once it answers /v1/models."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(model)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(n_ctx)]
    command += ["--n_threads", "2", "--verbose", "False"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"llama_cpp.server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/v1/models", timeout=2):
                return process, url
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("llama_cpp.server did not start within 60 s")


def served(model: Path) -> Iterator[str]:
    """For a fixture: the server's URL while it serves ``model``; stopped afterwards."""
    process, url = start_llama_server(model)
    yield url
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    path = tmp_path_factory.mktemp("served") / "tiny-chat.gguf"
    write_tiny_llama(path, chat_template=GEMMA_TEMPLATE)
    yield from served(path)


@pytest.fixture(scope="module")
def model(server: str, tiny_model: Path) -> OpenAIModel:
    engine = get_engine("openai", base_url=server)
    loaded = engine.load(tiny_model, LoadOptions(modelfile=TINY_MODELFILE))
    assert isinstance(loaded, OpenAIModel)
    return loaded


def request(**kwargs: object) -> GenerationRequest:
    fields: dict[str, object] = {"prompt": "", "messages": CASE, "max_tokens": 48, "seed": 7}
    return GenerationRequest(**{**fields, **kwargs})  # type: ignore[arg-type]


def test_info_and_load_find_the_served_model(server: str, model: OpenAIModel) -> None:
    info = OpenAIEngine(server).info()
    assert info.name == "openai"
    assert info.details["base_url"] == f"{server}/v1"
    assert model.model.endswith("tiny-chat.gguf")
    assert model.concurrent


def test_chat_prepends_the_modelfile_system_and_history(model: OpenAIModel) -> None:
    conversation = model.conversation(CASE)
    assert conversation[0] == {"role": "system", "content": "Reply with JSON only."}
    assert conversation[1] == {"role": "user", "content": "Refund my last invoice"}
    assert conversation[2]["role"] == "assistant"
    assert conversation[-1] == dict(CASE[0])
    result = model.generate(request())
    assert result.completion_tokens > 0 and result.prompt_tokens > 10
    assert result.latency_ms > 0 and result.finish_reason in {"stop", "length"}


def test_schema_falls_back_to_the_llama_cpp_dialect_and_is_enforced(model: OpenAIModel) -> None:
    model.check_schema(TINY_SCHEMA)  # the probe passes: the server enforces schemas
    result = model.generate(request(json_schema=TINY_SCHEMA, max_tokens=96))
    assert model.schema_dialect == "json_object"  # the server rejected OpenAI's json_schema
    assert result.finish_reason == "stop"
    assert set(json.loads(result.text)) == {"category", "confidence"}
    assert result.schema_enforced is True


def test_a_server_that_ignores_a_schema_is_reported(model: OpenAIModel) -> None:
    result = model.generate(request(json_schema=UNCOMPILABLE, max_tokens=200))
    assert result.finish_reason == "stop"
    assert result.schema_enforced is False


def test_probe_failure_raises_schema_not_enforced(model: OpenAIModel) -> None:
    copy = OpenAIModel(model.engine, model.model, None, 0.0)
    copy._probed = False  # as left by a probe the server did not honour
    with pytest.raises(SchemaNotEnforced):
        copy.check_schema(TINY_SCHEMA)


def test_rendered_prompt_falls_back_to_completions_and_runaway_ends_at_length(
    model: OpenAIModel,
) -> None:
    result = model.generate(request(messages=None, prompt="hello", max_tokens=4))
    assert result.finish_reason == "length"
    assert result.completion_tokens == 4


def test_tokenize_uses_the_servers_extension(model: OpenAIModel) -> None:
    tokens = model.tokenize("hello")
    assert tokens[0] == 1 and len(tokens) > 1  # BOS, then the text


def test_concurrent_requests_return_in_order(model: OpenAIModel) -> None:
    requests = [request(messages=({"role": "user", "content": f"ticket {i}"},)) for i in range(4)]
    sequential = [model.generate(r).text for r in requests]
    results = generate_many(model, requests, concurrency=4)
    assert [getattr(r, "text", r) for r in results] == sequential


def test_a_case_past_its_wall_clock_limit_times_out(model: OpenAIModel) -> None:
    # Even the tiny model cannot answer 400 tokens in a millisecond.
    with pytest.raises(CaseTimeout):
        model.generate(request(max_tokens=400, timeout_s=0.001))


def test_settings_and_unreachable_servers(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _with_v1("http://h:1") == "http://h:1/v1"
    assert _with_v1("http://h:1/v1") == "http://h:1/v1"
    monkeypatch.setenv("LIFECYCLE_OPENAI_BASE_URL", "127.0.0.1:9")
    assert OpenAIEngine().base_url == "http://127.0.0.1:9/v1"
    with pytest.raises(EngineError, match="cannot reach"):
        OpenAIEngine().info()
    with pytest.raises(UsageError, match="takes no setting 'base_url'"):
        get_engine("llama-cpp", base_url="http://x")
    assert os.environ["LIFECYCLE_OPENAI_BASE_URL"] == "127.0.0.1:9"


def test_margins_come_from_the_servers_top_logprobs(model: OpenAIModel) -> None:
    """llama-cpp-python's server returns two alternatives per token when asked: the margin
    is the chosen token's log-probability minus the best alternative's, at some step."""
    result = model.generate(request(margin_field="category"))
    assert result.margin is not None and result.margin >= 0.0
    assert result.margin_step is not None and 0 <= result.margin_step < result.completion_tokens


def test_a_gateway_that_refuses_logprobs_leaves_margins_unknown() -> None:
    """Some OpenAI-compatible gateways answer 400 to logprobs: the case still runs, once
    without them, and its margin is unknown (never guessed)."""
    import http.server
    import json as json_module
    import threading

    asked: list[dict[str, object]] = []

    class Gateway(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            body = json_module.loads(self.rfile.read(int(self.headers["Content-Length"])))
            asked.append(body)
            if "logprobs" in body:
                answer, status = {"error": {"message": "logprobs is not supported"}}, 400
            else:
                message = {"role": "assistant", "content": '{"category": "billing"}'}
                choice = {"message": message, "finish_reason": "stop"}
                answer, status = {"choices": [choice], "usage": {}}, 200
            data = json_module.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Gateway)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        engine = OpenAIEngine(f"http://127.0.0.1:{server.server_address[1]}")
        gateway = OpenAIModel(engine, "m", None, 0.0)
        first = gateway.generate(request())
        second = gateway.generate(request())
    finally:
        server.shutdown()
    assert first.text == second.text == '{"category": "billing"}'
    assert first.margin is None and second.margin is None
    assert ["logprobs" in body for body in asked] == [True, False, False]
