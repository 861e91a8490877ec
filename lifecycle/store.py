"""The content-addressed model store: every GGUF is a blob named by its sha256.

Layout under ``LIFECYCLE_HOME``::

    blobs/sha256-<hex>                    the GGUF bytes, immutable once renamed into place
    blobs/.sha256-<hex>.partial           an interrupted download, resumed by the next pull
    manifests/<scheme>/<key>.json         which blob(s) a tag resolved to, from where, and when
    manifests/<scheme>/<key>.Modelfile    for registry tags: the Modelfile Ollama would serve
    models/sha256-<hex>/<name>            links giving a sharded model's parts their file names

Every write goes to a temp file while hashing (one pass), is checked against the expected size
and digest, and is renamed atomically, under a file lock per digest: two processes pulling one
blob end with one valid blob, and the lock makes a digest's ``.partial`` file exclusive to one
process at a time (which is what lets the next process resume it). Digests are validated before
they touch a path (Ollama's CVE-2024-37032 was a digest used as a path unchecked).

The store knows nothing of where blobs come from: the sources that fill it, and the
``resolve_tag``/``pull_file`` entry points, live in :mod:`lifecycle.sources` (one layer up).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from filelock import FileLock

from lifecycle.clock import utc_now
from lifecycle.errors import StoreError
from lifecycle.fsutil import atomic_write_text

# The tag grammar lives in lifecycle.tags; re-exported because callers key the store by it.
from lifecycle.tags import SCHEMES as SCHEMES
from lifecycle.tags import Tag as Tag
from lifecycle.tags import parse_tag as parse_tag

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

        llama.cpp finds the other shards of a split GGUF by file name next to the first one,
        so a sharded model gets a directory of links named as upstream named the shards.
        """
        if len(manifest.parts) <= 1:
            return self.blob_path(manifest.digest)
        folder = self.models / self.blob_path(manifest.digest).name
        folder.mkdir(parents=True, exist_ok=True)
        for part in manifest.parts:
            link = folder / Path(part.filename).name
            if not link.exists():
                link.unlink(missing_ok=True)  # a dangling link left by `rm`
                link.symlink_to(self.blob_path(part.digest))
        return folder / Path(manifest.parts[0].filename).name

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
        fd, tmp_name = tempfile.mkstemp(dir=self.blobs, prefix=".", suffix=".incomplete")
        tmp = Path(tmp_name)
        hasher = hashlib.sha256()
        try:
            written = 0
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
            with self._lock(digest):
                target = self.blob_path(digest)
                if target.exists():
                    tmp.unlink()
                else:
                    os.replace(tmp, target)
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
        return target

    def import_file(self, path: Path) -> tuple[str, int]:
        """Copy a local file into the store; return (digest, size)."""
        try:
            with path.open("rb") as handle:
                return self.put_stream(_read_chunks(handle))
        except OSError as exc:
            raise StoreError(f"cannot read {path}: {exc.strerror}", path=path) from None

    def verify(self) -> list[BlobCheck]:
        """Re-hash every blob a manifest references; report each as ok, missing or corrupt."""
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
            actual = _hash_file(path)
            intact = actual == digest and path.stat().st_size == sizes[digest]
            status = "ok" if intact else "corrupt"
            checks.append(BlobCheck(digest, sizes[digest], status, actual, tags))
        return checks

    # --- manifests ---------------------------------------------------------------------------

    def write_manifest(self, manifest: Manifest) -> None:
        for digest in manifest.digests:
            validate_digest(digest)
        path = self.manifest_path(parse_tag(manifest.tag))
        atomic_write_text(path, json.dumps(manifest.to_dict(), indent=2, sort_keys=True) + "\n")

    def read_manifest(self, tag: Tag) -> Manifest | None:
        return self._load_manifest(self.manifest_path(tag))

    def list_manifests(self) -> list[Manifest]:
        """Every manifest in the store, sorted by tag."""
        found = (self._load_manifest(p) for p in sorted(self.manifests.glob("*/*.json")))
        return sorted((m for m in found if m is not None), key=lambda m: m.tag)

    def remove(self, tag: Tag) -> tuple[Manifest, list[str]]:
        """Forget ``tag`` and delete the blobs no other manifest references.

        Returns the removed manifest and the digests of the blobs deleted.
        """
        manifest = self.read_manifest(tag)
        if manifest is None:
            raise StoreError(f"{tag} is not in the store")
        self.manifest_path(tag).unlink()
        self.modelfile_path(tag).unlink(missing_ok=True)
        return manifest, self.collect_garbage()

    def collect_garbage(self) -> list[str]:
        """Delete blobs (and sharded-model link folders) that no manifest references."""
        referenced = {d for m in self.list_manifests() for d in m.digests}
        removed = []
        for path in sorted(self.blobs.glob("sha256-*")) if self.blobs.is_dir() else []:
            digest = path.name.replace("-", ":", 1)
            if digest in referenced or not DIGEST_RE.fullmatch(digest):
                continue
            with self._lock(digest):
                path.unlink(missing_ok=True)
            self._lock_path(digest).unlink(missing_ok=True)
            removed.append(digest)
            links = self.models / path.name
            if links.is_dir():
                for link in links.iterdir():
                    link.unlink()
                links.rmdir()
        return removed

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

    def _lock_path(self, digest: str) -> Path:
        return self.blobs / f".{self.blob_path(digest).name}.lock"

    def _lock(self, digest: str) -> FileLock:
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


def _write(out: IO[bytes], chunk: bytes, what: str) -> None:
    try:
        out.write(chunk)
    except OSError as exc:
        reason = "disk full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
        raise _WriteFailed(f"{what}: cannot write to the store: {reason}") from None


def _cut(what: str, have: int, size: int) -> str:
    return f"{what}: transfer ended after {have} of {size} bytes (pull again to resume)"


def _finish(out: IO[bytes], what: str) -> None:
    # Buffered bytes meet a full disk here, not in write().
    try:
        out.flush()
        os.fsync(out.fileno())
    except OSError as exc:
        reason = "disk full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
        raise _WriteFailed(f"{what}: cannot write to the store: {reason}") from None


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


def _hash_file(path: Path) -> str:
    hasher = hashlib.sha256()
    with path.open("rb") as handle:
        for block in read_chunks(handle):
            hasher.update(block)
    return "sha256:" + hasher.hexdigest()
