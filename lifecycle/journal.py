"""Files that change together or not at all: ``models.lock`` and ``baselines/<model>.json``.

One file is replaced atomically by a rename (:func:`lifecycle.fsutil.atomic_write_text`); a
pin replaces several, and a kill between two renames would leave new baselines beside the
old lock. So :func:`publish` writes every new file to a temp file first, then records the
renames in a journal (``.lifecycle/pin-journal.json``, written and fsynced before the first
rename), renames, and removes the journal. A journal that is still there means a publish was
cut short after all its temp files were complete: whoever touches the files next
(:func:`recover`, called by every reader and writer of the lock and the baselines) finishes
its renames, so the pair is always both old or both new.

Writers hold ``.lifecycle/pin.lock`` (``flock``) from reading the files to publishing them,
which also makes it safe to delete temp files a killed writer left (:func:`remove_temps`).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

from lifecycle.errors import UsageError
from lifecycle.fsutil import atomic_write_text, exclusive_lock

JOURNAL = Path(".lifecycle") / "pin-journal.json"
LOCK = Path(".lifecycle") / "pin.lock"


@contextlib.contextmanager
def transaction(root: Path) -> Iterator[None]:
    """Hold the workspace's pin lock; a publish a killed writer left is finished first."""
    lock = root / LOCK
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        lock.touch(exist_ok=True)
    except OSError as exc:
        raise UsageError(
            f"cannot lock the workspace for a pin: {exc.strerror}", path=lock
        ) from None
    with exclusive_lock(lock):
        _roll_forward(root)
        yield


def recover(root: Path) -> None:
    """Finish a publish that was cut short, if any; free when there is none (no write)."""
    if (root / JOURNAL).exists():
        with transaction(root):
            pass


def publish(root: Path, files: Mapping[Path, str | bytes]) -> None:
    """Replace every file of ``files`` (path -> text, or bytes for a binary file such as a
    baseline's vector sidecar) with its new content, all or none.

    Call inside :func:`transaction`. Until the journal is on disk a failure removes the temp
    files and leaves every old file; after it, the renames are finished here or by the next
    :func:`recover`.
    """
    renames: list[tuple[Path, Path]] = []
    try:
        for path, text in files.items():
            renames.append((_write_temp(path, text), path))
        atomic_write_text(
            root / JOURNAL,
            json.dumps(
                {"renames": [[_rel(root, tmp), _rel(root, path)] for tmp, path in renames]},
                indent=2,
            )
            + "\n",
        )
        _fsync_dir(root / JOURNAL.parent)
    except BaseException:
        for tmp, _ in renames:
            tmp.unlink(missing_ok=True)
        raise
    _roll_forward(root)


def remove_temps(directory: Path, name_glob: str = "*") -> list[Path]:
    """Delete the temp files (``.<name>.*.tmp``) a killed writer left in ``directory``.

    Call inside :func:`transaction`: no live writer of these files can be mid-write then.
    """
    removed = []
    for path in sorted(directory.glob(f".{name_glob}.*.tmp")):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path)
    return removed


def _roll_forward(root: Path) -> None:
    journal = root / JOURNAL
    try:
        data = json.loads(journal.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read the pin journal: {exc}", path=journal) from None
    directories = set()
    for tmp_rel, path_rel in data.get("renames", []):
        tmp, path = _inside(root, tmp_rel), _inside(root, path_rel)
        if tmp.exists():  # gone: renamed before the publish was cut short
            os.replace(tmp, path)
        directories.add(path.parent)
    for directory in sorted(directories):
        _fsync_dir(directory)
    journal.unlink()
    _fsync_dir(journal.parent)


def _write_temp(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        umask = os.umask(0o022)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp's 0600 is wrong for committed files
        with os.fdopen(fd, "wb") as out:
            out.write(text if isinstance(text, bytes) else text.encode("utf-8"))
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _rel(root: Path, path: Path) -> str:
    return path.resolve().relative_to(root.resolve()).as_posix()


def _inside(root: Path, rel: str) -> Path:
    """A journal path, refused unless it stays inside the workspace (the journal is data)."""
    path = (root / rel).resolve()
    if not path.is_relative_to(root.resolve()):
        raise UsageError(
            f"pin journal names a path outside the workspace: {rel}", path=root / JOURNAL
        )
    return path
