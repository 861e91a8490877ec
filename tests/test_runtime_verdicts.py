"""A runtime change on the real engine, end to end: the weekly job pins under one KV cache
type, then runs under another with byte-identical weights. Every flip is judged by the
margins the engine recorded, never excused by which key changed."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from _promote import init_repo, pass_schema_cases, schema_only

from lifecycle.envnames import ENV_SCHEMA_DECODER

Run = Callable[..., tuple[int, str, str]]


def _set(root: Path, table: str, text: str) -> None:
    config = root / "lifecycle.toml"
    config.write_text(
        config.read_text(encoding="utf-8").replace(f"[{table}]\n", f"[{table}]\n{text}\n", 1),
        encoding="utf-8",
    )


def _smoke(run_cli: Run, root: Path, *extra: str) -> tuple[int, dict]:
    code, out, err = run_cli("smoke", "-C", str(root), "--offline", "--no-bench", "--json", *extra)
    assert out.strip(), err
    return code, json.loads(out)


def test_a_quantized_kv_cache_is_judged_by_margin_not_excused(
    tiny_workspace: Path, run_cli: Run
) -> None:
    schema_only(tiny_workspace)
    pass_schema_cases(tiny_workspace)
    repo = init_repo(tiny_workspace)
    code, doc = _smoke(run_cli, tiny_workspace, "--commit")
    assert code == 0, doc["headline"]
    baseline = json.loads((tiny_workspace / "baselines" / "tiny.json").read_text())
    cases = baseline["variants"]["tiny"]["cases"]
    assert cases and all(c.get("margin") is not None for c in cases)

    # Threads 2 -> 1: not a numeric key; the same outputs, nothing flips.
    config = tiny_workspace / "lifecycle.toml"
    pinned = config.read_text(encoding="utf-8")
    config.write_text(pinned.replace("threads = 2", "threads = 1"), encoding="utf-8")
    code, doc = _smoke(run_cli, tiny_workspace)
    assert code == 0 and not doc["gate"]["environment_flips"], doc["headline"]
    repo.git.checkout("--", ".")

    # A q4_0 KV cache with the same weights: the random model loses some answers.
    _set(tiny_workspace, "engine", 'kv_cache_type = "q4_0"\nflash_attention = true')
    code, doc = _smoke(run_cli, tiny_workspace)
    flips = doc["gate"]["environment_flips"]
    assert flips, "a q4_0 KV cache changed no verdict of the tiny model"
    assert all(f["baseline_margin"] is not None and f["margin"] is not None for f in flips)
    assert "runtime changed: kv_cache_type f16 → q4_0" in doc["gate"]["headline"]
    lost = [f for f in flips if f["judged"] == "regression"]
    regressions = {r["case"] for r in doc["gate"]["regressions"]}
    assert regressions == {f["case"] for f in lost}
    assert code == (3 if lost else 0)

    # The bound decides: nothing is a near tie under 0, everything is under a huge bound.
    # (A smoke that passes re-pins under the new runtime: start each from the committed pins.)
    repo.git.checkout("--", "models.lock", "baselines")
    config.write_text(config.read_text() + "\n[gate]\nnoise_margin = 0.0\n")
    code, doc = _smoke(run_cli, tiny_workspace)
    lost = [f for f in doc["gate"]["environment_flips"] if f["baseline_passed"]]
    assert lost and code == 3 and all(f["judged"] == "regression" for f in lost)
    repo.git.checkout("--", "models.lock", "baselines")
    config.write_text(config.read_text().replace("noise_margin = 0.0", "noise_margin = 1000.0"))
    code, doc = _smoke(run_cli, tiny_workspace)
    assert code == 0 and not doc["gate"]["regressions"], doc["headline"]
    assert all(f["judged"] in ("noise", "gained") for f in doc["gate"]["environment_flips"])


def test_the_schema_decoder_is_a_runtime_change_judged_by_margin(
    tiny_workspace: Path, run_cli: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Pinned on llama.cpp's GBNF path (the tiny_workspace fixture's setting), then run with
    # llguidance's forced tokens: the same weights, another decoder.
    schema_only(tiny_workspace)
    pass_schema_cases(tiny_workspace)
    init_repo(tiny_workspace)
    code, doc = _smoke(run_cli, tiny_workspace, "--commit")
    assert code == 0, doc["headline"]
    lock = json.loads((tiny_workspace / "models.lock").read_text(encoding="utf-8"))
    assert lock["variants"]["tiny"]["runtime"]["schema_decoder"] == "gbnf"

    monkeypatch.delenv(ENV_SCHEMA_DECODER)
    code, doc = _smoke(run_cli, tiny_workspace)
    assert "schema decoder gbnf → llguidance" in doc["gate"]["headline"]
    (change,) = doc["gate"]["environment_changes"]
    assert [c["key"] for c in change["changes"]] == ["schema_decoder"]
    # Each flip has both margins and a judgement; only the confident ones are regressions.
    flips = doc["gate"]["environment_flips"]
    assert all(f["judged"] in ("noise", "regression", "gained") for f in flips)
    lost = {f["case"] for f in flips if f["judged"] == "regression"}
    assert {r["case"] for r in doc["gate"]["regressions"]} == lost
    # What the gate fails on is the decoder's doing, and named so (here the random model's
    # first answer writes digits to the token limit under llguidance: JSON-valid 100% → 75%).
    failed = [c for c in doc["gate"]["checks"] if c["status"] == "fail"]
    assert all(c["cause"] == "environment" for c in failed)
    assert code == (3 if lost or failed else 0)


def test_an_older_pin_without_a_decoder_reads_as_gbnf() -> None:
    from lifecycle.lockfile import LockEntry
    from lifecycle.runtime import runtime_changes

    old = {"engine": "llama-cpp", "engine_version": "llama-cpp-python 0.3.36"}
    new = {**old, "schema_decoder": "llguidance 1.9.1"}
    assert runtime_changes(old, new) == ["schema decoder gbnf → llguidance 1.9.1"]
    assert runtime_changes(old, {**old, "schema_decoder": "gbnf"}) == []
    assert runtime_changes({"engine": "openai"}, {"engine": "openai"}) == []
    pinned = LockEntry(model="m", blob_sha256="sha256:0", runtime=old)
    assert pinned.same_pin(
        LockEntry(model="m", blob_sha256="sha256:0", runtime={**old, "schema_decoder": "gbnf"})
    )
    assert not pinned.same_pin(LockEntry(model="m", blob_sha256="sha256:0", runtime=new))
