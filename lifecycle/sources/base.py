"""What every source module shares: :class:`Upstream` and reading a remote GGUF header.

Kept apart from the package's ``__init__`` so the source modules import it without
importing the package that dispatches to them (no cycle).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lifecycle.sources.retry import Streak, Transient
from lifecycle.store import Manifest, Part
from lifecycle.tags import Tag

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


def range_start(status: int, content_range: str, asked: int) -> int:
    """Where a body asked for from byte ``asked`` really starts: ``asked`` when the server
    answered 206 with that range, else 0 (it ignored the Range and sends the whole file)."""
    partial = status == 206 and content_range.startswith(f"bytes {asked}-")
    return asked if partial else 0


def resumed_chunks(
    response: Any,
    served_from: int,
    *,
    open_at: Callable[[int], tuple[Any, int]],
    blocks: Callable[[Any], Iterator[bytes]],
    errors: tuple[type[BaseException], ...],
    where: str,
    streak: Streak,
) -> Iterator[bytes]:
    """A body's bytes from ``served_from`` on, resumed across dropped connections.

    A cut (one of ``errors`` from ``blocks``) asks again through ``open_at(position)`` from
    the first byte not yet delivered, while ``streak`` allows; ``open_at`` returns the new
    response and the offset the server really started at, and a server that ignored the
    Range has the bytes already delivered skipped. The store never sees the cut.
    """
    position, skip = served_from, 0  # next byte's offset; bytes to drop first
    stream = blocks(response)
    while True:
        try:
            block = next(stream, None)
        except errors as exc:
            streak.wait_or_raise(Transient(f"connection to {where} failed: {exc}"))
            response.close()
            response, restarted = open_at(position)
            stream, skip = blocks(response), position - restarted
            continue
        if block is None:
            return
        if streak.failures:
            streak.reset()
        if skip:
            dropped = min(skip, len(block))
            skip, block = skip - dropped, block[dropped:]
        if block:
            position += len(block)
            yield block
