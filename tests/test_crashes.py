"""Native engine crashes end in one named line and exit 1, never in a verdict.

Every crash here is real: llama.cpp aborting on a GGUF with zero blocks (SIGABRT inside the
loader), or a signal delivered to the real process that is running the model mid-eval. The
console script runs as a subprocess, so the crash supervisor in ``lifecycle.cli.main`` is the
code under test.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from _promote import repeat_cases

from lifecycle.config import load_workspace
from lifecycle.engines.worker import WorkerModel
from lifecycle.runner import EvalOptions, run_eval

LIFECYCLE = [sys.executable, "-m", "lifecycle.cli"]


def lifecycle(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*LIFECYCLE, *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
    )


def use_model(workspace: Path, gguf: Path) -> None:
    shutil.copy(gguf, workspace / "modelfiles" / "tiny.gguf")


def test_a_native_abort_at_load_is_one_line_and_exit_1(
    tiny_workspace: Path, aborting_gguf: Path
) -> None:
    use_model(tiny_workspace, aborting_gguf)
    # The canary would catch this model first (next test); without it the in-process load
    # really aborts the process that runs the command, and the supervisor names it.
    done = lifecycle("eval", "-C", str(tiny_workspace), env={"LIFECYCLE_NO_CANARY": "1"})
    assert done.returncode == 1, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: llama.cpp crashed (SIGABRT) loading tiny (sha256:")
    assert "assertion" in last and "Traceback" not in done.stderr
    assert done.stdout == ""


def test_the_canary_stops_a_crashing_model_before_it_loads(
    tiny_workspace: Path, aborting_gguf: Path
) -> None:
    use_model(tiny_workspace, aborting_gguf)
    done = lifecycle("eval", "-C", str(tiny_workspace), "--json")
    assert done.returncode == 1, done.stderr
    record = json.loads(done.stdout)
    (variant,) = record["variants"]
    assert "engine canary crashed (SIGABRT) while loading tiny" in variant["error"]
    assert "also with extra buffer types off" in variant["error"]
    assert record["cases"] == []  # no case was judged: nothing counts as failed
    assert "error: the engine failed on tiny: no verdict" in done.stderr


def test_a_signal_mid_generation_names_the_case_and_phase(tiny_workspace: Path) -> None:
    """SIGSEGV delivered to the process decoding a case: exit 1 with case and phase."""
    cases = tiny_workspace / "golden" / "triage.jsonl"
    repeat_cases(cases, 250)
    proc = subprocess.Popen(
        [*LIFECYCLE, "eval", "-C", str(tiny_workspace), "--mode", "free"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:  # progress lines: wait until cases are being decoded
        seen.append(line)
        if "[tiny triage/free 2/" in line:
            break
    (child,) = psutil.Process(proc.pid).children()
    os.kill(child.pid, signal.SIGSEGV)
    rest = proc.stderr.read()
    assert proc.wait(timeout=60) == 1, "".join(seen) + rest
    last = rest.strip().splitlines()[-1]
    assert last.startswith("error: llama.cpp crashed (SIGSEGV) ")
    assert " case case-" in last and " on tiny (sha256:" in last
    assert "lifecycle doctor" in last


def test_interrupted_eval_resumes_from_its_checkpoint(tiny_workspace: Path) -> None:
    cases = tiny_workspace / "golden" / "triage.jsonl"
    repeat_cases(cases, 4)
    # Without filling the answer cache: the interrupted run must generate, or it ends before
    # the signal lands.
    reference = run_eval(
        load_workspace(tiny_workspace), EvalOptions(modes=["free"], resume=False, answers=False)
    )

    proc = subprocess.Popen(
        [*LIFECYCLE, "eval", "-C", str(tiny_workspace), "--mode", "free"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    assert proc.stderr is not None
    for line in proc.stderr:
        if "[tiny triage/free 5/16]" in line:
            break
    proc.terminate()  # SIGTERM to the supervisor, forwarded to the running command
    proc.stderr.read()
    assert proc.wait(timeout=60) != 0
    books = list((tiny_workspace / ".lifecycle" / "checkpoints").glob("*.jsonl"))
    assert len(books) == 1 and len(books[0].read_text().splitlines()) >= 5

    messages: list[str] = []
    resumed = run_eval(
        load_workspace(tiny_workspace), EvalOptions(modes=["free"]), progress=messages.append
    )
    assert any("resumed" in m for m in messages), messages
    done = int(next(m for m in messages if "resumed" in m).split("resumed ")[1].split()[0])
    assert 5 <= done < 16
    assert [(c.id, c.output, c.passed) for c in resumed.cases] == [
        (c.id, c.output, c.passed) for c in reference.cases
    ]
    assert not any((tiny_workspace / ".lifecycle" / "checkpoints").glob("*.jsonl"))


def test_a_worker_killed_mid_run_makes_errors_not_failures(tiny_workspace: Path) -> None:
    """SIGILL and SIGKILL on the isolated worker: those cases are errors, the run is exit 1."""
    workspace = load_workspace(tiny_workspace)
    killed: list[str] = []

    def progress(message: str) -> None:
        # Between cases, kill the live worker the way a bad kernel or the OOM killer would.
        if "triage/free 1/" in message or "triage/free 3/" in message:
            sig = signal.SIGILL if not killed else signal.SIGKILL
            for proc in psutil.Process().children(recursive=True):
                if "lifecycle.engines.worker" in " ".join(proc.cmdline()):
                    os.kill(proc.pid, sig)
                    killed.append(sig.name)
                    time.sleep(0.2)

    record = run_eval(
        workspace,
        EvalOptions(modes=["free"], engine="llama-cpp-isolated", resume=False),
        progress=progress,
    )
    assert killed == ["SIGILL", "SIGKILL"]
    errored = [c for c in record.cases if c.errored]
    assert [c.reason.split(":")[0] for c in errored] == [
        "engine crashed (SIGILL)",
        "engine crashed (SIGKILL)",
    ]
    assert all(not c.errored for c in record.cases if c not in errored)  # the run went on
    (summary,) = record.summaries
    assert summary.errors == 2

    from lifecycle.cli.eval import engine_failures
    from lifecycle.gate import run_gate

    assert engine_failures(record) == ["tiny"]
    gate = run_gate(record, {})
    assert gate.engine_failed and gate.exit_code == 1 and not gate.regressions
    assert gate.variants[0].status == "error"


def test_the_worker_never_writes_breadcrumbs(tiny_model: Path) -> None:
    from lifecycle.crashguard import ENV_PHASE_PIPE
    from lifecycle.engines import LoadOptions

    os.environ[ENV_PHASE_PIPE] = f"{os.getpid()}:1"  # as if we were supervised
    try:
        model = WorkerModel(tiny_model, LoadOptions(n_ctx=256, n_threads=1))
        assert model.pid is not None
        env = psutil.Process(model.pid).environ()
        model.close()
    finally:
        del os.environ[ENV_PHASE_PIPE]
    assert ENV_PHASE_PIPE not in env


@pytest.mark.parametrize(
    ("sig", "words"),
    [
        ("SIGILL", "CPU instructions this machine cannot run"),
        ("SIGSEGV", "extra buffer types"),
        ("SIGABRT", "assertion"),
        ("SIGKILL", "out-of-memory"),
    ],
)
def test_each_crash_signal_has_a_remedy(sig: str, words: str) -> None:
    from lifecycle.crashguard import crash_message

    message = crash_message(
        sig,
        {"variant": "m:q4", "digest": "sha256:" + "a" * 64, "case": "c1", "phase": "generation"},
    )
    assert message.startswith(f"llama.cpp crashed ({sig}) generating case c1 on m:q4 (sha256:")
    assert words in message


def test_a_supervised_command_names_itself_lifecycle_in_usage_errors() -> None:
    # The child runs as ``python -m lifecycle.cli``; the user typed ``lifecycle``.
    done = lifecycle("eval", "--no-such-option")
    assert done.returncode == 2
    assert "Usage: lifecycle eval [OPTIONS]" in done.stderr, done.stderr
    assert "python -m" not in done.stderr
