"""Cascade calibration: confidence signals recorded by the real engine, and the figures.

The figures (ECE, Brier, sweep, recommended threshold) are checked against a hand computation
on a fixed set of outputs; the signals come from real runs of the tiny model through
llama.cpp (no mocks), and ``lifecycle calibrate`` must reproduce, from the run record alone,
what the pure function computes from the recorded signals.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_SCHEMA

from lifecycle.calibrate import Outcome, calibrate_outcomes, outcomes_for
from lifecycle.confidence import answer_probability, stated_confidence, value_open, value_span
from lifecycle.engines import GenerationRequest, LoadOptions, get_engine
from lifecycle.errors import ConfigError
from lifecycle.golden import load_suite
from lifecycle.results import CaseResult, RunRecord

Run = Callable[..., tuple[int, str, str]]

CALIBRATION = (
    '\n[calibration]\nconfidence_field = "confidence"\nrouted_field = "category"\ntarget = 0.95\n'
)
PROMPT = "<start_of_turn>user\nI was charged twice.<end_of_turn>\n<start_of_turn>model\n"


# --- the figures, by hand ------------------------------------------------------------------

# (confidence, correct): six with a confidence, one without.
FIXED = [
    Outcome("a", 0.95, True),
    Outcome("b", 0.9, True),
    Outcome("c", 0.8, False),
    Outcome("d", 0.75, True),
    Outcome("e", 0.6, False),
    Outcome("f", 0.3, False),
    Outcome("g", None, True, "no 'confidence' in the output"),
]


def test_figures_match_a_hand_computation() -> None:
    result = calibrate_outcomes(FIXED, signal="stated", target=0.95, bins=10)
    assert (result.cases, result.with_confidence, result.no_confidence) == (7, 6, 1)
    assert result.no_confidence_reasons == {"no 'confidence' in the output": 1}
    assert result.accuracy == pytest.approx(4 / 7, abs=1e-6)  # a, b, d, g
    # Bins of width 0.1: [0.9, 1.0] holds 0.95 and 0.9 (mean 0.925, both right), then one
    # case each at 0.8 (wrong), 0.75 (right), 0.6 (wrong), 0.3 (wrong).
    # ECE = (2 * 0.075 + 0.8 + 0.25 + 0.6 + 0.3) / 6 = 2.1 / 6.
    assert result.ece == pytest.approx(0.35, abs=1e-6)
    # Brier = (0.05² + 0.1² + 0.8² + 0.25² + 0.6² + 0.3²) / 6 = 1.165 / 6.
    assert result.brier == pytest.approx(1.165 / 6, abs=1e-6)
    top = result.bins[9]
    assert (top.count, top.mean_confidence, top.accuracy) == (2, 0.925, 1.0)
    assert [b.count for b in result.bins] == [0, 0, 0, 1, 0, 0, 1, 1, 1, 2]
    # Keep local when confidence >= t; coverage is over all 7 cases (g is always escalated).
    sweep = {p.threshold: (p.kept, p.correct_kept, p.accuracy) for p in result.sweep}
    assert sweep == {
        0.3: (6, 3, 0.5),
        0.6: (5, 3, 0.6),
        0.75: (4, 3, 0.75),
        0.8: (3, 2, pytest.approx(2 / 3, abs=1e-6)),
        0.9: (2, 2, 1.0),
        0.95: (1, 1, 1.0),
    }
    rec = result.recommendation
    assert rec.reached and rec.threshold == 0.9 and rec.accuracy == 1.0
    assert rec.coverage == pytest.approx(2 / 7, abs=1e-6)
    assert "threshold 0.9 keeps 29% local at 100% accuracy" in rec.statement
    grid = {p.threshold: p.kept for p in result.grid}
    assert grid[0.85] == 2 and grid[0.5] == 5 and grid[0.99] == 0
    lower = calibrate_outcomes(FIXED, signal="stated", target=0.75)
    assert lower.recommendation.threshold == 0.75  # the lowest reaching it, not the best
    assert lower.recommendation.coverage == pytest.approx(4 / 7, abs=1e-6)


def test_unreachable_target_is_said_with_the_best_there_is() -> None:
    result = calibrate_outcomes(
        [Outcome("x", 0.9, False), Outcome("y", 0.5, True)], signal="stated", target=0.95
    )
    rec = result.recommendation
    assert not rec.reached
    assert (rec.threshold, rec.accuracy, rec.coverage) == (0.5, 0.5, 1.0)
    assert rec.statement.startswith("no threshold reaches 95% accuracy; the best is 50%")
    nothing = calibrate_outcomes([Outcome("z", None, True, "n/a")], signal="engine", target=0.9)
    assert nothing.ece is None and nothing.brier is None and nothing.sweep == []
    assert not nothing.recommendation.reached
    assert "no case has a confidence" in nothing.recommendation.statement


@pytest.mark.parametrize(
    ("parsed", "value", "reason"),
    [
        ({"confidence": 0.7}, 0.7, None),
        ({"confidence": 1}, 1.0, None),
        ({"confidence": "0.9"}, None, "'confidence' is not a number: \"0.9\""),
        ({"confidence": True}, None, "'confidence' is not a number: true"),
        ({"confidence": 85}, None, "'confidence' is 85, outside [0, 1]"),
        ({"category": "sales"}, None, "no 'confidence' in the output"),
        (None, None, "output is not a JSON object"),
    ],
)
def test_stated_confidence(parsed: object, value: float | None, reason: str | None) -> None:
    assert stated_confidence(parsed, "confidence") == (value, reason)


def test_answer_probability_multiplies_the_value_tokens() -> None:
    text = '{"category": "billing", "confidence": 0.5}'
    parsed = json.loads(text)
    pieces = ['{"', "category", '": "', "bill", "ing", '", "', "confidence", '": ', "0.5", "}"]
    assert "".join(pieces) == text
    offsets = [sum(len(p) for p in pieces[:i]) for i in range(len(pieces))]
    logprobs = [math.log(p) for p in (1.0, 0.9, 0.8, 0.5, 0.6, 0.7, 1.0, 1.0, 0.3, 1.0)]
    assert value_span(text, parsed, "category") == (14, 21)  # billing, quotes excluded
    value, note = answer_probability(text, parsed, "category", logprobs, offsets)
    assert note is None and value == pytest.approx(0.5 * 0.6)
    value, _ = answer_probability(text, parsed, "confidence", logprobs, offsets)
    assert value == pytest.approx(0.3)
    assert answer_probability(text, parsed, "category", None, None) == (
        None,
        "the engine recorded no token probabilities",
    )
    assert answer_probability(text, parsed, "missing", logprobs, offsets)[0] is None
    # A nested key of the same name with another value is not the answer.
    nested = '{"meta": {"category": "x"}, "category": "sales"}'
    start, end = value_span(nested, json.loads(nested), "category") or (0, 0)
    assert nested[start:end] == "sales"


# --- suite configuration -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "field", "message"),
    [
        ('[calibration]\nconfidence_field = "confidence"\ntarget = 1.5\n', "target", "(0, 1]"),
        ('[calibration]\nconfidence = "confidence"\n', "calibration.confidence", "unknown key"),
        ("[calibration]\ntarget = 0.9\n", "calibration", "nothing to calibrate"),
        ('[calibration]\nrouted_field = ""\n', "calibration.routed_field", "non-empty"),
        ('[calibration]\nrouted_field = "category"\nbins = 0\n', "calibration.bins", "[1, 100]"),
    ],
)
def test_bad_calibration_table_names_file_and_field(
    tiny_workspace: Path, table: str, field: str, message: str
) -> None:
    path = tiny_workspace / "evals" / "triage.toml"
    path.write_text(path.read_text() + table, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_suite(path)
    assert info.value.path == str(path)
    assert info.value.field is not None and info.value.field.endswith(field)
    assert message in info.value.message


def test_old_run_records_still_load() -> None:
    case = CaseResult.from_dict(
        {
            **{k: None for k in ("schema_error", "diff", "parsed", "expected")},
            "variant": "v", "suite": "s", "mode": "free", "id": "1", "passed": True,
            "reason": "ok", "output": "{}", "json_valid": True, "schema_valid": True,
            "fields_matched": True, "mismatches": [], "latency_ms": 1.0, "prompt_tokens": 1,
            "completion_tokens": 1, "prompt_eval_tokens": 1, "prompt_ms": 1.0,
            "eval_tokens": 1, "generation_ms": 1.0, "finish_reason": "stop",
        }
    )  # fmt: skip
    assert case.answer_probability is None and case.stated_confidence is None


# --- the real engine -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_loaded(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(Path(__file__).parent))
    from tinymodel import write_tiny_llama

    path = write_tiny_llama(tmp_path_factory.mktemp("cal") / "tiny.gguf")
    model = get_engine("llama-cpp").load(path, LoadOptions(n_ctx=512, n_threads=2))
    yield model
    model.close()


def test_engine_logprobs_are_the_softmax_of_the_logits(tiny_loaded) -> None:  # type: ignore[no-untyped-def]
    model = tiny_loaded
    plain = model.generate(GenerationRequest(prompt=PROMPT, max_tokens=12))
    scored = model.generate(GenerationRequest(prompt=PROMPT, max_tokens=12, logprobs=True))
    assert plain.token_logprobs is None and plain.token_offsets is None  # only when asked
    assert scored.text == plain.text  # recording changes nothing about the output
    assert scored.token_logprobs is not None and scored.token_offsets is not None
    assert len(scored.token_logprobs) == len(scored.token_offsets) == scored.completion_tokens
    assert all(lp <= 0.0 for lp in scored.token_logprobs)
    # Independently: the first token's log-probability from a full forward pass of the prompt.
    tokens = model.tokenize(PROMPT)
    *_, last = model.chunk_logits(tokens, len(tokens))
    row = last[-1].astype(np.float64)
    log_softmax = row - row.max() - math.log(np.exp(row - row.max()).sum())
    first = int(np.argmax(row))  # greedy, repeat_penalty 1.0
    assert scored.token_logprobs[0] == pytest.approx(log_softmax[first], abs=1e-3)


def test_grammar_logprobs_are_renormalised_over_allowed_tokens(tiny_loaded) -> None:  # type: ignore[no-untyped-def]
    model = tiny_loaded
    request = GenerationRequest(
        prompt=PROMPT, max_tokens=40, json_schema=TINY_SCHEMA, logprobs=True
    )
    out = model.generate(request)
    assert out.text.startswith("{") and out.token_logprobs is not None
    assert all(lp <= 0.0 for lp in out.token_logprobs)
    # The grammar's first step allows only "{", which this vocabulary spells two ways (the
    # character token and the byte token <0x7B>): the first token's probability is its share
    # of those two, from the raw logits of a separate forward pass.
    tokens = model.tokenize(PROMPT)
    *_, last = model.chunk_logits(tokens, len(tokens))
    row = last[-1].astype(np.float64)
    llm = model._llm
    brace = [t for t in range(llm.n_vocab()) if llm.detokenize([t]) == b"{"]
    assert len(brace) == 2
    chosen = max(brace, key=lambda t: row[t])  # greedy among the allowed
    allowed = row[brace]
    expected = row[chosen] - allowed.max() - math.log(np.exp(allowed - allowed.max()).sum())
    assert out.token_logprobs[0] == pytest.approx(expected, abs=1e-3)
    assert out.token_logprobs[0] > math.log(0.5) - 1e-9  # the larger share of two


def _with_calibration(workspace: Path) -> None:
    suite = workspace / "evals" / "triage.toml"
    suite.write_text(suite.read_text() + CALIBRATION, encoding="utf-8")


def test_calibrate_reproduces_the_run_signals(tiny_workspace: Path, run_cli: Run) -> None:
    _with_calibration(tiny_workspace)
    code, out, err = run_cli("eval", "-C", str(tiny_workspace), "--json", "-q", "--limit", "2")
    assert code == 0, err
    record = RunRecord.from_dict(json.loads(out))
    schema_cases = [c for c in record.cases if c.mode == "schema"]
    for case in schema_cases:  # the grammar makes a category every time
        assert case.answer_probability is not None and 0.0 < case.answer_probability <= 1.0
        assert case.routed_correct == (case.parsed["category"] == case.expected["category"])
        assert (case.stated_confidence is None) == (case.stated_confidence_note is not None)
    for case in (c for c in record.cases if c.mode == "free"):  # random weights: no JSON
        assert case.answer_probability is None and case.answer_probability_note
        assert case.stated_confidence is None and case.stated_confidence_note

    out_dir = tiny_workspace / "charts"
    code, out, err = run_cli(
        "calibrate", "-C", str(tiny_workspace), "--json", "--out", str(out_dir)
    )
    assert code == 0, err
    doc = json.loads(out)
    assert doc["run_id"] == record.run_id
    assert Path(doc["chart"]) == out_dir / "reliability.png"
    assert (out_dir / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    groups = {(g["variant"], g["mode"]): g for g in doc["groups"]}
    assert set(groups) == {("tiny", "free"), ("tiny", "schema")}
    suite = load_suite(tiny_workspace / "evals" / "triage.toml")
    assert suite.calibration is not None
    for (_, mode), group in groups.items():
        cases = [c for c in record.cases if c.mode == mode]
        for signal in group["signals"]:
            expected = calibrate_outcomes(
                outcomes_for(cases, suite, suite.calibration, signal["signal"]),
                signal=signal["signal"],
                target=0.95,
            )
            assert signal == expected.to_dict()
    engine = {s["signal"]: s for s in groups[("tiny", "schema")]["signals"]}["engine"]
    assert engine["with_confidence"] == 2 and engine["no_confidence"] == 0
    # The free outputs are noise: every case is "no confidence", reported with its reason.
    free = {s["signal"]: s for s in groups[("tiny", "free")]["signals"]}
    assert free["stated"]["no_confidence"] == 2
    assert sum(free["stated"]["no_confidence_reasons"].values()) == 2

    code, out, err = run_cli("calibrate", "-C", str(tiny_workspace), "tiny", "--no-chart")
    assert code == 0, err
    assert "ECE" in out and "threshold" in out and "tiny" in out
    assert "no confidence (2)" in out


def test_calibrate_bad_input_exits_2(tiny_workspace: Path, run_cli: Run) -> None:
    code, _, err = run_cli("calibrate", "-C", str(tiny_workspace))
    assert code == 2 and "run `lifecycle eval` first" in err
    code, _, err = run_cli("eval", "-C", str(tiny_workspace), "-q", "--limit", "1")
    assert code == 0, err
    code, _, err = run_cli("calibrate", "-C", str(tiny_workspace), "--no-chart")
    assert code == 2 and "no suite of this run has a [calibration] table" in err
    _with_calibration(tiny_workspace)
    code, _, err = run_cli("calibrate", "-C", str(tiny_workspace), "nosuch", "--no-chart")
    assert code == 2 and "not in run" in err and "tiny" in err
    code, _, err = run_cli("calibrate", "-C", str(tiny_workspace), "--run", "/nonexistent")
    assert code == 2


# --- the cheaper signal: log-probabilities only where the routed value is written ----------


@pytest.mark.parametrize(
    ("text", "open_"),
    [
        ("", False),
        ('{"', True),  # a key starts: the next token may be 'category": "bill'
        ('{"cat', True),
        ('{"category"', True),
        ('{"category": ', True),
        ('{"category": "', True),
        ('{"category": "bil', True),
        ('{"category": "bi\\"', True),  # an escaped quote does not close the value
        ('{"category": "billing"', False),
        ('{"category": "billing", "', True),
        ('{"category": "billing", "confidence": 0.', False),
        ('{"x": "a"', False),
        ('{"x": "cat', False),  # inside another value, not a key
    ],
)
def test_value_open(text: str, open_: bool) -> None:
    assert value_open(text, "category") is open_


def test_value_steps_alone_give_the_same_answer_probability(tiny_loaded) -> None:  # type: ignore[no-untyped-def]
    """An engine that scores only the steps value_open allows loses nothing.

    Real schema-mode generations: every token whose log-probability answer_probability uses
    starts at a step where value_open is true, so blanking the others (NaN) changes nothing.
    """
    skipped = checked = 0
    for user in ("I was charged twice.", "The API is down.", "How much for 200 seats?"):
        prompt = PROMPT.replace("I was charged twice.", user)
        request = GenerationRequest(
            prompt=prompt, max_tokens=96, json_schema=TINY_SCHEMA, logprobs=True
        )
        out = tiny_loaded.generate(request)
        assert out.token_logprobs is not None and out.token_offsets is not None
        if out.finish_reason != "stop":
            continue  # random weights may write digits until max_tokens
        parsed = json.loads(out.text)
        checked += 1
        full = answer_probability(
            out.text, parsed, "category", out.token_logprobs, out.token_offsets
        )
        assert full[0] is not None
        steps = [value_open(out.text[:offset], "category") for offset in out.token_offsets]
        cheap = [
            lp if keep else math.nan for lp, keep in zip(out.token_logprobs, steps, strict=True)
        ]
        assert answer_probability(out.text, parsed, "category", cheap, out.token_offsets) == full
        skipped += steps.count(False)
    assert checked and skipped > 0  # the cheaper signal does skip steps
