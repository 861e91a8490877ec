"""The cascade: escalated cases answered by a larger tier, and what the cascade buys.

The figures are checked against a hand computation on a fixed set of outputs; the real-run
tests escalate through the runner to a second tiny model of the workspace and to an
OpenAI-compatible server on loopback (llama-cpp-python's own), and compare what
``lifecycle calibrate`` reports with the figures recomputed from independent runs of the
tier. No mocks: the tiers are real engines answering real prompts.
"""

from __future__ import annotations

import dataclasses
import json
import math
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
from test_calibrate import FIXED

from lifecycle.baselines import BaselineCase, baseline_entry
from lifecycle.calibrate import (
    CaseCost,
    Outcome,
    TierAnswer,
    calibrate_outcomes,
    cascade_figures,
    case_cost,
    escalated_ids,
    outcomes_for,
)
from lifecycle.confidence import answer_probability
from lifecycle.config import load_workspace
from lifecycle.errors import ConfigError
from lifecycle.gate import GateSettings, read_gate_settings, run_gate
from lifecycle.golden import load_suite
from lifecycle.results import RunRecord
from lifecycle.tinymodel import write_tiny_llama

Run = Callable[..., tuple[int, str, str]]

CALIBRATION = (
    '\n[calibration]\nconfidence_field = "confidence"\nrouted_field = "category"\ntarget = 0.95\n'
)

# --- the figures, by hand ------------------------------------------------------------------

# Every case costs 10 tokens and 100 ms locally, 100 tokens and 1000 ms on the tier.
LOCAL = {o.case_id: CaseCost(10, 100.0) for o in FIXED}


def tier(right: dict[str, bool]) -> dict[str, TierAnswer]:
    return {i: TierAnswer(i, ok, CaseCost(100, 1000.0)) for i, ok in right.items()}


def test_cascade_matches_a_hand_computation() -> None:
    # FIXED: a .95 right, b .9 right, c .8 wrong, d .75 right, e .6 wrong, f .3 wrong,
    # g no confidence right. At threshold 0.9, c d e f g (5 of 7) go to the tier.
    assert escalated_ids(FIXED, 0.9) == ["c", "d", "e", "f", "g"]
    answers = tier({"c": True, "d": False, "e": True, "f": True, "g": True})
    result = cascade_figures(FIXED, LOCAL, answers, threshold=0.9, signal="stated", tier_name="big")
    assert (result.cases, result.escalated, result.tier_answered) == (7, 5, 5)
    assert result.share_escalated == pytest.approx(5 / 7, abs=1e-6)
    # Kept: a, b both right (2). Tier on the escalated: c e f g right (4). 6 of 7.
    assert result.accuracy == pytest.approx(6 / 7, abs=1e-6)
    assert result.local_accuracy == pytest.approx(4 / 7, abs=1e-6)  # a b d g
    assert result.local_accuracy_escalated == pytest.approx(2 / 5, abs=1e-6)  # d g
    assert result.tier_accuracy_escalated == pytest.approx(4 / 5, abs=1e-6)
    # Every case runs locally (70 tokens, 100 ms each); 5 more go to the tier.
    assert result.cost_local.to_dict() == {
        "local_tokens": 70, "tier_tokens": 0, "mean_latency_ms": 100.0, "estimated": False,
    }  # fmt: skip
    assert result.cost_cascade.local_tokens == 70 and result.cost_cascade.tier_tokens == 500
    assert result.cost_cascade.mean_latency_ms == pytest.approx((700 + 5000) / 7, abs=1e-4)
    # The tier answered 5 of 7: "everything escalated" cost is extrapolated, accuracy unknown.
    assert result.cost_escalated.tier_tokens == 700 and result.cost_escalated.estimated
    assert result.escalated_accuracy is None
    assert "escalates 71% (5/7) to big: accuracy 86% vs 57% all local" in result.statement

    # The tier on every case: "everything escalated" is measured, not extrapolated.
    everything = tier(
        {"a": True, "b": False, "c": True, "d": False, "e": True, "f": True, "g": True}
    )
    full = cascade_figures(FIXED, LOCAL, everything, threshold=0.9, signal="s", tier_name="big")
    assert full.accuracy == result.accuracy  # the kept cases still answer locally
    assert full.escalated_accuracy == pytest.approx(5 / 7, abs=1e-6)
    assert not full.cost_escalated.estimated and full.cost_escalated.local_tokens == 0
    assert full.cost_escalated.mean_latency_ms == 1000.0

    # A tier failure on an escalated case counts as wrong.
    failed = dict(answers, c=TierAnswer("c", False, CaseCost(0, 0.0), errored=True))
    worse = cascade_figures(FIXED, LOCAL, failed, threshold=0.9, signal="s", tier_name="big")
    assert worse.tier_errors == 1 and worse.accuracy == pytest.approx(5 / 7, abs=1e-6)

    # No threshold: everything escalated, nothing kept.
    assert escalated_ids(FIXED, None) == [o.case_id for o in FIXED]


