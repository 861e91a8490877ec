"""Fault injection: SIGKILL each command at random points, then check nothing was left half-done.

For each operation (``pull file:``, ``quantize``, ``eval``, ``pin``, ``smoke``, and ``smoke``
with only the supervising parent killed) this starts the real console script N times in a
temp workspace built around tiny generated models, kills it after a random delay drawn over
its undisturbed duration, and then:

- waits for every process it had started to go (a survivor is an orphan, and is killed);
- runs the same command again (the "next command"; ``pin`` with ``--refresh`` so every
  trial rewrites the lock) and counts a failure when it exits other than 0 or 3;
- looks for temp files (``*.tmp``, ``*.incomplete``, ``*.partial``, a pin journal) in the
  workspace and the store after it;
- runs ``lifecycle verify`` on the store;
- checks ``models.lock`` against ``baselines/``: each entry's variant id and run id must be
  the ones its baseline holds;
- for ``eval`` and ``smoke``: when the killed run had checkpointed cases, the next run must
  resume at least that many.

Usage: ``python benchmarks/faults.py [-n 5] [--seed 1] [--only eval,pin]``. Prints one table
row per operation. Runs in a few minutes with the defaults on 2 cores.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from conftest import TINY_CASES, TINY_MODELFILE, TINY_SCHEMA

from lifecycle.hostinfo import cpu_info
from lifecycle.tinymodel import write_tiny_llama

LIFECYCLE = [sys.executable, "-m", "lifecycle.cli"]
TEMP_PATTERNS = ("*.tmp", "*.incomplete", "*.partial", "pin-journal.json")


@dataclass
class Tally:
    """One operation's outcome counts over its trials."""

    kills: int = 0
    finished_first: int = 0  # the command ended before the kill landed
    orphans: int = 0
    next_failed: int = 0
    temps_left: int = 0
    verify_failed: int = 0
    disagree: int = 0
    resumable: int = 0  # trials whose killed run had checkpointed cases
    resumed: int = 0  # ... and the next run resumed at least those
    notes: list[str] = field(default_factory=list)


@dataclass
class Operation:
    name: str
    args: Callable[[Path, Path], list[str]]  # (workspace, home) -> lifecycle arguments
    fresh_home: bool = False  # each trial in an empty store (pull, quantize do real work)
    parent_only: bool = False  # kill the supervising parent alone
    resumes: bool = False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=5, help="kills per operation")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--only", help="comma-separated operation names")
    args = parser.parse_args()
    rng = random.Random(args.seed)

    with tempfile.TemporaryDirectory(prefix="lifecycle-faults-") as tmp:
        base = Path(tmp)
        big = write_tiny_llama(base / "big.gguf", n_embd=512, n_layer=4, n_ff=2048)
        workspace = make_workspace(base / "ws")
        home = base / "home"
        operations = [
            Operation("pull", lambda ws, h: ["pull", f"file:{big}"], fresh_home=True),
            Operation(
                "quantize", lambda ws, h: ["quantize", str(big), "--to", "Q8_0"], fresh_home=True
            ),
            Operation("eval", lambda ws, h: ["eval", "-C", str(ws)], resumes=True),
            Operation("pin", lambda ws, h: ["pin", "-C", str(ws), "--refresh"]),
            Operation(
                "smoke",
                lambda ws, h: ["smoke", "-C", str(ws), "--offline", "--no-bench", "--no-cache"],
                resumes=True,
            ),
            Operation(
                "smoke (parent only)",
                lambda ws, h: ["smoke", "-C", str(ws), "--offline", "--no-bench", "--no-cache"],
                parent_only=True,
                resumes=True,
            ),
        ]
        if args.only:
            wanted = set(args.only.split(","))
            operations = [op for op in operations if op.name in wanted]

        started = time.perf_counter()
        results = {}
        for op in operations:
            results[op.name] = trial_series(op, workspace, home, base, args.n, rng)
            print(f"{op.name}: done", file=sys.stderr)
        elapsed = time.perf_counter() - started

    print(
        f"\nfaults.py: N={args.n} per operation, seed {args.seed}, {cpu_info()[0]}, "
        f"{os.cpu_count()} CPUs, {elapsed / 60:.1f} min\n"
    )
    print_table(results)


def trial_series(
    op: Operation, workspace: Path, home: Path, base: Path, n: int, rng: random.Random
) -> Tally:
    tally = Tally()
    # An undisturbed run first: it sets up what the trials need (a run for pin) and times the
    # command, so the kills land over its whole length.
    trial_home = fresh(base / "home-fresh") if op.fresh_home else home
    t0 = time.perf_counter()
    done = lifecycle(op.args(workspace, trial_home), trial_home)
    duration = time.perf_counter() - t0
    if done.returncode not in (0, 3):
        tally.notes.append(f"setup run exit {done.returncode}: {done.stderr.strip()[-200:]}")
    for _ in range(n):
        trial_home = fresh(base / "home-fresh") if op.fresh_home else home
        # From a fifth in (interpreter start and imports are the same for every command).
        one_trial(op, workspace, trial_home, duration * rng.uniform(0.2, 1.0), tally)
    return tally


