"""The content-addressed model store: every GGUF is a blob named by its sha256.

Layout under ``LIFECYCLE_HOME``::

    blobs/sha256-<hex>                    the GGUF bytes, immutable once renamed into place
    blobs/.sha256-<hex>.partial           an interrupted download, resumed by the next pull
    manifests/<scheme>/<key>.json         which blob(s) a tag resolved to, from where, and when
    manifests/<scheme>/<key>.Modelfile    for registry tags: the Modelfile Ollama would serve
    models/sha256-<hex>/<name>            links giving a sharded model's parts their file names
    verified/sha256-<hex>                 stamp: the blob's stat when its digest was last checked
    .store.lock                           shared by writers (pulls), exclusive for rm and gc

Every write goes to a temp file while hashing (one pass), is checked against the expected size
and digest, and is renamed atomically, under a file lock per digest: two processes pulling one
blob end with one valid blob, and the lock makes a digest's ``.partial`` file exclusive to one
process at a time (which is what lets the next process resume it). Digests are validated before
they touch a path (Ollama's CVE-2024-37032 was a digest used as a path unchecked).

A blob is checked against its digest before it is loaded (:meth:`Store.model_path`,
:meth:`Store.verified_blob`): bit rot or an edited blob must fail as "model corrupt", never be
judged as a regression. The hash is paid once per blob: a stamp records the blob's size, mtime,
ctime and inode when it was hashed (at pull, or at first load), and any change re-hashes.

Temp files (``.*.incomplete``, manifests' ``.*.tmp``) are ``flock``-ed by their writer, so a
sweep removes only those a killed process left (:func:`lifecycle.fsutil.sweep_temps`); every
pull, ``verify``, ``rm`` and ``gc`` sweeps. Writers hold the store lock shared from the first
byte of a blob to its manifest; ``rm`` and ``gc`` take it exclusive, so they never see a blob a
pull has stored but not yet recorded.

The store knows nothing of where blobs come from: the sources that fill it, and the
``resolve_tag``/``pull_file`` entry points, live in :mod:`lifecycle.sources` (one layer up).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from lifecycle.clock import utc_now
from lifecycle.errors import ModelError, StoreError
from lifecycle.fsutil import atomic_write_text, locked_temp, sweep_temps

# The tag grammar lives in lifecycle.tags; re-exported because callers key the store by it.
from lifecycle.tags import SCHEMES as SCHEMES
from lifecycle.tags import Tag as Tag
from lifecycle.tags import parse_tag as parse_tag

if TYPE_CHECKING:
    from filelock import FileLock

DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_CHUNK = 1024 * 1024

# progress(label, bytes_done, bytes_total): called as bytes arrive; the CLI draws a bar from it.
ProgressFn = Callable[[str, int, int | None], None]
# fetch(offset) opens a transfer asking for the bytes from ``offset`` on; it yields the offset
# the server actually started at (0 when it ignored the Range) and the body's chunks.
RangeFetch = Callable[[int], AbstractContextManager[tuple[int, Iterator[bytes]]]]


class TransferError(StoreError):
    """The connection failed mid-transfer; what arrived is kept so the next pull resumes."""


@dataclass(frozen=True)
class Part:
    """One file of a model: a whole GGUF, or one shard of a split one."""

    filename: str
    size: int
    digest: str


@dataclass(frozen=True)
class Manifest:
    """What a tag resolved to when it was pulled.

    ``digest``/``size``/``filename`` describe the model's (first) GGUF file; a sharded model
    lists every shard in ``parts``. ``revision`` is what upstream called this content (HF commit
    sha, OCI manifest digest, package version, file stat), so a moved tag shows as a new one.
    """

    tag: str
    source: str
    revision: str
    filename: str
    size: int
    digest: str
    pulled_at: str
    parts: tuple[Part, ...] = ()
    upstream: str = ""  # where it came from: repo, registry URL or local path

    @property
    def digests(self) -> list[str]:
        """Every blob this manifest references."""
        return [p.digest for p in self.parts] or [self.digest]

    @property
    def total_size(self) -> int:
        return sum(p.size for p in self.parts) if self.parts else self.size

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        required = ("tag", "source", "revision", "filename", "size", "digest", "pulled_at")
        missing = [k for k in required if k not in data]
        if missing:
            raise StoreError(f"manifest is missing {', '.join(missing)}")
        return cls(
            **{k: data[k] for k in required},
            parts=tuple(Part(**p) for p in data.get("parts", ())),
            upstream=data.get("upstream", ""),
        )


@dataclass(frozen=True)
class BlobCheck:
    """The result of re-hashing one blob: ``ok``, ``missing`` or ``corrupt``."""

    digest: str
    size: int
    status: str
    actual_digest: str | None = None
    tags: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def validate_digest(digest: str) -> str:
    """Return ``digest`` if it is ``sha256:`` + 64 lowercase hex, else raise StoreError."""
    if not isinstance(digest, str) or not DIGEST_RE.fullmatch(digest):
        raise StoreError(f"invalid digest {digest!r}: expected sha256:<64 lowercase hex>")
    return digest


class Store:
    """A blob store rooted at ``home`` (usually ``LIFECYCLE_HOME``)."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.blobs = home / "blobs"
        self.manifests = home / "manifests"
        self.models = home / "models"
        self.stamps = home / "verified"
        self.lock_file = home / ".store.lock"

    # --- blobs ---------------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        """Where the blob for ``digest`` lives (validated before it becomes a path)."""
        return self.blobs / validate_digest(digest).replace(":", "-")

    def has(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def has_all(self, manifest: Manifest) -> bool:
        return all(self.has(d) for d in manifest.digests)

    def model_path(self, manifest: Manifest) -> Path:
        """The path to load: the blob itself, or for a sharded model its first shard.

        Every blob is verified against its digest first (see :meth:`verified_blob`).
        llama.cpp finds the other shards of a split GGUF by file name next to the first one,
        so a sharded model gets a directory of links named as upstream named the shards.
        """
        if len(manifest.parts) <= 1:
            return self.verified_blob(manifest.digest, manifest.size or None)
        for part in manifest.parts:
            self.verified_blob(part.digest, part.size or None)
        folder = self.models / self.blob_path(manifest.digest).name
        folder.mkdir(parents=True, exist_ok=True)
        for part in manifest.parts:
            link = folder / Path(part.filename).name
            if not link.exists():
                link.unlink(missing_ok=True)  # a dangling link left by `rm`
                link.symlink_to(self.blob_path(part.digest))
        return folder / Path(manifest.parts[0].filename).name

    def verified_blob(self, digest: str, size: int | None = None) -> Path:
        """The blob's path, once its bytes are known to hash to ``digest``; else ModelError.

        Hashed at most once per process and blob, and not at all while the blob's stamp (its
        stat when it was last hashed) still matches.
        """
        path = self.blob_path(digest)
        try:
            before = _stat_key(path)
        except FileNotFoundError:
            raise ModelError(f"blob {digest} is not in the store", path=path) from None
        if _VERIFIED.get(path) == before or self._read_stamp(digest) == before:
            _VERIFIED[path] = before
            return path
        if size is not None and before[0] != size:
            self._drop_stamp(digest)
            raise ModelError(
                f"model corrupt: {path} is {before[0]} bytes, expected {size} "
                "(run `lifecycle verify`; then rm the tag and pull it again)"
            )
        actual = _hash_file(path)
        if actual != digest:
            self._drop_stamp(digest)
            raise ModelError(
                f"model corrupt: {path} sha256 {actual[7:]}, expected {digest[7:]} "
                "(run `lifecycle verify`; then rm the tag and pull it again)"
            )
        if _stat_key(path) == before:  # not rewritten while it was being hashed
            self._write_stamp(digest, before)
        return path

    def put_stream(
        self,
        chunks: Iterable[bytes],
        *,
        expected_digest: str | None = None,
        size: int | None = None,
    ) -> tuple[str, int]:
        """Store the bytes of ``chunks`` as a blob, hashing while writing; return (digest, size).

        The bytes land in a process-unique temp file that is renamed into place only when the
        digest (and size, when given) match; on any failure nothing is stored.
        """
        if expected_digest is not None:
            validate_digest(expected_digest)
        self.blobs.mkdir(parents=True, exist_ok=True)
        fd, tmp = locked_temp(self.blobs, prefix=".", suffix=".incomplete")
        hasher = hashlib.sha256()
        try:
            written = 0
            # The temp file stays open (and locked against sweeps) until it is renamed.
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    hasher.update(chunk)
                    _write(out, chunk, "blob")
                    written += len(chunk)
                _finish(out, "blob")
                digest = "sha256:" + hasher.hexdigest()
                if size is not None and written != size:
                    raise StoreError(f"size mismatch: expected {size} bytes, got {written}")
                if expected_digest is not None and digest != expected_digest:
                    raise StoreError(f"digest mismatch: expected {expected_digest}, got {digest}")
                self._place(tmp, digest)
            return digest, written
        except _WriteFailed as exc:
            tmp.unlink(missing_ok=True)
            raise StoreError(str(exc)) from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def fetch_blob(
        self,
        digest: str,
        size: int,
        fetch: RangeFetch,
        *,
        label: str = "",
        progress: ProgressFn | None = None,
    ) -> Path:
        """Download the blob ``digest`` of ``size`` bytes through ``fetch``, resuming if cut.

        Bytes are hashed as they are written (one pass; the bytes of a resumed partial file are
        hashed once, before the transfer continues). A transfer that ends early keeps the
        partial file for the next pull; wrong bytes (too many, or a digest mismatch) and a
        failed write (disk full) delete it. Nothing appears under the blob's name unless its
        digest and size are right.
        """
        target = self.blob_path(digest)
        if target.is_file():
            return target
        self.blobs.mkdir(parents=True, exist_ok=True)
        with self._lock(digest):
            if target.is_file():  # another process finished it while we waited
                return target
            partial = self.blobs / f".{target.name}.partial"
            hasher, have = _hash_prefix(partial, size)
            try:
                with fetch(have) as (start, chunks), partial.open("r+b" if have else "wb") as out:
                    if start != have:  # the server ignored Range: start again from byte 0
                        hasher, have = hashlib.sha256(), 0
                        out.truncate(0)
                    out.seek(have)
                    for chunk in chunks:
                        if have + len(chunk) > size:
                            raise _BadBytes(f"{label or digest}: got more than {size} bytes")
                        _write(out, chunk, label or digest)
                        hasher.update(chunk)
                        have += len(chunk)
                        if progress:
                            progress(label, have, size)
                    _finish(out, label or digest)
            except (_BadBytes, _WriteFailed) as exc:
                partial.unlink(missing_ok=True)
                raise StoreError(str(exc)) from None
            except TransferError as exc:
                raise StoreError(f"{_cut(label or digest, have, size)}: {exc}") from None
            if have != size:
                raise StoreError(_cut(label or digest, have, size))
            actual = "sha256:" + hasher.hexdigest()
            if actual != digest:
                partial.unlink(missing_ok=True)
                raise StoreError(
                    f"{label or digest}: digest mismatch: expected {digest}, got {actual}"
                )
            os.replace(partial, target)
            self._write_stamp(digest, _stat_key(target))
        return target

    def adopt_temp(self, tmp: Path) -> tuple[str, int]:
        """Hash ``tmp`` (a locked temp file in the blobs folder) and rename it into place."""
        digest = _hash_file(tmp)
        size = tmp.stat().st_size
        self._place(tmp, digest)
        return digest, size

    def _place(self, tmp: Path, digest: str) -> None:
        """Rename a hashed temp file to its blob name (dropping it when the blob exists)."""
        with self._lock(digest):
            target = self.blob_path(digest)
            if target.exists():
                tmp.unlink()
            else:
                os.replace(tmp, target)
                self._write_stamp(digest, _stat_key(target))

    def import_file(self, path: Path) -> tuple[str, int]:
        """Copy a local file into the store; return (digest, size)."""
        try:
            with path.open("rb") as handle:
                return self.put_stream(_read_chunks(handle))
        except OSError as exc:
            raise StoreError(f"cannot read {path}: {exc.strerror}", path=path) from None

    def verify(self) -> list[BlobCheck]:
        """Re-hash every blob a manifest references; report each as ok, missing or corrupt.

        Sweeps temp files killed writers left first; refreshes each blob's stamp.
        """
        self.sweep()
        tags_by_digest: dict[str, list[str]] = {}
        sizes: dict[str, int] = {}
        for manifest in self.list_manifests():
            parts = manifest.parts or (Part(manifest.filename, manifest.size, manifest.digest),)
            for part in parts:
                tags_by_digest.setdefault(part.digest, []).append(manifest.tag)
                sizes[part.digest] = part.size
        checks = []
        for digest in sorted(tags_by_digest):
            path = self.blob_path(digest)
            tags = sorted(set(tags_by_digest[digest]))
            if not path.is_file():
                checks.append(BlobCheck(digest, sizes[digest], "missing", tags=tags))
                continue
            before = _stat_key(path)
            actual = _hash_file(path)
            intact = actual == digest and before[0] == sizes[digest]
            status = "ok" if intact else "corrupt"
            if intact and _stat_key(path) == before:
                self._write_stamp(digest, before)
            elif not intact:
                self._drop_stamp(digest)
            checks.append(BlobCheck(digest, sizes[digest], status, actual, tags))
        return checks

    # --- manifests ---------------------------------------------------------------------------

    def write_manifest(self, manifest: Manifest, *, path: Path | None = None) -> None:
        """Record ``manifest`` (at its tag's path unless ``path``, e.g. a quantization record).

        When that fails (disk full), its blobs that no other manifest records are deleted.
        """
        for digest in manifest.digests:
            validate_digest(digest)
        path = path or self.manifest_path(parse_tag(manifest.tag))
        try:
            atomic_write_text(path, json.dumps(manifest.to_dict(), indent=2, sort_keys=True) + "\n")
        except OSError as exc:
            self._drop_unrecorded(manifest.digests)
            raise StoreError(f"cannot write to the store: {_reason(exc)}", path=path) from None

    def _drop_unrecorded(self, digests: list[str]) -> None:
        """Delete those of ``digests`` no manifest records: a failed pull leaves no orphan."""
        recorded = {d for m in self.list_manifests() for d in m.digests}
        for digest in set(digests) - recorded:
            with self._lock(digest):
                self.blob_path(digest).unlink(missing_ok=True)
            self._drop_stamp(digest)

    def read_manifest(self, tag: Tag) -> Manifest | None:
        return self._load_manifest(self.manifest_path(tag))

    def list_manifests(self) -> list[Manifest]:
        """Every manifest in the store, sorted by tag."""
        return sorted((m for _, m in self.manifest_files()), key=lambda m: m.tag)

    def manifest_files(self) -> Iterator[tuple[Path, Manifest]]:
        """Every manifest (tags and quantization records) with its file, in path order."""
        for path in sorted(self.manifests.glob("*/*.json")):
            manifest = self._load_manifest(path)
            if manifest is not None:
                yield path, manifest

    def remove(self, tag: Tag) -> tuple[Manifest, list[str]]:
        """Forget ``tag`` and delete the blobs no other manifest references.

        Returns the removed manifest and the digests of the blobs deleted.
        """
        with self.exclusive():
            self.sweep()
            manifest = self.read_manifest(tag)
            if manifest is None:
                raise StoreError(f"{tag} is not in the store")
            self.manifest_path(tag).unlink()
            self.modelfile_path(tag).unlink(missing_ok=True)
            return manifest, self.collect_garbage()

    def collect_garbage(self) -> list[str]:
        """Delete blobs (and sharded-model link folders) that no manifest references."""
        with self.exclusive():
            referenced = {d for m in self.list_manifests() for d in m.digests}
            removed = []
            for path in sorted(self.blobs.glob("sha256-*")) if self.blobs.is_dir() else []:
                digest = path.name.replace("-", ":", 1)
                if digest in referenced or not DIGEST_RE.fullmatch(digest):
                    continue
                self.delete_blob(digest)
                removed.append(digest)
            return removed

    def delete_blob(self, digest: str) -> None:
        """Delete one blob with its stamp and its sharded-model link folder (hold exclusive)."""
        path = self.blob_path(digest)
        with self._lock(digest):
            path.unlink(missing_ok=True)
        self._lock_path(digest).unlink(missing_ok=True)
        self._drop_stamp(digest)
        links = self.models / path.name
        if links.is_dir():
            for link in links.iterdir():
                link.unlink()
            links.rmdir()

    # --- temp files and the store lock -----------------------------------------------------

    def sweep(self) -> list[tuple[Path, int]]:
        """Delete the temp files killed writers left (a live writer's are kept); (path, size)."""
        removed = sweep_temps(self.blobs, ".*.incomplete")
        if self.manifests.is_dir():
            for folder in sorted(p for p in self.manifests.iterdir() if p.is_dir()):
                removed += sweep_temps(folder, ".*.tmp")
        return removed

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Hold the store lock shared: from a blob's first byte to its manifest, for pulls.

        Sweeps debris first, so every pull cleans what a killed one left.
        """
        with self._store_lock(fcntl.LOCK_SH):
            self.sweep()
            yield

    @contextlib.contextmanager
    def exclusive(self, waiting: Callable[[], None] | None = None) -> Iterator[None]:
        """Hold the store lock alone (``rm``, ``gc``): no pull is between blob and manifest.

        ``waiting`` is called once when another process holds the lock. Re-entrant.
        """
        if self._exclusive_depth:
            self._exclusive_depth += 1
            try:
                yield
            finally:
                self._exclusive_depth -= 1
            return
        with self._store_lock(fcntl.LOCK_EX, waiting):
            self._exclusive_depth = 1
            try:
                yield
            finally:
                self._exclusive_depth = 0

    _exclusive_depth = 0

    @contextlib.contextmanager
    def _store_lock(self, mode: int, waiting: Callable[[], None] | None = None) -> Iterator[None]:
        self.home.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
            except BlockingIOError:
                if waiting is not None:
                    waiting()
                fcntl.flock(fd, mode)
            yield
        finally:
            os.close(fd)  # releases the lock

    def manifest_path(self, tag: Tag) -> Path:
        # One file per tag; the reference is hashed so no tag text ever becomes a path segment.
        key = hashlib.sha256(str(tag).encode()).hexdigest()[:32]
        return self.manifests / tag.scheme / f"{key}.json"

    def modelfile_path(self, tag: Tag) -> Path:
        """Where the Modelfile a registry served with ``tag`` is kept (next to its manifest)."""
        return self.manifest_path(tag).with_suffix(".Modelfile")

    # --- helpers ---------------------------------------------------------------------------

    def _load_manifest(self, path: Path) -> Manifest | None:
        if not path.is_file():
            return None
        try:
            return Manifest.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, TypeError) as exc:
            raise StoreError(f"corrupt manifest: {exc}", path=path) from None

    def _stamp_path(self, digest: str) -> Path:
        return self.stamps / self.blob_path(digest).name

    def _read_stamp(self, digest: str) -> tuple[int, ...] | None:
        try:
            values = json.loads(self._stamp_path(digest).read_text(encoding="utf-8"))
            return tuple(int(v) for v in values)
        except (OSError, ValueError, TypeError):
            return None  # no stamp, or a torn one: hash again

    def _write_stamp(self, digest: str, key: tuple[int, ...]) -> None:
        _VERIFIED[self.blob_path(digest)] = key
        # Best effort: a read-only or full store only costs a re-hash next time.
        with contextlib.suppress(OSError):
            self.stamps.mkdir(parents=True, exist_ok=True)
            self._stamp_path(digest).write_text(json.dumps(list(key)), encoding="utf-8")

    def _drop_stamp(self, digest: str) -> None:
        _VERIFIED.pop(self.blob_path(digest), None)
        with contextlib.suppress(OSError):
            self._stamp_path(digest).unlink(missing_ok=True)

    def _lock_path(self, digest: str) -> Path:
        return self.blobs / f".{self.blob_path(digest).name}.lock"

    def blob_lock(self, digest: str) -> FileLock:
        """The lock a pull of ``digest`` holds while it writes the blob or resumes it."""
        return self._lock(digest)

    def _lock(self, digest: str) -> FileLock:
        # Imported here: only writers take it, and an eval that only reads the store should
        # not pay for filelock's import at every start.
        from filelock import FileLock

        self.blobs.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self._lock_path(digest)))


# The ``pulled_at`` timestamp (sources stamp manifests with it).
now = utc_now


def read_chunks(handle: IO[bytes]) -> Iterator[bytes]:
    """The bytes of ``handle`` in 1 MiB chunks."""
    while block := handle.read(_CHUNK):
        yield block


_read_chunks = read_chunks


class _BadBytes(Exception):
    """The server sent bytes that cannot be the blob: the partial file is useless."""


class _WriteFailed(Exception):
    """Writing the partial file failed (disk full, I/O error)."""


def _reason(exc: OSError) -> str:
    return "disk full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))


def _write(out: IO[bytes], chunk: bytes, what: str) -> None:
    try:
        out.write(chunk)
    except OSError as exc:
        raise _WriteFailed(f"{what}: cannot write to the store: {_reason(exc)}") from None


def _cut(what: str, have: int, size: int) -> str:
    return f"{what}: transfer ended after {have} of {size} bytes (pull again to resume)"


def _finish(out: IO[bytes], what: str) -> None:
    # Buffered bytes meet a full disk here, not in write().
    try:
        out.flush()
        os.fsync(out.fileno())
    except OSError as exc:
        raise _WriteFailed(f"{what}: cannot write to the store: {_reason(exc)}") from None


def _hash_prefix(partial: Path, size: int) -> tuple[Any, int]:
    """Hash what an interrupted download left behind; nothing usable means start over."""
    hasher = hashlib.sha256()
    try:
        have = partial.stat().st_size
    except FileNotFoundError:
        return hasher, 0
    if have > size:
        partial.unlink()
        return hasher, 0
    with partial.open("rb") as handle:
        for block in read_chunks(handle):
            hasher.update(block)
    return hasher, have


# Blobs verified by this process: path -> the stat they had then (see Store.verified_blob).
_VERIFIED: dict[Path, tuple[int, ...]] = {}


def _stat_key(path: Path) -> tuple[int, ...]:
    """What changes when a file's bytes may have: size, mtime, ctime, inode, device.

    ctime cannot be set back from user space, so restoring an edited blob's mtime still shows.
    """
    st = path.stat()
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


def _hash_file(path: Path) -> str:
    hasher = hashlib.sha256()
    with path.open("rb") as handle:
        for block in read_chunks(handle):
            hasher.update(block)
    return "sha256:" + hasher.hexdigest()
