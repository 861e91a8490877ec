"""models.lock: deterministic, atomic, never pins a failure; commits with gitpython."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import git
import pytest
from _promote import init_repo, make_record

from lifecycle.baselines import load_baselines
from lifecycle.config import lifecycle_home
from lifecycle.gate import GateSettings, run_gate
from lifecycle.lockfile import read_lock
from lifecycle.pin import GitStateError, commit_message, pin
from lifecycle.results import RunRecord
from lifecycle.store import Store

Run = Callable[..., tuple[int, str, str]]


def repo_dir(tmp_path: Path) -> tuple[Path, git.Repo]:
    root = tmp_path / "repo"
    root.mkdir()
    (root / "lifecycle.toml").write_text("", encoding="utf-8")
    return root, init_repo(root)


def pin_record(root: Path, record: RunRecord, **kwargs: object):  # type: ignore[no-untyped-def]
    gate = run_gate(record, load_baselines(root), GateSettings())
    return pin(root, record, gate, Store(lifecycle_home()), **kwargs)  # type: ignore[arg-type]


def test_lock_is_deterministic_and_repin_is_a_no_op(tmp_path: Path) -> None:
    root = tmp_path
    result = pin_record(root, make_record({"a": True, "b": False}))
    assert [c.status for c in result.changes] == ["new"]
    lock_text = (root / "models.lock").read_text(encoding="utf-8")
    base_text = (root / "baselines" / "tiny.json").read_text(encoding="utf-8")
    lock = json.loads(lock_text)
    assert lock_text == json.dumps(lock, sort_keys=True, indent=2, ensure_ascii=False) + "\n"
    entry = lock["variants"]["tiny"]
    assert entry["blob_sha256"] == "sha256:" + "a" * 64 and entry["variant_id"] == "v1"
    assert entry["engine"] == {"name": "llama-cpp", "version": "llama-cpp-python 0.3.9"}
    assert entry["golden_sets"]["triage"]["golden_digest"].startswith("sha256:")
    assert entry["eval"]["triage/schema"]["pass_rate"] == 0.5
    # A later run of the same variant, golden set and engine: nothing is rewritten.
    again = pin_record(root, make_record({"a": True, "b": False}))
    assert [c.status for c in again.changes] == ["unchanged"] and again.written == []
    assert (root / "models.lock").read_text(encoding="utf-8") == lock_text
    assert (root / "baselines" / "tiny.json").read_text(encoding="utf-8") == base_text
    # A new variant id is an update, old → new in the message.
    updated = pin_record(root, make_record({"a": True, "b": True}, variant_id="v2"))
    assert [c.status for c in updated.changes] == ["updated"]
    assert read_lock(root / "models.lock").variants["tiny"].variant_id == "v2"
    assert "(variant v1 → v2)" in commit_message(updated.changes)


def test_failed_variant_is_never_pinned(tmp_path: Path) -> None:
    root = tmp_path
    pin_record(root, make_record({"a": True, "b": True}))
    before = (root / "models.lock").read_bytes()
    result = pin_record(root, make_record({"a": True, "b": False}, variant_id="v2"))
    assert [c.status for c in result.changes] == ["refused"]
    assert any("passed in the baseline" in r for r in result.changes[0].reasons)
    assert (root / "models.lock").read_bytes() == before
    # Under its threshold with no baseline at all: not pinned either.
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    result = pin_record(fresh, make_record({"a": False}, threshold=0.5))
    assert result.refused and not (fresh / "models.lock").exists()


def test_commit_and_branch(tmp_path: Path) -> None:
    root, repo = repo_dir(tmp_path)
    result = pin_record(root, make_record({"a": True}), commit=True)
    assert result.commit == repo.head.commit.hexsha
    committed = set(repo.head.commit.stats.files)
    assert committed == {"models.lock", "baselines/tiny.json"}
    assert "tiny: new pin sha256:" in repo.head.commit.message
    assert not repo.is_dirty(untracked_files=True)
    # Nothing changed: no new commit.
    assert pin_record(root, make_record({"a": True}), commit=True).commit is None
    # A new variant on a new branch.
    result = pin_record(root, make_record({"a": True}, variant_id="v2"), branch="models/weekly")
    assert repo.active_branch.name == "models/weekly" and result.commit
    assert "sha256:" in repo.head.commit.message and "v1 → v2" in repo.head.commit.message
    assert repo.git.rev_parse("main") != repo.head.commit.hexsha


@pytest.mark.parametrize("branch", ["--force", "-b", "bad..name", "has space"])
def test_bad_branch_names_are_refused(tmp_path: Path, branch: str) -> None:
    root, repo = repo_dir(tmp_path)
    with pytest.raises(GitStateError, match="invalid branch name"):
        pin_record(root, make_record({"a": True}), branch=branch)
    assert not (root / "models.lock").exists() and repo.active_branch.name == "main"


def test_refuses_dirty_lockfile_merge_and_no_repo(tmp_path: Path) -> None:
    root, repo = repo_dir(tmp_path)
    pin_record(root, make_record({"a": True}), commit=True)
    lock = root / "models.lock"
    lock.write_text(lock.read_text(encoding="utf-8").replace("v1", "hand-edit"), "utf-8")
    with pytest.raises(GitStateError, match=r"uncommitted changes to models\.lock"):
        pin_record(root, make_record({"a": True}, variant_id="v2"), commit=True)
    assert "hand-edit" in lock.read_text(encoding="utf-8")  # nothing was written
    repo.git.checkout("--", "models.lock")

    (Path(repo.git_dir) / "MERGE_HEAD").write_text(repo.head.commit.hexsha + "\n")
    with pytest.raises(GitStateError, match="middle of a merge"):
        pin_record(root, make_record({"a": True}, variant_id="v2"), commit=True)
    (Path(repo.git_dir) / "MERGE_HEAD").unlink()

    outside = tmp_path / "plain"
    outside.mkdir()
    with pytest.raises(GitStateError, match="not inside a git repository"):
        pin_record(outside, make_record({"a": True}), commit=True)


def test_real_merge_in_progress_is_refused(tmp_path: Path) -> None:
    root, repo = repo_dir(tmp_path)
    (root / "notes.txt").write_text("base\n")
    repo.git.add("--", "notes.txt")
    repo.git.commit("-m", "notes")
    repo.git.checkout("-b", "other")
    (root / "notes.txt").write_text("other\n")
    repo.git.commit("-am", "other")
    repo.git.checkout("main")
    (root / "notes.txt").write_text("main\n")
    repo.git.commit("-am", "main")
    with pytest.raises(git.GitCommandError):
        repo.git.merge("other")  # a conflict: the repository is now mid-merge
    with pytest.raises(GitStateError, match="merge"):
        pin_record(root, make_record({"a": True}), commit=True)


_SLOW_PIN = """
import os, sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
from _promote import make_record
from lifecycle.gate import run_gate
from lifecycle.pin import pin
from lifecycle.store import Store