def one_trial(op: Operation, workspace: Path, home: Path, delay: float, tally: Tally) -> None:
    tally.kills += 1
    proc = subprocess.Popen(
        [*LIFECYCLE, *op.args(workspace, home)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        env=environment(home),
        start_new_session=True,
    )
    time.sleep(delay)
    family = descendants(proc.pid)
    if proc.poll() is not None:
        tally.finished_first += 1
    elif op.parent_only:
        os.kill(proc.pid, signal.SIGKILL)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    if any(not gone(p, 15.0) for p in family):
        tally.orphans += 1
        for p in family:
            with_suppressed(p.kill)
    checkpointed = checkpoint_cases(workspace)

    after = lifecycle(op.args(workspace, home), home)
    if after.returncode not in (0, 3):
        tally.next_failed += 1
        tally.notes.append(f"{op.name} next exit {after.returncode}: {after.stderr.strip()[-300:]}")
    left = temp_files(workspace) + temp_files(home)
    if left:
        tally.temps_left += 1
        tally.notes.append(f"{op.name} left {', '.join(p.name for p in left[:3])}")
    verify = lifecycle(["verify"], home)
    if verify.returncode != 0:
        tally.verify_failed += 1
        tally.notes.append(f"{op.name} verify exit {verify.returncode}: {verify.stdout[-200:]}")
    problem = disagreement(workspace)
    if problem:
        tally.disagree += 1
        tally.notes.append(f"{op.name}: {problem}")
    if op.resumes and checkpointed:
        tally.resumable += 1
        resumed = sum(int(m) for m in re.findall(r"resumed (\d+) case", after.stderr))
        if resumed >= checkpointed:
            tally.resumed += 1
        else:
            tally.notes.append(f"{op.name}: {checkpointed} checkpointed, {resumed} resumed")


def make_workspace(root: Path) -> Path:
    """The tests' tiny workspace (conftest's Modelfile, schema, cases x2), around a tiny model."""
    for sub in ("modelfiles", "golden", "evals"):
        (root / sub).mkdir(parents=True)
    write_tiny_llama(root / "modelfiles" / "tiny.gguf")
    (root / "modelfiles" / "tiny.Modelfile").write_text(TINY_MODELFILE, encoding="utf-8")
    (root / "golden" / "triage.schema.json").write_text(json.dumps(TINY_SCHEMA), encoding="utf-8")
    cases = [dict(c, id=f"case-{i}") for i, c in enumerate(TINY_CASES * 2)]
    (root / "golden" / "triage.jsonl").write_text(
        "".join(json.dumps(c) + "\n" for c in cases), encoding="utf-8"
    )
    (root / "evals" / "triage.toml").write_text(
        'golden = "../golden/triage.jsonl"\nschema = "../golden/triage.schema.json"\n'
        'modes = ["free", "schema"]\nthreshold = 0.0\nmax_tokens = 48\n'
        '[match.category]\nmatcher = "exact"\n',
        encoding="utf-8",
    )
    (root / "lifecycle.toml").write_text(
        "[engine]\nthreads = 2\nseed = 7\n\n"
        '[models.tiny]\nmodelfile = "modelfiles/tiny.Modelfile"\nsuites = ["triage"]\n',
        encoding="utf-8",
    )
    return root


def environment(home: Path) -> dict[str, str]:
    env = dict(os.environ, LIFECYCLE_HOME=str(home), LIFECYCLE_NO_PROGRESS="1")
    env.pop("LIFECYCLE_WORKSPACE", None)
    return env


def lifecycle(args: list[str], home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*LIFECYCLE, *args],
        capture_output=True,
        text=True,
        env=environment(home),
        stdin=subprocess.DEVNULL,
        timeout=600,
        check=False,
    )


def fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def descendants(pid: int) -> list[psutil.Process]:
    try:
        parent = psutil.Process(pid)
        return [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def gone(proc: psutil.Process, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.1)
    return False


def with_suppressed(call: Callable[[], None]) -> None:
    with contextlib.suppress(psutil.Error):
        call()


def checkpoint_cases(workspace: Path) -> int:
    """Case lines in the workspace's checkpoint files (what a next run should resume)."""
    ids = set()
    for path in (workspace / ".lifecycle" / "checkpoints").glob("*.jsonl"):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                case = json.loads(line)
                ids.add((path.name.split(".")[0], case["id"]))
            except (ValueError, KeyError, TypeError):
                continue  # a torn last line
    return len(ids)


def temp_files(root: Path) -> list[Path]:
    return [p for pattern in TEMP_PATTERNS for p in root.rglob(pattern) if p.is_file()]


def disagreement(workspace: Path) -> str | None:
    """Why models.lock and baselines/ disagree, or None when every entry matches."""
    lock_path = workspace / "models.lock"
    if not lock_path.exists():
        return None
    lock = json.loads(lock_path.read_text(encoding="utf-8"))
    for name, entry in lock["variants"].items():
        path = workspace / str(entry.get("baseline"))
        try:
            baseline = json.loads(path.read_text(encoding="utf-8"))["variants"][name]
        except (OSError, ValueError, KeyError):
            return f"{name}: no baseline in {path.name}"
        if (baseline["variant"].get("id"), baseline["run_id"]) != (
            entry.get("variant_id"),
            entry.get("run_id"),
        ):
            return f"{name}: lock run {entry.get('run_id')} vs baseline run {baseline['run_id']}"
    return None


def print_table(results: dict[str, Tally]) -> None:
    header = (
        "| operation | kills | ended before kill | orphans | next command failed | temp files "
        "left | verify failed | lock ≠ baselines | resumed / resumable |"
    )
    print(header)
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, t in results.items():
        resume = f"{t.resumed} / {t.resumable}" if t.resumable else "—"
        print(
            f"| {name} | {t.kills} | {t.finished_first} | {t.orphans} | {t.next_failed} | "
            f"{t.temps_left} | {t.verify_failed} | {t.disagree} | {resume} |"
        )
    notes = [n for t in results.values() for n in t.notes]
    if notes:
        print("\nnotes:")
        for note in notes:
            print(f"- {note}")


if __name__ == "__main__":
    main()
