"""``file:PATH``: import a local GGUF into the store (its header validated first)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from lifecycle.errors import StoreError
from lifecycle.gguf import read_gguf
from lifecycle.sources.base import Upstream
from lifecycle.store import Manifest, Part, ProgressFn, Store, now, read_chunks
from lifecycle.tags import Tag


def resolve(tag: Tag) -> Upstream:
    """Hash the file (its "revision" is its size and mtime, so an edit shows as a change)."""
    path, revision = _stat(tag)
    hasher = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            for block in read_chunks(handle):
                hasher.update(block)
    except OSError as exc:
        raise StoreError(f"cannot read model file: {exc.strerror}", path=path) from None
    digest = "sha256:" + hasher.hexdigest()
    part = Part(path.name, path.stat().st_size, digest)
    return Upstream(tag, "file", revision, (part,), str(path))


def pull(store: Store, tag: Tag, progress: ProgressFn | None = None) -> Manifest:
    """Import the file; an unchanged file (same size and mtime) is not hashed again."""
    path, revision = _stat(tag)
    tag = Tag("file", str(path))
    existing = store.read_manifest(tag)
    if existing and existing.revision == revision and store.has(existing.digest):
        return existing
    read_gguf(path)  # a truncated or non-GGUF file never becomes a blob
    digest, size = store.import_file(path)
    manifest = Manifest(
        str(tag), "file", revision, path.name, size, digest, now(), upstream=str(path)
    )
    store.write_manifest(manifest)
    return manifest


def _stat(tag: Tag) -> tuple[Path, str]:
    path = Path(tag.reference).expanduser().resolve()
    if path.is_dir():
        raise StoreError("is a directory, not a GGUF file", path=path)
    if not path.is_file():
        raise StoreError("model file not found", path=path)
    stat = path.stat()
    return path, f"size={stat.st_size},mtime_ns={stat.st_mtime_ns}"
