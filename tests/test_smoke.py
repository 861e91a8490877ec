"""``lifecycle smoke`` end to end: real engine on the tiny model, real git repository."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import git
from _promote import break_case, init_repo, pass_schema_cases, schema_only

Run = Callable[..., tuple[int, str, str]]


def test_smoke_pins_commits_and_a_rerun_changes_nothing(tiny_workspace: Path, run_cli: Run) -> None:
    schema_only(tiny_workspace)
    pass_schema_cases(tiny_workspace)
    repo = init_repo(tiny_workspace)
    ws = str(tiny_workspace)

    code, out, err = run_cli("smoke", "-C", ws, "--offline", "--commit", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["evaluated"] == ["tiny"] and doc["cached"] == []
    assert doc["pins"]["pinned"] == ["tiny"] and doc["pins"]["commit"] == repo.head.commit.hexsha
    assert set(repo.head.commit.stats.files) == {"models.lock", "baselines/tiny.json"}
    assert Path(doc["report"]["html"]).is_file() and Path(doc["report"]["markdown"]).is_file()
    assert doc["bench_skipped"] is None  # the short bench ran on the real engine
    lock = (tiny_workspace / "models.lock").read_bytes()
    entry = json.loads(lock)["variants"]["tiny"]
    assert entry["bench"]["tg_tokens_per_s"] and entry["quant"] == "F32"
    head = repo.head.commit.hexsha

    code, out, err = run_cli("smoke", "-C", ws, "--offline", "--commit", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["evaluated"] == [] and doc["cached"] == ["tiny"]
    assert doc["pins"]["unchanged"] == ["tiny"] and doc["pins"]["commit"] is None
    assert repo.head.commit.hexsha == head
    assert (tiny_workspace / "models.lock").read_bytes() == lock
    assert not repo.is_dirty(untracked_files=True)


def test_broken_golden_case_fails_gate_and_pins_nothing(tiny_workspace: Path, run_cli: Run) -> None:
    schema_only(tiny_workspace)
    pass_schema_cases(tiny_workspace)
    repo = init_repo(tiny_workspace)
    ws = str(tiny_workspace)
    assert run_cli("smoke", "-C", ws, "--offline", "--no-bench", "--commit")[0] == 0
    lock = (tiny_workspace / "models.lock").read_bytes()
    head = repo.head.commit.hexsha

    case_id = break_case(tiny_workspace, 1)
    repo.git.commit("-am", "golden: change an expected value")
    code, out, _ = run_cli("smoke", "-C", ws, "--offline", "--no-bench", "--commit", "--json")
    doc = json.loads(out)
    assert code == 3 and doc["evaluated"] == ["tiny"]  # a changed digest re-evaluates
    assert [r["case"] for r in doc["gate"]["regressions"]] == [case_id]
    assert doc["gate"]["regressions"][0]["causes"] == ["golden set"]
    assert doc["pins"]["refused"] == ["tiny"] and doc["pins"]["commit"] is None
    assert (tiny_workspace / "models.lock").read_bytes() == lock

    code, out, _ = run_cli("gate", "-C", ws, "--json")
    assert code == 3 and json.loads(out)["regressions"][0]["case"] == case_id
    code, _, _ = run_cli("pin", "-C", ws, "--commit")
    assert code == 3
    assert (tiny_workspace / "models.lock").read_bytes() == lock
    assert repo.git.rev_parse("HEAD~1") == head  # only the golden-set commit since


def test_smoke_refuses_a_dirty_lockfile_before_running(tiny_workspace: Path, run_cli: Run) -> None:
    schema_only(tiny_workspace)
    repo = init_repo(tiny_workspace)
    (tiny_workspace / "models.lock").write_text('{"lock_version": 1, "variants": {}}\n')
    code, _, err = run_cli("smoke", "-C", str(tiny_workspace), "--offline", "--branch", "weekly")
    assert code == 2 and "models.lock" in err
    assert repo.active_branch.name == "main"
    assert not (tiny_workspace / ".lifecycle").exists()  # refused before any eval
    assert isinstance(repo, git.Repo)
