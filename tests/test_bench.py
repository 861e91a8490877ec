"""lifecycle.bench on the real engine with a tiny GGUF: structure, counts and failure recording.

Timings are never asserted (the machine is shared and noisy); speed targets live in
benchmarks/. Every context point runs in a real subprocess, as in production.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lifecycle.bandwidth import bandwidth_bound, measure_bandwidth
from lifecycle.bench import (
    BenchOptions,
    BenchResult,
    ContextPoint,
    _scaling,
    eval_latency,
    run_bench,
)
from lifecycle.engines.devices import (
    backend_mismatch,
    buffer_placement,
    ggml_devices,
    gpu_environment,
    gpu_memory,
    gpu_unavailable_reason,
    rss_comparison,
    vram_figures,
)
from lifecycle.engines.llama_cpp import parse_buffer_log
from lifecycle.errors import ModelError, UsageError
from lifecycle.hostinfo import last_level_cache_bytes

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
    """Correct with and without a GPU: the estimate models llama.cpp's CPU backend, so its
    total is held to 5 % on points that ran on the CPU; a point with buffers on a GPU must say
    so (backend, a note on the estimate, no RSS comparison)."""
    ok = [p for p in sweep.points if p.ok]
    assert [p.n_ctx for p in ok] == [256, 1024, 4096]
    for point in ok:
        mem = point.memory
        assert point.estimate is not None
        assert mem["kv_cache_bytes"] == point.estimate["kv_cache_bytes"]
        assert mem["peak_rss_bytes"] >= mem["rss_end_bytes"] > 0
        assert mem["rss_after_load_bytes"] >= mem["rss_before_load_bytes"]
        assert point.estimate_error_pct is not None
        assert point.load_ms is not None
        assert point.placement is not None and point.backend == point.placement["backend"]
        assert {r.backend for r in point.rows} == {point.backend}
        if point.backend == "CPU":
            assert abs(point.estimate_error_pct) < 5
            assert point.estimate_rss_error_pct is not None and point.estimate_rss_reason is None
            assert point.estimate_note is None
        else:  # n_gpu_layers 0 that still put buffers on a GPU: flagged, never labelled CPU
            assert point.estimate_note and all(r.backend_note for r in point.rows)
            assert any("ran partly on the GPU" in w for w in point.warnings)
        if mem["gpu"] is None:  # no GPU llama.cpp can use: VRAM fields present, null, explained
            assert mem["vram_used_bytes"] is None and mem["vram_reason"]
    kv = [p.memory["kv_cache_bytes"] for p in ok]
    assert kv == [256 * 1024, 1024 * 1024, 4096 * 1024]  # 1 KiB per token of context
    assert sweep.scaling is not None
    assert abs(sweep.scaling["estimate_vs_allocated_error_pct"]) < 5
    if all(p.backend == "CPU" for p in ok):  # host buffers: RSS is the comparison, not VRAM
        assert sweep.scaling["vram_growth_bytes"] is None and sweep.scaling["vram_reason"]


def test_rows_are_labelled_from_what_ran(sweep: BenchResult) -> None:
    """The CPU rows here say CPU because llama.cpp's buffer log shows only host buffers."""
    env = sweep.environment
    for point in (p for p in sweep.points if p.ok):
        assert point.placement is not None
        on_gpu = point.placement["gpu_devices"]
        assert (point.backend == "CPU") == (not on_gpu)
        for row in point.rows:
            assert row.n_gpu_layers == 0
            assert (row.backend_note is None) == (
                row.backend == "CPU" and not point.memory.get("vram_used_bytes")
            )
    # The environment names a GPU only when llama.cpp has one to use.
    assert (env["gpu"] is not None) == env["gpu_offload"]
    if not env["gpu_offload"]:
        assert env["gpu_reason"]


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
    # max_foreign_share=1: reused however busy this machine is (load: test_example_polish).
    first = measure_bandwidth(1, home=tmp_path, buffer_bytes=8 * 2**20, max_foreign_share=1.0)
    second = measure_bandwidth(1, home=tmp_path, buffer_bytes=8 * 2**20, max_foreign_share=1.0)
    assert first["cached"] is False and second["cached"] is True
    assert first["read_bytes_per_s"] == second["read_bytes_per_s"] > 0
    assert (tmp_path / "bench" / "bandwidth.json").is_file()
    # The main-memory figure reads past the caches: at least 4x the last-level cache.
    llc = last_level_cache_bytes()
    assert first["main_memory"] is True
    assert first["buffer_bytes"] >= max(8 * 2**20, 4 * (llc or 0))
    assert "max-reduction" in first["method"] and first["threads"] == 1


