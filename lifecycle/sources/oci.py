"""``ollama:name[:tag]`` and ``oci://host[:port]/namespace/name:tag``: OCI registries.

Ollama's registry speaks the OCI distribution protocol: ``GET /v2/<repo>/manifests/<tag>``
returns a small JSON manifest whose layers are blobs named by digest. The layer of media type
``application/vnd.ollama.image.model`` is the GGUF; the ``template``, ``system``, ``params``,
``messages`` and ``license`` layers are what ``ollama show --modelfile`` prints, and are turned
into a Modelfile saved next to the manifest. The manifest's own sha256 is the revision, so
``pull --check`` costs one small GET per tag.

Registry responses are untrusted: the manifest and the small layers are read with size caps,
every digest is validated before it names anything, and every blob is checked against its
digest. Loopback registries are spoken to over plain HTTP, every other one over HTTPS.
"""

from __future__ import annotations

import hashlib
import http.client
import json
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

from lifecycle.errors import ModelfileError, StoreError
from lifecycle.fsutil import atomic_write_text
from lifecycle.gguf import GGUFInfo
from lifecycle.sources.base import Upstream, range_start, read_remote_header, resumed_chunks
from lifecycle.sources.distribution import client_for, repository_scope
from lifecycle.sources.retry import RetryPolicy
from lifecycle.store import Manifest, Part, ProgressFn, Store, TransferError, now, validate_digest
from lifecycle.tags import Tag

OLLAMA_REGISTRY = "https://registry.ollama.ai"
MEDIA_MODEL = "application/vnd.ollama.image.model"
MEDIA_PREFIX = "application/vnd.ollama.image."
MAX_MANIFEST_BYTES = 1 << 20  # Ollama's manifests are ~1 KB
MAX_SMALL_LAYER_BYTES = 1 << 20  # templates, system prompts, params, messages, licenses
_ACCEPT = ", ".join(
    [
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
    ]
)
_SMALL_LAYERS = ("template", "system", "params", "messages", "license")
_CHUNK = 1024 * 1024

Fetch = Callable[..., AbstractContextManager[tuple[int, Iterator[bytes]]]]


@dataclass(frozen=True)
class OCIRef:
    """Where a tag lives: registry base URL, repository (``namespace/name``) and tag."""

    registry: str
    repository: str
    reference: str

    @classmethod
    def from_tag(cls, tag: Tag) -> OCIRef:
        # The grammar was checked by parse_tag (which also added ollama's default tag).
        path, _, reference = tag.reference.rpartition(":")
        if tag.scheme == "ollama":
            repository = path if "/" in path else f"library/{path}"
            return cls(OLLAMA_REGISTRY, repository, reference)
        host, _, repository = path.partition("/")
        hostname = host.split(":")[0]
        loopback = hostname == "localhost" or hostname.startswith("127.")
        return cls(f"{'http' if loopback else 'https'}://{host}", repository, reference)

    def url(self, kind: str, name: str) -> str:
        return f"{self.registry}/v2/{self.repository}/{kind}/{name}"

    def scope(self, *actions: str) -> str:
        """The token scope for ``actions`` (default: pull) on this repository."""
        return repository_scope(self.repository, *actions)


@dataclass(frozen=True)
class Layer:
    media_type: str
    digest: str
    size: int


def resolve(tag: Tag) -> Upstream:
    """The manifest's digest (the revision) and the model layer, from one small GET."""
    upstream, _ = resolve_layers(tag)
    return upstream


def pull(store: Store, tag: Tag, progress: ProgressFn | None = None) -> Manifest:
    """Pull the model layer into the store and save the Modelfile the other layers make."""
    ref = OCIRef.from_tag(tag)
    upstream, layers = resolve_layers(tag)
    model = upstream.parts[0]
    store.fetch_blob(
        model.digest,
        model.size,
        blob_fetch(ref, model.digest, tag),
        label=f"{tag} model",
        progress=progress,
    )
    modelfile = modelfile_text(tag, layers, lambda layer: small_blob(ref, layer, tag))
    manifest = upstream.manifest(now())
    store.write_manifest(manifest)
    atomic_write_text(store.modelfile_path(tag), modelfile)
    return manifest