def test_tier_down_keeps_the_local_figures() -> None:
    result = cascade_figures(FIXED, LOCAL, None, threshold=0.9, signal="stated", tier_name="x")
    assert result.accuracy is None and result.escalated_accuracy is None
    assert result.escalated == 5 and result.local_accuracy == pytest.approx(4 / 7, abs=1e-6)
    assert result.cost_local.local_tokens == 70 and result.cost_cascade.tier_tokens is None
    assert "the tier did not answer" in result.statement


# --- configuration -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "field", "message"),
    [
        ('variant = "a"\nbase_url = "http://x"\n', "calibration.escalate", "exactly one of"),
        ('model = "m"\n', "calibration.escalate", "exactly one of"),
        ('variant = "a"\nmodel = "m"\n', "calibration.escalate", "goes with base_url"),
        ('base_url = "localhost:8080"\n', "calibration.escalate.base_url", "http(s) URL"),
        ("variant = 3\n", "calibration.escalate.variant", "non-empty string"),
        ('url = "http://x"\n', "calibration.escalate.url", "unknown key"),
    ],
)
def test_bad_escalate_table_names_file_and_field(
    tiny_workspace: Path, table: str, field: str, message: str
) -> None:
    path = tiny_workspace / "evals" / "triage.toml"
    path.write_text(path.read_text() + CALIBRATION + "[calibration.escalate]\n" + table)
    with pytest.raises(ConfigError) as info:
        load_suite(path)
    assert info.value.path == str(path) and info.value.field == field
    assert message in info.value.message


# --- real tiers ----------------------------------------------------------------------------


def _workspace_with_tier(root: Path, escalate: str) -> None:
    """A second model ("big": other random weights) and the suite's escalation table."""
    write_tiny_llama(root / "modelfiles" / "big.gguf", seed=5)
    modelfile = (root / "modelfiles" / "tiny.Modelfile").read_text()
    (root / "modelfiles" / "big.Modelfile").write_text(
        modelfile.replace("FROM ./tiny.gguf", "FROM ./big.gguf")
    )
    config = root / "lifecycle.toml"
    config.write_text(
        config.read_text()
        + '\n[models.big]\nmodelfile = "modelfiles/big.Modelfile"\nsuites = ["triage"]\n'
    )
    suite = root / "evals" / "triage.toml"
    suite.write_text(suite.read_text() + CALIBRATION + "[calibration.escalate]\n" + escalate)


