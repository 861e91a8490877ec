"""What a command's target names, and the GGUF it comes to: one resolver for every command.

A target is written one of four ways, tried in this order:

* a model or variant name of ``lifecycle.toml`` (``harbor-triage``, ``harbor-triage:q4_0``):
  its variants, resolved (pulled and quantized as needed). Variant names have a colon too,
  so the workspace goes first;
* a stored blob digest (``sha256:<hex>``): that blob, which must be in the store;
* a tag (``hf:owner/repo:Q4_K_M``, ``file:model.gguf``, ``oci://...``): its manifest, pulled
  into the store, or with ``pull=False`` only looked up there (a ``file:`` tag then names its
  file as is);
* a GGUF path: the file, its header read so a corrupt one fails before anything loads.

Anything else resolves to None, and each command words its own error (``compare`` offers a
did-you-mean, ``estimate`` says why a tag is malformed).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lifecycle.config import Workspace
from lifecycle.errors import UsageError
from lifecycle.gguf import read_gguf
from lifecycle.sources import resolve_tag
from lifecycle.store import Store, validate_digest
from lifecycle.tags import has_scheme, parse_tag
from lifecycle.variants import Variant, resolve_variants, workspace_names

TARGET_KINDS = ("variants", "blob", "tag", "file")


@dataclass(frozen=True)
class Target:
    """A resolved target: the GGUF to load, and its store digest when it is in the store."""

    text: str  # as written
    kind: str  # one of TARGET_KINDS
    path: Path  # for "variants": the first variant's blob
    digest: str | None  # None: a file outside the store
    variants: tuple[Variant, ...] = ()  # kind "variants" only, in matrix order


def resolve_target(
    text: str, store: Store, *, workspace: Workspace | None = None, pull: bool = True
) -> Target | None:
    """Resolve ``text`` (see the module docstring); None when it is none of the four forms."""
    if workspace is not None and text in workspace_names(workspace):
        variants = tuple(resolve_variants(workspace, store, [text]))
        first = variants[0]
        return Target(text, "variants", first.blob_path, first.blob_digest, variants)
    if text.startswith("sha256:"):
        validate_digest(text)
        if not store.has(text):
            raise UsageError(f"blob {text} is not in the store")
        return Target(text, "blob", store.verified_blob(text), text)
    if has_scheme(text):
        tag = parse_tag(text)
        if pull:
            manifest = resolve_tag(store, tag)
        elif tag.scheme == "file":
            return Target(text, "file", Path(tag.reference), None)
        else:
            found = store.read_manifest(tag)
            if found is None or not store.has(found.digest):
                raise UsageError(
                    f"{text} is not in the local store; run `lifecycle pull {text}` first"
                )
            manifest = found
        return Target(text, "tag", store.model_path(manifest), manifest.digest)
    path = Path(text).expanduser()
    if path.is_file():
        read_gguf(path)  # a corrupt file fails here, before any model loads
        return Target(text, "file", path, None)
    return None


__all__ = ["TARGET_KINDS", "Target", "resolve_target"]
