"""Native crashes named, never a bare exit 139.

llama.cpp runs in-process for speed, and a SIGSEGV, SIGILL or SIGABRT in its kernels kills
the Python process before any handler can run. So the CLI runs the commands that drive an
engine in a child process it supervises (:func:`supervise`): the child leaves breadcrumbs on
a pipe (:func:`note` — which variant, which case, which phase: load, prompt, generation),
and when it dies of a signal the supervisor prints one line naming the signal, the phase,
the model and the remedy, and exits 1 (the tool failed; never a verdict on the model).

On Linux the child is a fork of the CLI process (:func:`supervise_fork`), so the cost is
one fork and three short writes per case; elsewhere it is a second interpreter
(:func:`supervise`, about 0.3 s). ``LIFECYCLE_NO_SUPERVISOR=1`` runs commands directly (for
a debugger).

Every process the tool starts to run Python code of its own (the supervised child, the
isolated engine's worker, the canary, a bench point) dies with the process that started it
(:func:`die_with_parent`): a killed ``lifecycle`` must not leave a child that goes on to
evaluate, gate and pin on its own.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

from lifecycle.envnames import ENV_NO_SUPERVISOR as ENV_NO_SUPERVISOR  # the CLI reads it here
from lifecycle.envnames import ENV_PARENT_PID as ENV_PARENT
from lifecycle.envnames import ENV_PHASE_PIPE
from lifecycle.errors import EXIT_FAILURE

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>

# Signals that mean the process crashed (as opposed to being interrupted or terminated).
CRASH_SIGNALS = ("SIGSEGV", "SIGILL", "SIGABRT", "SIGBUS", "SIGFPE", "SIGKILL")


def note(**facts: Any) -> None:
    """Record what the process is about to do (``variant=``, ``case=``, ``phase=``, ...).

    A no-op unless this process is the supervised child: the pipe's descriptor is only
    trusted when our parent is the supervisor that made it, so a worker or canary process
    that inherited the environment never writes into an unrelated descriptor.
    """
    fd = _phase_fd()
    if fd is None:
        return
    with contextlib.suppress(OSError):
        os.write(fd, (json.dumps(facts, default=str) + "\n").encode())


def child_environment(env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: ours) for processes we start: without the breadcrumb pipe, and
    naming us as the parent they must die with (see :func:`die_with_parent`)."""
    out = dict(os.environ if env is None else env)
    out.pop(ENV_PHASE_PIPE, None)
    out[ENV_PARENT] = str(os.getpid())
    return out


def die_with_parent() -> None:
    """Have the kernel SIGKILL this process when the parent named in the environment dies.

    Called first thing by each of the tool's child processes. PR_SET_PDEATHSIG only covers a
    parent that dies after the call, so a parent that died in between (we were already
    re-parented) ends us here. The signal fires when the parent *thread* that started us
    exits: every spawner runs on the thread that lives as long as the command.
    A no-op outside Linux and when no parent is named.
    """
    try:
        parent = int(os.environ.get(ENV_PARENT, ""))
    except ValueError:
        return
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class Breadcrumbs:
    """The latest facts the supervised child reported, merged (later facts win)."""

    facts: dict[str, Any] = field(default_factory=dict)

    def add(self, line: bytes) -> None:
        with contextlib.suppress(ValueError):
            data = json.loads(line)
            if isinstance(data, dict):
                if "variant" in data:  # a new variant starts: forget the old case and phase
                    self.facts = {}
                self.facts.update(data)


def supervise(argv: Sequence[str]) -> int:
    """Run ``lifecycle ARGV`` in a child process; name a native crash; return the exit code.

    stdin, stdout and stderr are the child's own (``--json`` documents pass straight
    through). SIGTERM and SIGHUP are forwarded; Ctrl-C reaches the child through the
    terminal's process group, so the parent only waits for it.
    """
    read_fd, write_fd = os.pipe()
    env = dict(os.environ)
    env[ENV_PARENT] = str(os.getpid())
    env[ENV_PHASE_PIPE] = f"{os.getpid()}:{write_fd}"
    try:
        child = subprocess.Popen(
            [sys.executable, "-m", "lifecycle.cli", *argv], pass_fds=[write_fd], env=env
        )
    finally:
        os.close(write_fd)
    crumbs = Breadcrumbs()
    reader = threading.Thread(target=_read_crumbs, args=(read_fd, crumbs), daemon=True)
    reader.start()
    previous = {
        sig: signal.signal(sig, lambda s, _f: child.send_signal(s))
        for sig in (signal.SIGTERM, signal.SIGHUP)
    }
    previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        code = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    reader.join(timeout=2.0)
    return _outcome(code, crumbs)