def _expected(
    local: RunRecord, tier_run: RunRecord, suite_path: Path, mode: str, tier_name: str, **kw: object
) -> dict[str, dict[str, object]]:
    """Each signal's cascade recomputed from the local run and an independent tier run."""
    suite = load_suite(suite_path)
    assert suite.calibration is not None
    cases = [c for c in local.cases if c.mode == mode and not c.errored]
    tier_cases = {c.id: c for c in tier_run.cases if c.mode == mode}
    answers = {
        i: TierAnswer(i, bool(c.routed_correct), case_cost(c), c.errored)
        for i, c in tier_cases.items()
    }
    out = {}
    for signal in kw.get("signals", ("stated", "engine")):  # type: ignore[attr-defined]
        outcomes = outcomes_for(cases, suite, suite.calibration, signal)
        threshold = kw.get("threshold")
        if threshold is None:
            threshold = calibrate_outcomes(
                outcomes, signal=signal, target=0.95
            ).recommendation.threshold
        wanted = {i for i in escalated_ids(outcomes, threshold)}  # type: ignore[arg-type]
        if not kw.get("all_cases"):
            answers_used = {i: a for i, a in answers.items() if i in kw["asked"]}  # type: ignore[operator]
        else:
            answers_used = answers
        assert wanted <= set(answers_used)
        out[signal] = cascade_figures(
            outcomes,
            {c.id: case_cost(c) for c in cases},
            answers_used,
            threshold=threshold,  # type: ignore[arg-type]
            signal=signal,
            tier_name=tier_name,
        ).to_dict()
    return out


def _without_latency(doc: dict[str, object]) -> dict[str, object]:
    """Latency is measured per run: the tier's own run and the independent one differ."""
    text = json.dumps(doc)
    data = json.loads(text)
    for strategy in data["cost"].values():
        strategy.pop("mean_latency_ms")
    return data


def test_variant_tier_answers_only_the_escalated_cases(tiny_workspace: Path, run_cli: Run) -> None:
    _workspace_with_tier(tiny_workspace, 'variant = "big"\n')
    ws = str(tiny_workspace)
    code, out, err = run_cli("eval", "-C", ws, "-m", "tiny", "--mode", "schema", "--json", "-q")
    assert code == 0, err
    local = RunRecord.from_dict(json.loads(out))
    code, out, err = run_cli("eval", "-C", ws, "-m", "big", "--mode", "schema", "--json", "-q")
    assert code == 0, err
    big = RunRecord.from_dict(json.loads(out))

    run = str(local_run_path(tiny_workspace, local))
    code, out, err = run_cli("calibrate", "-C", ws, "--run", run, "--json", "--no-chart")
    assert code == 0, err
    (group,) = json.loads(out)["groups"]
    assert group["tier"] == "big" and group["tier_error"] is None
    cascades = {c["signal"]: c for c in group["cascades"]}
    escalated = set()
    suite = load_suite(tiny_workspace / "evals" / "triage.toml")
    assert suite.calibration is not None
    for signal, cascade in cascades.items():
        outcomes = outcomes_for(local.cases, suite, suite.calibration, signal)
        escalated |= set(escalated_ids(outcomes, cascade["threshold"]))
    assert escalated, "the tiny model keeps every case: the test would prove nothing"
    # Only the escalated cases went to the tier (the union over both signals).
    assert {c["tier_answered"] for c in cascades.values()} == {len(escalated)}
    expected = _expected(
        local, big, tiny_workspace / "evals" / "triage.toml", "schema", "big", asked=escalated
    )
    for signal, cascade in cascades.items():
        assert _without_latency(cascade) == _without_latency(expected[signal])
    assert f"escalating {len(escalated)} case(s) of tiny triage/schema to big" in err
    assert "tier tokens" in run_cli("calibrate", "-C", ws, "--run", run, "--no-chart")[1]

    # --escalate-all: the tier answers every case, "everything escalated" is measured.
    code, out, err = run_cli(
        "calibrate", "-C", ws, "--run", run, "--json", "--no-chart", "--escalate-all",
        "--threshold", "0.5",
    )  # fmt: skip
    assert code == 0, err
    (group,) = json.loads(out)["groups"]
    expected = _expected(
        local, big, tiny_workspace / "evals" / "triage.toml", "schema", "big",
        all_cases=True, threshold=0.5,
    )  # fmt: skip
    big_right = sum(bool(c.routed_correct) for c in big.cases) / len(big.cases)
    for cascade in group["cascades"]:
        assert cascade["tier_answered"] == 4 and cascade["threshold"] == 0.5
        assert cascade["escalated_accuracy"] == pytest.approx(big_right, abs=1e-6)
        assert not cascade["cost"]["escalated"]["estimated"]
        assert _without_latency(cascade) == _without_latency(expected[cascade["signal"]])


