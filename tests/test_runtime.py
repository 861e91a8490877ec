"""The runtime a run was produced under, and the lines that say what moved."""

from __future__ import annotations

from pathlib import Path

from lifecycle.baselines import variant_environment
from lifecycle.config import load_workspace
from lifecycle.runner import EvalOptions, run_eval
from lifecycle.runtime import (
    cpu_features,
    describe_runtime_change,
    environment_runtime_change,
    runtime_changes,
    runtime_of,
)


def test_a_real_run_records_its_runtime(tiny_workspace: Path) -> None:
    workspace = load_workspace(tiny_workspace)
    record = run_eval(workspace, EvalOptions(modes=["free"], limit=1, resume=False))
    env = variant_environment(record.environment, "tiny")
    runtime = runtime_of(env)
    assert runtime["engine"] == "llama-cpp"
    assert runtime["engine_version"].startswith("llama-cpp-python ")
    assert runtime["ggml_commit"] and runtime["ggml_version"] and "CPU" in runtime["backends"]
    assert runtime["cpu_features"]  # the build's CPU features, from llama_print_system_info
    assert runtime["kv_cache_type_k"] == runtime["kv_cache_type_v"] == "f16"
    assert runtime["flash_attention"] is False
    assert environment_runtime_change(env, env) is None

    upgraded = {**env, "engine_version": "llama-cpp-python 0.3.37", "kv_cache_type_k": "q4_0"}
    upgraded["kv_cache_type_v"] = "q4_0"
    assert environment_runtime_change(env, upgraded) == (
        "runtime changed: llama-cpp-python "
        + runtime["engine_version"].split()[-1]
        + " → 0.3.37, kv_cache_type f16 → q4_0"
    )
    # A record from before the cache settings existed ran f16 without flash attention.
    older = {k: v for k, v in env.items() if k not in ("kv_cache_type_k", "kv_cache_type_v")}
    assert environment_runtime_change(older, env) is None
    assert "kv_cache_type f16 → q4_0" in str(environment_runtime_change(older, upgraded))


def test_each_fact_is_told_and_unknowns_are_not_changes() -> None:
    old = {
        "engine_version": "llama-cpp-python 0.3.36",
        "ggml_commit": "0c1e570",
        "cpu_features": ["AVX", "AVX2", "AVX512F"],
        "backends": ["CPU"],
        "kv_cache_type_k": "f16",
        "kv_cache_type_v": "f16",
        "flash_attention": False,
    }
    new = {
        **old,
        "ggml_commit": "1d2e3f4",
        "cpu_features": ["AVX", "AVX2", "AMX"],
        "backends": ["CPU", "CUDA"],
        "kv_cache_type_k": "q8_0",
        "flash_attention": True,
    }
    assert runtime_changes(old, new) == [
        "ggml 0c1e570 → 1d2e3f4",
        "backend CPU → CPU+CUDA",
        "cpu features +AMX -AVX512F",
        "kv_cache_type_k f16 → q8_0",
        "flash_attention off → on",
    ]
    server = {k: v for k, v in new.items() if not k.startswith(("kv_", "flash"))}
    assert runtime_changes(server, new) == runtime_changes(new, server) == []
    assert describe_runtime_change(None, new) is None
    assert runtime_of({"engine": "ollama", "kv_cache_type_k": None}) == {"engine": "ollama"}


def test_cpu_features_come_from_the_system_info_line() -> None:
    line = "CPU : SSE3 = 1 | AVX = 1 | AVX512 = 0 | AMX_INT8 = 1 | REPACK = 1 |"
    assert cpu_features(line) == ["SSE3", "AVX", "AMX_INT8", "REPACK"]
    assert cpu_features("") is None
