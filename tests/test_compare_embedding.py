"""``lifecycle compare`` on quant levels of an embedding model, through the real CLI.

The model: a tiny generated llama GGUF with mean pooling, quantized here to Q8_0 (the file
"as shipped"); the workspace's matrix adds Q4_0, a requantization, as the example does.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import llama_cpp
import numpy as np
import pytest
from _kb import DOCS, QUERIES, write_kb_workspace

from lifecycle.tinymodel import write_tiny_llama
from lifecycle.vectors import decode_vector

Run = Callable[..., tuple[int, str, str]]
MATRIX = '\n[models.kb.variants]\nquant = ["Q8_0", "Q4_0"]\nallow_requantize = true\n'
NAMES = ["kb:q8_0", "kb:q4_0"]


@pytest.fixture(scope="module")
def q8_embedder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("emb-q8")
    source = write_tiny_llama(folder / "f32.gguf", pooling="mean")
    target = folder / "emb-q8_0.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0
    assert llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), params) == 0
    return target


@pytest.fixture
def workspace(tmp_path: Path, q8_embedder: Path) -> Path:
    return write_kb_workspace(tmp_path / "ws", q8_embedder, config=MATRIX)


def _compare(run_cli: Run, root: Path, *extra: str) -> tuple[int, str, str]:
    return run_cli("compare", *NAMES, "-C", str(root), "--threads", "1", "-q", *extra)


def test_compare_gives_per_text_cosines_and_the_retrieval_ab(workspace: Path, run_cli: Run) -> None:
    code, out, err = _compare(run_cli, workspace, "--json")
    assert code == 0, err
    doc = json.loads(out)
    entries = {e["name"]: e for e in doc["variants"]}
    assert doc["reference"] == "kb:q8_0" and list(entries) == NAMES
    assert doc["token_settings"] is None
    ref, q4 = entries["kb:q8_0"], entries["kb:q4_0"]
    for entry in (ref, q4):
        assert "embedding model" in entry["token_quality_skipped"]
        assert entry["embedding_quality"]["pooling"] == ["mean"]
        assert entry["embedding_quality"]["dimension"] == 256
        assert entry["cost"]["texts_per_s"] > 0
    assert ref["embedding_quality"]["vectors"] is None  # the reference against itself

    # The cosines are those of the vectors the saved eval run holds, over every text.
    run = json.loads(Path(doc["eval_run"]).read_text(encoding="utf-8"))
    texts = {name: run["retrieval"][name]["kb"]["texts"] for name in NAMES}
    assert len(texts["kb:q4_0"]) == len(DOCS) + len(QUERIES)
    expected = []
    for key, (digest, encoded) in texts["kb:q4_0"].items():
        ref_digest, ref_encoded = texts["kb:q8_0"][key]
        assert digest == ref_digest  # same wording: every text is paired
        a, b = decode_vector(ref_encoded), decode_vector(encoded)
        expected.append(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))))
    vectors = q4["embedding_quality"]["vectors"]
    assert vectors["texts"] == len(expected)
    assert vectors["min"] == pytest.approx(min(expected), abs=1e-6)
    assert vectors["median"] == pytest.approx(float(np.median(expected)), abs=1e-6)
    assert vectors["min"] <= vectors["p5"] <= vectors["median"] < 1.0
    assert vectors["worst"].startswith("kb ")

    # The A/B: each side's metrics as the run computed them, and their difference.
    ab = q4["embedding_quality"]["retrieval"]["kb"]
    assert ab["k"] == 3
    assert ab["metrics"] == run["retrieval"]["kb:q4_0"]["kb"]["metrics"]
    assert ab["reference_metrics"] == run["retrieval"]["kb:q8_0"]["kb"]["metrics"]
    for metric in ("hit_rate", "recall_at_k", "mrr", "ndcg_at_k"):
        delta = ab["metrics"][metric] - ab["reference_metrics"][metric]
        assert ab["difference"][metric] == pytest.approx(delta, abs=1e-4)
    # Each metric's drop is a check; the hit rate's is the pass-rate drop.
    checks = {c["check"]: c for c in q4["checks"]}
    assert {"pass_rate_drop", "kb recall_at_k_drop", "kb mrr_drop", "kb ndcg_at_k_drop"} == set(
        checks
    )
    assert q4["task_quality"]["pass_rate"] == ab["metrics"]["hit_rate"]


def test_min_vector_cosine_decides_the_verdict(workspace: Path, run_cli: Run) -> None:
    config = workspace / "lifecycle.toml"
    base = config.read_text(encoding="utf-8")
    # Above Q4_0's lowest cosine on this model (about 0.99): Q4_0 is refused.
    config.write_text(base + "\n[compare]\nmax_pass_rate_drop = 1.0\nmin_vector_cosine = 0.99999\n")
    code, out, err = _compare(run_cli, workspace, "--json")
    assert code == 0, err
    doc = json.loads(out)
    q4 = next(e for e in doc["variants"] if e["name"] == "kb:q4_0")
    (low,) = [c for c in q4["checks"] if c["check"] == "min_cosine"]
    assert not low["ok"] and low["value"] == q4["embedding_quality"]["vectors"]["min"]
    assert doc["verdict"]["choice"] == "kb:q8_0" and doc["verdict"]["within"] == ["kb:q8_0"]
    # Loose enough for Q4_0: the smaller file wins.
    config.write_text(base + "\n[compare]\nmax_pass_rate_drop = 1.0\nmin_vector_cosine = 0.5\n")
    code, out, err = _compare(run_cli, workspace, "--json")
    assert code == 0, err
    assert json.loads(out)["verdict"]["choice"] == "kb:q4_0"


def test_the_text_report_shows_cosines_and_metric_deltas(workspace: Path, run_cli: Run) -> None:
    code, out, err = _compare(run_cli, workspace)
    assert code == 0, err
    assert "min cos" in out and "recall@3" in out and "nDCG@3" in out
    assert "mean KLD" not in out  # no reference text is scored for an embedding model
    row = next(line for line in out.splitlines() if line.lstrip().startswith("q4_0"))
    assert "(+" in row or "(-" in row  # the Δ against the reference
    assert out.strip().splitlines()[-1].startswith("verdict: ")


def test_no_eval_and_mixed_kinds_are_usage_errors(
    workspace: Path, run_cli: Run, tiny_model: Path
) -> None:
    code, _out, err = _compare(run_cli, workspace, "--no-eval")
    assert code == 2 and "drop --no-eval" in err
    shutil.copy(tiny_model, workspace / "modelfiles" / "chat.gguf")
    (workspace / "modelfiles" / "chat.Modelfile").write_text("FROM ./chat.gguf\n", encoding="utf-8")
    (workspace / "evals" / "gen.toml").write_text(
        'golden = "../golden/gen.jsonl"\nschema = "../golden/gen.schema.json"\nmodes = ["free"]\n',
        encoding="utf-8",
    )
    (workspace / "golden" / "gen.jsonl").write_text(
        json.dumps({"id": "a", "messages": [{"role": "user", "content": "hi"}], "expected": {}})
        + "\n",
        encoding="utf-8",
    )
    (workspace / "golden" / "gen.schema.json").write_text('{"type": "object"}', encoding="utf-8")
    config = workspace / "lifecycle.toml"
    config.write_text(
        config.read_text(encoding="utf-8")
        + '\n[models.chat]\nmodelfile = "modelfiles/chat.Modelfile"\nsuites = ["gen"]\n'
    )
    code, _out, err = run_cli("compare", "kb:q8_0", "chat", "-C", str(workspace), "-q")
    assert code == 2 and "cannot compare embedding model(s) kb with chat model(s) chat" in err
