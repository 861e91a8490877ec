"""``hf:owner/repo:QUANT[@revision]`` and ``hf:owner/repo/path/file.gguf[@revision]``.

Through huggingface_hub: ``model_info(files_metadata=True)`` resolves the revision to a commit
sha and lists every file with the sha256 its LFS pointer publishes; the file is then streamed
from the ``resolve`` URL *at that commit* straight into the store, hashed on the way in and
checked against that sha256 (huggingface_hub's own download only checks sizes). ``HF_ENDPOINT``
is read per call, so a hub mirror (or the tests' stand-in) can be chosen at run time.

A quant picks files case-insensitively by a name component (``Q4_K`` does not match
``Q4_K_M``); the shards of a split GGUF (``-00001-of-00003.gguf``) are one model.

Auth is huggingface_hub's own: ``HF_TOKEN``, else the token ``hf auth login`` saved; nothing
here reads or sends a token itself. A private or gated repository the token cannot read becomes
a one-line error naming the repository and what to do. Requests are retried like registry
requests (:mod:`lifecycle.sources.retry`), and a download cut mid-way resumes in the same pull.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

from lifecycle.envnames import ENV_HF_ENDPOINT, ENV_HF_TOKENS
from lifecycle.errors import StoreError
from lifecycle.gguf import GGUFInfo
from lifecycle.sources.base import Upstream, range_start, read_remote_header, resumed_chunks
from lifecycle.sources.retry import (
    RETRY_STATUSES,
    RetryPolicy,
    Transient,
    parse_retry_after,
    retrying,
    through_proxy,
)
from lifecycle.store import Manifest, Part, ProgressFn, Store, now
from lifecycle.tags import Tag

DEFAULT_ENDPOINT = "https://huggingface.co"
_SHARD = re.compile(r"^(?P<stem>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.gguf$", re.IGNORECASE)


@dataclass(frozen=True)
class HFRef:
    """A parsed ``hf:`` reference: a repo and either a quant or a file path."""

    repo_id: str
    quant: str | None
    path: str | None
    revision: str | None

    @classmethod
    def parse(cls, reference: str) -> HFRef:
        # The grammar was checked by parse_tag; this only splits it.
        body, _, revision = reference.partition("@")
        owner, _, rest = body.partition("/")
        name, sep, quant = rest.partition(":")
        if sep:
            return cls(f"{owner}/{name}", quant, None, revision or None)
        name, _, path = rest.partition("/")
        return cls(f"{owner}/{name}", None, path, revision or None)


def endpoint() -> str:
    """The hub to talk to: ``$HF_ENDPOINT`` or huggingface.co."""
    return os.environ.get(ENV_HF_ENDPOINT, DEFAULT_ENDPOINT).rstrip("/")


def resolve(tag: Tag) -> Upstream:
    """The commit the revision points at and the chosen file(s) with their LFS sha256."""
    from huggingface_hub import HfApi

    ref = HFRef.parse(tag.reference)

    def ask() -> Any:
        with _hub_errors(tag):
            return HfApi(endpoint=endpoint()).model_info(
                ref.repo_id, revision=ref.revision, files_metadata=True
            )

    info = retrying(ask)
    if not info.sha:
        raise StoreError(f"{tag}: the hub did not say which commit {ref.revision or 'main'} is")
    siblings = {s.rfilename: s for s in info.siblings or []}
    parts = []
    for filename in select_files(ref, list(siblings), tag):
        lfs = siblings[filename].lfs
        if lfs is None:
            raise StoreError(f"{tag}: {filename} is not an LFS file; the hub publishes no sha256")
        parts.append(Part(filename, int(lfs.size), f"sha256:{lfs.sha256}"))
    return Upstream(tag, "hf", info.sha, tuple(parts), f"{endpoint()}/{ref.repo_id}")


def pull(store: Store, tag: Tag, progress: ProgressFn | None = None) -> Manifest:
    """Download the chosen file(s) at the resolved commit into the store; record the manifest."""
    upstream = resolve(tag)
    repo_id = HFRef.parse(tag.reference).repo_id
    for part in upstream.parts:
        url = _file_url(repo_id, part.filename, upstream.revision)
        store.fetch_blob(
            part.digest, part.size, _range_fetch(url, tag), label=part.filename, progress=progress
        )
    manifest = upstream.manifest(now())
    store.write_manifest(manifest)
    return manifest


def read_header(tag: Tag) -> tuple[GGUFInfo, Upstream]:
    """The GGUF summary of the tag's (first) file from range requests, before any download."""
    upstream = resolve(tag)
    part = upstream.parts[0]
    url = _file_url(HFRef.parse(tag.reference).repo_id, part.filename, upstream.revision)

    def read_range(start: int, end: int) -> bytes:
        with _range_fetch(url, tag)(start, end) as (served_from, chunks):
            return _slice(chunks, start - served_from, end - start)

    return read_remote_header(read_range, part.size, f"{tag} ({part.filename})"), upstream


