"""Sharded runs: the slices cover every case once and merge into the unsharded run."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

Run = Callable[..., tuple[int, str, str]]

STABLE = ("variant", "suite", "mode", "id", "passed", "reason", "output", "completion_tokens")


def test_shards_merge_into_the_unsharded_run(tiny_workspace: Path, run_cli: Run) -> None:
    ws = str(tiny_workspace)
    code, out, _ = run_cli("eval", "-C", ws, "--json", "-q")
    assert code == 0
    whole = json.loads(out)

    paths = []
    for i in (1, 2, 3):
        code, out, _ = run_cli("eval", "-C", ws, "--json", "-q", "--shard", f"{i}/3")
        shard = json.loads(out)
        assert code == 0 and shard["shard"] == f"{i}/3"
        paths.append(str(tiny_workspace / ".lifecycle/runs" / shard["run_id"]))
    sizes = [len(json.loads(Path(p, "run.json").read_text())["cases"]) for p in paths]
    assert sorted(sizes) == [2, 3, 3]  # 8 work items dealt round-robin

    code, out, _ = run_cli("merge", *paths, "-C", ws, "--json")
    merged = json.loads(out)
    assert code == 0 and merged["shard"] is None

    # Greedy decoding is deterministic, so the merged run has exactly the unsharded verdicts.
    assert sorted(
        ([c[k] for k in STABLE] for c in merged["cases"]), key=lambda c: (c[2], c[3])
    ) == sorted(([c[k] for k in STABLE] for c in whole["cases"]), key=lambda c: (c[2], c[3]))
    for field in ("cases", "passed", "pass_rate", "json_valid_rate", "schema_valid_rate"):
        assert merged["summary"][field] == whole["summary"][field]
    assert [(s["mode"], s["passed"]) for s in merged["summaries"]] == [
        (s["mode"], s["passed"]) for s in whole["summaries"]
    ]


def test_bad_shard_and_overlapping_shards(tiny_workspace: Path, run_cli: Run) -> None:
    ws = str(tiny_workspace)
    code, _, err = run_cli("eval", "-C", ws, "--shard", "4/3")
    assert code == 2 and "invalid shard 4/3" in err
    code, _, err = run_cli("eval", "-C", ws, "--shard", "two")
    assert code == 2 and "expected I/N" in err
    code, out, _ = run_cli("eval", "-C", ws, "--json", "-q", "--shard", "1/2", "--mode", "schema")
    run = str(tiny_workspace / ".lifecycle/runs" / json.loads(out)["run_id"])
    code, _, err = run_cli("merge", run, run, "-C", ws)
    assert code == 2 and "appears in more than one shard" in err
