"""Token-level comparison on the real engine: KL divergence, top-token agreement, PPL.

The tiny F32 model is quantized by llama.cpp itself; nothing here mocks the engine. The
numbers are checked against a plain numpy computation over full logits read through
llama-cpp-python's own ``logits_all`` path, which shares no code with lifecycle.compare.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from lifecycle.compare import CompareOptions, compare, load_text, read_compare_settings
from lifecycle.comparerender import save_report
from lifecycle.config import load_workspace
from lifecycle.errors import ConfigError, UsageError
from lifecycle.quantize import quantize_blob
from lifecycle.sources import pull_file
from lifecycle.store import Store
from lifecycle.tokenstats import ReferenceScores, chunk_tokens, vocab_mismatch

N_CTX = 64
TEXT = load_text(None)[0][:700]  # a slice of the packaged text: ~700 tokens on the tiny vocab


@pytest.fixture(scope="module")
def quants(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny model as F32, Q8_0 and Q4_K_M files made by llama.cpp's quantizer."""
    store = Store(tmp_path_factory.mktemp("quant-home"))
    digest = pull_file(store, tiny_model).digest
    paths = {"F32": tiny_model}
    for target in ("Q8_0", "Q4_K_M"):
        paths[target] = store.blob_path(quantize_blob(store, digest, target).digest)
    return paths


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    path = tmp_path / "text.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def token_compare(names: list[str], text: Path, **kwargs: object) -> dict[str, dict]:
    options = CompareOptions(
        text=text,
        n_ctx=N_CTX,
        task_quality=False,
        threads=1,
        **kwargs,  # type: ignore[arg-type]
    )
    report = compare(names, options).to_dict()
    return {e["name"]: e for e in report["variants"]} | {"_report": report}


