"""The regression gate: baselines vs runs, thresholds, environment changes, JUnit, the CLI."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import pytest
from _promote import make_record, pass_schema_cases, schema_only

from lifecycle.baselines import Baseline, baseline_entry
from lifecycle.config import load_workspace
from lifecycle.errors import ConfigError
from lifecycle.gate import GateSettings, read_gate_settings, run_gate
from lifecycle.gaterender import render_junit, render_markdown
from lifecycle.results import RunRecord

Run = Callable[..., tuple[int, str, str]]
# The least lifecycle.toml load_workspace takes: one model (its Modelfile is not read).
ONE_MODEL = '[models.m]\nmodelfile = "m.Modelfile"\n'


def baselines_of(record: RunRecord, bench: dict[str, Any] | None = None) -> dict[str, Baseline]:
    return {v.variant.name: baseline_entry(record, v.variant.name, bench) for v in record.variants}


def test_identical_run_passes() -> None:
    record = make_record({"a": True, "b": False})
    result = run_gate(record, baselines_of(record))
    assert result.passed and not result.regressions and not result.environment_changes
    names = {c.name for c in result.checks}
    assert {"threshold", "pass_rate", "json_valid_rate", "schema_valid_rate"} <= names
    assert "generation_tokens_per_s" in names


def test_no_baseline_is_a_first_pin() -> None:
    result = run_gate(make_record({"a": True}), {})
    assert result.passed
    assert result.variants[0].has_baseline is False
    assert any(c.name == "baseline" and c.status == "skip" for c in result.checks)


def test_regression_fails_and_names_case_with_diff() -> None:
    base = make_record({"a": True, "b": True})
    now = make_record({"a": True, "b": False}, golden_digest="sha256:" + "9" * 64)
    result = run_gate(now, baselines_of(base), GateSettings(max_pass_rate_drop=1.0))
    assert not result.passed
    [reg] = result.regressions
    assert (reg.variant, reg.suite, reg.mode, reg.case) == ("tiny", "triage", "schema", "b")
    assert reg.diff and "category" in reg.diff
    assert reg.causes == ["golden set"]
    doc = result.to_dict()
    assert doc["passed"] is False and doc["regressions"][0]["case"] == "b"
    assert "passed in the baseline" in doc["variants"][0]["failures"][0]
    text = render_markdown(result)
    assert "FAIL" in text and "`b`" in text


def test_rate_drop_within_threshold_passes_but_regression_still_fails() -> None:
    base = make_record({"a": True, "b": True, "c": True, "d": True})
    now = make_record({"a": True, "b": True, "c": True, "d": False})
    loose = GateSettings(max_pass_rate_drop=0.3, max_schema_valid_drop=0.3)
    result = run_gate(now, baselines_of(base), loose)
    assert [c.status for c in result.checks if c.name == "pass_rate"] == ["pass"]
    assert not result.passed  # the case that regressed
    tolerant = GateSettings(max_pass_rate_drop=0.3, fail_on_regression=False)
    assert run_gate(now, baselines_of(base), tolerant).passed
    strict = run_gate(now, baselines_of(base), GateSettings(fail_on_regression=False))
    assert [c.status for c in strict.checks if c.name == "pass_rate"] == ["fail"]


def test_threshold_not_met_refuses_a_candidate_and_fails_a_pinned_variant() -> None:
    record = make_record({"a": False}, threshold=0.5)
    candidate = run_gate(record, {})
    assert candidate.passed and candidate.exit_code == 0
    assert candidate.variants[0].status == "refused"
    assert "threshold" in candidate.variants[0].failures[0]
    pinned = run_gate(record, {}, pinned={"tiny"})
    assert not pinned.passed and pinned.exit_code == 3
    assert pinned.variants[0].status == "regressed"
    strict = run_gate(record, {}, GateSettings(fail_on_candidates=True))
    assert not strict.passed
    nothing = run_gate(record, {}, GateSettings(require_passing_variant=True))
    assert not nothing.passed and nothing.failures == ["no variant of tiny passes"]


def test_speed_drop_fails_and_hardware_change_skips() -> None:
    base = make_record({"a": True}, tokens_per_s=100.0)
    slow = make_record({"a": True}, tokens_per_s=50.0)
    result = run_gate(slow, baselines_of(base), GateSettings(max_tokens_per_s_drop=0.3))
    [check] = [c for c in result.checks if c.name == "generation_tokens_per_s"]
    assert check.status == "fail" and check.baseline == 100.0 and check.current == 50.0
    assert not result.passed
    # Another machine: not comparable, reported as an environment change, not a regression.
    moved = make_record({"a": True}, tokens_per_s=50.0, cpu="Other CPU")
    result = run_gate(moved, baselines_of(base))
    assert result.passed
    [check] = [c for c in result.checks if c.name == "generation_tokens_per_s"]
    assert check.status == "skip" and check.cause == "environment"
    assert result.environment_changes[0]["changes"][0]["key"] == "cpu"


def test_a_speed_measured_over_a_fraction_of_a_second_is_not_judged() -> None:
    from dataclasses import replace

    base = make_record({"a": True}, tokens_per_s=100.0)
    slow = make_record({"a": True}, tokens_per_s=50.0)
    # Half the speed, but over 10 tokens: 0.2 s of generation, the machine's jitter.
    slow = replace(
        slow,
        summaries=[replace(s, completion_tokens=10, generation_s=0.2) for s in slow.summaries],
    )
    result = run_gate(slow, baselines_of(base), GateSettings(max_tokens_per_s_drop=0.3))
    [check] = [c for c in result.checks if c.name == "generation_tokens_per_s"]
    assert check.status == "skip" and "too short a sample" in check.message
    assert result.passed
    # Summaries written before generation_s: the seconds follow from tokens and rate.
    older = replace(slow, summaries=[replace(s, generation_s=None) for s in slow.summaries])
    [check] = [
        c for c in run_gate(older, baselines_of(base)).checks if c.name == "generation_tokens_per_s"
    ]
    assert check.status == "skip" and "too short a sample" in check.message


def test_engine_upgrade_slowdown_is_attributed_to_environment() -> None:
    base = make_record({"a": True}, tokens_per_s=100.0)
    now = make_record({"a": True}, tokens_per_s=40.0, engine_version="llama-cpp-python 0.4.0")
    result = run_gate(now, baselines_of(base))
    assert not result.passed
    [check] = [c for c in result.checks if c.name == "generation_tokens_per_s"]
    assert check.cause == "environment"
    assert "Environment changes" in render_markdown(result)


def test_memory_growth_from_bench_figures() -> None:
    record = make_record({"a": True})
    base = baselines_of(record, {"peak_rss_bytes": 100 << 20, "tg_tokens_per_s": 50.0})
    bigger = {"tiny": {"peak_rss_bytes": 150 << 20, "tg_tokens_per_s": 50.0}}
    result = run_gate(record, base, GateSettings(max_memory_growth=0.2), bench=bigger)
    [check] = [c for c in result.checks if c.name == "peak_rss_bytes"]
    assert check.status == "fail" and "growth" in check.message
    same = {"tiny": {"peak_rss_bytes": 110 << 20, "tg_tokens_per_s": 49.0}}
    assert run_gate(record, base, GateSettings(max_memory_growth=0.2), bench=same).passed
    # Bench figures on one side only: skipped, never a failure.
    assert run_gate(record, baselines_of(record)).passed


def test_junit_one_testcase_per_case() -> None:
    base = make_record({"a": True, "b": True, "c": False})
    now = make_record({"a": True, "b": False, "c": False})
    result = run_gate(now, baselines_of(base), GateSettings(max_pass_rate_drop=1.0))
    root = ET.fromstring(render_junit(result))
    cases = root.find("testsuite[@name='tiny.triage']")
    assert cases is not None and cases.get("tests") == "3" and cases.get("failures") == "1"
    by_name = {tc.get("name"): tc for tc in cases.iter("testcase")}
    assert set(by_name) == {"schema/a", "schema/b", "schema/c"}
    assert by_name["schema/b"].find("failure") is not None
    assert by_name["schema/c"].find("skipped") is not None  # failed in the baseline too
    assert by_name["schema/a"].find("failure") is None


@pytest.mark.parametrize(
    ("toml", "field", "message"),
    [
        ("[gate]\nmax_pass_rate_drop = 2\n", "gate.max_pass_rate_drop", "between 0 and 1"),
        ('[gate]\nmax_memory_growth = "a"\n', "gate.max_memory_growth", "must be a number"),
        ("[gate]\nfail_on_regression = 1\n", "gate.fail_on_regression", "true or false"),
        ("[gate]\nmax_speed_drop = 0.1\n", "gate.max_speed_drop", "unknown key"),
        ("gate = 3\n", "gate", "must be a table"),
    ],
)
def test_gate_settings_errors_name_the_field(
    tmp_path: Path, toml: str, field: str, message: str
) -> None:
    path = tmp_path / "lifecycle.toml"
    path.write_text(toml + ONE_MODEL, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        read_gate_settings(load_workspace(tmp_path))
    assert f"lifecycle.toml → {field}:" in str(info.value) and message in str(info.value)


def test_gate_settings_read(tmp_path: Path) -> None:
    path = tmp_path / "lifecycle.toml"
    path.write_text(
        ONE_MODEL + "[gate]\nmax_tokens_per_s_drop = 0.5\nmax_memory_growth = 1\n", "utf-8"
    )
    workspace = load_workspace(tmp_path)
    path.write_text(ONE_MODEL, "utf-8")  # read once: a later edit is not half-seen
    settings = read_gate_settings(workspace)
    assert settings.max_tokens_per_s_drop == 0.5 and settings.max_memory_growth == 1.0
    assert settings.max_pass_rate_drop == 0.0


def test_gate_cli_on_real_runs(
    tiny_workspace: Path, run_cli: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    schema_only(tiny_workspace)
    pass_schema_cases(tiny_workspace)
    ws = str(tiny_workspace)
    code, _, err = run_cli("gate", "-C", ws)
    assert code == 2 and "lifecycle eval" in err  # no run yet
    assert run_cli("eval", "-C", ws, "-q")[0] == 0
    assert run_cli("pin", "-C", ws)[0] == 0

    summary = tmp_path / "step-summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    junit = tmp_path / "junit.xml"
    code, out, _ = run_cli("gate", "-C", ws, "--json", "--junit", str(junit))
    doc = json.loads(out)
    assert code == 0 and doc["passed"] is True and doc["regressions"] == []
    assert {"passed", "regressions", "checks"} <= set(doc)
    assert len(ET.parse(junit).getroot().findall(".//testsuite[@name='tiny.triage']/testcase")) == 4
    assert "lifecycle gate: PASS" in summary.read_text(encoding="utf-8")


def test_gate_cli_reads_gate_table(tiny_workspace: Path, run_cli: Run) -> None:
    from lifecycle.runner import save_run

    save_run(make_record({"a": True}), tiny_workspace / ".lifecycle" / "runs")
    config = tiny_workspace / "lifecycle.toml"
    config.write_text(config.read_text() + "\n[gate]\nmax_pass_rate_drop = 2\n", "utf-8")
    code, _, err = run_cli("gate", "-C", str(tiny_workspace))
    assert code == 2 and "lifecycle.toml → gate.max_pass_rate_drop: must be between 0 and 1" in err


def test_a_few_pages_of_ram_are_not_another_machine() -> None:
    base = make_record({"a": True}, tokens_per_s=100.0)
    now = make_record({"a": True}, tokens_per_s=50.0)
    now.environment["ram_bytes"] = base.environment["ram_bytes"] + 8192
    result = run_gate(now, baselines_of(base), GateSettings(max_tokens_per_s_drop=0.3))
    assert not result.environment_changes
    [check] = [c for c in result.checks if c.name == "generation_tokens_per_s"]
    assert check.status == "fail"  # the same machine: speed is compared


def test_speed_on_a_busy_machine_is_not_judged() -> None:
    base = make_record({"a": True}, tokens_per_s=100.0)
    slow = make_record({"a": True}, tokens_per_s=40.0)
    slow.environment["foreign_cpu_share"] = {"tiny": 0.5}  # another process had a core
    result = run_gate(slow, baselines_of(base), GateSettings(max_tokens_per_s_drop=0.3))
    [check] = [c for c in result.checks if c.name == "generation_tokens_per_s"]
    assert check.status == "skip" and "the machine was busy" in check.message
    assert result.passed
    slow.environment["foreign_cpu_share"] = {"tiny": 0.02}  # quiet: judged
    result = run_gate(slow, baselines_of(base), GateSettings(max_tokens_per_s_drop=0.3))
    assert not result.passed


def test_fewer_threads_is_another_configuration_not_a_slowdown() -> None:
    """Halving the threads halves tokens/s: a setting the team chose, not an engine that got
    slower; the speed check says so instead of failing. The same drop with the same
    settings fails."""
    base = make_record({"a": True}, tokens_per_s=100.0)
    fewer = make_record({"a": True}, tokens_per_s=50.0, environment={"threads": {"tiny": 1}})
    result = run_gate(fewer, baselines_of(base))
    [check] = [c for c in result.checks if c.name == "generation_tokens_per_s"]
    assert check.status == "skip" and "threads 2 → 1" in check.message
    assert result.passed
    same = make_record({"a": True}, tokens_per_s=50.0)
    assert not run_gate(same, baselines_of(base)).passed
