"""Filesystem helpers shared by every module that writes user-visible files."""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from lifecycle.envnames import ENV_DEBUG


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temp file, fsync and rename: readers see old or new.

    The temp file is a :func:`locked_temp` until the rename, so a sweep never takes it from a
    live writer, and one a killed writer left is swept (:func:`sweep_temps`).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = locked_temp(path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes 0600 files; lockfiles and reports should get the usual permissions.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
            os.replace(tmp, path)  # before the close that releases the temp file's lock
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def locked_temp(directory: Path, *, prefix: str, suffix: str) -> tuple[int, Path]:
    """A new temp file in ``directory``, with an exclusive ``flock`` held on its descriptor.

    The lock lives as long as the descriptor (the kernel drops it when the writer dies, SIGKILL
    included), which is how :func:`sweep_temps` tells a live writer's file from debris.
    """
    while True:
        fd, name = tempfile.mkstemp(dir=directory, prefix=prefix, suffix=suffix)
        fcntl.flock(fd, fcntl.LOCK_EX)
        if os.fstat(fd).st_nlink:
            return fd, Path(name)
        os.close(fd)  # a sweep removed it between mkstemp and flock: take another name


def sweep_temps(directory: Path, pattern: str, *, dry_run: bool = False) -> list[tuple[Path, int]]:
    """Delete the files of ``directory`` matching ``pattern`` that no live process holds.

    Only for files made by :func:`locked_temp`; returns (path, size) of each one deleted
    (with ``dry_run``: of each one that would be).
    """
    removed: list[tuple[Path, int]] = []
    for path in sorted(directory.glob(pattern)) if directory.is_dir() else []:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue  # gone already, or not a plain file
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its writer is alive
            stat = os.fstat(fd)
            with contextlib.suppress(FileNotFoundError):
                # Still the file opened (a finished writer renamed its temp file away).
                if os.stat(path, follow_symlinks=False).st_ino == stat.st_ino:
                    if not dry_run:
                        path.unlink()
                    removed.append((path, stat.st_size))
        finally:
            os.close(fd)
    return removed


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an ``flock`` on ``path`` (created if need be); the kernel drops it if we die."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _umask() -> int:
    current = os.umask(0o022)
    os.umask(current)
    return current


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Silence C-level writes to fd 2 (llama.cpp's logging) unless LIFECYCLE_DEBUG is set."""
    if os.environ.get(ENV_DEBUG) or sys.platform == "win32":
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class OutsideRoot(Exception):
    """A path that resolves (through ``..`` and symlinks) to a place outside its root."""

    def __init__(self, resolved: Path, root: Path) -> None:
        super().__init__(f"{resolved} is outside {root}")
        self.resolved = resolved
        self.root = root


def confine(path: Path, root: Path) -> Path:
    """``path`` resolved through ``..`` and symlinks, or :class:`OutsideRoot` when that is not
    inside ``root``.

    The one containment check for the paths a workspace names (FROM and ADAPTER files, the
    paths in lifecycle.toml and in eval suites), so that none of them reads or writes outside
    the workspace. A path that does not exist yet is resolved as far as it exists. Resolving
    raises OSError, RuntimeError (a symlink loop) or ValueError (a NUL byte) as
    :meth:`pathlib.Path.resolve` does.
    """
    resolved = path.resolve()
    real_root = root.resolve()
    if not resolved.is_relative_to(real_root):
        raise OutsideRoot(resolved, real_root)
    return resolved
