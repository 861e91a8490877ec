"""`lifecycle eval` through every engine: the same verdict structure as the embedded one.

The ollama engine runs against tests/ollama_server.py (Ollama's documented endpoints, its own
template rendering, llama-cpp-python's Llama underneath), the openai engine against
llama-cpp-python's own server, and the isolated engine in its worker process — all on the
tiny workspace.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from ollama_server import start_ollama_server

from lifecycle.envnames import ENV_SCHEMA_DECODER

Run = Callable[..., tuple[int, str, str]]
CASE_KEYS = ("variant", "suite", "mode", "id")


def cases_by_key(doc: dict) -> dict[tuple, dict]:
    return {tuple(c[k] for k in CASE_KEYS): c for c in doc["cases"]}


@pytest.fixture
def embedded(tiny_workspace: Path, run_cli: Run) -> dict:
    code, out, err = run_cli("eval", "-C", str(tiny_workspace), "--json", "-q")
    assert code == 0, err
    return json.loads(out)


def test_isolated_engine_gives_the_embedded_verdicts(
    tiny_workspace: Path, run_cli: Run, embedded: dict
) -> None:
    code, out, err = run_cli(
        "eval", "-C", str(tiny_workspace), "--json", "-q", "--engine", "llama-cpp-isolated"
    )
    doc = json.loads(out)
    assert code == 0, err
    assert doc["environment"]["engine"] == "llama-cpp-isolated"
    ours, theirs = cases_by_key(doc), cases_by_key(embedded)
    assert ours.keys() == theirs.keys()
    for key, case in ours.items():
        assert (case["output"], case["passed"]) == (theirs[key]["output"], theirs[key]["passed"])


@pytest.fixture
def ollama_host(tmp_path: Path) -> Iterator[str]:
    server, state = start_ollama_server(tmp_path / "ollama")
    host, port = server.server_address[:2]
    yield f"http://{host}:{port}"
    server.shutdown()
    for name in list(state.loaded):
        state.unload(name)


@pytest.fixture
def embedded_gbnf(tiny_workspace: Path, run_cli: Run, monkeypatch: pytest.MonkeyPatch) -> dict:
    """The embedded run with schema mode on llama.cpp's GBNF grammar, as Ollama constrains
    ``format`` (llguidance, the embedded default, may pick other, equally valid JSON)."""
    monkeypatch.setenv(ENV_SCHEMA_DECODER, "gbnf")
    code, out, err = run_cli("eval", "-C", str(tiny_workspace), "--json", "-q")
    assert code == 0, err
    return json.loads(out)


def test_ollama_engine_runs_the_suite_with_the_same_verdicts(
    tiny_workspace: Path, run_cli: Run, embedded_gbnf: dict, ollama_host: str
) -> None:
    embedded = embedded_gbnf
    code, out, err = run_cli(
        "eval", "-C", str(tiny_workspace), "--json", "-q", "--engine", "ollama",
        "--host", ollama_host,
    )  # fmt: skip
    doc = json.loads(out)
    assert code == 0, err
    assert doc["environment"]["engine"] == "ollama"
    assert [list(s) for s in doc["summaries"]] == [list(s) for s in embedded["summaries"]]
    ours, theirs = cases_by_key(doc), cases_by_key(embedded)
    assert ours.keys() == theirs.keys()
    # The stand-in daemon renders the TEMPLATE with its own code and generates through
    # llama-cpp-python with Ollama's documented option defaults: the same outputs only if
    # lifecycle renders the Modelfile and maps its PARAMETERs the way Ollama does.
    for key, case in ours.items():
        assert case["output"] == theirs[key]["output"], key


def test_openai_engine_runs_the_suite_concurrently(
    tiny_workspace: Path, run_cli: Run, embedded: dict
) -> None:
    pytest.importorskip("uvicorn", reason="llama-cpp-python[server] extras are not installed")
    from test_engine_openai import GEMMA_TEMPLATE, start_llama_server
    from tinymodel import write_tiny_llama

    served = write_tiny_llama(tiny_workspace / "served.gguf", chat_template=GEMMA_TEMPLATE)
    process, url = start_llama_server(served)
    try:
        code, out, err = run_cli(
            "eval", "-C", str(tiny_workspace), "--json", "-q", "--engine", "openai",
            "--base-url", url, "--concurrency", "2",
        )  # fmt: skip
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
    doc = json.loads(out)
    assert code == 0, err
    assert cases_by_key(doc).keys() == cases_by_key(embedded).keys()
    assert set(doc["cases"][0]) == set(embedded["cases"][0])
    # The server enforced the schema: every answer it finished is schema-shaped JSON (a
    # random model may still run a number to max_tokens).
    finished = [c for c in doc["cases"] if c["mode"] == "schema" and c["finish_reason"] == "stop"]
    assert finished and all(c["json_valid"] for c in finished)
    assert all(c["schema_enforced"] is not False for c in finished)
    assert all(s["concurrency"] == 2 and s["cases_per_s"] for s in doc["summaries"])


def test_engine_settings_that_do_not_apply_are_usage_errors(
    tiny_workspace: Path, run_cli: Run
) -> None:
    code, _, err = run_cli("eval", "-C", str(tiny_workspace), "--base-url", "http://127.0.0.1:9")
    assert code == 2 and "base_url" in err