def select_files(ref: HFRef, filenames: list[str], tag: Tag) -> list[str]:
    """The file(s) of one model: the named path, or the GGUF(s) whose name carries the quant."""
    if ref.path is not None:
        if ref.path not in filenames:
            raise StoreError(f"{tag}: no file {ref.path} in {ref.repo_id}@{ref.revision or 'main'}")
        shard = _SHARD.match(ref.path)
        return _shard_set(shard.group("stem"), filenames, tag) if shard else [ref.path]
    assert ref.quant is not None  # the grammar has a quant when it has no path
    quant = re.compile(rf"(?:^|[-._/]){re.escape(ref.quant)}(?=[-.])", re.IGNORECASE)
    ggufs = [f for f in filenames if f.lower().endswith(".gguf") and "mmproj" not in f.lower()]
    models: dict[str, list[str]] = {}
    for name in ggufs:
        if quant.search(name):
            shard = _SHARD.match(name)
            models.setdefault(shard.group("stem") if shard else name, []).append(name)
    if not models:
        shown = ", ".join(sorted(ggufs)[:8]) or "none"
        raise StoreError(f"{tag}: no GGUF file for quant {ref.quant} (GGUF files: {shown})")
    if len(models) > 1:
        raise StoreError(
            f"{tag}: quant {ref.quant} matches several models ({', '.join(sorted(models))}); "
            f"name the file: hf:{ref.repo_id}/<path>.gguf"
        )
    stem, names = next(iter(models.items()))
    return _shard_set(stem, filenames, tag) if _SHARD.match(names[0]) else names


def _shard_set(stem: str, filenames: list[str], tag: Tag) -> list[str]:
    shards = sorted(
        (m for m in map(_SHARD.match, filenames) if m and m.group("stem") == stem),
        key=lambda m: int(m.group("index")),
    )
    count = int(shards[0].group("count"))
    if [int(m.group("index")) for m in shards] != list(range(1, count + 1)) or any(
        int(m.group("count")) != count for m in shards
    ):
        raise StoreError(f"{tag}: incomplete shard set {stem}-*-of-{count:05d}.gguf on the hub")
    return [m.group(0) for m in shards]


def _file_url(repo_id: str, filename: str, commit: str) -> str:
    from huggingface_hub import hf_hub_url

    return hf_hub_url(repo_id, filename, revision=commit, endpoint=endpoint())


Fetch = Any  # a RangeFetch that also takes an ``end`` (header reads)


def _range_fetch(url: str, tag: Tag) -> Fetch:
    """A :data:`~lifecycle.store.RangeFetch` over huggingface_hub's HTTP session.

    A connection cut mid-body is resumed within the transfer (Range from the first byte not
    yet delivered) while the retry policy allows, as for registry blobs.
    """

    @contextmanager
    def fetch(start: int, end: int | None = None) -> Iterator[tuple[int, Iterator[bytes]]]:
        import httpx2

        streak = RetryPolicy.from_env().streak()
        with ExitStack() as stack:

            def open_at(position: int) -> tuple[Any, int]:
                response = retrying(lambda: _open_stream(url, tag, position, end))
                stack.callback(response.close)
                served = response.headers.get("Content-Range", "")
                return response, range_start(response.status_code, served, position)

            response, served_from = open_at(start)
            chunks = resumed_chunks(
                response,
                served_from,
                open_at=open_at,
                # No chunk_size: httpx would hold back a partial chunk, lost if the link drops.
                blocks=lambda r: r.iter_bytes(),
                errors=(httpx2.HTTPError,),
                where=endpoint(),
                streak=streak,
            )
            yield served_from, chunks

    return fetch