root = Path({root!r})
real_fsync = os.fsync
def slow_fsync(fd):
    Path({ready!r}).write_text("writing")
    time.sleep(60)  # killed here: the new lock is written to its temp file, not renamed
os.fsync = slow_fsync
record = make_record({{"a": True}}, variant_id="v2")
pin(root, record, run_gate(record, {{}}), Store(root / "home"))
"""


def test_killed_mid_write_leaves_the_old_lock_whole(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    root.mkdir()
    pin_record(root, make_record({"a": True}))
    before = (root / "models.lock").read_bytes()
    ready = tmp_path / "ready"
    script = _SLOW_PIN.format(tests=str(Path(__file__).parent), root=str(root), ready=str(ready))
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        for _ in range(600):
            if ready.exists() or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert ready.exists(), "the pin never started writing"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert (root / "models.lock").read_bytes() == before
    assert read_lock(root / "models.lock").variants["tiny"].variant_id == "v1"


def test_check_lock(tiny_workspace: Path, run_cli: Run) -> None:
    ws = str(tiny_workspace)
    assert run_cli("eval", "-C", ws, "-q", "--mode", "schema")[0] == 0
    code, out, _ = run_cli("pin", "-C", ws, "--json")
    assert code == 0 and json.loads(out)["pinned"] == ["tiny"]
    code, out, _ = run_cli("check-lock", "-C", ws, "--json")
    assert code == 0 and json.loads(out)["ok"] is True
    digest = read_lock(tiny_workspace / "models.lock").variants["tiny"].blob_sha256
    blob = Store(lifecycle_home()).blob_path(digest)
    blob.chmod(0o644)
    with blob.open("r+b") as handle:
        handle.seek(100)
        handle.write(b"corrupt!")
    code, out, _ = run_cli("check-lock", "-C", ws, "--json")
    assert code == 1 and json.loads(out)["variants"][0]["status"] == "corrupt"
    blob.unlink()
    code, out, _ = run_cli("check-lock", "-C", ws, "--json")
    assert code == 1 and json.loads(out)["variants"][0]["status"] == "missing"


def test_pin_cli_refuses_outside_repo_with_exit_2(tiny_workspace: Path, run_cli: Run) -> None:
    from lifecycle.runner import save_run

    ws = str(tiny_workspace)
    save_run(make_record({"a": True}), tiny_workspace / ".lifecycle" / "runs")
    code, _, err = run_cli("pin", "-C", ws, "--commit")
    assert code == 2 and "not inside a git repository" in err
    assert not (tiny_workspace / "models.lock").exists()