def local_run_path(root: Path, record: RunRecord) -> Path:
    return root / ".lifecycle" / "runs" / record.run_id / "run.json"


def test_variant_tier_in_the_run_is_not_generated_again(tiny_workspace: Path, run_cli: Run) -> None:
    _workspace_with_tier(tiny_workspace, 'variant = "big"\n')
    ws = str(tiny_workspace)
    code, out, err = run_cli("eval", "-C", ws, "--mode", "schema", "--json", "-q")
    assert code == 0, err
    record = RunRecord.from_dict(json.loads(out))
    big = [c for c in record.cases if c.variant == "big"]
    code, out, err = run_cli("calibrate", "-C", ws, "--json", "--no-chart")
    assert code == 0, err
    assert "escalating" not in err  # every answer came from the run
    groups = {g["variant"]: g for g in json.loads(out)["groups"]}
    assert groups["tiny"]["tier"] == "big" and groups["tiny"]["tier_error"] is None
    for cascade in groups["tiny"]["cascades"]:
        # The run holds all of the tier's answers: "everything escalated" is measured.
        assert cascade["tier_answered"] == 4 and not cascade["cost"]["escalated"]["estimated"]
        right = sum(bool(c.routed_correct) for c in big) / 4
        assert cascade["escalated_accuracy"] == pytest.approx(right, abs=1e-6)
        tokens = sum(c.prompt_tokens + c.completion_tokens for c in big)
        assert cascade["cost"]["escalated"]["tier_tokens"] == tokens
    # The tier's own cases have nowhere to go: calibrated, not escalated.
    assert groups["big"]["tier"] is None and groups["big"]["cascades"] == []
    assert groups["big"]["signals"]


