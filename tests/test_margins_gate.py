"""The gate judges flips across a runtime change by their decision margins.

The run records here are built by hand because the thing under test is the gate's decision
over recorded margins (the engine's margins are tested against the real engine in
test_margins_engine.py). A runtime change is the baseline's recorded environment differing
(engine build, KV cache type, batching) with the same weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _promote import make_record

from lifecycle.baselines import baseline_entry
from lifecycle.config import load_workspace
from lifecycle.errors import UsageError
from lifecycle.gate import GateSettings, read_gate_settings, run_gate
from lifecycle.stats import mcnemar_exact, wilson_interval

CASES = {f"c{i}": True for i in range(10)}
CONFIDENT = dict.fromkeys(CASES, 3.0)


def _gate(now_verdicts, now_margins, base_margins=CONFIDENT, **env):
    base = make_record(CASES, margins=base_margins, threshold=0.5)
    now = make_record(
        now_verdicts,
        margins=now_margins,
        threshold=0.5,
        environment=env or {"kv_cache_type_k": "q4_0", "kv_cache_type_v": "q4_0"},
    )
    return run_gate(now, {"tiny": baseline_entry(base, "tiny", None)}, GateSettings())


def test_a_confident_case_lost_after_a_kv_cache_change_is_a_regression() -> None:
    gate = _gate({**CASES, "c3": False}, {**CONFIDENT, "c3": 0.1})
    assert not gate.passed and gate.exit_code == 3
    assert [r.case for r in gate.regressions] == ["c3"]
    regression = gate.regressions[0]
    assert (regression.baseline_margin, regression.margin) == (3.0, 0.1)
    assert [(f.case, f.judged) for f in gate.environment_flips] == [("c3", "regression")]
    assert any(
        c["key"] == "kv_cache_type_v" for e in gate.environment_changes for c in e["changes"]
    )
    assert gate.runtime_changes == {"tiny": "runtime changed: kv_cache_type f16 → q4_0"}
    assert "runtime changed: kv_cache_type f16 → q4_0" in gate.headline()


def test_a_near_tie_that_flips_after_an_engine_upgrade_is_noise() -> None:
    base_margins = {**CONFIDENT, "c3": 0.05}
    gate = _gate(
        {**CASES, "c3": False},
        {**CONFIDENT, "c3": 0.2},
        base_margins,
        engine_version="llama-cpp-python 0.3.99",
    )
    assert gate.passed and gate.exit_code == 0 and not gate.regressions
    (flip,) = gate.environment_flips
    assert (flip.case, flip.judged, flip.baseline_margin, flip.margin) == ("c3", "noise", 0.05, 0.2)
    assert "1 near tie(s) flipped (noise)" in gate.headline()
    # The rate is compared over the cases that are not near ties on both sides.
    rate = next(c for c in gate.checks if c.name == "pass_rate")
    assert rate.status == "pass" and "9 cases not near ties" in rate.message


def test_a_near_tie_only_in_one_run_is_a_regression() -> None:
    gate = _gate({**CASES, "c3": False}, {**CONFIDENT, "c3": 0.01}, {**CONFIDENT, "c3": 0.9})
    assert [r.case for r in gate.regressions] == ["c3"] and gate.exit_code == 3


def test_the_bound_is_a_setting() -> None:
    base_margins = {**CONFIDENT, "c3": 0.8}
    base = make_record(CASES, margins=base_margins, threshold=0.5)
    now = make_record(
        {**CASES, "c3": False},
        margins={**CONFIDENT, "c3": 0.7},
        threshold=0.5,
        engine_version="llama-cpp-python 0.3.99",
    )
    baselines = {"tiny": baseline_entry(base, "tiny", None)}
    assert run_gate(now, baselines, GateSettings()).exit_code == 3
    assert run_gate(now, baselines, GateSettings(noise_margin=1.0)).exit_code == 0


def test_a_baseline_without_margins_keeps_the_rule_before_margins() -> None:
    gate = _gate({**CASES, "c3": False}, {**CONFIDENT, "c3": 0.1}, base_margins={})
    assert gate.passed and not gate.regressions
    assert [(f.case, f.judged) for f in gate.environment_flips] == [("c3", "unknown")]
    margins = next(c for c in gate.checks if c.name == "margins")
    assert margins.status == "skip" and "re-pin" in margins.message
    rates = next(c for c in gate.checks if c.name == "rates")
    assert rates.status == "skip" and "predates decision margins" in rates.message


def test_mixed_baselines_are_judged_per_case() -> None:
    base_margins = {k: v for k, v in CONFIDENT.items() if k != "c4"}  # c4 pinned without
    gate = _gate({**CASES, "c3": False, "c4": False}, CONFIDENT, base_margins)
    judged = {f.case: f.judged for f in gate.environment_flips}
    assert judged == {"c3": "regression", "c4": "unknown"}
    assert [r.case for r in gate.regressions] == ["c3"]


def test_the_same_flip_in_the_same_environment_is_a_regression_whatever_its_margin() -> None:
    base = make_record(CASES, margins={**CONFIDENT, "c3": 0.01}, threshold=0.5)
    now = make_record({**CASES, "c3": False}, margins={**CONFIDENT, "c3": 0.01}, threshold=0.5)
    gate = run_gate(now, {"tiny": baseline_entry(base, "tiny", None)}, GateSettings())
    assert [r.case for r in gate.regressions] == ["c3"] and not gate.environment_flips


def test_the_pass_rate_shows_the_paired_test_and_intervals() -> None:
    lost = {f"c{i}": False for i in range(4)}
    gate = _gate({**CASES, **lost}, CONFIDENT)
    rate = next(c for c in gate.checks if c.name == "pass_rate")
    assert rate.status == "fail"
    assert "flips 4 lost / 0 gained, McNemar p=0.12" in rate.message
    assert "95% CI 72%–100% → 31%–83%" in rate.message


def test_wilson_and_mcnemar_against_known_values() -> None:
    # Reference values computed by hand from the formulas (Wilson 1927; exact binomial).
    low, high = wilson_interval(30, 60)
    assert low == pytest.approx(0.37735, abs=1e-5) and high == pytest.approx(0.62265, abs=1e-5)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(9, 0) == pytest.approx(2 / 512)
    assert mcnemar_exact(6, 2) == pytest.approx(2 * (1 + 8 + 28) / 256)


@pytest.mark.parametrize("value", ["-0.5", '"wide"'])
def test_a_bad_noise_margin_names_the_key(tmp_path: Path, value: str) -> None:
    config = tmp_path / "lifecycle.toml"
    config.write_text(f'[models.m]\nmodelfile = "m"\n[gate]\nnoise_margin = {value}\n', "utf-8")
    with pytest.raises(UsageError) as caught:
        read_gate_settings(load_workspace(tmp_path))
    assert "gate.noise_margin" in str(caught.value)


def test_flips_carry_both_margins_in_the_json() -> None:
    gate = _gate({**CASES, "c3": False}, {**CONFIDENT, "c3": 0.1})
    doc = json.loads(json.dumps(gate.to_dict()))
    (flip,) = doc["environment_flips"]
    assert flip["judged"] == "regression" and flip["baseline_margin"] == 3.0
    assert doc["regressions"][0]["margin"] == 0.1
