"""Output conventions: results on stdout (a table or one JSON document), the rest on stderr."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

import click

from lifecycle.progress import reporting
from lifecycle.texttable import table as table  # re-exported: every command prints with it


def emit_json(document: Any) -> None:
    """Print one JSON document on stdout."""
    click.echo(json.dumps(document, indent=2, ensure_ascii=False))


def emit(as_json: bool, document: Any, text: Callable[[], str]) -> None:
    """A command's result: ``document`` as JSON with --json, else ``text()`` for a person."""
    if as_json:
        emit_json(document)
    else:
        click.echo(text())


def progress(message: str) -> None:
    """A progress line on stderr (never on stdout, which belongs to results)."""
    click.echo(message, err=True)


class ProgressBars:
    """Progress bars on stderr, one per label (a file, a model); a no-op when disabled.

    Enable it only on a terminal without --json (``LIFECYCLE_NO_PROGRESS`` turns it off):
    a redirected stderr gets no carriage-return noise.
    """

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self._bars: dict[str, Any] = {}
        self._done: dict[str, int] = {}
        # A handle of its own on the terminal: llama.cpp's loads and quantizations run with
        # fd 2 pointed at /dev/null (``quiet_stderr``), and their bars must still show.
        self._stream: Any
        self._own_stream: bool
        self._stream, self._own_stream = _own_handle(sys.stderr) if enabled else (None, False)

    def __call__(self, label: str, done: int, total: int | None) -> None:
        if not self.enabled:
            return
        bar: Any = self._bars.get(label)
        if bar is None:
            bar = click.progressbar(length=total or 0, label=label, file=self._stream)
            bar.__enter__()
            self._bars[label], self._done[label] = bar, 0
        bar.update(done - self._done[label])
        self._done[label] = done
        if total is not None and done >= total:  # the step ended: draw it whole, newline
            bar.__exit__(None, None, None)
            del self._bars[label], self._done[label]

    def close(self) -> None:
        for bar in self._bars.values():
            bar.__exit__(None, None, None)
        self._bars.clear()
        if self._own_stream:
            self._stream.close()
        self._stream, self._own_stream = None, False


def _own_handle(stream: Any) -> tuple[Any, bool]:
    """A new handle on ``stream``'s file descriptor, or the stream itself when it has none
    (a test's capture buffer); True when the handle is new and must be closed."""
    try:
        return os.fdopen(os.dup(stream.fileno()), "w"), True
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
        return stream, False


def progress_bars(*, enabled: bool = True) -> ProgressBars:
    """Bars that draw only on a terminal and when ``LIFECYCLE_NO_PROGRESS`` is unset."""
    from lifecycle.config import ENV_NO_PROGRESS

    return ProgressBars(enabled=enabled and is_tty() and not os.environ.get(ENV_NO_PROGRESS))


@contextlib.contextmanager
def library_progress(*, enabled: bool = True) -> Iterator[ProgressBars]:
    """Bars for the long steps deep in the library (model loads, quantization) while the
    block runs; nothing is drawn off a terminal, with --json or with LIFECYCLE_NO_PROGRESS."""
    bars = progress_bars(enabled=enabled)
    try:
        with reporting(bars if bars.enabled else None):
            yield bars
    finally:
        bars.close()


def is_tty() -> bool:
    return sys.stderr.isatty()