def test_bandwidth_probe_reads_the_decode_working_set(tmp_path: Path) -> None:
    """A working set smaller than the main-memory buffer is probed at its own size (rounded up
    a quarter octave), with the same threads, and cached separately."""
    small = measure_bandwidth(2, home=tmp_path, buffer_bytes=8 * 2**20, working_set_bytes=3_000_000)
    assert small["main_memory"] is False and small["threads"] == 2
    assert 3_000_000 <= small["buffer_bytes"] <= 1.2 * 3_000_000 + 2**20
    main = measure_bandwidth(2, home=tmp_path, buffer_bytes=8 * 2**20)
    assert main["cached"] is False and main["main_memory"] is True
    huge = measure_bandwidth(
        2, home=tmp_path, buffer_bytes=8 * 2**20, working_set_bytes=2**40, max_foreign_share=1.0
    )
    assert huge["cached"] is True and huge["buffer_bytes"] == main["buffer_bytes"]
    again = measure_bandwidth(
        2, home=tmp_path, buffer_bytes=8 * 2**20, working_set_bytes=3_100_000, max_foreign_share=1.0
    )
    assert again["cached"] is True  # same bucket


def test_last_level_cache_is_read_from_sysfs() -> None:
    llc = last_level_cache_bytes()
    if not Path("/sys/devices/system/cpu/cpu0/cache").is_dir():
        assert llc is None
    else:
        assert llc is not None and llc >= 256 * 1024


def test_generation_rows_report_the_bandwidth_bound(tiny_model: Path, tmp_path: Path) -> None:
    options = BenchOptions(**{**SMALL, "bandwidth": True}, bandwidth_buffer_bytes=8 * 2**20)  # type: ignore[arg-type]
    result = run_bench(tiny_model, options, home=tmp_path)
    pp, tg = result.rows
    assert pp.bandwidth_bound_ts is None and pp.bandwidth_note is None
    assert result.bandwidth is not None and result.bandwidth["main_memory"] is True
    if tg.backend != "CPU":
        pytest.skip(f"n_gpu_layers 0 ran on {tg.backend} (flagged: {tg.backend_note})")
    assert tg.bandwidth_bound_ts is not None and tg.bandwidth_ratio is not None
    assert tg.bandwidth_bytes_per_s is not None and tg.bandwidth_bytes_per_s > 0
    # The tiny model's few MB are probed at their own size (in cache), not at RAM size.
    assert tg.bandwidth_bytes_per_s != result.bandwidth["read_bytes_per_s"]
    if tg.bandwidth_ratio <= 1:
        assert tg.bandwidth_fraction == tg.bandwidth_ratio and tg.bandwidth_note is None
    else:
        assert tg.bandwidth_fraction is None and "x the host memory bound" in (
            tg.bandwidth_note or ""
        )


# --- the GPU findings, decided from measured inputs (these paths need no GPU) ----------------

MIB = 2**20
# llama.cpp's load log on a CUDA build (the H200 machine), n_gpu_layers 0 before the
# engine fix: weights and KV in host RAM, a 728 MiB CUDA compute buffer (op offload).
LOG_CPU_ROW_ON_GPU = [
    "load_tensors:   CPU_Mapped model buffer size =   235.16 MiB\n",
    "llama_context:  CUDA_Host  output buffer size =     1.00 MiB\n",
    "llama_kv_cache:        CPU KV buffer size =    36.00 MiB\n",
    "llama_kv_cache: size =   36.00 MiB (  2048 cells,  18 layers,  1/1 seqs), "
    "K (f16):   18.00 MiB, V (f16):   18.00 MiB\n",
    "llama_context:      CUDA0 compute buffer size =   728.00 MiB\n",
    "llama_context:  CUDA_Host compute buffer size =    21.02 MiB\n",
]
LOG_FULL_OFFLOAD = [
    "load_tensors:        CUDA0 model buffer size =   235.16 MiB\n",
    "load_tensors:   CPU_Mapped model buffer size =   160.00 MiB\n",  # token embeddings
    "llama_context:  CUDA_Host  output buffer size =     1.00 MiB\n",
    "llama_kv_cache:      CUDA0 KV buffer size =    36.00 MiB\n",
    "llama_context:      CUDA0 compute buffer size =   514.25 MiB\n",
    "llama_context:  CUDA_Host compute buffer size =    21.02 MiB\n",
]
LOG_PARTIAL = [
    "load_tensors:        CUDA0 model buffer size =   100.00 MiB\n",
    "load_tensors:   CPU_Mapped model buffer size =   300.00 MiB\n",
    "llama_kv_cache:      CUDA0 KV buffer size =    18.00 MiB\n",
    "llama_kv_cache:        CPU KV buffer size =    18.00 MiB\n",
    "llama_context:      CUDA0 compute buffer size =   514.25 MiB\n",
]
LOG_CPU = [
    "load_tensors:   CPU_Mapped model buffer size =   235.16 MiB\n",
    "load_tensors:   CPU_REPACK model buffer size =    80.00 MiB\n",
    "llama_context:        CPU  output buffer size =     1.00 MiB\n",
    "llama_kv_cache:        CPU KV buffer size =    36.00 MiB\n",
    "llama_context:        CPU compute buffer size =   514.25 MiB\n",
]


