"""The ollama engine's ``/api/embed`` path against a loopback stand-in (ollama_embed_server).

The stand-in embeds with llama-cpp-python directly, one input at a time, and normalises as
Ollama does; lifecycle's in-process engine packs many texts per decode. The same retrieval
suite run both ways must give the same vectors (up to batching noise) and the same metrics;
an answer with a vector of another dimension, a NaN or a missing vector is an error on the
cases it touches, never a verdict.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from _kb import DOCS, QUERIES, write_kb_workspace
from ollama_embed_server import EmbedState, start_embed_server

from lifecycle.baselines import load_baselines
from lifecycle.config import load_workspace
from lifecycle.gate import read_gate_settings, run_gate
from lifecycle.results import RunRecord
from lifecycle.runner import EvalOptions, run_eval
from lifecycle.tinymodel import write_tiny_llama
from lifecycle.vectors import cosines, decode_vector


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, EmbedState]]:
    server, state = start_embed_server(tmp_path_factory.mktemp("ollama-embed"))
    host, port = server.server_address[:2]
    yield f"http://{host}:{port}", state
    server.shutdown()
    state.close()


@pytest.fixture(scope="module")
def embedder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("emb") / "emb.gguf", pooling="mean")


@pytest.fixture
def kb(tmp_path: Path, embedder: Path) -> Path:
    return write_kb_workspace(tmp_path / "ws", embedder)


def _eval(root: Path, host: str | None = None) -> RunRecord:
    engine = {"engine": "ollama", "engine_settings": {"host": host}} if host else {}
    options = EvalOptions(canary=False, answers=False, resume=False, **engine)  # type: ignore[arg-type]
    return run_eval(load_workspace(root), options)


def _vectors(record: RunRecord) -> dict[str, np.ndarray]:
    texts = record.retrieval["kb"]["kb"]["texts"]
    return {key: decode_vector(encoded) for key, (_digest, encoded) in texts.items()}


def test_api_embed_gives_the_in_process_vectors_and_metrics(
    kb: Path, daemon: tuple[str, EmbedState]
) -> None:
    host, state = daemon
    state.fault, state.embed_requests[:] = None, []
    local = _eval(kb)
    served = _eval(kb, host)
    assert state.embed_requests == [len(DOCS) + len(QUERIES)]  # one request for the suite
    info = served.retrieval["kb"]["kb"]
    assert info["pooling"] == "server" and info["engine_normalised"] is True
    assert info["metrics"] == local.retrieval["kb"]["kb"]["metrics"]
    mine, theirs = _vectors(local), _vectors(served)
    assert set(mine) == set(theirs) and len(mine) == len(DOCS) + len(QUERIES)
    keys = sorted(mine)
    values = cosines(np.stack([mine[k] for k in keys]), np.stack([theirs[k] for k in keys]))
    assert float(values.min()) > 0.9999  # one text per sequence vs many per decode
    assert [c.output for c in served.cases] == [c.output for c in local.cases]


@pytest.mark.parametrize(
    ("fault", "index", "errored", "reason"),
    [
        ("short", len(DOCS) + 2, {"q-sso"}, "dimension"),
        ("nan", len(DOCS) + 4, {"q-seats"}, "NaN"),
        ("nan", 0, {q for q, _t, _r in QUERIES}, "corpus/refund"),
        ("count", 0, {q for q, _t, _r in QUERIES}, "vectors for"),
    ],
)
def test_a_malformed_answer_errors_the_cases_it_touches(
    kb: Path,
    daemon: tuple[str, EmbedState],
    fault: str,
    index: int,
    errored: set[str],
    reason: str,
) -> None:
    host, state = daemon
    state.fault, state.fault_index = fault, index
    try:
        record = _eval(kb, host)
    finally:
        state.fault = None
    assert {c.id for c in record.cases if c.errored} == errored
    assert all(reason in c.reason for c in record.cases if c.errored)
    assert all(c.passed is False for c in record.cases if c.errored)
    gate = run_gate(record, load_baselines(kb), read_gate_settings(load_workspace(kb)))
    assert gate.engine_failed and gate.exit_code == 1  # no verdict on an engine's bad answer
