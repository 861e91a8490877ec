"""Progress of long steps deep in the library (a model load, a quantization), for the CLI's bars.

The command that owns the terminal decides whether anything is drawn by installing a sink
with :func:`reporting` (the CLI's ``ProgressBars``, only on a terminal without ``--json``);
the step that knows how far it is reports to :func:`current` when there is one. With no sink
installed, library callers and tests see no output and pay nothing.

A context variable rather than a parameter: the steps sit several calls below the commands
(``eval`` → runner → engine load; ``build`` → variants → quantize) and every caller in between
would otherwise carry a callback it never uses.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

# A line of progress for the user: the CLI prints it to stderr, library callers may drop it.
Progress = Callable[[str], None]

# label, units done, units in all (None: unknown). ``done == total`` ends the step.
Sink = Callable[[str, int, int | None], None]

_sink: contextvars.ContextVar[Sink | None] = contextvars.ContextVar("progress_sink", default=None)


@contextlib.contextmanager
def reporting(sink: Sink | None) -> Iterator[None]:
    """Send :func:`advance` calls made inside the block (on this thread) to ``sink``."""
    token = _sink.set(sink)
    try:
        yield
    finally:
        _sink.reset(token)


def current() -> Sink | None:
    """The installed sink, or None (capture it before handing it to another thread or to
    native code: context variables do not follow)."""
    return _sink.get()


@contextlib.contextmanager
def file_growth(
    label: str, path: Path, expected_bytes: int, *, every_s: float = 0.25
) -> Iterator[None]:
    """Report ``path``'s size against ``expected_bytes`` while the block writes it.

    For native calls that write their output tensor by tensor and offer no callback
    (``llama_model_quantize``); ctypes releases the GIL during the call, so a thread can
    watch. The bar stops one short of the end until the block finishes, because the
    expected size is an estimate.
    """
    sink = current()
    if sink is None or expected_bytes <= 0:
        yield
        return
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(every_s):
            try:
                size = path.stat().st_size
            except OSError:
                continue
            sink(label, min(size, expected_bytes - 1), expected_bytes)

    watcher = threading.Thread(target=watch, name="progress-file-growth", daemon=True)
    watcher.start()
    finished = False
    try:
        yield
        finished = True
    finally:
        stop.set()
        watcher.join()
        if finished:
            sink(label, expected_bytes, expected_bytes)
