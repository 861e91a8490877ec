"""KV cache type and flash attention as engine settings, on the real engine and tiny models."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from lifecycle.config import load_workspace
from lifecycle.engines import GenerationRequest, LoadOptions
from lifecycle.engines.llama_cpp import LlamaCppEngine
from lifecycle.errors import EXIT_USAGE
from lifecycle.estimate import estimate_file
from lifecycle.runner import EvalOptions, run_eval
from lifecycle.store import Store
from lifecycle.variants import resolve_variants

# llama.cpp logs buffer sizes in MiB with two decimals: each buffer is known to +-0.005 MiB.
LOG_PRECISION = 0.005 * 1024 * 1024
N_CTX = 512


def _measured(path: Path, **cache: object):  # type: ignore[no-untyped-def]
    model = LlamaCppEngine().load_measured(path, LoadOptions(n_ctx=N_CTX, n_threads=1, **cache))  # type: ignore[arg-type]
    try:
        text = model.generate(GenerationRequest(prompt="hello", max_tokens=4)).text
        return model.buffer_bytes(), text
    finally:
        model.close()


def test_q4_0_cache_loads_is_smaller_and_matches_the_estimate(tiny_model: Path) -> None:
    f16, _ = _measured(tiny_model)
    q4, text = _measured(tiny_model, type_k="q4_0", type_v="q4_0", flash_attn=True)
    assert (f16.type_k, f16.type_v) == ("f16", "f16")
    assert (q4.type_k, q4.type_v) == ("q4_0", "q4_0")
    assert text  # it decodes
    # 18 bytes per 32 elements against 2 bytes per element.
    assert abs(q4.kv_cache_bytes - f16.kv_cache_bytes * 18 / 64) <= LOG_PRECISION
    estimate = estimate_file(tiny_model, N_CTX, type_k="q4_0", type_v="q4_0", flash_attn=True)
    assert abs(estimate.kv_cache_bytes - q4.kv_cache_bytes) <= LOG_PRECISION


def test_quantized_k_alone_needs_no_flash_attention(tiny_model: Path) -> None:
    q8, _ = _measured(tiny_model, type_k="q8_0")
    assert (q8.type_k, q8.type_v) == ("q8_0", "f16")
    estimate = estimate_file(tiny_model, N_CTX, type_k="q8_0", type_v="f16")
    assert abs(estimate.kv_cache_bytes - q8.kv_cache_bytes) <= LOG_PRECISION


def _configure(root: Path, engine: str = "", variants: str = "") -> None:
    text = (
        f"[engine]\nthreads = 2\nseed = 7\n{engine}\n"
        '[models.tiny]\nmodelfile = "modelfiles/tiny.Modelfile"\nsuites = ["triage"]\n'
    )
    if variants:
        text += f"[models.tiny.variants]\n{variants}\n"
    (root / "lifecycle.toml").write_text(text, encoding="utf-8")


@pytest.mark.parametrize(
    ("engine", "variants", "field"),
    [
        ('kv_cache_type = "q4_0"', "", "engine.kv_cache_type:"),
        ('kv_cache_type_v = "q8_0"', "", "engine.kv_cache_type_v:"),
        ("flash_attention = false", 'kv_cache_type = ["f16", "q4_0"]', "variants.kv_cache_type:"),
        (
            'kv_cache_type = "q4_0"\nflash_attention = true',
            "flash_attention = false",
            "variants.flash_attention:",
        ),
    ],
)
def test_quantized_v_without_flash_attention_is_a_config_error(
    tiny_workspace: Path, run_cli: Callable[..., tuple[int, str, str]], engine: str, variants: str,
    field: str,
) -> None:  # fmt: skip
    _configure(tiny_workspace, engine, variants)
    code, _out, err = run_cli("eval", "--workspace", str(tiny_workspace))
    assert code == EXIT_USAGE
    assert field in err and "flash_attention = true" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("engine", "variants", "field"),
    [
        ('kv_cache_type = "q3_k"', "", "engine.kv_cache_type:"),
        ('flash_attention = "yes"', "", "engine.flash_attention:"),
        ("", 'kv_cache_type_k = ["f16", 8]', "variants.kv_cache_type_k:"),
    ],
)
def test_bad_cache_values_name_the_key(
    tiny_workspace: Path, run_cli: Callable[..., tuple[int, str, str]], engine: str, variants: str,
    field: str,
) -> None:  # fmt: skip
    _configure(tiny_workspace, engine, variants)
    code, _out, err = run_cli("eval", "--workspace", str(tiny_workspace))
    assert code == EXIT_USAGE
    assert "lifecycle.toml" in err and field in err


def test_cache_axes_make_variants_and_are_recorded(tiny_workspace: Path) -> None:
    _configure(
        tiny_workspace,
        "flash_attention = true",
        'kv_cache_type = ["f16", "q4_0"]\nkv_cache_type_k = "q8_0"',
    )
    workspace = load_workspace(tiny_workspace)
    variants = resolve_variants(workspace, Store(workspace.home))
    assert [v.name for v in variants] == ["tiny:kvf16", "tiny:kvq4_0"]
    assert variants[0].id != variants[1].id  # siblings must not share results
    record = run_eval(workspace, EvalOptions(modes=["free"], limit=1, resume=False))
    env = record.environment
    # The model-wide kv_cache_type_k wins over the axis's K; V follows the axis.
    assert env["kv_cache_type_k"] == {"tiny:kvf16": "q8_0", "tiny:kvq4_0": "q8_0"}
    assert env["kv_cache_type_v"] == {"tiny:kvf16": "f16", "tiny:kvq4_0": "q4_0"}
    assert env["flash_attention"] == {"tiny:kvf16": True, "tiny:kvq4_0": True}
    assert not [v.error for v in record.variants if v.error]


def test_a_model_wide_setting_keeps_the_variant_id(tiny_workspace: Path) -> None:
    """Like [engine]'s, a model's single KV cache setting is the runtime, not the recipe: the
    pinned variant stays the same variant, so the gate judges the change against it."""
    workspace = load_workspace(tiny_workspace)
    (before,) = resolve_variants(workspace, Store(workspace.home))
    _configure(tiny_workspace, "flash_attention = true", 'kv_cache_type = "q4_0"')
    workspace = load_workspace(tiny_workspace)
    (after,) = resolve_variants(workspace, Store(workspace.home))
    assert (after.name, after.id) == (before.name, before.id)
    assert after.cache == {"kv_cache_type": "q4_0"}


def test_smoke_reevaluates_and_check_lock_reports_a_kv_change(
    tiny_workspace: Path, run_cli: Callable[..., tuple[int, str, str]]
) -> None:
    ws = str(tiny_workspace)
    code, out, err = run_cli("smoke", "--workspace", ws, "--offline", "--no-bench", "--json")
    assert code == 0, err
    lock = json.loads((tiny_workspace / "models.lock").read_text(encoding="utf-8"))
    runtime = lock["variants"]["tiny"]["runtime"]
    assert runtime["kv_cache_type_k"] == "f16" and runtime["flash_attention"] is False
    assert runtime["engine_version"].startswith("llama-cpp-python ")
    assert runtime["ggml_commit"] and runtime["cpu_features"]

    code, out, _err = run_cli("check-lock", "--workspace", ws)
    assert code == 0 and "runtime changed" not in out

    _configure(tiny_workspace, 'kv_cache_type_k = "q8_0"')
    code, out, _err = run_cli("check-lock", "--workspace", ws)
    assert code == 0
    assert "tiny: runtime changed: kv_cache_type_k f16 → q8_0" in out
    code, out, _err = run_cli("check-lock", "--workspace", ws, "--json")
    assert json.loads(out)["runtime_changes"] == {
        "tiny": "runtime changed: kv_cache_type_k f16 → q8_0"
    }

    # A changed KV cache type never reuses the cached f16 results.
    code, out, err = run_cli("smoke", "--workspace", ws, "--offline", "--no-bench", "--json")
    assert code in (0, 3), err
    assert json.loads(out)["evaluated"] == ["tiny"]