def read_header(tag: Tag) -> tuple[GGUFInfo, Upstream]:
    """The GGUF summary of the model layer from range requests, before any download."""
    ref = OCIRef.from_tag(tag)
    upstream, _ = resolve_layers(tag)
    model = upstream.parts[0]
    fetch = blob_fetch(ref, model.digest, tag)

    def read_range(start: int, end: int) -> bytes:
        with fetch(start, end) as (served_from, chunks):
            buf = bytearray()
            for chunk in chunks:
                buf += chunk
                if len(buf) >= end - served_from:
                    break
            return bytes(buf[start - served_from : end - served_from])

    return read_remote_header(read_range, model.size, f"{tag} (model layer)"), upstream


def modelfile_text(tag: Tag, layers: list[Layer], read: Callable[[Layer], bytes]) -> str:
    """The Modelfile Ollama would serve for these layers (FROM names the tag itself)."""
    from lifecycle import modelfile as mf

    fields: dict[str, Any] = {"from": [str(tag)], "license": []}
    for layer in layers:
        kind = layer.media_type.removeprefix(MEDIA_PREFIX)
        if not layer.media_type.startswith(MEDIA_PREFIX) or kind not in _SMALL_LAYERS:
            continue
        text = _text(read(layer), tag, kind)
        if kind in ("template", "system"):
            fields[kind] = text
        elif kind == "license":
            fields["license"].append(text)
        else:
            fields["parameters" if kind == "params" else kind] = _json(text, tag, kind)
    try:
        return mf.serialise(mf.Modelfile.from_dict(fields))
    except ModelfileError as exc:
        raise StoreError(f"{tag}: the registry's layers do not make a Modelfile: {exc}") from None


def resolve_layers(tag: Tag) -> tuple[Upstream, list[Layer]]:
    ref = OCIRef.from_tag(tag)
    url = ref.url("manifests", ref.reference)
    body, headers = _get_small(url, MAX_MANIFEST_BYTES, tag, "manifest", accept=_ACCEPT)
    revision = "sha256:" + hashlib.sha256(body).hexdigest()
    announced = headers.get("Docker-Content-Digest")
    if announced and announced != revision:
        raise StoreError(f"{tag}: manifest bytes do not match the registry's digest {announced}")
    layers = _layers(_json(_text(body, tag, "manifest"), tag, "manifest"), tag)
    models = [layer for layer in layers if layer.media_type == MEDIA_MODEL]
    if len(models) != 1:
        raise StoreError(f"{tag}: manifest has {len(models)} {MEDIA_MODEL} layers, expected one")
    name = ref.repository.rsplit("/", 1)[-1]
    part = Part(f"{name}-{ref.reference}.gguf", models[0].size, models[0].digest)
    return Upstream(tag, tag.scheme, revision, (part,), f"{ref.registry}/{ref.repository}"), layers


def _layers(manifest: Any, tag: Tag) -> list[Layer]:
    raw = manifest.get("layers") if isinstance(manifest, dict) else None
    if not isinstance(raw, list):
        raise StoreError(f"{tag}: manifest has no layers list")
    layers = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise StoreError(f"{tag}: manifest layer {i} is not an object")
        media_type, digest, size = item.get("mediaType"), item.get("digest"), item.get("size")
        if not isinstance(media_type, str) or not isinstance(digest, str):
            raise StoreError(f"{tag}: manifest layer {i} needs a mediaType and a digest")
        if isinstance(size, bool) or not isinstance(size, int):
            raise StoreError(f"{tag}: manifest layer {i} needs an integer size")
        if size < 0:
            raise StoreError(f"{tag}: manifest layer {i} has a negative size")
        try:
            layers.append(Layer(media_type, validate_digest(digest), size))
        except StoreError as exc:
            raise StoreError(f"{tag}: manifest layer {i}: {exc}") from None
    return layers


