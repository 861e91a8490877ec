"""lifecycle.bench on the real engine with a tiny GGUF: structure, counts and failure recording.

Timings are never asserted (the machine is shared and noisy); speed targets live in
benchmarks/. Every context point runs in a real subprocess, as in production.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lifecycle.bench import (
    BenchOptions,
    BenchResult,
    eval_latency,
    gpu_memory,
    measure_bandwidth,
    run_bench,
)
from lifecycle.errors import ModelError, UsageError

LLAMA_BENCH_FIELDS = {
    "n_prompt", "n_gen", "n_depth", "n_threads", "n_batch", "n_ubatch", "type_k", "type_v",
    "n_gpu_layers", "model_type", "model_size", "model_n_params", "avg_ns", "stddev_ns",
    "avg_ts", "stddev_ts", "samples_ns", "samples_ts",
}  # fmt: skip
SMALL = {"n_prompt": 32, "n_gen": 4, "repetitions": 3, "n_threads": 1, "bandwidth": False}


@pytest.fixture(scope="module")
def sweep(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> BenchResult:
    """One sweep shared by the tests below: two real points, one above the trained length,
    and one the machine cannot hold (2**31 tokens of KV cache is 2 TiB)."""
    contexts = [256, 1024, 4096, 2**31 - 256]
    options = BenchOptions(**SMALL, contexts=contexts, depth=64)  # type: ignore[arg-type]
    return run_bench(tiny_model, options, home=tmp_path_factory.mktemp("home"))


def test_rows_use_llama_bench_fields_and_counts(sweep: BenchResult) -> None:
    doc = sweep.to_dict()
    assert doc["schema_version"] == 1
    rows = doc["rows"]
    assert [r["test"] for r in rows] == ["pp32 @ d64", "tg4 @ d64"] * 3
    for row in rows:
        assert row.keys() >= LLAMA_BENCH_FIELDS
        assert len(row["samples_ns"]) == len(row["samples_ts"]) == 3
        assert row["avg_ts"] > 0 and row["stddev_ts"] >= 0
        assert row["model_n_params"] == 1_363_200
        assert row["type_k"] == row["type_v"] == "f16"
        assert row["n_threads"] == 1
    assert BenchResult.from_dict(json.loads(json.dumps(doc))).to_dict() == doc


def test_memory_figures_and_estimate(sweep: BenchResult) -> None:
    ok = [p for p in sweep.points if p.ok]
    assert [p.n_ctx for p in ok] == [256, 1024, 4096]
    for point in ok:
        mem = point.memory
        assert point.estimate is not None
        assert mem["kv_cache_bytes"] == point.estimate["kv_cache_bytes"]
        assert mem["peak_rss_bytes"] >= mem["rss_end_bytes"] > 0
        assert mem["rss_after_load_bytes"] >= mem["rss_before_load_bytes"]
        assert point.estimate_error_pct is not None and abs(point.estimate_error_pct) < 5
        assert point.load_ms is not None
        # No GPU here: VRAM fields are present, empty and explained.
        if mem["gpu"] is None:
            assert mem["vram_used_bytes"] is None and mem["vram_reason"]
    kv = [p.memory["kv_cache_bytes"] for p in ok]
    assert kv == [256 * 1024, 1024 * 1024, 4096 * 1024]  # 1 KiB per token of context
    assert sweep.scaling is not None
    assert abs(sweep.scaling["estimate_vs_allocated_error_pct"]) < 5


def test_impossible_and_untrained_contexts_are_recorded(sweep: BenchResult) -> None:
    above = sweep.points[2]
    assert above.ok and "above the model's trained context 2048" in above.warnings[0]
    impossible = sweep.points[3]
    assert not impossible.ok and impossible.rows == []
    assert "exceeds" in (impossible.error or "") and "available" in (impossible.error or "")


def test_failure_inside_the_measuring_process_is_recorded(tiny_model: Path) -> None:
    """Without the pre-flight check, llama.cpp itself fails to allocate the buffers of a 4M-token
    context (~44 GiB) under a 4 GiB address-space limit, the way it fails on a machine that is
    too small; the point records llama.cpp's reason and the next point still runs."""
    options = BenchOptions(
        **{**SMALL, "repetitions": 1},  # type: ignore[arg-type]
        contexts=[2**22, 256],
        preflight=False,
        address_space_limit_bytes=4 * 2**30,
    )
    result = run_bench(tiny_model, options)
    failed, ok = result.points
    assert not failed.ok and "could not load" in (failed.error or "")
    assert "failed to allocate" in (failed.error or "")  # llama.cpp's own error line
    assert ok.ok and len(ok.rows) == 2


def test_strict_refuses_contexts_above_training(tiny_model: Path) -> None:
    options = BenchOptions(**SMALL, contexts=[4096], strict=True)  # type: ignore[arg-type]
    (point,) = run_bench(tiny_model, options).points
    assert not point.ok and "--strict" in (point.error or "")


def test_bad_options_fail_before_loading(tiny_model: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        run_bench(tiny_model, BenchOptions(contexts=[0]))
    with pytest.raises(UsageError, match="do not fit"):
        run_bench(tiny_model, BenchOptions(n_ctx=256, n_prompt=512))
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 10)
    with pytest.raises(ModelError):
        run_bench(broken, BenchOptions(**SMALL))  # type: ignore[arg-type]


def test_bandwidth_is_measured_once_per_machine(tmp_path: Path) -> None:
    first = measure_bandwidth(1, home=tmp_path, buffer_bytes=8 * 2**20)
    second = measure_bandwidth(1, home=tmp_path, buffer_bytes=8 * 2**20)
    assert first["cached"] is False and second["cached"] is True
    assert first["read_bytes_per_s"] == second["read_bytes_per_s"] > 0
    assert (tmp_path / "bench" / "bandwidth.json").is_file()


def test_generation_rows_report_the_bandwidth_bound(tiny_model: Path, tmp_path: Path) -> None:
    options = BenchOptions(**{**SMALL, "bandwidth": True}, bandwidth_buffer_bytes=8 * 2**20)  # type: ignore[arg-type]
    result = run_bench(tiny_model, options, home=tmp_path)
    pp, tg = result.rows
    assert pp.bandwidth_bound_ts is None
    assert tg.bandwidth_bound_ts is not None and tg.bandwidth_fraction is not None
    assert result.bandwidth is not None


def test_gpu_memory_without_gpu_explains_itself() -> None:
    figures = gpu_memory(12345)
    if figures["gpu"] is not None:
        pytest.skip("an NVIDIA GPU is present")
    assert figures["vram_used_bytes"] is None and figures["vram_total_bytes"] is None
    assert figures["vram_reason"]


def test_eval_latency_reads_the_last_run(tmp_path: Path) -> None:
    assert eval_latency(tmp_path, "tiny") is None
    cases = [
        {"variant": "tiny", "latency_ms": ms, "prompt_ms": 10.0, "generation_ms": 40.0,
         "eval_tokens": 4}
        for ms in (100.0, 200.0, 300.0)
    ]  # fmt: skip
    cases.append({**cases[0], "variant": "other", "latency_ms": 9999.0})
    (tmp_path / "latest.json").write_text(json.dumps({"run_id": "r1", "cases": cases}))
    figures = eval_latency(tmp_path, "tiny")
    assert figures is not None
    assert figures["cases"] == 3 and figures["latency_p50_ms"] == 200.0
    assert figures["latency_p99_ms"] == pytest.approx(298.0)
    assert figures["ttft_p50_ms"] == 20.0  # prompt 10 ms + one 10 ms decode step
