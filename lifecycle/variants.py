"""Variants: a Modelfile resolved to one concrete blob, with a content id.

A variant is what actually runs: the GGUF blob (by digest), the canonical Modelfile and the
parameters that follow from it. Its id is a hash of that content, so renaming a tag or moving
a file never changes it, and changing any byte of weights or prompt contract always does.
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from lifecycle import modelfile as mf
from lifecycle.config import ModelSettings, Workspace
from lifecycle.errors import ConfigError, ModelfileError, UsageError
from lifecycle.gguf import read_gguf
from lifecycle.quantize import quantize_blob
from lifecycle.results import VariantInfo
from lifecycle.sources import pull_file, resolve_tag
from lifecycle.store import Manifest, Store
from lifecycle.tags import from_tag

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
    quant: str = ""
    overrides: dict[str, Any] = field(default_factory=dict)
    # The model's KV cache settings for this variant (config.CACHE_KEYS): runtime, not recipe,
    # so [engine] fills in the rest (config.cache_settings) and they are not PARAMETERs.
    cache: dict[str, Any] = field(default_factory=dict)

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

    def engine_int(self, name: str, default: int) -> int:
        """An integer PARAMETER the workspace's [engine] also sets (``num_thread``,
        ``num_batch``, ``num_gpu``): the Modelfile's value wins, else ``default``."""
        value = self.modelfile.parameters.get(name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return default
        return int(value)

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
            "quant": self.quant,
            "overrides": dict(self.overrides),
            "cache": dict(self.cache),
            "parameters": dict(self.modelfile.parameters),
            # The canonical recipe itself, so a pinned variant can be re-run exactly as pinned.
            "modelfile_text": mf.serialise(self.modelfile),
        }

    def info(self) -> VariantInfo:
        """The variant as a run record and a baseline keep it."""
        return VariantInfo.from_dict(self.to_dict())


def pinned_variant(current: Variant, pinned: VariantInfo, store: Store) -> Variant | None:
    """The variant as ``pinned`` (a baseline's ``variant`` entry) describes it, in this slot.

    Its blob must be in the store, and its Modelfile known: the one it recorded, or the
    current one when the digests agree. None when it cannot be rebuilt.
    """
    digest = pinned.blob_digest or ""
    if not digest or not store.has(digest):
        return None
    if pinned.modelfile_digest == current.modelfile_digest:
        modelfile = current.modelfile
    elif pinned.modelfile_text:
        modelfile = mf.parse(pinned.modelfile_text, path=current.modelfile_path)
    else:
        return None
    manifest = replace(current.manifest, digest=digest, size=int(pinned.blob_size or 0), parts=())
    return replace(
        current,
        id=pinned.id or current.id,
        modelfile=modelfile,
        blob_path=store.verified_blob(digest),  # a corrupt reference is never judged
        manifest=manifest,
    )


