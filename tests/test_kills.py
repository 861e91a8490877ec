"""Killed processes leave nothing half-done: no orphan child, no half-published pin, no lost
resume point.

Every kill here is a real signal to a real process: the console script (supervisor and
child), a pin cut short between two renames or inside its git commit, two evals at once in
one workspace.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from _promote import init_repo, make_record, repeat_cases

from lifecycle.baselines import load_baselines
from lifecycle.config import lifecycle_home
from lifecycle.gate import run_gate
from lifecycle.lockfile import read_lock
from lifecycle.pin import GitStateError, pin
from lifecycle.results import RunRecord
from lifecycle.runner import save_run
from lifecycle.store import Store

LIFECYCLE = [sys.executable, "-m", "lifecycle.cli"]
TESTS = str(Path(__file__).parent)


def gone(proc: psutil.Process, timeout_s: float) -> bool:
    """Whether ``proc`` exits within ``timeout_s`` (a zombie nobody reaps counts as gone)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.1)
    return False


def wait_for(stream: object, text: str) -> list[str]:
    """Read progress lines from ``stream`` until one contains ``text``; the lines read."""
    seen = []
    for line in stream:  # type: ignore[attr-defined]
        seen.append(line)
        if text in line:
            return seen
    raise AssertionError(f"{text!r} never appeared:\n{''.join(seen)}")


# --- the supervised child dies with its parent ----------------------------------------------