def _open_stream(url: str, tag: Tag, start: int, end: int | None) -> Any:
    """One streamed GET of ``url`` from ``start``; the hub's errors as ours (retryable ones too)."""
    from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

    headers = build_hf_headers()
    if start or end is not None:
        headers["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
    with _hub_errors(tag):
        session = get_session()
        response = session.send(session.build_request("GET", url, headers=headers), stream=True)
        try:
            hf_raise_for_status(response)
        except BaseException:
            response.close()
            raise
    return response


@contextmanager
def _hub_errors(tag: Tag) -> Iterator[None]:
    """huggingface_hub's and httpx2's errors as one-line StoreErrors naming the tag and the fix.

    The hub answers 401 for a private repo without a token (and for a missing one), 401 or
    403 with ``X-Error-Code: GatedRepo`` for a gated repo the account has not been granted, and
    401 "Invalid credentials" for a bad token; 429 and 5xx become :class:`Transient`.
    """
    import httpx2
    from huggingface_hub import errors

    ref = HFRef.parse(tag.reference)
    where = f"{endpoint()}/{ref.repo_id}"
    try:
        yield
    except errors.GatedRepoError:
        raise StoreError(
            f"{tag}: {ref.repo_id} is a gated repository: accept its conditions at {where}, "
            f"then {_token_advice('of the account that was granted access')}"
        ) from None
    except errors.RepositoryNotFoundError:
        if _token_source() is None:
            raise StoreError(
                f"{tag}: repository {ref.repo_id} not found on {endpoint()}, or it is private: "
                f"{_token_advice('that can read it')}"
            ) from None
        raise StoreError(
            f"{tag}: repository {ref.repo_id} not found on {endpoint()}, or the token from "
            f"{_token_source()} cannot read it"
        ) from None
    except errors.RevisionNotFoundError:
        raise StoreError(f"{tag}: revision {ref.revision} not found in {ref.repo_id}") from None
    except errors.HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status in RETRY_STATUSES:
            retry_after = parse_retry_after(exc.response.headers.get("Retry-After"))
            raise Transient(f"{tag}: hub answered HTTP {status}", retry_after=retry_after) from None
        if status == 401:
            raise StoreError(
                f"{tag}: {endpoint()} rejected the token from {_token_source() or 'nowhere'} "
                f"(HTTP 401: invalid or expired); {_token_advice('that is valid')}"
            ) from None
        if status == 403:
            raise StoreError(
                f"{tag}: the token from {_token_source()} may not read {ref.repo_id} (HTTP 403); "
                "give it read access to the repository"
            ) from None
        raise StoreError(f"{tag}: hub request failed: {str(exc).splitlines()[0]}") from None
    except httpx2.HTTPError as exc:
        via = through_proxy(endpoint(), all_proxy=True)
        raise Transient(f"{tag}: cannot reach {endpoint()}{via}: {exc}") from None


def _token_source() -> str | None:
    """Where huggingface_hub takes its token from (never the token): a variable or the login."""
    from huggingface_hub import get_token

    for name in ENV_HF_TOKENS:
        if os.environ.get(name):
            return name
    return "the saved login (hf auth login)" if get_token() else None


def _token_advice(which: str) -> str:
    return f"set HF_TOKEN (or run `hf auth login`) with a token {which}"


def _slice(chunks: Iterator[bytes], skip: int, length: int) -> bytes:
    """``length`` bytes after the first ``skip`` of a stream (a server may ignore Range)."""
    buf = bytearray()
    for chunk in chunks:
        buf += chunk
        if len(buf) >= skip + length:
            break
    return bytes(buf[skip : skip + length])
