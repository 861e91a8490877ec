"""``lifecycle eval`` end to end on a tiny real model: the JSON contract, exit codes, bad input."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from lifecycle.results import RunRecord

Run = Callable[..., tuple[int, str, str]]


def test_eval_json_document(tiny_workspace: Path, run_cli: Run) -> None:
    code, out, err = run_cli("eval", "-C", str(tiny_workspace), "--json")
    doc = json.loads(out)  # stdout holds exactly one JSON document
    assert code == 0, err
    summary = doc["summary"]
    assert summary["cases"] == 8  # 4 cases x 2 modes
    for key in (
        "passed",
        "pass_rate",
        "json_valid_rate",
        "schema_valid_rate",
        "latency_p50_ms",
        "latency_p95_ms",
        "prompt_tokens_per_s",
        "generation_tokens_per_s",
        "load_ms",
    ):
        assert key in summary
    # The grammar forces schema-shaped JSON even from random weights; free output is noise.
    by_mode = {s["mode"]: s for s in doc["summaries"]}
    assert by_mode["schema"]["json_valid_rate"] == 1.0
    assert by_mode["free"]["json_valid_rate"] == 0.0
    case = doc["cases"][0]
    for key in (
        "id",
        "passed",
        "reason",
        "output",
        "latency_ms",
        "prompt_tokens",
        "completion_tokens",
        "json_valid",
        "schema_valid",
        "mode",
        "variant",
    ):
        assert key in case
    env = doc["environment"]
    assert env["engine"] == "llama-cpp" and env["engine_version"].startswith("llama-cpp-python")
    assert env["threads"] == {"tiny": 2} and env["seed"] == 7
    assert env["blobs"]["tiny"].startswith("sha256:")
    assert doc["golden_sets"]["triage"]["golden_digest"].startswith("sha256:")
    variant = doc["variants"][0]["variant"]
    assert (
        variant["parameters"]["temperature"] == 0.0
        and variant["blob_digest"] == env["blobs"]["tiny"]
    )
    # The same record is saved and reads back into the typed form.
    saved = json.loads((tiny_workspace / ".lifecycle/runs/latest.json").read_text())
    assert RunRecord.from_dict(saved).to_dict() == saved
    assert "run record:" in err


def test_under_threshold_a_candidate_is_refused_and_a_pinned_variant_fails(
    tiny_workspace: Path, run_cli: Run
) -> None:
    suite = tiny_workspace / "evals" / "triage.toml"
    suite.write_text(suite.read_text().replace("threshold = 0.0", "threshold = 1.0"))
    code, out, _ = run_cli("eval", "-C", str(tiny_workspace), "--mode", "free", "-q")
    assert code == 0  # not in models.lock: a candidate, refused and reported
    assert "refused" in out and "verdict: 1 candidate(s) refused (under threshold)" in out
    assert "not JSON" in out  # failing cases are listed with their reason

    pinned = {"variant_id": "pinned-before", "blob_sha256": "sha256:" + "0" * 64}
    lock = {"lock_version": 1, "variants": {"tiny": pinned}}
    (tiny_workspace / "models.lock").write_text(json.dumps(lock))
    code, out, _ = run_cli("eval", "-C", str(tiny_workspace), "--mode", "free", "-q")
    assert code == 3  # production under its threshold
    assert "BELOW" in out and "1 pinned variant(s) BELOW threshold" in out
    code, _, _ = run_cli("eval", "-C", str(tiny_workspace), "--mode", "free", "-q", "--exit-zero")
    assert code == 0


def test_eval_limit_and_mode_selection(tiny_workspace: Path, run_cli: Run) -> None:
    code, out, _ = run_cli(
        "eval", "-C", str(tiny_workspace), "--json", "--limit", "2", "--mode", "schema"
    )
    doc = json.loads(out)
    assert code == 0
    assert [(c["mode"], c["id"]) for c in doc["cases"]] == [
        ("schema", "case-0"),
        ("schema", "case-1"),
    ]


def rewrite(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new), encoding="utf-8")


@pytest.mark.parametrize(
    ("break_it", "code", "message"),
    [
        pytest.param(
            lambda ws: (ws / "golden/triage.jsonl").write_text(
                (ws / "golden/triage.jsonl").read_text() + '{"id": "x", "messages": [\n'
            ),
            2,
            r"golden/triage.jsonl:5: malformed JSON",
            id="malformed-jsonl",
        ),
        pytest.param(
            lambda ws: (ws / "golden/triage.jsonl").write_text(
                '{"id": "x", "messages": [{"role": "user", "content": "hi"}]}\n'
            ),
            2,
            r"golden/triage.jsonl:1 → expected: case 'x' has no expected output",
            id="missing-expected",
        ),
        pytest.param(
            lambda ws: (ws / "golden/triage.schema.json").write_text('{"type": 12}'),
            2,
            r"golden/triage.schema.json: invalid JSON Schema at \$.type",
            id="invalid-schema",
        ),
        pytest.param(
            lambda ws: rewrite(ws / "evals/triage.toml", 'matcher = "exact"', 'matcher = "same"'),
            2,
            r"evals/triage.toml → match.category: unknown matcher 'same'",
            id="unknown-matcher",
        ),
        pytest.param(
            lambda ws: rewrite(
                ws / "modelfiles/tiny.Modelfile", "FROM ./tiny.gguf", "FROM ./gone.gguf"
            ),
            2,
            r"tiny.Modelfile: FROM ./gone.gguf: file not found",
            id="from-not-found",
        ),
        pytest.param(
            lambda ws: rewrite(ws / "lifecycle.toml", 'suites = ["triage"]', 'suites = ["triaje"]'),
            2,
            r"unknown suite 'triaje' \(did you mean 'triage'\?\)",
            id="unknown-suite",
        ),
        pytest.param(
            lambda ws: rewrite(ws / "lifecycle.toml", "threads = 2", 'threads = "two"'),
            2,
            r"lifecycle.toml → engine.threads: must be an integer",
            id="bad-config-field",
        ),
        pytest.param(
            lambda ws: (ws / "modelfiles/tiny.gguf").write_bytes(
                (ws / "modelfiles/tiny.gguf").read_bytes()[:200_000]
            ),
            1,
            r"tiny.gguf: .*(past the end|truncated)",
            id="truncated-gguf",
        ),
        pytest.param(
            lambda ws: (ws / "modelfiles/tiny.gguf").write_bytes(b"PK\x03\x04" + b"\0" * 4096),
            1,
            r"tiny.gguf: not a GGUF file",
            id="not-gguf",
        ),
    ],
)
def test_bad_input_gives_one_line_and_exit_code(
    tiny_workspace: Path, run_cli: Run, break_it: Callable[[Path], object], code: int, message: str
) -> None:
    break_it(tiny_workspace)
    got, out, err = run_cli("eval", "-C", str(tiny_workspace), "--json")
    assert got == code, err
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    import re

    assert re.search(message, lines[0]), lines[0]
    assert "Traceback" not in err


def test_no_workspace_is_a_usage_error(tmp_path: Path, run_cli: Run) -> None:
    code, _, err = run_cli("eval", "-C", str(tmp_path))
    assert code == 2 and "no lifecycle.toml found" in err


def test_debug_env_shows_traceback(
    tiny_workspace: Path, run_cli: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LIFECYCLE_DEBUG", "1")
    rewrite(tiny_workspace / "lifecycle.toml", "threads = 2", "threads = -1")
    code, _, err = run_cli("eval", "-C", str(tiny_workspace))
    assert code == 2 and "Traceback" in err


def test_eval_records_how_busy_the_machine_was(tiny_workspace: Path, run_cli: Run) -> None:
    code, out, _ = run_cli("eval", "-C", str(tiny_workspace), "--json", "--limit", "1")
    share = json.loads(out)["environment"]["foreign_cpu_share"]["tiny"]
    assert code == 0 and 0.0 <= share <= 1.0