def placement_of(log: list[str]) -> dict[str, object]:
    return buffer_placement(parse_buffer_log(log).devices)


def test_buffer_placement_labels_what_ran() -> None:
    cpu = placement_of(LOG_CPU)
    assert (cpu["backend"], cpu["offload"], cpu["gpu_devices"]) == ("CPU", "none", [])
    ops = placement_of(LOG_CPU_ROW_ON_GPU)
    assert (ops["backend"], ops["offload"]) == ("CPU+CUDA0", "ops")
    assert ops["gpu_bytes"] == {"compute": 728 * MIB}
    full = placement_of(LOG_FULL_OFFLOAD)
    assert (full["backend"], full["offload"], full["gpu_devices"]) == ("CUDA0", "full", ["CUDA0"])
    partial = placement_of(LOG_PARTIAL)
    assert (partial["backend"], partial["offload"]) == ("CPU+CUDA0", "partial")
    assert buffer_placement(None)["backend"] is None


def test_a_cpu_row_with_gpu_buffers_is_flagged() -> None:
    note = backend_mismatch(0, placement_of(LOG_CPU_ROW_ON_GPU), 728 * MIB)
    assert note and "n_gpu_layers 0" in note and "CUDA0" in note and "compute 728" in note
    assert "ran partly on the GPU" in note
    held = backend_mismatch(0, placement_of(LOG_CPU), 500 * MIB)
    assert held and "500 MiB of VRAM" in held
    assert backend_mismatch(0, placement_of(LOG_CPU), 0) is None
    assert backend_mismatch(0, placement_of(LOG_CPU), None) is None
    assert backend_mismatch(99, placement_of(LOG_FULL_OFFLOAD), 900 * MIB) is None
    nothing = backend_mismatch(99, placement_of(LOG_CPU), None)
    assert nothing and "ran on the CPU" in nothing


HOST_BW = {"read_bytes_per_s": 23_500_000_000}
MODEL = 246_587_904


def test_gpu_rows_are_not_bounded_by_host_ram() -> None:
    """The issue's H200 row: 48.8x "of" the host bound; now no bound, with the reason."""
    full = bandwidth_bound(MODEL, 4650.0, "full", 99, HOST_BW, None)
    assert full["bandwidth_bound_ts"] is None and full["bandwidth_fraction"] is None
    assert "host RAM bandwidth does not bound" in full["bandwidth_note"]
    known = bandwidth_bound(MODEL, 4650.0, "full", 99, None, 4.8e12)
    assert known["bandwidth_bound_ts"] == pytest.approx(4.8e12 / MODEL, rel=1e-6)
    assert known["bandwidth_fraction"] == pytest.approx(4650.0 / (4.8e12 / MODEL), abs=1e-4)
    for offload in ("ops", "partial"):
        split = bandwidth_bound(MODEL, 300.0, offload, 0, HOST_BW, 4.8e12)
        assert (
            split["bandwidth_bound_ts"] is None
            and "no single memory bandwidth" in split["bandwidth_note"]
        )
    unknown = bandwidth_bound(MODEL, 300.0, None, 99, HOST_BW, None)
    assert unknown["bandwidth_bound_ts"] is None and "unknown" in unknown["bandwidth_note"]


def test_a_fraction_above_one_is_never_reported() -> None:
    bound = HOST_BW["read_bytes_per_s"] / MODEL  # ~95 t/s
    inside = bandwidth_bound(MODEL, 0.5 * bound, "none", 0, HOST_BW, None)
    assert inside["bandwidth_fraction"] == pytest.approx(0.5) and inside["bandwidth_note"] is None
    over = bandwidth_bound(MODEL, 2.3 * bound, "none", 0, HOST_BW, None)
    assert over["bandwidth_fraction"] is None and over["bandwidth_ratio"] == pytest.approx(2.3)
    assert "2.30x the host memory bound" in over["bandwidth_note"]
    assert bandwidth_bound(MODEL, 90.0, "none", 0, None, None)["bandwidth_bound_ts"] is None


def gpu_point(n_ctx: int, vram: int | None, rss: int, log: list[str]) -> ContextPoint:
    placement = placement_of(log)
    kv = n_ctx * 1024
    return ContextPoint(
        n_ctx=n_ctx, n_depth=0, ok=True, error=None, warnings=[], load_ms=1.0, rows=[],
        memory={"allocated_bytes": 100 * MIB + kv, "peak_rss_bytes": rss,
                "vram_used_bytes": vram, "vram_reason": None},
        estimate={"total_bytes": 100 * MIB + kv}, estimate_error_pct=0.0,
        estimate_rss_error_pct=None, backend=str(placement["backend"]), placement=placement,
    )  # fmt: skip


