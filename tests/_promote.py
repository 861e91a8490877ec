"""Helpers for the promotion tests: real git repositories and golden sets the tiny model passes.

The tiny model's weights are random, so its answers are noise; but under the schema grammar
they are valid, deterministic JSON (temperature 0, fixed seed). :func:`pass_schema_cases`
rewrites the golden set so each case expects exactly what the model answers in schema mode:
those cases then pass, and editing one expected value makes a passing case fail, which is
the regression the gate must catch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import git

from lifecycle.config import load_workspace
from lifecycle.results import RunRecord
from lifecycle.runner import EvalOptions, run_eval


def init_repo(root: Path) -> git.Repo:
    """``git init`` the workspace, ignore run/cache/report output, commit everything."""
    repo = git.Repo.init(root, initial_branch="main")
    with repo.config_writer() as config:
        config.set_value("user", "name", "Test")
        config.set_value("user", "email", "test@example.com")
        config.set_value("commit", "gpgsign", "false")
    (root / ".gitignore").write_text(".lifecycle/\nreports/\n", encoding="utf-8")
    repo.git.add("--all")
    repo.git.commit("-m", "workspace")
    return repo


def pass_schema_cases(root: Path) -> list[dict[str, object]]:
    """Make every golden case expect the model's schema-mode answer; return the new cases."""
    answers = schema_answers(root)
    golden = root / "golden" / "triage.jsonl"
    cases = [json.loads(line) for line in golden.read_text(encoding="utf-8").splitlines()]
    for case in cases:
        answer = answers[case["id"]]
        assert isinstance(answer, dict)
        case["expected"] = {"category": answer["category"], "confidence": 0.5}
    write_cases(root, cases)
    return cases


def write_cases(root: Path, cases: list[dict[str, object]]) -> None:
    golden = root / "golden" / "triage.jsonl"
    golden.write_text("".join(json.dumps(c) + "\n" for c in cases), encoding="utf-8")


def break_case(root: Path, index: int = 0) -> str:
    """Change one case's expected category so the model's answer no longer matches it."""
    golden = root / "golden" / "triage.jsonl"
    cases = [json.loads(line) for line in golden.read_text(encoding="utf-8").splitlines()]
    case = cases[index]
    current = case["expected"]["category"]
    case["expected"]["category"] = next(
        c for c in ("billing", "technical", "sales") if c != current
    )
    write_cases(root, cases)
    return str(case["id"])


_ANSWERS: dict[str, dict[str, object]] = {}


def schema_answers(root: Path) -> dict[str, object]:
    """The model's schema-mode answer per case id (one eval per model file per session)."""
    import hashlib

    key = hashlib.sha256((root / "modelfiles" / "tiny.gguf").read_bytes()).hexdigest()
    if key not in _ANSWERS:
        record = run_eval(load_workspace(root), EvalOptions(modes=["schema"]))
        _ANSWERS[key] = {c.id: c.parsed for c in record.cases}
    return _ANSWERS[key]


def repeat_cases(path: Path, times: int) -> None:
    """The golden set repeated ``times`` times, with fresh case ids and prompts (a repeated
    prompt would be answered from the answer cache, and the run would not last)."""
    lines = path.read_text(encoding="utf-8").splitlines() * times
    cases = []
    for i, line in enumerate(lines):
        case = dict(json.loads(line), id=f"case-{i}")
        *before, last = case["messages"]
        case["messages"] = [*before, {**last, "content": f"{last['content']} #{i}"}]
        cases.append(case)
    path.write_text("".join(json.dumps(c) + "\n" for c in cases), encoding="utf-8")


def schema_only(root: Path) -> None:
    """Run only the schema mode (free-mode output from random weights is noise, and slow)."""
    suite = root / "evals" / "triage.toml"
    text = suite.read_text(encoding="utf-8").replace('["free", "schema"]', '["schema"]')
    suite.write_text(text, encoding="utf-8")


def make_record(
    verdicts: dict[str, bool],
    *,
    variant: str = "tiny",
    variant_id: str = "v1",
    golden_digest: str = "sha256:" + "1" * 64,
    tokens_per_s: float | None = 100.0,
    engine_version: str = "llama-cpp-python 0.3.9",
    cpu: str = "Test CPU",
    threshold: float | None = 0.0,
    margins: dict[str, float] | None = None,
    environment: dict[str, Any] | None = None,
) -> RunRecord:
    """A run record with one schema-mode case per ``verdicts`` entry (id → passed), each
    with its decision margin from ``margins`` (id → margin; none when not given)."""
    from lifecycle.results import CaseResult, VariantInfo, VariantRun, overall, summarise

    cases = [
        CaseResult(
            variant=variant,
            suite="triage",
            mode="schema",
            id=case_id,
            passed=passed,
            reason="ok" if passed else "category: expected 'sales', got 'billing'",
            output='{"category": "billing", "confidence": 0.5}',
            parsed={"category": "billing", "confidence": 0.5},
            expected={"category": "billing" if passed else "sales", "confidence": 0.5},
            json_valid=True,
            schema_valid=True,
            fields_matched=passed,
            schema_error=None,
            mismatches=[] if passed else ["category"],
            diff=None if passed else "Value of root['category'] changed from 'sales' to 'billing'.",
            latency_ms=10.0,
            prompt_tokens=20,
            # 250 tokens: seconds of generation at these rates, enough for the gate to judge
            # speed (it leaves samples under MIN_SPEED_SAMPLE_S alone).
            completion_tokens=250,
            prompt_eval_tokens=20,
            prompt_ms=1.0,
            eval_tokens=250,
            generation_ms=(250 / tokens_per_s * 1000) if tokens_per_s else 0.0,
            finish_reason="stop",
            margin=(margins or {}).get(case_id),
        )
        for case_id, passed in verdicts.items()
    ]
    summary = summarise(cases, variant=variant, suite="triage", mode="schema", threshold=threshold)
    return RunRecord(
        run_id=f"run-{variant_id}",
        started_at="2025-01-01T00:00:00Z",
        finished_at="2025-01-01T00:00:01Z",
        environment={
            "engine": "llama-cpp",
            "engine_version": engine_version,
            "threads": {variant: 2},
            "batch_size": 512,
            "gpu_layers": 0,
            "seed": 7,
            "blobs": {variant: "sha256:" + "a" * 64},
            "machine": "x86_64",
            "cpu": cpu,
            "cpu_count_logical": 4,
            "cpu_count_physical": 2,
            "ram_bytes": 8 << 30,
            **(environment or {}),
        },
        golden_sets={
            "triage": {"golden_digest": golden_digest, "schema_digest": "sha256:" + "2" * 64}
        },
        variants=[
            VariantRun(
                variant=VariantInfo.from_dict(
                    {
                        "id": variant_id,
                        "name": variant,
                        "model": variant,
                        "blob_digest": "sha256:" + "a" * 64,
                        "blob_size": 1000,
                        "revision": None,
                        "source": "./tiny.gguf",
                        "modelfile_digest": "sha256:" + "3" * 64,
                        "parameters": {"temperature": 0.0},
                    }
                ),
                load_ms=5.0,
            )
        ],
        summaries=[summary],
        cases=cases,
        summary=overall([summary], cases, 5.0),
    )
