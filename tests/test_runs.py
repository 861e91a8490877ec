"""Run records on disk: one reader for every command that takes a run (#15)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lifecycle.errors import UsageError
from lifecycle.results import RunRecord
from lifecycle.runs import find_run, read_run


def save(runs_dir: Path, run_id: str) -> Path:
    record = RunRecord(run_id, "2026-01-01T00:00:00Z", "2026-01-01T00:00:01Z", {}, {}, [], [], [])
    text = json.dumps(record.to_dict()) + "\n"
    (runs_dir / run_id).mkdir(parents=True)
    (runs_dir / run_id / "run.json").write_text(text, encoding="utf-8")
    (runs_dir / "latest.json").write_text(text, encoding="utf-8")
    return runs_dir / run_id


def test_a_run_by_id_directory_file_or_latest(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    first = save(runs, "run-a")
    save(runs, "run-b")
    assert find_run(runs, None).run_id == "run-b"
    assert find_run(runs, "run-a").run_id == "run-a"
    assert find_run(runs, str(first)).run_id == "run-a"
    assert find_run(runs, str(first / "run.json")).run_id == "run-a"
    assert read_run(first).run_id == "run-a"


def test_a_missing_or_broken_run_names_the_file(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    with pytest.raises(UsageError, match="run `lifecycle eval` first") as info:
        find_run(runs, None)
    assert info.value.path == str(runs / "latest.json")
    with pytest.raises(UsageError) as info:
        find_run(runs, "nope")
    assert info.value.path == str(runs / "nope" / "run.json")
    broken = save(runs, "run-c") / "run.json"
    broken.write_text('{"run_id": 1}', encoding="utf-8")
    with pytest.raises(UsageError, match="invalid run record") as info:
        find_run(runs, "run-c")
    assert info.value.path == str(broken)


def test_speed_and_latency_come_from_answers_generated_in_this_run() -> None:
    """An answer from the cache carries the timings of the run that generated it (perhaps on
    a busy machine): the summary's speed and latency count only this run's generations."""
    from dataclasses import replace

    from _promote import make_record

    from lifecycle.results import summarise

    fast, slow, cached = make_record({"a": True, "b": True, "c": False}).cases
    fast = replace(fast, generation_ms=1000.0, eval_tokens=50, latency_ms=1200.0)
    slow = replace(slow, generation_ms=1000.0, eval_tokens=30, latency_ms=1100.0)
    cached = replace(
        cached,
        generation_ms=60000.0,
        eval_tokens=40,
        latency_ms=90000.0,
        cached_from="20261207T184517Z-6674ca39",
    )
    summary = summarise(
        [fast, slow, cached], variant="tiny", suite="triage", mode="schema", threshold=None
    )
    assert summary.generation_tokens_per_s == 40.0 and summary.generation_s == 2.0
    assert summary.latency_p95_ms < 1200.0 and summary.cases == 3 and summary.passed == 2
    earlier = [replace(c, cached_from="earlier") for c in (fast, slow)]
    summary = summarise(
        [*earlier, cached], variant="tiny", suite="triage", mode="schema", threshold=None
    )
    assert summary.generation_tokens_per_s is None and summary.generation_s == 0.0


def test_a_run_records_variant_round_trips_in_key_order() -> None:
    """run.json is written unsorted: the typed variant (VariantInfo) keeps the order its keys
    were read in, a key an older tool lacked stays absent and one a newer tool wrote is kept."""
    from _promote import make_record

    data = make_record({"a": True}).to_dict()
    variant = dict(data["variants"][0]["variant"])
    del variant["revision"]  # an older tool's
    data["variants"][0]["variant"] = {"drafting": "prompt-lookup", **variant}  # a newer one's
    text = json.dumps(data, indent=2, ensure_ascii=False)
    again = RunRecord.from_dict(json.loads(text))
    assert again.variants[0].variant.name == "tiny"
    assert json.dumps(again.to_dict(), indent=2, ensure_ascii=False) == text
