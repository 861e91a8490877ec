"""Output conventions: results on stdout (a table or one JSON document), the rest on stderr."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import click


def emit_json(document: Any) -> None:
    """Print one JSON document on stdout."""
    click.echo(json.dumps(document, indent=2, ensure_ascii=False))


def progress(message: str) -> None:
    """A progress line on stderr (never on stdout, which belongs to results)."""
    click.echo(message, err=True)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain aligned text table; numbers right-aligned."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, value in enumerate(row):
            widths[i] = max(widths[i], len(value))
    numeric = [
        all(isinstance(row[i], int | float) or row[i] is None for row in rows) and rows
        for i in range(len(headers))
    ]

    def fmt(values: Sequence[str]) -> str:
        parts = [
            v.rjust(widths[i]) if numeric[i] else v.ljust(widths[i]) for i, v in enumerate(values)
        ]
        return "  ".join(parts).rstrip()

    lines = [fmt(list(headers)), fmt(["-" * w for w in widths])]
    lines += [fmt(row) for row in cells]
    return "\n".join(lines)


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


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1 else f"{value:.1f}"
    return str(value)
