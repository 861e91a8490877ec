"""Golden sets: loading errors name file and line; scoring is strict and explains itself."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import TINY_CASES, TINY_SCHEMA

from lifecycle.errors import ConfigError, GoldenSetError
from lifecycle.golden import Matcher, load_suite, load_suites, parse_matcher, score_output

SUITE_TOML = """golden = "cases.jsonl"
schema = "schema.json"
modes = ["free", "schema"]
threshold = {{ free = 0.5, schema = 0.75 }}
max_tokens = 32
[match.category]
matcher = "{category_matcher}"
[match.confidence]
matcher = "range"
min = 0.0
max = 1.0
"""


def write_suite(
    tmp_path: Path,
    cases: list[str] | None = None,
    schema: str | None = None,
    category_matcher: str = "exact",
) -> Path:
    lines = cases if cases is not None else [json.dumps(c) for c in TINY_CASES]
    (tmp_path / "cases.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (tmp_path / "schema.json").write_text(schema or json.dumps(TINY_SCHEMA), encoding="utf-8")
    path = tmp_path / "triage.toml"
    path.write_text(SUITE_TOML.format(category_matcher=category_matcher), encoding="utf-8")
    return path


def test_suite_loads_with_digests_and_thresholds(tmp_path: Path) -> None:
    suite = load_suite(write_suite(tmp_path))
    assert suite.name == "triage"
    assert [c.id for c in suite.cases] == ["case-0", "case-1", "case-2", "case-3"]
    assert suite.thresholds == {"free": 0.5, "schema": 0.75}
    assert suite.golden_digest.startswith("sha256:") and len(suite.golden_digest) == 71
    assert suite.cases[1].line == 2


def test_malformed_jsonl_line_names_file_and_line(tmp_path: Path) -> None:
    good = [json.dumps(c) for c in TINY_CASES]
    path = write_suite(tmp_path, cases=[good[0], good[1], '{"id": "broken", '])
    with pytest.raises(GoldenSetError) as info:
        load_suite(path)
    assert str(info.value).startswith(f"{tmp_path / 'cases.jsonl'}:3: malformed JSON")
    assert info.value.exit_code == 2


def test_case_without_expected_output(tmp_path: Path) -> None:
    case = {"id": "no-expected", "messages": [{"role": "user", "content": "hi"}]}
    path = write_suite(tmp_path, cases=[json.dumps(TINY_CASES[0]), json.dumps(case)])
    with pytest.raises(
        GoldenSetError, match=r"cases.jsonl:2 → expected: case 'no-expected' has no"
    ):
        load_suite(path)


def test_expected_output_must_satisfy_the_schema(tmp_path: Path) -> None:
    case = dict(TINY_CASES[0], expected={"category": "refunds", "confidence": 0.9})
    path = write_suite(tmp_path, cases=[json.dumps(case)])
    with pytest.raises(GoldenSetError, match=r"cases.jsonl:1 .*\$\.category: 'refunds' is not one"):
        load_suite(path)


def test_duplicate_case_ids(tmp_path: Path) -> None:
    line = json.dumps(TINY_CASES[0])
    with pytest.raises(GoldenSetError, match=r":2: duplicate case id 'case-0' \(first on line 1\)"):
        load_suite(write_suite(tmp_path, cases=[line, line]))


def test_invalid_json_schema(tmp_path: Path) -> None:
    path = write_suite(tmp_path, schema='{"type": "objekt"}')
    with pytest.raises(GoldenSetError, match=r"schema.json: invalid JSON Schema at \$\.type"):
        load_suite(path)


def test_unknown_matcher_in_suite(tmp_path: Path) -> None:
    path = write_suite(tmp_path, category_matcher="exactly")
    with pytest.raises(ConfigError) as info:
        load_suite(path)
    assert "match.category: unknown matcher 'exactly' (did you mean 'exact'?)" in str(info.value)


def test_unknown_matcher_in_case_names_the_line(tmp_path: Path) -> None:
    case = dict(TINY_CASES[0], match={"category": {"matcher": "fuzzy"}})
    path = write_suite(tmp_path, cases=[json.dumps(TINY_CASES[1]), json.dumps(case)])
    with pytest.raises(GoldenSetError, match=r"cases.jsonl:2 → match.category: unknown matcher"):
        load_suite(path)


def test_unknown_suite_name_suggests_the_closest(tmp_path: Path) -> None:
    write_suite(tmp_path)
    with pytest.raises(ConfigError, match=r"unknown suite 'triag' \(did you mean 'triage'\?\)"):
        load_suites(tmp_path, ["triag"])


def test_bad_threshold_names_the_field(tmp_path: Path) -> None:
    path = write_suite(tmp_path)
    path.write_text(path.read_text().replace("free = 0.5", "free = 5"), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"triage.toml → threshold.free: must be a number in"):
        load_suite(path)


@pytest.fixture
def suite(tmp_path: Path):  # type: ignore[no-untyped-def]
    return load_suite(write_suite(tmp_path))


def test_score_pass(suite) -> None:  # type: ignore[no-untyped-def]
    score = score_output(suite, suite.cases[0], ' {"category": "billing", "confidence": 0.7}\n')
    assert score.passed and score.reason == "ok"
    assert score.json_valid and score.schema_valid and score.fields_matched


def test_score_not_json(suite) -> None:  # type: ignore[no-untyped-def]
    score = score_output(suite, suite.cases[0], "Sure! The category is billing.")
    assert not score.passed and not score.json_valid and not score.schema_valid
    assert score.reason.startswith("not JSON (Expecting value at char 0)")


def test_score_schema_failure_gives_json_path(suite) -> None:  # type: ignore[no-untyped-def]
    score = score_output(suite, suite.cases[0], '{"category": "billing", "confidence": "high"}')
    assert score.json_valid and not score.schema_valid and not score.passed
    assert score.schema_error == "$.confidence: 'high' is not of type 'number'"
    assert score.reason == "schema: $.confidence: 'high' is not of type 'number'"


def test_score_field_mismatch_has_reason_and_diff(suite) -> None:  # type: ignore[no-untyped-def]
    score = score_output(suite, suite.cases[0], '{"category": "sales", "confidence": 0.8}')
    assert score.schema_valid and not score.fields_matched and not score.passed
    assert score.reason == 'category: expected "billing", got "sales"'
    assert score.diff is not None and "root['category']" in score.diff and "sales" in score.diff


@pytest.mark.parametrize(
    ("spec", "actual", "expected", "ok"),
    [
        ({"matcher": "exact"}, 1, 1.0, True),
        ({"matcher": "exact"}, True, 1, False),
        ({"matcher": "one_of", "values": ["billing", "sales"]}, "sales", None, True),
        ({"matcher": "one_of", "values": ["billing", "sales"]}, "technical", None, False),
        ({"matcher": "range", "min": 0.5, "max": 1}, 0.5, None, True),
        ({"matcher": "range", "min": 0.5, "max": 1}, 0.49, None, False),
        ({"matcher": "range", "min": 0.5}, "0.9", None, False),
        ({"matcher": "tolerance", "tolerance": 0.1}, 0.85, 0.9, True),
        ({"matcher": "tolerance", "tolerance": 0.1}, 0.7, 0.9, False),
        ({"matcher": "regex", "pattern": "INV-[0-9]+"}, "INV-2231", None, True),
        ({"matcher": "regex", "pattern": "INV-[0-9]+"}, "inv-2231 ", None, False),
        ({"matcher": "ignore"}, "anything", None, True),
    ],
)
def test_matchers(spec: dict, actual: object, expected: object, ok: bool) -> None:
    matcher = parse_matcher(spec, path=Path("x.toml"), where="match.f")
    assert (matcher.check(actual, expected) is None) is ok


def test_matcher_options_are_validated() -> None:
    with pytest.raises(ConfigError, match="matcher 'one_of' needs 'values'"):
        parse_matcher({"matcher": "one_of"}, path=Path("x.toml"), where="match.f")
    with pytest.raises(ConfigError, match="option 'values' does not apply to matcher 'exact'"):
        parse_matcher({"matcher": "exact", "values": [1]}, path=Path("x.toml"), where="match.f")
    with pytest.raises(ConfigError, match="invalid regex"):
        parse_matcher({"matcher": "regex", "pattern": "("}, path=Path("x.toml"), where="match.f")
    assert Matcher(kind="range", minimum=0.0).to_dict() == {"matcher": "range", "min": 0.0}


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("max_tokens = 32", "max_tokens = 0", "triage.toml → max_tokens: must be >= 1"),
        ("max_tokens = 32", "max_tokens = 32\nmax_token = 3", "triage.toml → max_token: unknown"),
    ],
)
def test_suite_keys_are_read_like_lifecycle_toml(
    tmp_path: Path, old: str, new: str, message: str
) -> None:
    # One TOML table reader (config.TableReader) for lifecycle.toml and eval suites.
    path = write_suite(tmp_path)
    path.write_text(path.read_text().replace(old, new, 1), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_suite(path)
    assert message in str(info.value)


def test_suite_match_must_be_a_table(tmp_path: Path) -> None:
    path = write_suite(tmp_path)
    path.write_text('golden = "cases.jsonl"\nschema = "schema.json"\nmatch = "x"\n')
    with pytest.raises(ConfigError, match=r"triage\.toml → match: must be a table"):
        load_suite(path)
