"""Output conventions: results on stdout (a table or one JSON document), the rest on stderr."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click

from lifecycle.texttable import table as table  # re-exported: every command prints with it


def emit_json(document: Any) -> None:
    """Print one JSON document on stdout."""
    click.echo(json.dumps(document, indent=2, ensure_ascii=False))


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

    def __call__(self, label: str, done: int, total: int | None) -> None:
        if not self.enabled:
            return
        bar: Any = self._bars.get(label)
        if bar is None:
            bar = click.progressbar(length=total or 0, label=label, file=sys.stderr)
            bar.__enter__()
            self._bars[label], self._done[label] = bar, 0
        bar.update(done - self._done[label])
        self._done[label] = done

    def close(self) -> None:
        for bar in self._bars.values():
            bar.__exit__(None, None, None)
        self._bars.clear()


def progress_bars(*, enabled: bool = True) -> ProgressBars:
    """Bars that draw only on a terminal and when ``LIFECYCLE_NO_PROGRESS`` is unset."""
    from lifecycle.config import ENV_NO_PROGRESS

    return ProgressBars(enabled=enabled and is_tty() and not os.environ.get(ENV_NO_PROGRESS))


def is_tty() -> bool:
    return sys.stderr.isatty()