def test_reference_against_itself_is_exactly_zero(
    quants: dict[str, Path], text_file: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "same.gguf"
    copy.write_bytes(quants["Q4_K_M"].read_bytes())
    found = token_compare([str(quants["Q4_K_M"]), str(copy)], text_file)
    twin = found[str(copy)]["token_quality"]
    assert twin["kld"]["mean"] == 0.0 and twin["kld"]["max"] == 0.0
    assert twin["same_top_p"] == 1.0 and twin["rms_dp"] == 0.0
    assert twin["ppl_ratio"] == 1.0
    assert twin["ppl"] == found[str(quants["Q4_K_M"])]["token_quality"]["ppl"]


def test_q8_0_diverges_less_than_q4_k_m(quants: dict[str, Path], text_file: Path) -> None:
    names = [str(quants[q]) for q in ("F32", "Q8_0", "Q4_K_M")]
    found = token_compare(names, text_file)
    report = found["_report"]
    f32, q8, q4 = (found[n] for n in names)
    # The highest-precision file is the reference without being told.
    assert report["reference"] == names[0] and f32["is_reference"]
    assert f32["token_quality"]["kld"]["mean"] == 0.0
    # 8-bit rounding error is ~16x smaller than 4-bit, KLD ~ error^2: a wide, stable margin.
    assert 0 < q8["token_quality"]["kld"]["mean"] < q4["token_quality"]["kld"]["mean"] / 5
    assert q8["token_quality"]["same_top_p"] > q4["token_quality"]["same_top_p"]
    assert q8["token_quality"]["rms_dp"] < q4["token_quality"]["rms_dp"]
    for entry in (q8, q4):
        quality = entry["token_quality"]
        kld = quality["kld"]
        assert kld["median"] <= kld["p90"] <= kld["p95"] <= kld["p99"] <= kld["max"]
        assert quality["positions"] == (len(TEXT) + 1) // N_CTX * (N_CTX - 1)
        assert math.isclose(
            quality["ppl_ratio"], quality["ppl"] / quality["ppl_reference"], rel_tol=1e-9
        )
    sizes = [found[n]["cost"]["file_size_bytes"] for n in names]
    assert sizes[0] > sizes[1] > sizes[2]
    assert found[names[2]]["cost"]["bits_per_weight"] < found[names[1]]["cost"]["bits_per_weight"]
    assert report["token_settings"]["chunks"] == (len(TEXT) + 1) // N_CTX


@pytest.mark.parametrize("top_k", [None, 16])
def test_statistics_match_numpy_over_full_logits(
    quants: dict[str, Path], text_file: Path, top_k: int | None
) -> None:
    """Exact with the whole vocabulary kept; a close lower bound with the top 16 of it."""
    ref_path, cand_path = quants["F32"], quants["Q4_K_M"]
    full = _numpy_statistics(ref_path, cand_path, TEXT)
    k = top_k or 10_000
    found = token_compare([str(ref_path), str(cand_path)], text_file, top_k=k)
    quality = found[str(cand_path)]["token_quality"]
    assert quality["positions"] == full["positions"]
    assert quality["same_top_p"] == pytest.approx(full["same_top_p"], abs=1e-12)
    assert quality["ppl"] == pytest.approx(full["ppl"], rel=1e-5)
    assert quality["ppl_ratio"] == pytest.approx(full["ppl_ratio"], rel=1e-5)
    assert quality["rms_dp"] == pytest.approx(full["rms_dp"], rel=1e-4)
    if top_k is None:
        assert quality["kld"]["mean"] == pytest.approx(full["kld_mean"], rel=1e-4)
        assert quality["kld"]["max"] == pytest.approx(full["kld_max"], rel=1e-4)
    else:
        # The coarsened tail makes it a lower bound; measured gap on this model is under 5%.
        assert quality["kld"]["mean"] <= full["kld_mean"] * (1 + 1e-6)
        assert quality["kld"]["mean"] == pytest.approx(full["kld_mean"], rel=0.05)


def test_second_half_scoring_matches_llama_perplexity_positions(
    quants: dict[str, Path], text_file: Path
) -> None:
    found = token_compare([str(quants["F32"]), str(quants["Q8_0"])], text_file, score="second-half")
    chunks = (len(TEXT) + 1) // N_CTX
    assert found[str(quants["Q8_0"])]["token_quality"]["positions"] == chunks * (
        N_CTX - 1 - N_CTX // 2
    )


def test_text_shorter_than_two_contexts_is_a_usage_error(
    quants: dict[str, Path], tmp_path: Path
) -> None:
    short = tmp_path / "short.txt"
    short.write_text("Refund INV-2231, please.", encoding="utf-8")
    with pytest.raises(UsageError, match=r"at least 2 x n_ctx = 128 are needed"):
        token_compare([str(quants["F32"]), str(quants["Q8_0"])], short)


def test_chunking_follows_llama_perplexity() -> None:
    tokens = chunk_tokens(list(range(10, 30)), 1, 8, None)
    # BOS first, whole chunks only (21 tokens -> 2 chunks), BOS over each chunk's first token.
    assert tokens == [1, *range(10, 17), 1, *range(18, 25)]
    assert chunk_tokens(list(range(10, 40)), None, 8, 2) == list(range(10, 26))


def test_saved_report_is_the_json_document_with_nothing_hidden(
    quants: dict[str, Path], text_file: Path, tmp_path: Path
) -> None:
    options = CompareOptions(text=text_file, n_ctx=N_CTX, chunks=2, task_quality=False, threads=1)
    report = compare([str(quants["F32"]), str(quants["Q8_0"])], options)
    assert report.run_record is None  # no eval run: nothing to save beside the report
    path, chart = save_report(report, tmp_path / "compare")
    text = path.read_text(encoding="utf-8")
    assert text == json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n"
    doc = json.loads(text)
    # The document's keys, in order, as before the report became a typed object.
    assert list(doc) == [
        "schema_version", "kind", "created_at", "reference", "token_settings", "thresholds",
        "eval_run_id", "variants", "verdict", "compare_id", "chart",
    ]  # fmt: skip
    assert doc["schema_version"] == 1 and doc["kind"] == "compare"
    assert path.name == f"{doc['compare_id']}.json" and doc["chart"] == str(chart)
    assert doc["thresholds"] == {
        "max_pass_rate_drop": 0.02, "max_mean_kld": 0.05, "max_ppl_ratio": None,
        "min_same_top_p": None, "min_vector_cosine": None,
    }  # fmt: skip
    assert list(doc["token_settings"]) == [
        "n_ctx", "score", "top_k", "tokens", "chunks", "n_vocab", "block", "scored_positions",
        "text",
    ]  # fmt: skip
    entry = doc["variants"][1]
    assert list(entry) == [
        "name", "kind", "path", "digest", "quant", "is_reference", "token_quality",
        "token_quality_skipped", "task_quality", "task_quality_skipped", "cost", "checks",
        "within_thresholds",
    ]  # fmt: skip
    assert list(entry["token_quality"]) == [
        "kld", "same_top_p", "same_top_p_stderr", "rms_dp", "rms_dp_stderr", "ppl",
        "ppl_stderr", "ppl_reference", "ppl_ratio", "ppl_ratio_stderr", "positions",
    ]  # fmt: skip
    assert list(entry["token_quality"]["kld"]) == [
        "mean", "stderr", "median", "p90", "p95", "p99", "max",
    ]  # fmt: skip
    assert list(doc["verdict"]) == ["choice", "within", "summary"]


def test_different_vocabularies_are_refused_with_a_reason() -> None:
    ref = ReferenceScores(tokens=[1, 5, 6, 7], n_vocab=100)
    assert "different vocabulary (90 tokens" in str(
        vocab_mismatch(ref, [1, 5, 6, 7], [5, 6, 7], 1, 90, 4)
    )
    assert "tokenizer differs" in str(vocab_mismatch(ref, [1, 5, 6, 7], [5, 9, 7], 1, 100, 4))
    assert vocab_mismatch(ref, [1, 5, 6, 7], [5, 6, 7, 8], 1, 100, 4) is None


def test_packaged_reference_text_is_long_prose_with_json() -> None:
    text, label = load_text(None)
    assert label.startswith("lifecycle:data/reference.txt (sha256:")
    assert len(text.split()) > 2500 and '{"category": "billing"' in text


def test_compare_settings_are_validated_with_their_location(tiny_workspace: Path) -> None:
    config = tiny_workspace / "lifecycle.toml"
    config.write_text(config.read_text() + '[compare]\nmax_mean_kld = "low"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"lifecycle.toml → compare.max_mean_kld: must be a non"):
        read_compare_settings(load_workspace(tiny_workspace))
    config.write_text(config.read_text().replace('"low"', "0.1\ncolour = 1"), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"compare.colour: unknown key"):
        read_compare_settings(load_workspace(tiny_workspace))


def _numpy_statistics(ref_path: Path, cand_path: Path, text: str) -> dict[str, float]:
    """KLD, same-top, RMS Δp and PPLs from full logits (llama-cpp-python's logits_all)."""
    from llama_cpp import Llama

    def all_logits(path: Path) -> tuple[list[np.ndarray], list[list[int]]]:
        llm = Llama(str(path), n_ctx=N_CTX, n_batch=N_CTX, logits_all=True, n_threads=1,
                    verbose=False)  # fmt: skip
        tokens = [llm.token_bos(), *llm.tokenize(text.encode(), add_bos=False, special=False)]
        chunks = []
        logits = []
        for start in range(0, len(tokens) - N_CTX + 1, N_CTX):
            chunk = [llm.token_bos(), *tokens[start + 1 : start + N_CTX]]
            llm.reset()
            llm.eval(chunk)
            logits.append(np.array(llm.scores[: N_CTX - 1], dtype=np.float64))
            chunks.append(chunk)
        llm.close()
        return logits, chunks

    ref_logits, chunks = all_logits(ref_path)
    cand_logits, _ = all_logits(cand_path)
    kld, same, dp, nll, nll_ref = [], [], [], [], []
    for p_logits, q_logits, chunk in zip(ref_logits, cand_logits, chunks, strict=True):
        logp = p_logits - np.logaddexp.reduce(p_logits, axis=1, keepdims=True)
        logq = q_logits - np.logaddexp.reduce(q_logits, axis=1, keepdims=True)
        targets = np.array(chunk[1:])
        rows = np.arange(len(targets))
        kld.append((np.exp(logp) * (logp - logq)).sum(axis=1))
        same.append(p_logits.argmax(axis=1) == q_logits.argmax(axis=1))
        dp.append(np.exp(logq[rows, targets]) - np.exp(logp[rows, targets]))
        nll.append(-logq[rows, targets])
        nll_ref.append(-logp[rows, targets])
    k = np.concatenate(kld)
    return {
        "positions": len(k),
        "kld_mean": float(k.mean()),
        "kld_max": float(k.max()),
        "same_top_p": float(np.concatenate(same).mean()),
        "rms_dp": float(np.sqrt((np.concatenate(dp) ** 2).mean())),
        "ppl": float(np.exp(np.concatenate(nll).mean())),
        "ppl_ratio": float(np.exp(np.concatenate(nll).mean() - np.concatenate(nll_ref).mean())),
    }