@pytest.fixture(scope="module")
def openai_tier(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from test_engine_openai import GEMMA_TEMPLATE, start_llama_server

    path = tmp_path_factory.mktemp("tier") / "tier.gguf"
    write_tiny_llama(path, chat_template=GEMMA_TEMPLATE, seed=5)
    process, url = start_llama_server(path)
    yield url
    process.terminate()
    process.wait(timeout=10)


def test_openai_tier_answers_the_escalated_cases(
    tiny_workspace: Path, run_cli: Run, openai_tier: str
) -> None:
    ws = str(tiny_workspace)
    _workspace_with_tier(tiny_workspace, f'base_url = "{openai_tier}"\n')
    code, out, err = run_cli("eval", "-C", ws, "-m", "tiny", "--mode", "schema", "--json", "-q")
    assert code == 0, err
    local = RunRecord.from_dict(json.loads(out))
    # The tier, run independently on every case with the same engine settings.
    code, out, err = run_cli(
        "eval", "-C", ws, "-m", "tiny", "--mode", "schema", "--json", "-q", "--no-resume",
        "--engine", "openai", "--base-url", openai_tier,
    )  # fmt: skip
    assert code == 0, err
    served = RunRecord.from_dict(json.loads(out))
    # The engine signal comes from the server's own log-probabilities (chat logprobs), for
    # every answer that parsed (a truncated one has no value to score).
    parsed = [c for c in served.cases if c.parsed is not None]
    assert parsed and all(c.answer_probability is not None for c in parsed)
    # A threshold between the local answer probabilities: some cases stay, some go.
    probabilities = sorted(c.answer_probability or 0.0 for c in local.cases)
    threshold = probabilities[len(probabilities) // 2]
    escalated = {c.id for c in local.cases if (c.answer_probability or 0.0) < threshold}
    assert 0 < len(escalated) < len(local.cases)
    run = str(local_run_path(tiny_workspace, local))
    code, out, err = run_cli(
        "calibrate", "-C", ws, "--run", run, "--json", "--no-chart", "--signal", "engine",
        "--threshold", str(threshold),
    )  # fmt: skip
    assert code == 0, err
    (group,) = json.loads(out)["groups"]
    assert group["tier"] == f"openai {openai_tier}" and group["tier_error"] is None
    expected = _expected(
        local, served, tiny_workspace / "evals" / "triage.toml", "schema", group["tier"],
        threshold=threshold, asked=escalated, signals=("engine",),
    )  # fmt: skip
    (cascade,) = group["cascades"]
    # Only the cases under the threshold went to the server.
    assert cascade["escalated"] == cascade["tier_answered"] == len(escalated)
    assert _without_latency(cascade) == _without_latency(expected["engine"])


def test_tier_down_exits_1_with_the_local_figures(tiny_workspace: Path, run_cli: Run) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ws = str(tiny_workspace)
    _workspace_with_tier(tiny_workspace, f'base_url = "http://127.0.0.1:{port}/v1"\n')
    code, out, err = run_cli("eval", "-C", ws, "-m", "tiny", "--mode", "schema", "-q")
    assert code == 0, err
    code, out, err = run_cli("calibrate", "-C", ws, "--json", "--no-chart")
    assert code == 1
    assert f"127.0.0.1:{port}" in err and "escalation tier" in err
    (group,) = json.loads(out)["groups"]
    assert "cannot reach" in group["tier_error"]
    assert {s["signal"] for s in group["signals"]} == {"stated", "engine"}  # local figures
    for cascade in group["cascades"]:
        assert cascade["accuracy"] is None and cascade["local_accuracy"] is not None
    code, out, err = run_cli("calibrate", "-C", ws, "--no-chart")
    assert code == 1 and "the tier could not answer" in out and "ECE" in out
    # Without escalation the same command calibrates and exits 0.
    assert run_cli("calibrate", "-C", ws, "--no-chart", "--no-escalate")[0] == 0


# --- the gate ------------------------------------------------------------------------------


def test_gate_calibration_bounds(tiny_workspace: Path, run_cli: Run) -> None:
    suite_path = tiny_workspace / "evals" / "triage.toml"
    suite_path.write_text(suite_path.read_text() + CALIBRATION)
    code, out, err = run_cli("eval", "-C", str(tiny_workspace), "--mode", "schema", "--json", "-q")
    assert code == 0, err
    record = RunRecord.from_dict(json.loads(out))
    config = tiny_workspace / "lifecycle.toml"
    assert read_gate_settings(load_workspace(tiny_workspace)).max_ece_rise is None  # off
    config.write_text(
        config.read_text() + "\n[gate]\nmax_coverage_drop = 0.1\nmax_ece_rise = 0.05\n"
    )
    settings = read_gate_settings(load_workspace(tiny_workspace))
    assert settings.calibration["triage"].routed_field == "category"
    assert "calibration" not in settings.to_dict()

    base = baseline_entry(record, "tiny", None)
    for case in base.cases:  # the baseline keeps the signals
        assert {"answer_probability", "routed_correct"} <= set(case.to_dict())
    same = run_gate(record, {"tiny": base}, settings)
    checks = [c for c in same.checks if c.name in ("coverage_at_target", "ece")]
    assert len(checks) == 4  # 2 signals x 2 bounds; stated is skipped when it has no values
    assert all(c.status == ("pass" if "[engine]" in c.message else c.status) for c in checks)
    assert all(c.status in ("pass", "skip") for c in checks) and same.passed
    # Same answers, worse calibration: hand-set baseline engine probabilities, so that the
    # baseline was perfectly calibrated (1.0 on right cases, 0.0 on wrong ones): ECE 0 and
    # every right case kept at 100% accuracy.
    base = dataclasses.replace(
        base,
        cases=[
            dataclasses.replace(c, answer_probability=1.0 if c.routed_correct else 0.0)
            for c in base.cases
        ],
    )
    right = sum(bool(c.routed_correct) for c in base.cases)
    assert 0 < right < 4, "the tiny model needs right and wrong cases here"
    now = calibrate_outcomes(
        outcomes_for(
            record.cases, load_suite(suite_path), settings.calibration["triage"], "engine"
        ),
        signal="engine",
        target=0.95,
    )
    result = run_gate(record, {"tiny": base}, settings)
    by = {(c.name, c.message.split("]")[0]): c for c in result.checks}
    ece = by[("ece", "ECE [engine")]
    assert ece.baseline == 0.0 and ece.current == pytest.approx(now.ece, abs=1e-4)
    assert ece.status == ("fail" if now.ece > 0.05 else "pass")
    coverage = by[("coverage_at_target", "coverage at 95% accuracy [engine")]
    assert coverage.baseline == pytest.approx(right / 4, abs=1e-4)
    now_coverage = now.recommendation.coverage if now.recommendation.reached else 0.0
    assert coverage.current == pytest.approx(now_coverage, abs=1e-4)
    assert coverage.status == ("fail" if right / 4 - now_coverage > 0.1 else "pass")
    assert not result.passed if "fail" in (ece.status, coverage.status) else result.passed

    # A baseline pinned before [calibration] holds no signals: skipped, with the remedy.
    base = dataclasses.replace(
        base,
        cases=[
            BaselineCase.from_dict({k: v for k, v in c.to_dict().items() if k != "routed_correct"})
            for c in base.cases
        ],
    )
    old = run_gate(record, {"tiny": base}, settings)
    (skip,) = [c for c in old.checks if c.name == "calibration"]
    assert skip.status == "skip" and "re-pin" in skip.message
    # The default settings make no calibration checks at all.
    plain = run_gate(record, {"tiny": baseline_entry(record, "tiny", None)}, GateSettings())
    assert not [c for c in plain.checks if c.name in ("coverage_at_target", "ece")]


def test_gate_bound_out_of_range_names_the_key(tiny_workspace: Path) -> None:
    config = tiny_workspace / "lifecycle.toml"
    config.write_text(config.read_text() + "\n[gate]\nmax_ece_rise = 2\n")
    with pytest.raises(ConfigError) as info:
        read_gate_settings(load_workspace(tiny_workspace))
    assert info.value.field == "gate.max_ece_rise" and "between 0 and 1" in info.value.message


def test_outcome_for_old_records_without_confidence() -> None:
    # A no-confidence outcome is always escalated, whatever the threshold.
    assert escalated_ids([Outcome("x", None, True, "none")], 0.0) == ["x"]


# --- the report ----------------------------------------------------------------------------


def _case(outcome: Outcome) -> dict[str, object]:
    fields = {
        **{k: None for k in ("schema_error", "diff", "parsed", "expected")},
        "variant": "v", "suite": "s", "mode": "schema", "id": outcome.case_id,
        "passed": outcome.correct, "reason": "ok", "output": "{}", "json_valid": True,
        "schema_valid": True, "fields_matched": True, "mismatches": [], "latency_ms": 1.0,
        "prompt_tokens": 1, "completion_tokens": 1, "prompt_eval_tokens": 1, "prompt_ms": 1.0,
        "eval_tokens": 1, "generation_ms": 1.0, "finish_reason": "stop",
        "stated_confidence": outcome.confidence, "stated_confidence_note": outcome.note,
        "routed_correct": outcome.correct,
    }  # fmt: skip
    return fields


def test_report_shows_calibration_next_to_the_pass_rates() -> None:
    from lifecycle.report import build_report
    from lifecycle.results import CaseResult, VariantInfo, VariantRun, summarise

    cases = [CaseResult.from_dict(_case(o)) for o in FIXED]
    record = RunRecord(
        run_id="r1",
        started_at="t0",
        finished_at="t1",
        environment={},
        golden_sets={},
        variants=[VariantRun(VariantInfo(name="v", model="v"), 1.0)],
        summaries=[summarise(cases, variant="v", suite="s", mode="schema", threshold=0.5)],
        cases=cases,
    )
    report = build_report(record)
    # The hand-computed figures of FIXED (test_calibrate): ECE 0.35, Brier 1.165 / 6.
    assert "| v | s/schema | stated | 6/7 | 57% | 0.350 | 0.194 |" in report.markdown
    assert "<h2>Calibration</h2>" in report.html
    titles = [t.split("'")[0] for t in report.html.split("<img alt='")[1:]]
    assert titles[:2] == ["pass rate per variant", "reliability diagram (confidence vs accuracy)"]
    # A run without signals has no calibration section.
    plain = [CaseResult.from_dict({**_case(o), "stated_confidence_note": None}) for o in FIXED[:1]]
    record.cases = [replace_conf(c) for c in plain]
    assert "Calibration" not in build_report(record, charts=False).markdown


def replace_conf(case: object) -> object:
    from dataclasses import replace

    return replace(case, stated_confidence=None, routed_correct=None)  # type: ignore[type-var]


# --- log-probabilities from a server (what the openai and ollama engines would record) -----


def test_server_token_logprobs_by_hand() -> None:
    from lifecycle.confidence import server_token_logprobs

    text = '{"category": "café"}'
    entries = [
        {"token": '{"', "logprob": -0.1},
        {"token": "category", "logprob": -0.2},
        {"token": '": "', "logprob": -0.3},
        {"token": "caf", "logprob": -0.4},
        # "é" split over two tokens, as byte-level vocabularies do: offsets count characters.
        {"token": "", "logprob": -0.5, "bytes": [0xC3]},
        {"token": "", "logprob": -0.6, "bytes": [0xA9]},
        {"token": '"}', "logprob": -0.7},
    ]
    logprobs, offsets = server_token_logprobs(entries, text) or ((), ())
    assert logprobs == (-0.1, -0.2, -0.3, -0.4, -0.5, -0.6, -0.7)
    assert offsets == (0, 2, 10, 14, 17, 17, 18)
    value, note = answer_probability(text, json.loads(text), "category", logprobs, offsets)
    assert note is None and value == pytest.approx(math.exp(-0.4 - 0.5 - 0.6))
    assert server_token_logprobs(entries, text + "x") is None  # tokens that do not spell it
    assert server_token_logprobs(None, text) is None and server_token_logprobs([], text) is None
    assert server_token_logprobs([{"token": "{", "logprob": "x"}], "{") is None


def test_server_token_logprobs_from_a_real_server(openai_tier: str) -> None:
    """llama-cpp-python's OpenAI-compatible server, asked for logprobs as an engine would."""
    import urllib.request

    from lifecycle.confidence import server_token_logprobs

    body = {
        "messages": [{"role": "user", "content": "I was charged twice."}],
        "max_tokens": 12,
        "temperature": 0.0,
        # llama-cpp-python's server returns chat logprobs only with top_logprobs set.
        "logprobs": True,
        "top_logprobs": 1,
    }
    request = urllib.request.Request(
        f"{openai_tier}/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        answer = json.loads(response.read())
    choice = answer["choices"][0]
    text = choice["message"]["content"]
    entries = (choice.get("logprobs") or {}).get("content")
    assert entries, "this server returns chat logprobs when asked"
    logprobs, offsets = server_token_logprobs(entries, text) or ((), ())
    assert len(logprobs) == len(offsets) == len(entries) > 0
    assert all(lp <= 0.0 for lp in logprobs) and offsets[0] == 0
    assert list(offsets) == sorted(offsets) and offsets[-1] <= len(text)