def resolve_variants(
    workspace: Workspace, store: Store, selection: list[str] | None = None
) -> list[Variant]:
    """Expand each model's variant matrix; ``selection`` names models or variants (None: all).

    Resolving pulls local sources and makes missing quant levels by local quantization (both
    cached in the store), so every variant ends up pointing at a blob that exists.
    """
    wanted = set(selection or [])
    variants: list[Variant] = []
    for settings in workspace.models.values():
        in_matrix = set(matrix_names(settings))
        if wanted and settings.name not in wanted and not (wanted & in_matrix):
            continue
        for variant in expand_variants(workspace, store, settings):
            if not wanted or settings.name in wanted or variant.name in wanted:
                variants.append(variant)
    found = {v.name for v in variants} | {v.model for v in variants}
    missing = sorted(wanted - found)
    if missing:
        known = sorted({v for m in workspace.models.values() for v in matrix_names(m)})
        # A model without a matrix has one variant, named like the model: list it once.
        known += sorted(set(workspace.models) - set(known))
        close = difflib.get_close_matches(missing[0], known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UsageError(
            f"unknown model or variant {missing[0]!r}{hint}; known: {', '.join(known)}"
        )
    return variants


def expand_variants(workspace: Workspace, store: Store, settings: ModelSettings) -> list[Variant]:
    """One model's variants: its quant levels × the cartesian product of its PARAMETER axes."""
    axes = _validated_axes(workspace, settings)  # before anything is pulled or quantized
    modelfile = mf.parse_file(settings.modelfile)
    for name, minimum in _PARAMETER_MINIMUMS.items():
        value = modelfile.parameters.get(name)
        if name not in axes and isinstance(value, int) and value < minimum:
            raise ModelfileError(
                f"must be >= {minimum}, not {value}",
                path=settings.modelfile,
                field=f"PARAMETER {name}",
            )
    source, manifest = _resolve_from(workspace, store, settings, modelfile)
    base_type = (read_gguf(store.model_path(manifest)).file_type or "unknown").upper()
    variants = []
    for quant in settings.quants or (base_type,):
        quant_manifest = manifest
        if quant.upper() != base_type:
            result = quantize_blob(
                store,
                manifest.digest,
                quant,
                allow_requantize=settings.allow_requantize,
                threads=workspace.engine.threads,
            )
            quant_manifest = result.provenance(manifest)
        for combo in itertools.product(*axes.values(), *settings.cache_axes.values()):
            overrides = dict(zip(axes, combo[: len(axes)], strict=True))
            on_axis = dict(zip(settings.cache_axes, combo[len(axes) :], strict=True))
            resolved = replace(modelfile, parameters={**modelfile.parameters, **overrides})
            content = f"{quant_manifest.digest}\n{mf.serialise(resolved)}".encode()
            # A cache axis tells sibling variants apart, so its value joins their ids; a
            # model-wide cache setting does not: like [engine]'s, it is the runtime's.
            content += "".join(f"\n#cache {k}={v}" for k, v in on_axis.items()).encode()
            variants.append(
                Variant(
                    id=hashlib.sha256(content).hexdigest()[:16],
                    name=_variant_name(settings, quant, {**overrides, **on_axis}),
                    model=settings.name,
                    modelfile_path=settings.modelfile,
                    modelfile=resolved,
                    source=source,
                    # Split GGUFs load from a folder of links with their upstream names.
                    blob_path=store.model_path(quant_manifest),
                    manifest=quant_manifest,
                    quant=quant.upper(),
                    overrides=overrides,
                    cache={**settings.cache, **on_axis},
                )
            )
    return variants


def _resolve_from(
    workspace: Workspace, store: Store, settings: ModelSettings, modelfile: mf.Modelfile
) -> tuple[str, Manifest]:
    """Find (or import) the blob the Modelfile's FROM names."""
    if len(modelfile.from_) != 1:
        raise ModelfileError(
            "several FROM lines (split GGUF shards or a vision projector) are not supported "
            "by the engine yet",
            path=settings.modelfile,
        )
    source = modelfile.from_[0]
    local = mf.resolve_local_path(source, settings.modelfile.parent, workspace.root)
    if local is not None:
        if local.is_dir():
            raise ModelfileError(
                f"FROM {source}: is a directory, not a GGUF file ({local})",
                path=settings.modelfile,
            )
        if not local.is_file():
            raise ModelfileError(
                f"FROM {source}: file not found ({local})", path=settings.modelfile
            )
        # Validate the header before importing: a corrupt file must never become a blob.
        read_gguf(local)
        return source, pull_file(store, local)
    return source, resolve_tag(store, from_tag(source, settings.modelfile))


def _validated_axes(workspace: Workspace, settings: ModelSettings) -> dict[str, tuple[Any, ...]]:
    axes = {}
    for name, values in settings.axes.items():
        where = f"models.{settings.name}.variants.{name}"
        if name not in mf.PARAMETERS or name in mf.LIST_PARAMETERS:
            raise ConfigError(
                "not a PARAMETER that can vary (use one of: "
                + ", ".join(sorted(mf.PARAMETERS - mf.LIST_PARAMETERS))
                + ")",
                path=workspace.config_path,
                field=where,
            )
        for value in values:
            ok = (
                (name in mf.INT_PARAMETERS and isinstance(value, int))
                or (name in mf.FLOAT_PARAMETERS and isinstance(value, int | float))
                or (name in mf.BOOL_PARAMETERS and isinstance(value, bool))
            )
            if not ok or (isinstance(value, bool) and name not in mf.BOOL_PARAMETERS):
                raise ConfigError(
                    f"{value!r} is not a valid {name}", path=workspace.config_path, field=where
                )
            minimum = _PARAMETER_MINIMUMS.get(name)
            if minimum is not None and value < minimum:
                raise ConfigError(
                    f"{value!r} is not a valid {name} (must be >= {minimum})",
                    path=workspace.config_path,
                    field=where,
                )
        axes[name] = tuple(float(v) if name in mf.FLOAT_PARAMETERS else v for v in values)
    return axes


# Integer PARAMETERs with a lower bound: a context or batch of no tokens cannot run, and a
# negative thread count means nothing (0 lets the engine choose).
_PARAMETER_MINIMUMS = {"num_ctx": 1, "num_batch": 1, "num_thread": 0}


def matrix_names(settings: ModelSettings) -> list[str]:
    """The variant names a model's matrix expands to (no pulling, no quantizing)."""
    quants = settings.quants or ("",)
    axes = {**settings.axes, **settings.cache_axes}
    combos = list(itertools.product(*axes.values()))
    return [
        _variant_name(settings, q, dict(zip(axes, c, strict=True))) for q in quants for c in combos
    ]


def matrix_caches(workspace: Workspace) -> dict[str, dict[str, Any]]:
    """Every variant name's KV cache overrides (config.CACHE_KEYS), without resolving."""
    out = {}
    for settings in workspace.models.values():
        quants = settings.quants or ("",)
        axes = {**settings.axes, **settings.cache_axes}
        for quant in quants:
            for combo in itertools.product(*axes.values()):
                values = dict(zip(axes, combo, strict=True))
                on_axis = {k: v for k, v in values.items() if k in settings.cache_axes}
                out[_variant_name(settings, quant, values)] = {**settings.cache, **on_axis}
    return out


def workspace_names(workspace: Workspace) -> set[str]:
    """Every name that selects variants: each model's name and each variant's name."""
    names = set(workspace.models)
    for settings in workspace.models.values():
        names.update(matrix_names(settings))
    return names


def _variant_name(settings: ModelSettings, quant: str, overrides: dict[str, Any]) -> str:
    """``model`` alone without a matrix; else ``model:q4_k_m-ctx2048-temp0.2``."""
    if not settings.quants and not settings.axes and not settings.cache_axes:
        return settings.name
    parts = [quant.lower()] if settings.quants else []
    for name, value in overrides.items():
        label = _AXIS_LABELS.get(name, name)
        if name == "flash_attention":
            parts.append(f"{label}{'on' if value else 'off'}")
        else:
            parts.append(f"{label}{value:g}" if isinstance(value, float) else f"{label}{value}")
    return f"{settings.name}:{'-'.join(parts)}"


_AXIS_LABELS = {
    "num_ctx": "ctx",
    "temperature": "temp",
    "num_thread": "threads",
    "kv_cache_type": "kv",
    "kv_cache_type_k": "kvk",
    "kv_cache_type_v": "kvv",
    "flash_attention": "fa",
}
