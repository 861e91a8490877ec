"""Run records on disk: ``runs_dir/<run_id>/run.json`` and ``runs_dir/latest.json``.

One reader for every command that takes a run (gate, pin, report, lint, calibrate, merge),
so a missing or broken record is reported the same way: one line naming the file.
"""

from __future__ import annotations

import json
from pathlib import Path

from lifecycle.errors import UsageError
from lifecycle.results import RunRecord

LATEST = "latest.json"
RUN_FILE = "run.json"


def read_run(path: Path) -> RunRecord:
    """The run record in ``path``: a ``run.json`` (or ``latest.json``) file or a run directory."""
    file = path / RUN_FILE if path.is_dir() else path
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError("no run record here (run `lifecycle eval` first)", path=file) from None
    except OSError as exc:
        raise UsageError(f"cannot read the run record: {exc.strerror}", path=file) from None
    try:
        return RunRecord.from_dict(json.loads(text))
    except (ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"invalid run record: {exc}", path=file) from None


def find_run(runs_dir: Path, ref: str | None) -> RunRecord:
    """A run by reference: None for the latest, a path (file or run directory), or a run id."""
    if ref is None:
        return read_run(runs_dir / LATEST)
    if Path(ref).exists():
        return read_run(Path(ref))
    return read_run(runs_dir / ref / RUN_FILE)