def supervise_fork() -> int | None:
    """Like :func:`supervise`, with the child a fork of this process (POSIX).

    Returns None in the child, which goes on to run the command itself; in the parent, the
    exit code once the child is done. A fork skips the second interpreter start and the
    re-import of the CLI (about a third of a second on 2 busy cores). Call it before any
    thread is started: only the calling thread survives in the child.
    """
    read_fd, write_fd = os.pipe()
    parent = os.getpid()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        os.environ[ENV_PARENT] = str(parent)
        os.environ[ENV_PHASE_PIPE] = f"{parent}:{write_fd}"
        return None
    os.close(write_fd)
    crumbs = Breadcrumbs()
    reader = threading.Thread(target=_read_crumbs, args=(read_fd, crumbs), daemon=True)
    reader.start()

    def forward(sig: int, _frame: Any) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGHUP)}
    previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        _, status = os.waitpid(pid, 0)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    reader.join(timeout=2.0)
    return _outcome(os.waitstatus_to_exitcode(status), crumbs)


def _outcome(code: int, crumbs: Breadcrumbs) -> int:
    """The supervisor's exit code for a child that ended with ``code`` (negative: a signal)."""
    if code >= 0:
        return code
    name = _signal_name(-code)
    if name not in CRASH_SIGNALS:
        print(f"interrupted ({name})", file=sys.stderr)
        return 128 - code
    print(f"error: {crash_message(name, crumbs.facts)}", file=sys.stderr)
    return EXIT_FAILURE


def crash_message(signal_name: str, facts: dict[str, Any]) -> str:
    """One line: what crashed, where (phase, case, model) and what to do about it."""
    phase = facts.get("phase")
    where = {
        "load": "loading",
        "prompt": "decoding the prompt of",
        "generation": "generating",
        "canary": "running the engine canary on",
        "bench": "benchmarking",
        "scoring": "scoring text with",
        "quantize": "quantizing",
    }.get(str(phase), "running")
    subject = ""
    if facts.get("case"):
        subject += f" case {facts['case']} on"
    model = facts.get("variant") or facts.get("model")
    if model:
        digest = str(facts.get("digest") or "")
        subject += f" {model}" + (f" ({digest[:19]})" if digest else "")
    else:
        subject += " a model"
    return f"llama.cpp crashed ({signal_name}) {where}{subject}: {remedy(signal_name)}"


def remedy(signal_name: str) -> str:
    """What a user can do about a native crash, by signal."""
    if signal_name == "SIGILL":
        return (
            "the llama-cpp-python build uses CPU instructions this machine cannot run (a wheel "
            "built on another CPU, or AMX inside a VM); `lifecycle doctor` checks the build "
            "and prints the rebuild command"
        )
    if signal_name in ("SIGSEGV", "SIGBUS"):
        return (
            "run `lifecycle doctor`: it tests this engine build on this CPU in a subprocess "
            "and, where the repacked CPU kernels crash (AMX advertised inside a VM), runs the "
            "engine with llama.cpp's extra buffer types off; `lifecycle verify` re-hashes the "
            "model files"
        )
    if signal_name == "SIGABRT":
        return (
            "llama.cpp aborted on an assertion (a malformed or unsupported model file, or a "
            "parameter it rejects); `lifecycle show` the model, LIFECYCLE_DEBUG=1 keeps "
            "llama.cpp's own message on stderr"
        )
    if signal_name == "SIGKILL":
        return (
            "the process was killed, most often by the kernel's out-of-memory killer; "
            "compare `lifecycle estimate` with the free memory"
        )
    return "run `lifecycle doctor` to check the engine on this machine"


def supervised() -> bool:
    """True in the child that :func:`supervise` started."""
    return _phase_fd() is not None


def exit_now(code: int) -> NoReturn:
    """End the supervisor or its child with ``code``, skipping the interpreter's teardown.

    Both processes exist only to run one command, and a user waits for both to end: tearing
    down the modules an engine command imported (llama_cpp, numpy, jsonschema, ...) takes
    0.1-0.2 s, and the supervisor's own CLI modules about 0.1 s on a busy machine, for
    nothing. Everything a normal exit owes the outside world still happens: non-daemon
    threads are joined, atexit handlers run (temporary directories, logging) and stdout and
    stderr are flushed.
    """
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    try:
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)


def _phase_fd() -> int | None:
    value = os.environ.get(ENV_PHASE_PIPE)
    if not value:
        return None
    try:
        pid, fd = (int(part) for part in value.split(":"))
    except ValueError:
        return None
    return fd if os.getppid() == pid else None


def _read_crumbs(fd: int, crumbs: Breadcrumbs) -> None:
    with os.fdopen(fd, "rb") as stream:
        for line in stream:
            crumbs.add(line)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
