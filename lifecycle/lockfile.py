"""``models.lock``: what passed, pinned by content digest, one entry per variant name.

:mod:`lifecycle.pin` writes it (with the baselines); the smoke pipeline, ``pull --mirror``,
``check-lock`` and ``eval`` (to mark pinned variants) read it. The file::

    {
      "lock_version": 1,
      "variants": {
        "harbor-triage:q4_k_m-ctx1024": {
          "model": …, "variant_id": …, "from": …, "tag": …, "source": …, "revision": …,
          "upstream": …, "filename": …, "parts": [], "blob_sha256": "sha256:…", "size": …,
          "quant": …, "modelfile": …, "modelfile_digest": …, "parameters": {…},
          "golden_sets": {…}, "engine": {"name": …, "version": …}, "eval": {…},
          "bench": {…} | null, "run_id": …, "pinned_at": …, "baseline": "baselines/….json",
          "runtime": {"engine_version": …, "ggml_commit": …, "cpu_features": […], "backends": […],
                      "kv_cache_type_k": "f16", "kv_cache_type_v": "f16", "flash_attention": false}
        }
      }
    }

:class:`LockEntry` turns back into exactly the dict it was read from (keys the tool does not
know are kept), so re-pinning unchanged results leaves the file byte for byte as it was.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from lifecycle.errors import UsageError
from lifecycle.journal import recover
from lifecycle.store import Manifest, Part

LOCK_FILE = "models.lock"
LOCK_VERSION = 1
# Runtime facts of the machine rather than of the pinned configuration (lifecycle.runtime).
MACHINE_RUNTIME_KEYS = ("cpu_features", "backends")
# What an in-process llama.cpp runtime used before the fact was recorded: schema mode decoded
# through llama.cpp's GBNF grammar until llguidance came (lifecycle.engines.structured).
LLAMA_ENGINES = ("llama-cpp", "llama-cpp-isolated")
# Free-mode drafting (lifecycle.engines.drafting) was off before it was recorded.
LLAMA_RUNTIME_DEFAULTS = {"schema_decoder": "gbnf", "free_drafting": "off"}


def runtime_with_defaults(runtime: dict[str, Any]) -> dict[str, Any]:
    """A recorded runtime with the facts an older llama.cpp record did not name filled in."""
    if runtime.get("engine") in LLAMA_ENGINES:
        return {**LLAMA_RUNTIME_DEFAULTS, **runtime}
    return dict(runtime)


@dataclass(frozen=True)
class LockEntry:
    """One pinned variant: the blob, where it came from, the Modelfile and what it passed."""

    model: str
    blob_sha256: str
    variant_id: str | None = None
    from_: str | None = None  # the Modelfile's FROM value ("from" in the file)
    tag: str | None = None  # the store tag FROM resolved to; None for a local file
    source: str = "file"
    revision: str | None = None
    upstream: str | None = None
    filename: str | None = None
    parts: list[dict[str, Any]] = field(default_factory=list)
    size: int | None = None
    quant: str | None = None
    modelfile: str | None = None
    modelfile_digest: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    golden_sets: dict[str, Any] = field(default_factory=dict)
    engine: dict[str, Any] = field(default_factory=dict)
    eval: dict[str, Any] = field(default_factory=dict)
    bench: dict[str, Any] | None = None
    run_id: str | None = None
    pinned_at: str | None = None
    baseline: str | None = None
    # What the numerics depend on besides the weights (lifecycle.runtime); empty in locks
    # written before it was recorded, and then not written back.
    runtime: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # keys a newer tool wrote

    def identity(self) -> tuple[Any, ...]:
        """What makes a re-pin a change: the variant's content, the golden sets, the engine,
        and the runtime settings that change numerics (not the machine's CPU features or
        backend: re-pinning on another machine alone is no change)."""
        runtime = runtime_with_defaults(self.runtime)
        settings = {k: v for k, v in runtime.items() if k not in MACHINE_RUNTIME_KEYS}
        return (self.variant_id, self.golden_sets, self.engine, settings)

    def same_pin(self, new: LockEntry) -> bool:
        """Whether ``new`` pins what this entry pins; an entry older than the runtime record
        is compared without it (its runtime is unknown, not different)."""
        if not self.runtime:
            return self.identity()[:3] == new.identity()[:3]
        return self.identity() == new.identity()

    def manifest(self) -> Manifest | None:
        """The store manifest this entry pins (for ``sources.check(..., baseline=...)``);
        None for a local file, which has no tag."""
        if not self.tag:
            return None
        return Manifest(
            tag=self.tag,
            source=self.source or "",
            revision=self.revision or "",
            filename=self.filename or "",
            size=int(self.size or 0),
            digest=self.blob_sha256,
            pulled_at=self.pinned_at or "",
            parts=tuple(Part(**p) for p in self.parts),
            upstream=self.upstream or "",
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LockEntry:
        known = {_key(f.name) for f in fields(cls)} - {"extra"}
        values = {f.name: data[_key(f.name)] for f in fields(cls) if _key(f.name) in data}
        values["extra"] = {k: v for k, v in data.items() if k not in known}
        values.setdefault("model", "")
        values.setdefault("blob_sha256", "")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        out = {_key(f.name): getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        if not self.runtime:
            del out["runtime"]  # an older entry round-trips byte for byte
        return {**out, **self.extra}


@dataclass
class Lock:
    """The whole lockfile: entries by variant name."""

    variants: dict[str, LockEntry] = field(default_factory=dict)
    lock_version: int = LOCK_VERSION

    def by_tag(self) -> dict[str, LockEntry]:
        """The entries that pin a store tag, by that tag."""
        return {e.tag: e for e in self.variants.values() if e.tag}

    def to_dict(self) -> dict[str, Any]:
        return {
            "lock_version": self.lock_version,
            "variants": {name: e.to_dict() for name, e in self.variants.items()},
        }


def read_lock(path: Path) -> Lock:
    """The lock at ``path``; an empty lock when the file does not exist."""
    recover(path.parent)  # a pin cut short between its renames is finished first
    if not path.exists():
        return Lock()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read lockfile: {exc}", path=path) from None
    if not isinstance(data, dict) or data.get("lock_version") != LOCK_VERSION:
        raise UsageError(f"unsupported lockfile (lock_version {LOCK_VERSION} expected)", path=path)
    variants = data.get("variants")
    if not isinstance(variants, dict):
        raise UsageError("lockfile has no 'variants' table", path=path, field="variants")
    for name, entry in variants.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("blob_sha256"), str):
            raise UsageError(
                "lock entry has no blob_sha256", path=path, field=f"variants.{name}.blob_sha256"
            )
    return Lock({str(name): LockEntry.from_dict(entry) for name, entry in variants.items()})


def render_json(data: Any) -> str:
    """The one deterministic JSON form of the lock and the baselines."""
    return json.dumps(data, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def _key(name: str) -> str:
    return "from" if name == "from_" else name