def small_blob(ref: OCIRef, layer: Layer, tag: Tag) -> bytes:
    what = f"{layer.media_type} layer"
    if layer.size > MAX_SMALL_LAYER_BYTES:
        raise StoreError(f"{tag}: {what} is {layer.size} bytes (limit {MAX_SMALL_LAYER_BYTES})")
    body, _ = _get_small(ref.url("blobs", layer.digest), MAX_SMALL_LAYER_BYTES, tag, what)
    actual = "sha256:" + hashlib.sha256(body).hexdigest()
    if actual != layer.digest or len(body) != layer.size:
        raise StoreError(f"{tag}: {what}: digest mismatch: expected {layer.digest}, got {actual}")
    return body


def _get_small(
    url: str, limit: int, tag: Tag, what: str, *, accept: str | None = None
) -> tuple[bytes, http.client.HTTPMessage]:
    """GET a small document, refusing to read more than ``limit`` bytes of it."""
    ref = OCIRef.from_tag(tag)
    headers = {"Accept": accept} if accept else {}
    client = client_for(ref.registry)
    with client.request(
        "GET", url, scope=ref.scope(), label=str(tag), what=what, headers=headers
    ) as response:
        length = response.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise StoreError(f"{tag}: {what} is {length} bytes (limit {limit})")
        try:
            body = response.read(limit + 1)
        except (http.client.HTTPException, OSError) as exc:
            raise TransferError(f"{tag}: connection to {ref.registry} failed: {exc}") from None
        if len(body) > limit:
            raise StoreError(f"{tag}: {what} is larger than {limit} bytes")
        return body, response.headers


def blob_fetch(ref: OCIRef, digest: str, tag: Tag) -> Fetch:
    """A :data:`~lifecycle.store.RangeFetch` for one blob (``end`` bounds a header read).

    A connection cut mid-body is resumed within the same transfer: the blob is asked for again
    from the first byte not yet delivered (the store never sees the cut), as long as the retry
    policy allows; a server that then ignores the Range has the delivered bytes skipped.
    """
    client = client_for(ref.registry)
    url = ref.url("blobs", digest)

    @contextmanager
    def fetch(start: int, end: int | None = None) -> Iterator[tuple[int, Iterator[bytes]]]:
        streak = RetryPolicy.from_env().streak()
        with ExitStack() as stack:

            def open_at(position: int) -> tuple[Any, int]:
                headers = {}
                if position or end is not None:
                    last = "" if end is None else end - 1
                    headers["Range"] = f"bytes={position}-{last}"
                response = stack.enter_context(
                    client.request(
                        "GET",
                        url,
                        scope=ref.scope(),
                        label=str(tag),
                        what=f"blob {digest}",
                        headers=headers,
                    )
                )
                served = response.headers.get("Content-Range", "")
                return response, range_start(response.status, served, position)

            response, served_from = open_at(start)
            chunks = resumed_chunks(
                response,
                served_from,
                open_at=open_at,
                blocks=_blocks,
                errors=(http.client.HTTPException, OSError),
                where=ref.registry,
                streak=streak,
            )
            yield served_from, chunks

    return fetch


def _blocks(response: Any) -> Iterator[bytes]:
    """An http.client body in chunks; a body cut short raises instead of just ending."""
    while block := response.read(_CHUNK):
        yield block
    if (response.length or 0) > 0:
        # http.client ends a body cut short with b"" rather than an error.
        raise http.client.IncompleteRead(b"", response.length)


def _text(data: bytes, tag: Tag, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise StoreError(f"{tag}: {what} is not UTF-8") from None


def _json(text: str, tag: Tag, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise StoreError(f"{tag}: {what} is not JSON: {exc}") from None
