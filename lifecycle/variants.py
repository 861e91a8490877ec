"""Variants: a Modelfile resolved to one concrete blob, with a content id.

A variant is what actually runs: the GGUF blob (by digest), the canonical Modelfile and the
parameters that follow from it. Its id is a hash of that content, so renaming a tag or moving
a file never changes it, and changing any byte of weights or prompt contract always does.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lifecycle import modelfile as mf
from lifecycle.config import ModelSettings, Workspace
from lifecycle.errors import ModelfileError
from lifecycle.gguf import read_gguf
from lifecycle.store import SCHEMES, Manifest, Store, Tag, parse_tag, pull_file, resolve_tag

# Ollama's defaults for sampling options a Modelfile does not set (api/types.go DefaultOptions).
OLLAMA_DEFAULTS: dict[str, Any] = {
    "num_ctx": 2048,
    "temperature": 0.8,
    "top_k": 40,
    "top_p": 0.9,
    "min_p": 0.0,
    "repeat_penalty": 1.1,
    "num_predict": -1,
}


@dataclass(frozen=True)
class Variant:
    """One runnable configuration: blob + resolved Modelfile + parameters."""

    id: str
    name: str
    model: str
    modelfile_path: Path
    modelfile: mf.Modelfile
    source: str  # the FROM value as written
    blob_path: Path
    manifest: Manifest

    @property
    def blob_digest(self) -> str:
        return self.manifest.digest

    @property
    def modelfile_digest(self) -> str:
        return mf.digest(self.modelfile)

    def parameter(self, name: str) -> Any:
        """A PARAMETER's value, or Ollama's default when the Modelfile does not set it."""
        return self.modelfile.parameters.get(name, OLLAMA_DEFAULTS.get(name))

    def int_parameter(self, name: str) -> int:
        return int(self._number(name))

    def float_parameter(self, name: str) -> float:
        return float(self._number(name))

    def _number(self, name: str) -> float:
        value = self.parameter(name)
        # The Modelfile parser has already type-checked every PARAMETER; this guards defaults.
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ModelfileError(f"PARAMETER {name} is not a number", path=self.modelfile_path)
        return value

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "model": self.model,
            "modelfile": str(self.modelfile_path),
            "modelfile_digest": self.modelfile_digest,
            "source": self.source,
            "blob_digest": self.blob_digest,
            "blob_size": self.manifest.size,
            "revision": self.manifest.revision,
            "parameters": dict(self.modelfile.parameters),
        }


def resolve_variants(
    workspace: Workspace, store: Store, model_names: list[str] | None = None
) -> list[Variant]:
    """Resolve each selected model's Modelfile to a variant (pulling local sources)."""
    names = model_names or list(workspace.models)
    variants = []
    for name in names:
        settings = workspace.models.get(name)
        if settings is None:
            from lifecycle.errors import UsageError

            known = ", ".join(workspace.models)
            raise UsageError(f"unknown model {name!r}; models in lifecycle.toml: {known}")
        variants.append(resolve_variant(workspace, store, settings))
    return variants


def resolve_variant(workspace: Workspace, store: Store, settings: ModelSettings) -> Variant:
    """Parse the model's Modelfile and find (or import) the blob its FROM names."""
    modelfile = mf.parse_file(settings.modelfile)
    if len(modelfile.from_) != 1:
        raise ModelfileError(
            "split GGUF models (several FROM lines) are not supported by the engine yet",
            path=settings.modelfile,
        )
    source = modelfile.from_[0]
    local = mf.resolve_local_path(source, settings.modelfile.parent, workspace.root)
    if local is not None:
        if not local.is_file():
            raise ModelfileError(
                f"FROM {source}: file not found ({local})", path=settings.modelfile
            )
        # Validate the header before importing: a corrupt file must never become a blob.
        read_gguf(local)
        manifest = pull_file(store, local)
    else:
        manifest = resolve_tag(store, _as_tag(source, settings.modelfile))
    content = f"{manifest.digest}\n{mf.serialise(modelfile)}".encode()
    variant_id = hashlib.sha256(content).hexdigest()[:16]
    return Variant(
        id=variant_id,
        name=settings.name,
        model=settings.name,
        modelfile_path=settings.modelfile,
        modelfile=modelfile,
        source=source,
        blob_path=store.blob_path(manifest.digest),
        manifest=manifest,
    )


def _as_tag(source: str, modelfile_path: Path) -> Tag:
    # A bare name such as ``qwen2.5:7b`` means what it means to Ollama: a library model.
    if source.split(":", 1)[0] not in SCHEMES and not source.startswith("oci://"):
        return Tag("ollama", source)
    try:
        return parse_tag(source)
    except Exception as exc:
        raise ModelfileError(f"FROM {source}: {exc}", path=modelfile_path) from None
