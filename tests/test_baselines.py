"""Baseline files (lifecycle.baselines): the typed documents turn back into the very file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _promote import make_record

from lifecycle.baselines import (
    Baseline,
    BaselineFile,
    baseline_entry,
    baseline_path,
    load_baselines,
    read_baseline_file,
)
from lifecycle.errors import UsageError
from lifecycle.lockfile import render_json

REPO = Path(__file__).resolve().parent.parent
COMMITTED = sorted((REPO / "baselines").glob("*.json"))


def test_the_example_has_baselines() -> None:
    assert COMMITTED, "the example's baselines/ holds no file"


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.name)
def test_committed_baselines_round_trip_byte_for_byte(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    data = json.loads(text)
    document = BaselineFile.from_dict(data)
    assert document.to_dict() == data
    for name, entry in data["variants"].items():
        assert Baseline.from_dict(entry).to_dict() == entry, name
    # What pin writes for an unchanged model is the committed file itself.
    assert render_json(document.to_dict()) == text
    found = read_baseline_file(path)
    assert found is not None and render_json(found.to_dict()) == text


def test_a_run_entry_round_trips_and_loads(tmp_path: Path) -> None:
    record = make_record({"a": True, "b": False})
    entry = baseline_entry(record, "tiny", {"tg_tokens_per_s": 10.0})
    assert Baseline.from_dict(entry.to_dict()) == entry
    assert entry.variant_id == record.variants[0].variant.id
    assert set(entry.case_map()) == {(c.suite, c.mode, c.id) for c in record.cases}
    path = baseline_path(tmp_path, "tiny")
    path.parent.mkdir()
    path.write_text(render_json(BaselineFile("tiny", {"tiny": entry}).to_dict()), "utf-8")
    assert load_baselines(tmp_path) == {"tiny": entry}


def test_unreadable_or_foreign_baselines_are_refused(tmp_path: Path) -> None:
    directory = tmp_path / "baselines"
    directory.mkdir()
    (directory / "x.json").write_text('{"schema_version": 99, "variants": {}}', "utf-8")
    assert read_baseline_file(directory / "x.json") is None
    with pytest.raises(UsageError, match="unsupported baseline"):
        load_baselines(tmp_path)
    (directory / "x.json").write_text("{", "utf-8")
    with pytest.raises(UsageError, match="cannot read baseline"):
        load_baselines(tmp_path)
    with pytest.raises(UsageError, match="cannot name a baseline file"):
        baseline_path(tmp_path, "../x")


def test_keys_a_newer_tool_wrote_survive_a_rewrite() -> None:
    entry = {
        "variant": {"name": "tiny", "id": "v1"},
        "run_id": "r",
        "environment": {},
        "golden_sets": {},
        "summaries": [],
        "cases": [],
        "bench": None,
        "judged_by": "lifecycle 9.9",
    }
    baseline = Baseline.from_dict(entry)
    assert baseline.extra == {"judged_by": "lifecycle 9.9"}
    assert baseline.to_dict() == entry


def test_an_older_or_newer_entry_round_trips_through_the_typed_documents() -> None:
    """The variant, each summary and each case are typed (VariantInfo, SuiteSummary,
    BaselineCase); a key an older tool did not write stays absent, one a newer tool wrote is
    kept, so re-pinning another variant leaves this entry's bytes as they were."""
    record = make_record({"a": True, "b": False})
    data = baseline_entry(record, "tiny", None).to_dict()
    data["variant"] = {**data["variant"], "drafting": {"kind": "prompt-lookup"}}
    del data["variant"]["modelfile_digest"]  # an older tool's variant
    older = {k: v for k, v in data["summaries"][0].items() if k not in ("generation_s",)}
    data["summaries"] = [{**older, "drafted_tokens": 12}]
    data["cases"] = [{**data["cases"][0], "judge": "llm"}, data["cases"][1]]
    entry = Baseline.from_dict(data)
    assert entry.variant.extra == {"drafting": {"kind": "prompt-lookup"}}
    assert entry.summaries[0].generation_s is None and entry.cases[0].extra == {"judge": "llm"}
    assert entry.to_dict() == data
    assert render_json(entry.to_dict()) == render_json(data)
    # The gate reads the typed fields whatever the file's age.
    assert entry.case_map()[("triage", "schema", "a")].passed is True