def test_a_killed_supervisor_takes_its_child_with_it(tiny_workspace: Path) -> None:
    """SIGKILL to ``lifecycle smoke`` (the supervisor) mid-eval: the child that runs the
    eval dies too and never goes on to gate and pin."""
    repeat_cases(tiny_workspace / "golden" / "triage.jsonl", 100)
    proc = subprocess.Popen(
        [*LIFECYCLE, "smoke", "-C", str(tiny_workspace), "--offline", "--no-bench"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    assert proc.stderr is not None
    try:
        wait_for(proc.stderr, "[tiny triage/free 2/")
        (child,) = psutil.Process(proc.pid).children()
        proc.kill()
        proc.wait()
        assert gone(child, 30.0), "the supervised child outlived its supervisor"
    finally:
        for leftover in psutil.Process().children(recursive=True):
            leftover.kill()
    assert not (tiny_workspace / "models.lock").exists()
    assert not (tiny_workspace / "baselines").exists()


# --- a pin is published whole or not at all -------------------------------------------------

_CUT_PIN = """
import os, sys, tempfile
from pathlib import Path
sys.path.insert(0, {tests!r})
from _promote import make_record
from lifecycle.gate import run_gate
from lifecycle.pin import pin
from lifecycle.store import Store

root = Path({root!r})
cut = {cut!r}
real_replace, real_fsync, real_mkstemp = os.replace, os.fsync, tempfile.mkstemp

def replace(src, dst):
    real_replace(src, dst)
    if cut == "between-renames" and "baselines" in str(dst):
        os.kill(os.getpid(), 9)  # the new baselines are in place, the lock is not yet

def fsync(fd):
    if cut == "temps" and list(root.glob(".models.lock.*.tmp")):
        os.kill(os.getpid(), 9)  # the new lock is in its temp file, not renamed
    real_fsync(fd)

def mkstemp(*args, **kwargs):
    if cut == "git-commit" and kwargs.get("prefix") == "lifecycle-commit-":
        os.kill(os.getpid(), 9)  # the files are staged, the commit not made
    return real_mkstemp(*args, **kwargs)

os.replace, os.fsync, tempfile.mkstemp = replace, fsync, mkstemp
record = make_record({{"a": True}}, variant_id="v2")
pin(root, record, run_gate(record, {{}}), Store(root / "home"), commit={commit!r})
"""


def cut_pin(root: Path, cut: str, *, commit: bool = False) -> None:
    """Run a pin of variant id v2 in a process that SIGKILLs itself at ``cut``."""
    script = _CUT_PIN.format(tests=TESTS, root=str(root), cut=cut, commit=commit)
    done = subprocess.run([sys.executable, "-c", script], timeout=120, check=False)
    assert done.returncode == -signal.SIGKILL, "the pin was not cut where the test meant"


def pinned_pair(root: Path) -> tuple[str | None, str | None]:
    """(variant id in models.lock, variant id in the baselines) of variant ``tiny``."""
    return read_lock(root / "models.lock").variants["tiny"].variant_id, load_baselines(root)[
        "tiny"
    ].variant_id


def pin_record(root: Path, record: RunRecord, *, commit: bool = False) -> None:
    pin(root, record, run_gate(record, {}), Store(lifecycle_home()), commit=commit)


def pin_v1(root: Path, *, commit: bool = False) -> None:
    pin_record(root, make_record({"a": True}), commit=commit)


def test_a_pin_killed_between_its_renames_is_finished_by_the_next_reader(
    tmp_path: Path,
) -> None:
    root = tmp_path / "ws"
    root.mkdir()
    pin_v1(root)
    cut_pin(root, "between-renames")
    assert pinned_pair(root) == ("v2", "v2")  # the pair agrees: the publish was finished
    assert not list(root.glob(".*.tmp")) and not list((root / "baselines").glob(".*.tmp"))


def test_the_next_pin_removes_the_temp_files_a_killed_one_left(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    root.mkdir()
    pin_v1(root)
    cut_pin(root, "temps")
    assert pinned_pair(root) == ("v1", "v1")  # nothing was published
    assert list(root.glob(".models.lock.*.tmp"))  # the debris the kill left
    pin_v1(root)
    assert not list(root.glob(".*.tmp")) and not list((root / "baselines").glob(".*.tmp"))


def test_after_a_killed_pin_commit_the_next_names_what_is_in_the_way(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    root.mkdir()
    (root / "lifecycle.toml").write_text("", encoding="utf-8")
    repo = init_repo(root)
    pin_v1(root, commit=True)
    cut_pin(root, "git-commit", commit=True)
    assert pinned_pair(root) == ("v2", "v2")
    with pytest.raises(GitStateError) as info:
        pin_v1(root, commit=True)
    assert "uncommitted changes to baselines/tiny.json, models.lock (staged: an interrupted" in str(
        info.value
    )

    # git itself killed mid-command leaves its index lock; no git process holds it now.
    repo.git.reset("--hard")
    index_lock = Path(repo.git_dir) / "index.lock"
    index_lock.write_bytes(b"")
    with pytest.raises(GitStateError) as info:
        pin_record(root, make_record({"a": True}, variant_id="v3"), commit=True)
    message = str(info.value)
    assert f"stale {index_lock} (no git process is running" in message
    assert f"rm {index_lock}" in message and "\n" not in message
    index_lock.unlink()
    pin_record(root, make_record({"a": True}, variant_id="v3"), commit=True)
    assert not repo.is_dirty(untracked_files=True) and pinned_pair(root) == ("v3", "v3")


# --- two runs at once keep their own resume points ------------------------------------------


def test_two_evals_at_once_keep_their_own_resume_points(tiny_workspace: Path) -> None:
    """Run A is stopped mid-eval while run B runs to the end in the same workspace, then A is
    killed: B must not have taken or deleted A's checkpoint, so the next run resumes it."""
    repeat_cases(tiny_workspace / "golden" / "triage.jsonl", 4)
    eval_args = [*LIFECYCLE, "eval", "-C", str(tiny_workspace), "--mode", "free"]
    first = subprocess.Popen(
        eval_args,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    assert first.stderr is not None
    try:
        wait_for(first.stderr, "[tiny triage/free 5/16]")
        os.killpg(first.pid, signal.SIGSTOP)  # supervisor and child: alive, holding their files
        second = subprocess.run(eval_args, capture_output=True, text=True, timeout=300)
        assert second.returncode in (0, 3), second.stderr
        assert "resumed" not in second.stderr  # a live run's checkpoint is not taken
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    third = subprocess.run(eval_args, capture_output=True, text=True, timeout=300)
    assert third.returncode in (0, 3), third.stderr
    resumed = [line for line in third.stderr.splitlines() if "resumed" in line]
    assert resumed, third.stderr
    assert int(resumed[0].split("resumed ")[1].split()[0]) >= 5
    assert not list((tiny_workspace / ".lifecycle" / "checkpoints").glob("*.jsonl"))


def test_latest_names_the_run_that_finished_last(tmp_path: Path) -> None:
    """Two runs at once save in either order; ``latest.json`` is the one that finished last."""
    earlier, later = make_record({"a": True}), make_record({"a": True})
    earlier.run_id, later.run_id = "run-earlier", "run-later"
    earlier.finished_at, later.finished_at = "2025-01-01T00:00:01Z", "2025-01-01T00:00:02Z"
    save_run(later, tmp_path)
    save_run(earlier, tmp_path)  # the slower of the two saves last
    latest = json.loads((tmp_path / "latest.json").read_text(encoding="utf-8"))
    assert latest["run_id"] == "run-later"
    assert (tmp_path / "run-earlier" / "run.json").is_file()
    # Within one second (finished_at's resolution) the run saving last finished last,
    # whatever its random id says.
    again = make_record({"a": True})
    again.run_id, again.finished_at = "run-a-same-second", later.finished_at
    save_run(again, tmp_path)
    latest = json.loads((tmp_path / "latest.json").read_text(encoding="utf-8"))
    assert latest["run_id"] == "run-a-same-second"


def test_checkpoints_of_a_killed_run_are_taken_over_once(tmp_path: Path) -> None:
    """Two runs that start after a killed one: only the first resumes its cases."""
    from lifecycle.checkpoints import Checkpoints

    script = (
        "import os, sys\n"
        "from pathlib import Path\n"
        f"sys.path.insert(0, {TESTS!r})\n"
        "from _promote import make_record\n"
        "from lifecycle.checkpoints import Checkpoints\n"
        f"book = Checkpoints(Path({str(tmp_path)!r})).group('k' * 24)\n"
        "for case in make_record({'a': True, 'b': False}).cases:\n"
        "    book.append(case)\n"
        "os.kill(os.getpid(), 9)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], timeout=120, check=False)
    assert done.returncode == -signal.SIGKILL
    first, second = Checkpoints(tmp_path), Checkpoints(tmp_path)
    one, two = first.group("k" * 24), second.group("k" * 24)
    assert one is not None and two is not None
    assert sorted(one.load()) == ["a", "b"] and two.load() == {}
    first.finish()
    second.finish()
    assert not list(tmp_path.glob("*.jsonl"))
