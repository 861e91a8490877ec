"""Eval checkpoints: the verdicts a run has so far, so an interrupted run resumes where it stopped.

``.lifecycle/checkpoints/<group key>.<owner>.jsonl`` holds one JSON line per finished case of
one (variant, suite, mode) group (the key says what makes two runs of it interchangeable), and
there is one file per group *and per run*: two runs at once in one workspace (CI shards on one
runner, a developer's two terminals) each append to their own, and a run that completes
deletes only its own.

A run holds an ``flock`` on each of its files while it lives; the kernel drops it however the
process ends, so "the owner is dead" is exactly "the lock can be taken". A run starting a
group takes over, under the directory's lock, every checkpoint of the same key whose owner is
dead: their verdicts are copied into its own file and the old files deleted, so a third run
can never resume the same cases twice. A live run's checkpoint is never read or touched.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
from pathlib import Path
from typing import IO

from lifecycle.fsutil import exclusive_lock
from lifecycle.results import CaseResult

DIR_LOCK = ".lock"


class CheckpointFile:
    """One run's verdicts for one group, one JSON line per case, locked while the run lives."""

    def __init__(self, path: Path, handle: IO[str]) -> None:
        self.path = path
        self._handle = handle

    def load(self) -> dict[str, CaseResult]:
        """Cases already done: those taken over from dead runs, and this run's own."""
        return read_results(self.path)

    def append(self, result: CaseResult) -> None:
        self._handle.write(json.dumps(result.to_dict(), ensure_ascii=False) + "\n")
        self._handle.flush()

    def close(self, *, delete: bool) -> None:
        if delete:
            self.path.unlink(missing_ok=True)
        self._handle.close()  # releases the lock; a kept file is then free to take over


class Checkpoints:
    """The checkpoint files of one run; deleted when the run completes."""

    def __init__(self, directory: Path, *, enabled: bool = True) -> None:
        self.directory = directory
        self.enabled = enabled
        self._mine = f"{os.getpid()}-{secrets.token_hex(4)}"
        self._used: list[CheckpointFile] = []

    def group(self, key: str) -> CheckpointFile | None:
        """This run's file for group ``key``, holding what dead runs of the group finished."""
        if not self.enabled:
            return None
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{key}.{self._mine}.jsonl"
        with exclusive_lock(self.directory / DIR_LOCK):
            handle = path.open("a", encoding="utf-8")
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new file: free
            taken: dict[str, CaseResult] = {}
            # "<key>.jsonl" is the shared file of tools before per-run checkpoints.
            others = [self.directory / f"{key}.jsonl", *self.directory.glob(f"{key}.*.jsonl")]
            for other in sorted(set(others) - {path}):
                taken.update(_take_over(other))
            for result in taken.values():
                handle.write(json.dumps(result.to_dict(), ensure_ascii=False) + "\n")
            handle.flush()
        checkpoint = CheckpointFile(path, handle)
        self._used.append(checkpoint)
        return checkpoint

    def finish(self) -> None:
        """The run completed: it needs no resume point."""
        for checkpoint in self._used:
            checkpoint.close(delete=True)
        self._used = []


def read_results(path: Path) -> dict[str, CaseResult]:
    """The cases in a checkpoint file by id (a torn last line is ignored)."""
    done: dict[str, CaseResult] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return done
    for line in lines:
        try:
            result = CaseResult.from_dict(json.loads(line))
        except (ValueError, TypeError, KeyError):
            continue
        done[result.id] = result
    return done


def _take_over(path: Path) -> dict[str, CaseResult]:
    """The verdicts of ``path`` if its run is dead (the file is then deleted), else none."""
    try:
        handle = path.open("r", encoding="utf-8")
    except FileNotFoundError:
        return {}
    with handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return {}  # its run is alive
        results = read_results(path)
        path.unlink(missing_ok=True)
        return results
