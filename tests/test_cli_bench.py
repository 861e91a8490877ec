"""`lifecycle bench` and `lifecycle estimate` through the real CLI, engine and tiny model."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

CliRun = Callable[..., tuple[int, str, str]]
FAST = ("-p", "16", "-n", "2", "-r", "2", "--threads", "1", "--no-bandwidth", "-q")


def test_bench_json_has_one_row_per_test(run_cli: CliRun, tiny_workspace: Path) -> None:
    code, out, err = run_cli("bench", "-C", str(tiny_workspace), "tiny", "--json", *FAST)
    assert code == 0, err
    doc = json.loads(out)
    assert [r["test"] for r in doc["rows"]] == ["pp16", "tg2"]
    assert {
        "n_prompt",
        "n_gen",
        "n_depth",
        "n_threads",
        "avg_ts",
        "stddev_ts",
        "samples_ts",
    } <= set(doc["rows"][0])
    (point,) = doc["points"]
    assert point["n_ctx"] == 1024  # the Modelfile's num_ctx
    assert point["memory"]["kv_cache_bytes"] == point["estimate"]["kv_cache_bytes"]
    assert doc["environment"]["n_threads"] == 1 and doc["environment"]["engine_version"]
    assert doc["variant"]["name"] == "tiny" and doc["latency"] is None
    # Each row says where it ran (llama.cpp's buffers); the JSON names a GPU only when
    # llama.cpp has a GPU device to use.
    env = doc["environment"]
    assert (env["gpu"] is not None) == env["gpu_offload"]
    for row in doc["rows"]:
        assert row["backend"] and row["n_gpu_layers"] == 0
        assert (row["backend"] == "CPU") or row["backend_note"]
    assert point["placement"]["backend"] == doc["rows"][0]["backend"]


def test_bench_table_sweep_chart_and_eval_latency(run_cli: CliRun, tiny_workspace: Path) -> None:
    code, _, err = run_cli("eval", "-C", str(tiny_workspace), "-q", "--limit", "2")
    assert code == 0, err
    chart = tiny_workspace / "ctx.png"
    code, out, err = run_cli(
        "bench", "-C", str(tiny_workspace), "tiny", "--ctx", "256,512", "--chart", str(chart), *FAST
    )
    assert code == 0, err
    assert "pp16 @ d238" in out and "tg2 @ d494" in out
    assert "last eval run (4 cases)" in out and "time to first token" in out
    assert "VRAM" in out or "vram" in out.lower()
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("bad", ["0", "-5", "abc", "512,", "1.5k"])
def test_bad_context_sizes_are_usage_errors(
    run_cli: CliRun, tiny_workspace: Path, bad: str
) -> None:
    code, out, err = run_cli("bench", "-C", str(tiny_workspace), "tiny", "--ctx", bad, *FAST)
    assert code == 2 and out == ""
    assert "--ctx" in err


def test_prompt_larger_than_num_ctx_is_a_usage_error(run_cli: CliRun, tiny_workspace: Path) -> None:
    code, _, err = run_cli("bench", "-C", str(tiny_workspace), "tiny", "-p", "4096", "-q")
    assert code == 2 and "num_ctx 1024" in err


def test_model_that_fails_to_load_exits_1(run_cli: CliRun, tiny_workspace: Path) -> None:
    (tiny_workspace / "modelfiles" / "tiny.gguf").write_bytes(
        b"GGUF\x03\x00\x00\x00" + b"\xff" * 64
    )
    code, out, err = run_cli("bench", "-C", str(tiny_workspace), "tiny", *FAST)
    assert code == 1 and out == ""
    assert err.startswith("error:") and len(err.strip().splitlines()) == 1


def test_gpu_without_gpu_is_a_clear_usage_error(
    run_cli: CliRun, tiny_workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No GPU for llama.cpp: on a CPU build, the build has no GPU backend; on a GPU build with
    the devices hidden, the backend is named and no device answered (never "no backend")."""
    from lifecycle.engines.devices import ggml_devices

    inventory = ggml_devices()
    if any(d["type"] in ("GPU", "IGPU") for d in inventory["devices"]):
        pytest.skip("llama.cpp has a GPU device here (benchmarks/gpu_check.py hides it)")
    code, _, err = run_cli("bench", "-C", str(tiny_workspace), "tiny", "--gpu", *FAST)
    assert code == 2 and "--gpu" in err
    gpu_backends = [b for b in inventory["backends"] if b not in ("CPU", "BLAS", "RPC")]
    if gpu_backends:
        assert "no GPU device answered" in err and gpu_backends[0] in err
    else:
        assert "no GPU backend" in err and "GGML_CUDA=on" in err


def test_bench_table_labels_rows_and_explains_the_bound(
    run_cli: CliRun, tiny_workspace: Path
) -> None:
    fast = tuple(a for a in FAST if a != "--no-bandwidth")
    code, out, err = run_cli("bench", "-C", str(tiny_workspace), "tiny", *fast)
    assert code == 0, err
    header = out.splitlines()[0]
    assert "backend" in header and "of bw bound" in header
    tg = next(line for line in out.splitlines() if " tg2 " in f" {line} ")
    assert " CPU " in f" {tg} " or "note:" in out
    # A fraction is printed only when it is one; otherwise "n/a" and a note says why.
    cell = tg.rstrip().split()[-1]
    assert cell.endswith("%") or "n/a" in tg
    if "n/a" in tg:
        assert "note: tg2:" in out
    assert "memory bandwidth:" in out


def test_estimate_file_table_and_json(run_cli: CliRun, tiny_model: Path) -> None:
    code, out, err = run_cli("estimate", str(tiny_model), "--ctx", "512,2k")
    assert code == 0, err
    assert "total MiB" in out and "1024 bytes per token" in out and "2048" in out
    code, out, _ = run_cli(
        "estimate", str(tiny_model), "--ctx", "4096", "--json", "--cache-type-k", "q8_0"
    )
    assert code == 0
    (estimate,) = json.loads(out)["estimates"]
    assert estimate["type_k"] == "q8_0" and estimate["exceeds_trained_context"] is True


def test_estimate_workspace_model_and_bad_input(run_cli: CliRun, tiny_workspace: Path) -> None:
    code, out, _ = run_cli("estimate", "-C", str(tiny_workspace), "tiny", "--json")
    assert code == 0 and json.loads(out)["estimates"][0]["n_ctx"] == 2048
    assert run_cli("estimate", "-C", str(tiny_workspace), "tiny", "--ctx", "0")[0] == 2
    assert run_cli("estimate", "-C", str(tiny_workspace), "tiny", "--cache-type-v", "q9")[0] == 2
    assert run_cli("estimate", "-C", str(tiny_workspace), "nonexistent")[0] == 2
