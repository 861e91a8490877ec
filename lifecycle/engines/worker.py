"""Crash isolation: the llama-cpp engine in a worker subprocess (engine ``llama-cpp-isolated``).

llama.cpp aborts the whole process on some malformed inputs (``GGML_ASSERT``), and a runaway
generation cannot be interrupted from Python. Here each loaded model lives in its own spawned
process running :class:`~lifecycle.engines.llama_cpp.LlamaCppModel`; calls travel over a
pipe. When the worker dies, the call raises :class:`~lifecycle.engines.base.EngineCrashed`
naming the signal (SIGABRT, SIGSEGV, SIGKILL); when a case passes its wall-clock limit, the
worker is killed and the call raises :class:`~lifecycle.engines.base.CaseTimeout`. Either way
the next call starts a fresh worker and reloads the model, so the run goes on with the next
case. A crash while loading raises from :meth:`IsolatedLlamaCppEngine.load`.

The worker is a fresh ``python -m lifecycle.engines.worker`` (never a ``fork``: llama.cpp's
thread pools do not survive one; and not multiprocessing's ``spawn``, which re-runs the
caller's ``__main__``). It imports only the engine module, so it starts in about a second.
POSIX only (the socket is passed as an inherited file descriptor).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from lifecycle import errors
from lifecycle.crashguard import child_environment, die_with_parent, remedy
from lifecycle.engines.base import (
    DEFAULT_CASE_TIMEOUT_S,
    CaseTimeout,
    EngineCrashed,
    EngineInfo,
    Generation,
    GenerationRequest,
    LoadOptions,
)
from lifecycle.errors import EngineError, LifecycleError

LOAD_TIMEOUT_S = 600.0  # loading a large GGUF from a cold disk takes minutes
CALL_TIMEOUT_S = 120.0  # tokenize, check_schema: no generation involved


class IsolatedLlamaCppEngine:
    """The llama-cpp engine with every model in a worker process."""

    name = "llama-cpp-isolated"

    def __init__(self, *, load_timeout_s: float = LOAD_TIMEOUT_S) -> None:
        self.load_timeout_s = load_timeout_s

    def info(self) -> EngineInfo:
        # Reading the build in-process is safe: nothing is loaded or decoded.
        from lifecycle.engines.llama_cpp import LlamaCppEngine

        inner = LlamaCppEngine().info()
        return EngineInfo(
            name=self.name,
            version=inner.version,
            details={**inner.details, "isolation": "subprocess"},
        )

    def load(self, model_path: Path, options: LoadOptions) -> WorkerModel:
        """Start a worker and load the model there; a crash raises :class:`EngineCrashed`."""
        return WorkerModel(model_path, options, load_timeout_s=self.load_timeout_s)


class WorkerModel:
    """A :class:`LlamaCppModel` in a worker process, behind the ``LoadedModel`` protocol."""

    def __init__(
        self, model_path: Path, options: LoadOptions, *, load_timeout_s: float = LOAD_TIMEOUT_S
    ) -> None:
        self.model_path = model_path
        self.options = options
        self.load_timeout_s = load_timeout_s
        self.restarts = 0  # workers started after a crash or timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self.load_ms, self.n_threads = self._start()

    @property
    def pid(self) -> int | None:
        """The live worker's process id (None between a crash and the next call)."""
        return self._process.pid if self._process is not None else None

    def generate(self, request: GenerationRequest) -> Generation:
        limit = request.timeout_s or DEFAULT_CASE_TIMEOUT_S
        result: Generation = self._call("generate", (request,), limit)
        return result

    def tokenize(self, text: str) -> list[int]:
        result: list[int] = self._call("tokenize", (text,), CALL_TIMEOUT_S)
        return result

    def check_schema(self, schema: Mapping[str, Any]) -> None:
        self._call("check_schema", (dict(schema),), CALL_TIMEOUT_S)

    def close(self) -> None:
        """Ask the worker to close the model and exit; kill it if it does not."""
        process, conn = self._process, self._conn
        self._process = self._conn = None
        if process is None or conn is None:
            return
        with contextlib.suppress(OSError):
            conn.send(("close", ()))
        try:
            process.wait(timeout=10.0)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        conn.close()

    def __del__(self) -> None:
        # A model dropped without close() must not leave an orphan worker holding memory.
        with contextlib.suppress(Exception):
            if self._process is not None and self._process.poll() is None:
                self._process.kill()

    # --- the pipe -------------------------------------------------------------------------

    def _start(self) -> tuple[float, int]:
        # A plain subprocess running this module (not multiprocessing's spawn, which re-runs
        # the caller's __main__), talking over a socketpair wrapped as a Connection.
        ours, theirs = socket.socketpair()
        env = child_environment()
        package_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        with theirs:
            process = subprocess.Popen(
                [sys.executable, "-m", "lifecycle.engines.worker", str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,  # stdout carries --json documents; never the worker's
                env=env,
            )
        conn = Connection(ours.detach())
        self._process, self._conn = process, conn
        with contextlib.suppress(OSError):
            conn.send((str(self.model_path), self.options))
        try:
            load_ms, n_threads = self._receive("load", self.load_timeout_s)
        except CaseTimeout:
            raise EngineError(
                f"the worker did not load the model within {self.load_timeout_s:g} s",
                path=self.model_path,
            ) from None
        return float(load_ms), int(n_threads)

    def _call(self, method: str, args: tuple[Any, ...], timeout_s: float) -> Any:
        if self._conn is None:
            self.restarts += 1
            self._start()
        conn = self._conn
        if conn is None:
            raise EngineError("the llama.cpp worker is not running")
        # A dead worker breaks the pipe; _receive then reports how it died.
        with contextlib.suppress(OSError):
            conn.send((method, args))
        return self._receive(method, timeout_s)

    def _receive(self, method: str, timeout_s: float) -> Any:
        process, conn = self._process, self._conn
        if process is None or conn is None:
            raise EngineError("the llama.cpp worker is not running")
        # The worker holds the only other end of the socket: its death reads as EOF.
        if not conn.poll(timeout_s):
            self._kill()
            raise CaseTimeout(
                f"{method} ran past its {timeout_s:g} s wall-clock limit; the worker was killed",
                timeout_s=timeout_s,
            )
        try:
            status, payload = conn.recv()
        except (EOFError, OSError):
            pass  # the worker died; find out how below
        else:
            if status == "ok":
                return payload
            raise _rebuild_error(payload)
        try:
            code = process.wait(timeout=10.0)
        except subprocess.TimeoutExpired:
            self._kill()
            code = process.returncode
        self._discard()
        name = _signal_name(code)
        stage = "loading" if method == "load" else f"in {method}"
        raise EngineCrashed(
            f"llama.cpp worker died {stage} ({name}): {remedy(name)}",
            signal=name,
            path=self.model_path,
        )

    def _kill(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self._discard()

    def _discard(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._process = self._conn = None


def serve(conn: Connection) -> None:
    """The worker's main loop: load the model, then answer calls until ``close``."""
    from lifecycle.engines.llama_cpp import LlamaCppModel

    model_path, options = conn.recv()
    try:
        model = LlamaCppModel(Path(model_path), options)
    except LifecycleError as exc:
        conn.send(("error", _error_payload(exc)))
        return
    conn.send(("ok", (model.load_ms, model.n_threads)))
    while True:
        try:
            method, args = conn.recv()
        except (EOFError, OSError):
            break  # the parent went away
        if method == "close":
            break
        try:
            result = getattr(model, method)(*args)
        except LifecycleError as exc:
            conn.send(("error", _error_payload(exc)))
        except Exception as exc:  # an unexpected bug must reach the parent, not kill the loop
            conn.send(("error", ("EngineError", f"{type(exc).__name__}: {exc}", None, None, None)))
        else:
            conn.send(("ok", result))
    model.close()


def main(argv: list[str]) -> None:
    """Entry point of ``python -m lifecycle.engines.worker FD``."""
    die_with_parent()  # a worker outliving its run would hold the model's memory for nothing
    serve(Connection(int(argv[0])))


def _error_payload(exc: LifecycleError) -> tuple[str, str, str | None, int | None, str | None]:
    return type(exc).__name__, exc.message, exc.path, exc.line, exc.field


def _rebuild_error(payload: tuple[str, str, str | None, int | None, str | None]) -> Exception:
    """The worker's error as the same class from :mod:`lifecycle.errors` (else EngineError)."""
    name, message, path, line, field = payload
    cls = getattr(errors, name, None)
    if not (isinstance(cls, type) and issubclass(cls, LifecycleError)):
        cls = EngineError
    return cls(message, path=path, line=line, field=field)


def _signal_name(exitcode: int | None) -> str:
    """``SIGABRT`` for a worker killed by signal 6; ``exit code N`` for a plain exit."""
    if exitcode is None:
        return "unknown"
    if exitcode < 0:
        try:
            return signal.Signals(-exitcode).name
        except ValueError:
            return f"signal {-exitcode}"
    return f"exit code {exitcode}"


if __name__ == "__main__":
    main(sys.argv[1:])
