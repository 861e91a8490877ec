"""Retrieval suites on the real engine: tiny generated GGUFs with a pooling type, real files.

Metric math is checked against values computed by hand; the gate's drift, re-index and metric
checks against injected changes (another pooling, quantized weights, a shuffled corpus).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import llama_cpp
import numpy as np
import pytest
from _kb import DOCS, QUERIES, write_jsonl, write_kb_workspace

from lifecycle.baselines import load_baselines
from lifecycle.config import load_workspace
from lifecycle.engines import LoadOptions, get_engine
from lifecycle.engines.base import EmbeddingEngine, EmbeddingModel
from lifecycle.engines.embedding import model_pooling
from lifecycle.errors import GoldenSetError
from lifecycle.gate import read_gate_settings, run_gate
from lifecycle.golden import load_suite
from lifecycle.lockfile import read_lock
from lifecycle.pin import commit_message, pin
from lifecycle.retrieval import ndcg_at_k, query_scores, recall_at_k, reciprocal_rank, suite_metrics
from lifecycle.runner import EvalOptions, run_eval
from lifecycle.store import Store
from lifecycle.tinymodel import write_tiny_llama
from lifecycle.vectors import REINDEX


@pytest.fixture(scope="module")
def embedder_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("emb") / "emb.gguf", pooling="mean")


@pytest.fixture
def kb(tmp_path: Path, embedder_gguf: Path) -> Path:
    return write_kb_workspace(tmp_path / "ws", embedder_gguf)


def _eval(root: Path):  # type: ignore[no-untyped-def]
    return run_eval(load_workspace(root), EvalOptions(canary=False, answers=False, resume=False))


def _gate(root: Path, record):  # type: ignore[no-untyped-def]
    settings = read_gate_settings(load_workspace(root))
    return run_gate(record, load_baselines(root), settings)


def _pinned(root: Path):  # type: ignore[no-untyped-def]
    record = _eval(root)
    result = pin(root, record, _gate(root, record), Store(load_workspace(root).home))
    return record, result


# --- metrics, by hand ------------------------------------------------------------------------


def test_metrics_match_hand_computed_values() -> None:
    ranked = ["a", "b", "c", "d"]
    binary = {"b": 1.0, "d": 1.0}
    assert recall_at_k(ranked, binary, 2) == 0.5
    assert reciprocal_rank(ranked, binary) == 0.5
    # DCG@2 = 1/log2(3); ideal DCG@2 = 1 + 1/log2(3)
    assert ndcg_at_k(ranked, binary, 2) == pytest.approx(0.630930 / 1.630930, abs=1e-6)
    graded = {"a": 2.0, "c": 1.0}
    # DCG@3 = 2/1 + 0 + 1/2 = 2.5; ideal = 2 + 1/log2(3) = 2.630930
    assert ndcg_at_k(ranked, graded, 3) == pytest.approx(2.5 / 2.630930, abs=1e-6)
    assert reciprocal_rank(ranked, {"z": 1.0}) == 0.0
    one = query_scores(ranked, binary, 1)
    assert one["hit"] is False and one["rank"] == 2
    two = query_scores(ranked, {"a": 1.0}, 1)
    assert suite_metrics([one, two]) == {
        "hit_rate": 0.5,
        "recall_at_k": 0.5,
        "mrr": 0.75,
        "ndcg_at_k": 0.5,
    }
    assert math.isclose(ndcg_at_k(["x"], {"x": 3.0}, 5), 1.0)


# --- suites -----------------------------------------------------------------------------------


def test_a_relevant_id_absent_from_the_corpus_names_file_and_line(kb: Path) -> None:
    rows = [{"id": i, "text": t, "relevant": r} for i, t, r in QUERIES]
    rows[2]["relevant"] = ["sso", "no-such-doc"]
    write_jsonl(kb / "golden" / "kb-queries.jsonl", rows)
    with pytest.raises(GoldenSetError) as caught:
        load_suite(kb / "evals" / "kb.toml")
    text = str(caught.value)
    assert "kb-queries.jsonl:3" in text and "no-such-doc" in text


def test_an_embedding_suite_is_a_suite_of_queries(kb: Path) -> None:
    suite = load_suite(kb / "evals" / "kb.toml")
    assert suite.modes == ("retrieval",) and len(suite.cases) == len(QUERIES)
    assert suite.embedding is not None and suite.embedding.k == 3
    assert suite.thresholds == {"retrieval": 0.5}
    assert suite.cases[5].expected == {"relevant": {"trial": 2.0, "seats": 1.0}}


# --- the engine -------------------------------------------------------------------------------


def test_llama_cpp_embeds_with_the_gguf_pooling_in_batches(embedder_gguf: Path) -> None:
    engine = get_engine("llama-cpp")
    assert isinstance(engine, EmbeddingEngine)
    assert model_pooling(embedder_gguf) == "mean"
    model = engine.load_embedding(embedder_gguf, LoadOptions(n_ctx=512, n_threads=1), None)
    try:
        assert isinstance(model, EmbeddingModel) and model.pooling == "mean"
        texts = [t for _i, t in DOCS]
        together = np.array(model.embed(texts))
        alone = np.array(model.embed(texts[3:4]))
    finally:
        model.close()
    assert together.shape == (len(texts), 256)
    cos = float(together[3] @ alone[0]) / float(
        np.linalg.norm(together[3]) * np.linalg.norm(alone[0])
    )
    assert cos > 0.99999  # batching many texts per decode changes nothing that matters


def test_a_gguf_without_pooling_and_no_parameter_is_an_error(tmp_path: Path, kb: Path) -> None:
    write_tiny_llama(kb / "modelfiles" / "emb.gguf")  # no pooling_type in the metadata
    record = _eval(kb)
    (run,) = record.variants
    assert run.error and "names no pooling type" in run.error and "PARAMETER pooling" in run.error
    gate = _gate(kb, record)
    assert gate.engine_failed and gate.exit_code == 1


# --- eval, pin, gate --------------------------------------------------------------------------


def test_eval_pin_writes_a_digest_named_float16_sidecar(kb: Path) -> None:
    record, result = _pinned(kb)
    info = record.retrieval["kb"]["kb"]
    assert info["pooling"] == "mean" and info["dimension"] == 256
    assert info["metrics"]["hit_rate"] >= 0.5
    assert [c.status for c in result.changes] == ["new"]
    entry = load_baselines(kb)["kb"]
    index = entry.extra["vectors"]
    sidecar = kb / "baselines" / index["file"]
    assert sidecar.is_file() and index["file"].startswith("kb.vectors.")
    assert str(sidecar.relative_to(kb)) in result.written
    vectors = np.load(sidecar)
    assert vectors.dtype == np.float16 and vectors.shape == (len(DOCS) + len(QUERIES), 256)
    assert "vectors" not in json.dumps(
        [c.to_dict() for c in entry.cases]
    )  # the JSON holds no vector
    lock = read_lock(kb / "models.lock").variants["kb"]
    assert lock.extra["retrieval"]["kb"]["k"] == 3 and "reindex" not in lock.extra

    again = _eval(kb)
    gate = _gate(kb, again)
    assert gate.passed, gate.headline()
    (drift,) = [c for c in gate.checks if c.name == "vector_drift"]
    assert drift.status == "pass" and drift.current is not None and drift.current > 0.9999
    assert REINDEX not in gate.headline()
    second = pin(kb, again, gate, Store(load_workspace(kb).home))
    assert [c.status for c in second.changes] == ["unchanged"] and second.written == []


def test_another_pooling_is_a_re_index(kb: Path) -> None:
    _pinned(kb)
    (kb / "modelfiles" / "kb.Modelfile").write_text(
        "FROM ./emb.gguf\nPARAMETER pooling last\n", encoding="utf-8"
    )
    with (kb / "lifecycle.toml").open("a", encoding="utf-8") as out:  # metrics may drop here
        out.write("\n[gate]\nfail_on_regression = false\nmax_pass_rate_drop = 1.0\n")
    record = _eval(kb)
    assert record.retrieval["kb"]["kb"]["pooling"] == "last"
    gate = _gate(kb, record)
    assert f"kb: {REINDEX}" in gate.headline()
    (drift,) = [c for c in gate.checks if c.name == "vector_drift"]
    assert drift.current is not None and drift.current < 0.999
    assert gate.passed, gate.headline()
    result = pin(kb, record, gate, Store(load_workspace(kb).home))
    assert [c.status for c in result.changes] == ["updated"]
    assert REINDEX in commit_message(result.changes)
    assert REINDEX in read_lock(kb / "models.lock").variants["kb"].extra["reindex"]


def test_quantized_weights_drift_and_max_vector_drift_fails(kb: Path) -> None:
    _pinned(kb)
    source = kb / "modelfiles" / "emb.gguf"
    target = kb / "modelfiles" / "emb-q4_0.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0
    assert llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), params) == 0
    (kb / "modelfiles" / "kb.Modelfile").write_text("FROM ./emb-q4_0.gguf\n", encoding="utf-8")
    with (kb / "lifecycle.toml").open("a", encoding="utf-8") as out:
        out.write("\n[gate]\nmax_vector_drift = 0.0001\n")
    record = _eval(kb)
    gate = _gate(kb, record)
    (drift,) = [c for c in gate.checks if c.name == "vector_drift"]
    assert drift.status == "fail" and "min" in drift.message and "p5" in drift.message
    assert f"kb: {REINDEX}" in gate.headline()
    assert not gate.passed and gate.exit_code == 3


def test_a_shuffled_corpus_drops_the_metrics(kb: Path) -> None:
    _pinned(kb)
    texts = [t for _i, t in DOCS]
    shuffled = texts[1:] + texts[:1]  # every id now holds its neighbour's text
    write_jsonl(
        kb / "golden" / "kb-corpus.jsonl",
        [{"id": i, "text": t} for (i, _t), t in zip(DOCS, shuffled, strict=True)],
    )
    record = _eval(kb)
    gate = _gate(kb, record)
    assert not gate.passed
    names = {c.name for c in gate.checks if c.status == "fail"}
    assert {"pass_rate", "recall_at_k_drop", "mrr_drop", "ndcg_at_k_drop"} <= names
    assert any(r.suite == "kb" for r in gate.regressions)
    # The queries did not change and neither did the model: their vectors did not move.
    assert REINDEX not in gate.headline()


def test_a_missing_or_wrong_sidecar_is_unavailable_not_a_crash(kb: Path) -> None:
    _pinned(kb)
    entry = load_baselines(kb)["kb"]
    sidecar = kb / "baselines" / entry.extra["vectors"]["file"]
    np.save(sidecar, np.zeros((3, 8), dtype=np.float16))  # another shape, another digest
    gate = _gate(kb, _eval(kb))
    (drift,) = [c for c in gate.checks if c.name == "vector_drift"]
    assert drift.status == "skip" and "baseline vectors unavailable" in drift.message
    assert gate.passed
    sidecar.unlink()
    gate = _gate(kb, _eval(kb))
    (drift,) = [c for c in gate.checks if c.name == "vector_drift"]
    assert drift.status == "skip" and "baseline vectors unavailable" in drift.message


def test_openai_embeddings_over_http_in_batches(embedder_gguf: Path) -> None:
    """A loopback server speaking /v1/models and /v1/embeddings, its vectors from llama.cpp."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    local = get_engine("llama-cpp").load_embedding(
        embedder_gguf, LoadOptions(n_ctx=512, n_threads=1), None
    )
    sizes: list[int] = []

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, body: object) -> None:
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._answer({"data": [{"id": "emb"}]})

        def do_POST(self) -> None:
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            sizes.append(len(request["input"]))
            vectors = local.embed(request["input"])
            data = [{"index": i, "embedding": v} for i, v in enumerate(vectors)]
            self._answer({"data": data[::-1]})  # out of order: the index decides

        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        engine = get_engine("openai", base_url=f"http://127.0.0.1:{server.server_port}")
        assert isinstance(engine, EmbeddingEngine)
        model = engine.load_embedding(embedder_gguf, LoadOptions(), None)
        assert isinstance(model, EmbeddingModel)
        texts = [t for _i, t in DOCS] * 7  # 70 texts: two requests
        vectors = model.embed(texts)
    finally:
        server.shutdown()
        local.close()
    assert sizes == [64, 6] and len(vectors) == 70
    # The same text at another place in a batch: equal up to batch numerics (AVX512 kernels
    # move it by ~1e-5); another text is far away. The index, not the order, decides.
    assert np.allclose(vectors[0], vectors[10], atol=1e-4)
    assert not np.allclose(vectors[0], vectors[1], atol=1e-4)