def test_context_sweep_on_a_gpu_compares_vram_not_rss() -> None:
    """The issue's sweep: RSS shrank by 32 KiB while the KV cache grew in VRAM."""
    assert rss_comparison(placement_of(LOG_CPU)) is None
    reason = rss_comparison(placement_of(LOG_FULL_OFFLOAD))
    assert reason and "CUDA0" in reason and "RSS does not hold them" in reason
    assert rss_comparison(placement_of(LOG_CPU_ROW_ON_GPU))  # a CUDA compute buffer
    first = gpu_point(512, 900 * MIB, 2000 * MIB, LOG_FULL_OFFLOAD)
    last = gpu_point(8192, 900 * MIB + 8 * MIB, 2000 * MIB - 32768, LOG_FULL_OFFLOAD)
    scaling = _scaling([first, last])
    assert scaling is not None
    assert scaling["peak_rss_growth_bytes"] is None and scaling["estimate_vs_rss_error_pct"] is None
    assert "RSS does not hold them" in scaling["rss_reason"]
    assert scaling["vram_growth_bytes"] == 8 * MIB
    assert scaling["estimate_vs_vram_error_pct"] == pytest.approx(-6.25)  # 7.5 MiB vs 8 MiB
    # On the CPU the same sweep compares RSS; a shrinking RSS gives no percentage.
    cpu = _scaling(
        [gpu_point(512, None, 2000 * MIB, LOG_CPU), gpu_point(8192, None, 1999 * MIB, LOG_CPU)]
    )
    assert cpu is not None and cpu["peak_rss_growth_bytes"] is None
    assert cpu["estimate_vs_rss_error_pct"] is None and "did not grow" in cpu["rss_reason"]


CPU_DEVICE = {"name": "CPU", "description": "Intel Xeon", "type": "CPU",
              "memory_total_bytes": 0, "memory_free_bytes": 0}  # fmt: skip
H200_DEVICE = {"name": "CUDA0", "description": "NVIDIA H200", "type": "GPU",
               "memory_total_bytes": 150 * 2**30, "memory_free_bytes": 140 * 2**30}  # fmt: skip
HIDDEN = {"backends": {"CPU": 1, "CUDA": 0}, "devices": [CPU_DEVICE], "reason": None}
VISIBLE = {"backends": {"CPU": 1, "CUDA": 1}, "devices": [CPU_DEVICE, H200_DEVICE], "reason": None}
CPU_BUILD = {"backends": {"CPU": 1}, "devices": [CPU_DEVICE], "reason": None}
NVML_H200 = {"vram_used_bytes": 0, "vram_total_bytes": 150 * 2**30, "gpu": "NVIDIA H200",
             "vram_reason": None}  # fmt: skip


def test_hidden_gpu_is_told_apart_from_a_build_without_gpu_backend(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    hidden = gpu_unavailable_reason(False, HIDDEN, NVML_H200)
    assert hidden and "no GPU device answered" in hidden and "CUDA backend" in hidden
    assert "CUDA_VISIBLE_DEVICES=''" in hidden and "NVIDIA H200" in hidden
    assert "no GPU backend" not in hidden
    none = gpu_unavailable_reason(False, CPU_BUILD, {"gpu": None})
    assert none and "no GPU backend" in none and "GGML_CUDA=on" in none
    assert gpu_unavailable_reason(True, VISIBLE, NVML_H200) is None


def test_the_json_names_a_gpu_only_when_llama_cpp_can_use_it() -> None:
    hidden = gpu_environment(HIDDEN, NVML_H200)
    assert hidden["gpu"] is None and hidden["gpu_offload"] is False
    assert hidden["gpu_backends"] == ["CUDA"] and "0 devices" in hidden["gpu_reason"]
    visible = gpu_environment(VISIBLE, NVML_H200)
    assert visible["gpu"] == "NVIDIA H200" and visible["gpu_offload"] is True
    assert visible["gpu_reason"] is None and visible["gpu_devices"][0]["name"] == "CUDA0"
    point = vram_figures(NVML_H200, HIDDEN)
    assert point["gpu"] is None and point["vram_used_bytes"] is None
    assert "NVIDIA H200" in point["vram_reason"]
    assert vram_figures(NVML_H200, VISIBLE) == NVML_H200


def test_ggml_devices_lists_this_build() -> None:
    inventory = ggml_devices()
    assert inventory["reason"] is None
    assert inventory["backends"].get("CPU") == 1
    assert any(d["type"] == "CPU" for d in inventory["devices"])


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
