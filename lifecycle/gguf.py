"""Strict, header-only reader for GGUF model files (format versions 2 and 3).

What: parses the fixed header, the metadata key/value section and the tensor-info table of a
GGUF file, validates them, and summarises the model (architecture, context length, heads,
quantisation mix, vocabulary, chat template, ...) as a :class:`GGUFInfo`.

Why: the tool tests and pins local models, so a truncated download or a corrupt or hostile
file must fail here, with a :class:`~lifecycle.errors.ModelError` naming the file and the exact
problem, not later as a crash inside the inference engine. Only the header is read, never the
tensor data, so this is cheap on multi-GB files; :func:`read_gguf_bytes` works on a prefix
fetched with an HTTP range request and raises :class:`IncompleteHeader` when it needs more.
``gguf.GGUFReader`` is not used: it memory-maps the whole file and accepts files llama.cpp
rejects. Only the constants of the ``gguf`` package are used (ggml's tensor types and
llama_ftype names), imported when a header is parsed: the value types are the format's own
(numbered by the spec, checked against gguf-py by a test), so a summary served from the
header cache imports nothing.

The header cache: a file's summary is kept as JSON under ``$LIFECYCLE_HOME/gguf-headers``,
because every eval reads its models' headers and Gemma's 262k-string vocabulary takes tens of
milliseconds to walk (the tensor table comes after it and each string is length-prefixed, so
no reader can skip it). A store blob's entry is named by its digest (blobs are
content-addressed and never change) and checked against its size; any other file's entry is
named by its real path and checked against its size, mtime, ctime, inode and device, and is
written only once the file has been still (mtime and ctime) for a few seconds: a file
rewritten within one timestamp tick would otherwise keep its old entry (git's "racy clean"
problem). Each entry carries a salt (this module's source and gguf-py's constants) and a
sha256 of its summary: an entry that is damaged, from another parser, or of a changed file is
ignored and rewritten. Only successful reads with the default ``max_array_len`` are cached; a
malformed file is parsed (and refused) every time.

Layout (little-endian): magic ``GGUF``, u32 version, u64 tensor count, u64 key/value count;
then each key/value (string key, u32 value type, value; an array is u32 item type, u64 count,
items); then each tensor info (string name, u32 n_dims, u64 dims, u32 ggml type, u64 offset
relative to the data section); the data section starts at the next multiple of
``general.alignment`` (default 32). A string is a u64 byte length then UTF-8 bytes. Versions 2
and 3 share this layout (v1 used 32-bit counts; v3 only added big-endian files, which we do
not read).

The checks follow llama.cpp (``ggml/src/gguf.cpp``, ``gguf_init_from_reader``):

* An array whose item type is itself ARRAY fails there with "invalid GGUF type" and the whole
  file is refused, although the format and gguf-py can express it; we reject it the same way.
* ``general.alignment`` must be a u32 and a non-zero power of two; keys must be non-empty and
  unique; tensor names unique and shorter than 64 bytes (``GGML_MAX_NAME``); at most 4 dims,
  none negative, element count below 2**63; the type must be a known ggml type whose row size
  is a multiple of its block size.
* Tensor data offsets must equal the running, alignment-padded sum of the previous tensors'
  sizes (tensors packed in header order). We first report the clearer special cases (offset
  not aligned, data overlapping another tensor), then any gap as not packed.
* Deviation: llama.cpp accepts ``n_dims == 0`` (a scalar); we reject it, no real model has one.
* Like llama.cpp, a BOOL is one byte and any non-zero byte reads as true.
* The data of every tensor must lie inside the file (llama.cpp's model loader checks this).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import importlib.util
import itertools
import json
import os
import re
import stat as stat_mod
import struct
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lifecycle.config import lifecycle_home
from lifecycle.errors import ModelError
from lifecycle.fsutil import atomic_write_text

__all__ = [
    "DEFAULT_MAX_ARRAY_LEN",
    "GGUFInfo",
    "IncompleteHeader",
    "TensorInfo",
    "read_gguf",
    "read_gguf_bytes",
]

# Arrays longer than this are summarised as {"type": "array", "item_type": ..., "len": N}, so a
# 256k-entry tokenizer vocabulary is walked (to validate it) but never held in memory.
DEFAULT_MAX_ARRAY_LEN = 1024


@dataclass(frozen=True)
class TensorInfo:
    """One entry of the tensor-info table. ``offset`` is absolute (from the start of the file)."""

    name: str
    shape: tuple[int, ...]
    ggml_type_name: str
    offset: int
    n_bytes: int

    @property
    def n_elements(self) -> int:
        """Number of weights in the tensor."""
        count = 1
        for dim in self.shape:
            count *= dim
        return count

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "name": self.name,
            "shape": list(self.shape),
            "ggml_type_name": self.ggml_type_name,
            "offset": self.offset,
            "n_bytes": self.n_bytes,
        }


@dataclass(frozen=True)
class GGUFInfo:
    """Validated summary of a GGUF header. Fields absent from the metadata are ``None``."""

    source: str  # the file path, or what the caller named the bytes (e.g. a URL)
    version: int
    file_size: int | None  # None when reading a prefix whose full size is unknown
    tensor_count: int
    alignment: int
    data_offset: int  # where tensor data starts; also the size of the header
    metadata: dict[str, Any]
    tensors: list[TensorInfo]
    architecture: str | None
    name: str | None
    parameter_count: int
    file_type: str | None  # e.g. "Q4_K_M", from general.file_type
    tensor_type_counts: dict[str, int]  # ggml type name -> number of tensors
    tensor_type_bytes: dict[str, int]  # ggml type name -> bytes of tensor data
    tensor_data_bytes: int
    bits_per_weight: float | None
    context_length: int | None
    block_count: int | None
    embedding_length: int | None
    head_count: int | list[int] | None
    head_count_kv: int | list[int] | None  # per layer in some architectures
    key_length: int | None  # head dim; defaults to embedding_length // head_count
    value_length: int | None
    sliding_window: int | None
    sliding_window_pattern: Any  # int or per-layer list, as stored; None if absent
    vocab_size: int | None
    tokenizer_model: str | None
    chat_template: str | None
    bos_token_id: int | None
    eos_token_id: int | None
    add_bos_token: bool | None
    metadata_types: dict[str, str] = field(default_factory=dict)  # key -> GGUF value type name

    @property
    def path(self) -> str:
        """Alias of :attr:`source`."""
        return self.source

    def to_dict(self, *, include_tensors: bool = True) -> dict[str, Any]:
        """JSON-ready form; ``include_tensors=False`` drops the (long) tensor list."""
        data = asdict(self)
        data["tensors"] = [t.to_dict() for t in self.tensors] if include_tensors else None
        return data


class IncompleteHeader(ModelError):
    """The bytes given end before the header does; fetch at least ``needed`` bytes and retry.

    ``needed`` is a lower bound on the header size: the bytes the parser was missing plus the
    minimum size of every key/value and tensor info still declared. Doubling the prefix each
    round is a good fetch strategy when ``needed`` is only slightly larger than what was sent.
    """

    def __init__(self, message: str, *, path: str | Path | None = None, needed: int) -> None:
        super().__init__(message, path=path)
        self.needed = needed


def read_gguf(path: str | Path, *, max_array_len: int | None = DEFAULT_MAX_ARRAY_LEN) -> GGUFInfo:
    """Read and validate the header of the GGUF file at ``path``.

    Reads the header in growing chunks (never the tensor data) plus ``os.stat`` for the size.
    ``max_array_len`` bounds which metadata arrays are kept in full (``None``: keep all).
    Raises :class:`ModelError` for a missing, unreadable, truncated or malformed file.
    Results are remembered per (path, size, mtime) within the process: store blobs never
    change, and a run reads each one's header from several places. Across processes, the
    header cache under ``$LIFECYCLE_HOME`` serves them (see the module's docstring).
    """
    file_path = Path(path)
    try:
        stat = os.stat(file_path)
    except FileNotFoundError:
        raise ModelError("model file not found", path=file_path) from None
    except OSError as exc:
        raise ModelError(f"cannot read model file: {exc.strerror or exc}", path=file_path) from None
    key = (str(file_path), stat.st_size, stat.st_mtime_ns, max_array_len)
    cached = _HEADERS.get(key)
    if cached is None:
        if max_array_len == DEFAULT_MAX_ARRAY_LEN:
            cached = _cached_header(file_path, stat)
        else:
            cached = _read_gguf_file(file_path, max_array_len)
        _HEADERS[key] = cached
    return copy.deepcopy(cached)


_HEADERS: dict[tuple[str, int, int, int | None], GGUFInfo] = {}

# --- the header cache ------------------------------------------------------------------------

HEADER_CACHE_DIR = "gguf-headers"  # under $LIFECYCLE_HOME
_CACHE_FORMAT = 1
_BLOB_NAME = re.compile(r"sha256-[0-9a-f]{64}")
_STILL_NS = 3_000_000_000  # a non-store file is cached once unchanged for this long


def _cached_header(file_path: Path, stat: os.stat_result) -> GGUFInfo:
    """The header of ``file_path`` from its cache entry, else parsed and written there."""
    entry, identity = _cache_entry(file_path, stat)
    if entry is None:
        return _read_gguf_file(file_path, DEFAULT_MAX_ARRAY_LEN)
    info = _load_entry(entry, identity, str(file_path))
    if info is not None:
        return info
    info = _read_gguf_file(file_path, DEFAULT_MAX_ARRAY_LEN)
    blob = "digest" in identity
    if blob or time.time_ns() - max(stat.st_mtime_ns, stat.st_ctime_ns) > _STILL_NS:
        _store_entry(entry, identity, info)
    return info


def _cache_entry(file_path: Path, stat: os.stat_result) -> tuple[Path | None, dict[str, Any]]:
    """Where ``file_path``'s entry lives (None: not cacheable) and what it must match."""
    if not stat_mod.S_ISREG(stat.st_mode):
        return None, {}
    directory = lifecycle_home() / HEADER_CACHE_DIR
    salt = _cache_salt()
    if file_path.parent.name == "blobs" and _BLOB_NAME.fullmatch(file_path.name):
        identity: dict[str, Any] = {
            "salt": salt,
            "digest": file_path.name.replace("-", ":", 1),
            "size": stat.st_size,
        }
        return directory / f"{file_path.name}.json", identity
    real = os.path.realpath(file_path)
    identity = {
        "salt": salt,
        "path": real,
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "ctime_ns": stat.st_ctime_ns,  # a copy that restores the mtime (cp -p) still misses
        "inode": stat.st_ino,
        "device": stat.st_dev,
    }
    name = hashlib.sha256(os.fsencode(real)).hexdigest()
    return directory / f"path-{name}.json", identity


@functools.cache
def _cache_salt() -> str:
    """What the cached summaries depend on besides the file: this parser's source and
    gguf-py's constants (type names and sizes), so an upgrade of either misses."""
    digest = hashlib.sha256(f"format {_CACHE_FORMAT}\n".encode())
    try:
        digest.update(Path(__file__).read_bytes())
    except OSError:
        digest.update(b"source unreadable")
    spec = importlib.util.find_spec("gguf")
    if spec is not None and spec.origin:
        try:
            constants = os.stat(Path(spec.origin).parent / "constants.py")
            digest.update(f"{spec.origin} {constants.st_size} {constants.st_mtime_ns}".encode())
        except OSError:
            digest.update(spec.origin.encode())
    return digest.hexdigest()[:32]


def _load_entry(entry: Path, identity: dict[str, Any], source: str) -> GGUFInfo | None:
    """The summary in ``entry`` when it is whole and matches ``identity``; else None."""
    try:
        document = json.loads(entry.read_text(encoding="utf-8"))
        if not isinstance(document, dict) or document.get("identity") != identity:
            return None
        text = document["info"]
        if hashlib.sha256(text.encode("utf-8")).hexdigest() != document["sha256"]:
            return None
        data = json.loads(text)
        tensors = [
            TensorInfo(t["name"], tuple(t["shape"]), t["ggml_type_name"], t["offset"], t["n_bytes"])
            for t in data.pop("tensors")
        ]
        return GGUFInfo(**{**data, "source": source, "tensors": tensors})
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # missing or damaged: parse the file and write the entry afresh


def _store_entry(entry: Path, identity: dict[str, Any], info: GGUFInfo) -> None:
    data = info.to_dict()
    del data["source"]  # the path the caller named; a blob's entry serves every path to it
    text = json.dumps(data, ensure_ascii=False)
    document = {
        "identity": identity,
        "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
        "info": text,
    }
    with contextlib.suppress(OSError):  # a read-only home: the next read parses again
        atomic_write_text(entry, json.dumps(document, ensure_ascii=False))


def _read_gguf_file(file_path: Path, max_array_len: int | None) -> GGUFInfo:
    try:
        size = os.stat(file_path).st_size
        with open(file_path, "rb") as handle:
            buf = bytearray(handle.read(min(size, _FIRST_CHUNK)))
            while True:
                try:
                    return _parse(bytes(buf), str(file_path), size, max_array_len)
                except _NeedMore as more:
                    # Reparse from the start on a bigger buffer: simple, and doubling keeps it
                    # linear overall; headers are at most a few tens of MB.
                    want = min(size, max(more.needed, 2 * len(buf)))
                    chunk = handle.read(want - len(buf))
                    if len(chunk) < want - len(buf):
                        raise ModelError(
                            f"file shrank while being read (expected {size} bytes)", path=file_path
                        ) from None
                    buf += chunk
    except FileNotFoundError:
        raise ModelError("model file not found", path=file_path) from None
    except IsADirectoryError:
        raise ModelError("is a directory, not a GGUF file", path=file_path) from None
    except OSError as exc:
        raise ModelError(f"cannot read model file: {exc.strerror or exc}", path=file_path) from None


def read_gguf_bytes(
    data: bytes,
    *,
    source: str,
    total_size: int | None = None,
    max_array_len: int | None = DEFAULT_MAX_ARRAY_LEN,
) -> GGUFInfo:
    """Read and validate a GGUF header from ``data``, the first bytes of a file (or all of it).

    ``total_size`` is the full file's size (e.g. from ``Content-Range``); it enables the checks
    against the end of the file (absurd counts, over-long strings, truncated tensor data).
    ``None`` means unknown: those checks are skipped and ``file_size`` is ``None``. When
    ``data`` ends before the header does, :class:`IncompleteHeader` says how much to fetch.
    """
    if total_size is not None and len(data) > total_size:
        raise ValueError(f"got {len(data)} bytes but total_size is {total_size}")
    try:
        return _parse(bytes(data), source, total_size, max_array_len)
    except _NeedMore as more:
        raise IncompleteHeader(
            f"header continues past the first {len(data)} bytes; need at least {more.needed} bytes",
            path=source,
            needed=more.needed,
        ) from None


# --- implementation --------------------------------------------------------------------------

_MAGIC = b"GGUF"
_SUPPORTED_VERSIONS = (2, 3)
_FIXED_HEADER = 24  # magic, version, tensor count, kv count
_FIRST_CHUNK = 8 << 20  # most headers (a 262k vocabulary is ~6.5 MB) fit in one read
_U64 = struct.Struct("<Q")
_DEFAULT_ALIGNMENT = 32
_ALIGNMENT_KEY = "general.alignment"
_MAX_DIMS = 4  # GGML_MAX_DIMS
_MAX_NAME = 64  # GGML_MAX_NAME, including the terminating NUL
_MAX_STRING = 1 << 30  # GGUF_MAX_STRING_LENGTH
_MAX_ARRAY = 1 << 30  # GGUF_MAX_ARRAY_ELEMENTS
_INT64_MAX = (1 << 63) - 1
_SIZE_MAX = (1 << 64) - 1
# Smallest possible encodings, used to bound counts by the file size: a key/value is a
# non-empty key (8 + 1) plus a type (4) plus a 1-byte value; a tensor info is a name length
# (8), n_dims (4), at least one dim (8), type (4) and offset (8).
_MIN_KV_BYTES = 14
_MIN_TENSOR_BYTES = 32
_MIN_STRING_BYTES = 8

# The GGUF value types, numbered by the format (gguf_type in ggml's gguf.h; gguf-py's
# GGUFValueType has the same numbers and names, tests/test_gguf.py checks).
_VALUE_TYPE_NAMES: dict[int, str] = {
    0: "uint8",
    1: "int8",
    2: "uint16",
    3: "int16",
    4: "uint32",
    5: "int32",
    6: "float32",
    7: "bool",
    8: "string",
    9: "array",
    10: "uint64",
    11: "int64",
    12: "float64",
}
_UINT32 = 4
_BOOL = 7
_STRING = 8
_ARRAY = 9
# struct codes of the fixed-size value types (BOOL is read as a byte: non-zero is true).
_SCALAR_FORMATS: dict[int, str] = {
    0: "B",
    1: "b",
    2: "H",
    3: "h",
    4: "I",
    5: "i",
    6: "f",
    7: "B",
    10: "Q",
    11: "q",
    12: "d",
}


@functools.cache
def _ggml_types() -> dict[int, tuple[str, int, int]]:
    """ggml type id -> (name, block size, bytes per block), from gguf-py (imported here: the
    list grows with llama.cpp, so it is not copied)."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    return {
        int(t): (t.name, *GGML_QUANT_SIZES[t])
        for t in GGMLQuantizationType
        if t in GGML_QUANT_SIZES
    }


class _NeedMore(Exception):
    """Internal: the buffer ends before the header does, and the file may go on."""

    def __init__(self, needed: int) -> None:
        super().__init__(needed)
        self.needed = needed


class _Cursor:
    """Bounds-checked little-endian reads over a buffer that may be a prefix of the file."""

    def __init__(self, buf: bytes, source: str, total: int | None) -> None:
        self.buf = buf
        self.source = source
        self.total = total
        self.pos = 0
        # Minimum bytes still declared after the item being read; makes `needed` a better bound.
        self.tail = 0

    def fail(self, message: str) -> ModelError:
        return ModelError(message, path=self.source)

    def remaining(self) -> int | None:
        """Bytes left in the whole file after the cursor, or None when the size is unknown."""
        return None if self.total is None else self.total - self.pos

    def need(self, n: int, what: str) -> None:
        end = self.pos + n
        if self.total is not None and end > self.total:
            raise self.fail(
                f"truncated file: {what} at offset {self.pos} needs {n} bytes "
                f"but the file ends at byte {self.total}"
            )
        if end > len(self.buf):
            raise _NeedMore(end + self.tail)

    def take(self, n: int, what: str) -> bytes:
        self.need(n, what)
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str, what: str) -> Any:
        size = struct.calcsize("<" + fmt)
        self.need(size, what)
        (value,) = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += size
        return value

    def u32(self, what: str) -> int:
        return int(self.unpack("I", what))

    def u64(self, what: str) -> int:
        return int(self.unpack("Q", what))

    def string_length(self, what: str) -> int:
        start = self.pos
        n = self.u64(f"length of {what}")
        if n > _MAX_STRING:
            raise self.fail(f"{what} at offset {start} has length {n}, over the 1 GiB limit")
        left = self.remaining()
        if left is not None and n > left:
            raise self.fail(
                f"{what} at offset {start} has length {n}, "
                f"larger than the remaining {left} bytes of the file"
            )
        return n

    def string_bytes(self, what: str) -> bytes:
        return self.take(self.string_length(what), what)

    def string(self, what: str) -> str:
        return self.string_bytes(what).decode("utf-8", errors="replace")


def _parse(buf: bytes, source: str, total: int | None, max_array_len: int | None) -> GGUFInfo:
    """Parse and validate a header from ``buf`` (a prefix of a file of ``total`` bytes)."""
    cur = _Cursor(buf, source, total)
    if total == 0:
        raise cur.fail("file is empty (0 bytes), not a GGUF file")
    magic = cur.take(4 if total is None else min(4, total), "magic")
    if magic != _MAGIC[: len(magic)]:
        raise cur.fail(f"not a GGUF file (magic {magic!r})")
    if total is not None and total < _FIXED_HEADER:
        raise cur.fail(f"file is {total} bytes, shorter than the {_FIXED_HEADER}-byte GGUF header")
    version = cur.u32("version")
    if version not in _SUPPORTED_VERSIONS:
        if version & 0xFFFF == 0:
            raise cur.fail(
                f"unsupported GGUF version field {version:#010x}: "
                "a big-endian GGUF file, which is not supported"
            )
        raise cur.fail(f"unsupported GGUF version {version} (supported: 2 and 3)")
    n_tensors = cur.u64("tensor count")
    n_kv = cur.u64("key/value count")
    _check_counts(cur, n_tensors, n_kv)

    metadata: dict[str, Any] = {}
    types: dict[str, int] = {}
    seen_keys: set[bytes] = set()
    for i in range(n_kv):
        cur.tail = (n_kv - i - 1) * _MIN_KV_BYTES + n_tensors * _MIN_TENSOR_BYTES
        key_start = cur.pos
        raw_key = cur.string_bytes(f"key of key/value pair {i}")
        if not raw_key:
            raise cur.fail(f"key/value pair {i} at offset {key_start} has an empty key")
        key = raw_key.decode("utf-8", errors="replace")
        if raw_key in seen_keys:
            raise cur.fail(f"duplicate key {key!r} (key/value pair {i})")
        seen_keys.add(raw_key)
        vtype = cur.u32(f"value type of {key!r}")
        metadata[key] = _read_value(cur, key, vtype, max_array_len)
        types[key] = vtype

    alignment = _alignment(cur, metadata, types)
    cur.tail = 0
    infos = _read_tensor_infos(cur, n_tensors)
    header_end = cur.pos
    # llama.cpp pads to the alignment only when there are tensors.
    data_offset = _pad(header_end, alignment) if n_tensors else header_end
    tensors = _place_tensors(cur, infos, alignment, data_offset)
    return _summarise(
        source=source,
        version=version,
        file_size=total,
        alignment=alignment,
        data_offset=data_offset,
        metadata=metadata,
        types=types,
        tensors=tensors,
    )


def _check_counts(cur: _Cursor, n_tensors: int, n_kv: int) -> None:
    """Refuse counts that could not fit in the file (or in an int64, as llama.cpp reads them)."""
    if n_tensors > _INT64_MAX:
        raise cur.fail(f"tensor count {n_tensors} is negative as an int64")
    if n_kv > _INT64_MAX:
        raise cur.fail(f"key/value count {n_kv} is negative as an int64")
    if cur.total is None:
        return
    room = cur.total - _FIXED_HEADER
    if n_tensors * _MIN_TENSOR_BYTES > room:
        raise cur.fail(
            f"tensor count {n_tensors} is absurd for a file of {cur.total} bytes "
            f"(each tensor info takes at least {_MIN_TENSOR_BYTES} bytes)"
        )
    if n_kv * _MIN_KV_BYTES > room - n_tensors * _MIN_TENSOR_BYTES:
        raise cur.fail(
            f"key/value count {n_kv} is absurd for a file of {cur.total} bytes "
            f"(each key/value pair takes at least {_MIN_KV_BYTES} bytes)"
        )


def _read_value(cur: _Cursor, key: str, vtype: int, max_array_len: int | None) -> Any:
    if vtype == _ARRAY:
        return _read_array(cur, key, max_array_len)
    if vtype == _STRING:
        return cur.string(f"string value of {key!r}")
    fmt = _SCALAR_FORMATS.get(vtype)
    if fmt is None:
        raise cur.fail(f"key {key!r} has unknown value type {vtype}")
    value = cur.unpack(fmt, f"value of {key!r}")
    return value != 0 if vtype == _BOOL else value


def _read_array(cur: _Cursor, key: str, max_array_len: int | None) -> Any:
    start = cur.pos
    item_type = cur.u32(f"item type of array {key!r}")
    n = cur.u64(f"length of array {key!r}")
    if item_type == _ARRAY:
        raise cur.fail(
            f"key {key!r} is an array of arrays (nested arrays are rejected, as llama.cpp does)"
        )
    if item_type != _STRING and item_type not in _SCALAR_FORMATS:
        raise cur.fail(f"array {key!r} has unknown item type {item_type}")
    if n > _MAX_ARRAY:
        raise cur.fail(f"array {key!r} at offset {start} has {n} items, over the 2**30 limit")
    item_size = (
        _MIN_STRING_BYTES if item_type == _STRING else struct.calcsize(_SCALAR_FORMATS[item_type])
    )
    left = cur.remaining()
    if left is not None and n * item_size > left:
        raise cur.fail(
            f"array {key!r} at offset {start} has {n} items of at least {item_size} bytes, "
            f"larger than the remaining {left} bytes of the file"
        )
    keep = max_array_len is None or n <= max_array_len
    if item_type == _STRING:
        items = _read_string_items(cur, key, n, keep)
        if items is not None:
            return items
    else:
        fmt = _SCALAR_FORMATS[item_type]
        raw = cur.take(n * item_size, f"items of array {key!r}")
        if keep:
            values = list(struct.unpack(f"<{n}{fmt}", raw))
            return [v != 0 for v in values] if item_type == _BOOL else values
    return {"type": "array", "item_type": _VALUE_TYPE_NAMES[item_type], "len": n}


def _read_string_items(cur: _Cursor, key: str, n: int, keep: bool) -> list[str] | None:
    """Walk ``n`` strings (validating each length); return them only when ``keep``.

    A vocabulary is hundreds of thousands of strings, so the common case runs as one tight
    loop over the buffer; the first string that is not plainly inside it (too long, past the
    end of the buffer or the file) is re-read by the careful per-item path below, which
    raises the precise error or asks for more bytes.
    """
    base_tail = cur.tail
    items: list[str] = []
    buf, pos = cur.buf, cur.pos
    limit = len(buf) if cur.total is None else min(len(buf), cur.total)
    unpack = _U64.unpack_from
    start = 0
    for j in range(n):
        if pos + 8 > limit:
            break
        (length,) = unpack(buf, pos)
        end = pos + 8 + length
        if length > _MAX_STRING or end > limit:
            break
        if keep:
            items.append(buf[pos + 8 : end].decode("utf-8", errors="replace"))
        pos = end
        start = j + 1
    cur.pos = pos
    for j in range(start, n):
        cur.tail = base_tail + (n - j - 1) * _MIN_STRING_BYTES
        raw = cur.string_bytes(f"item {j} of array {key!r}")
        if keep:
            items.append(raw.decode("utf-8", errors="replace"))
    cur.tail = base_tail
    return items if keep else None


def _alignment(cur: _Cursor, metadata: dict[str, Any], types: dict[str, int]) -> int:
    if _ALIGNMENT_KEY not in metadata:
        return _DEFAULT_ALIGNMENT
    vtype = types[_ALIGNMENT_KEY]
    if vtype != _UINT32:
        raise cur.fail(
            f"{_ALIGNMENT_KEY} must be of type uint32, not {_VALUE_TYPE_NAMES.get(vtype, vtype)}"
        )
    value = int(metadata[_ALIGNMENT_KEY])
    if value == 0 or value & (value - 1):
        raise cur.fail(f"{_ALIGNMENT_KEY} is {value}, not a power of two")
    return value


@dataclass
class _RawTensor:
    name: str
    shape: tuple[int, ...]
    type_name: str
    rel_offset: int
    n_bytes: int


def _read_tensor_infos(cur: _Cursor, n_tensors: int) -> list[_RawTensor]:
    ggml_types = _ggml_types()
    infos: list[_RawTensor] = []
    seen: set[bytes] = set()
    for i in range(n_tensors):
        cur.tail = (n_tensors - i - 1) * _MIN_TENSOR_BYTES
        raw_name = cur.string_bytes(f"name of tensor {i}")
        name = raw_name.decode("utf-8", errors="replace")
        if len(raw_name) >= _MAX_NAME:
            raise cur.fail(
                f"tensor {i} name {name[:40]!r}... is {len(raw_name)} bytes, "
                f"llama.cpp allows at most {_MAX_NAME - 1}"
            )
        if raw_name in seen:
            raise cur.fail(f"duplicate tensor name {name!r} (tensor {i})")
        seen.add(raw_name)
        n_dims = cur.u32(f"dimension count of tensor {name!r}")
        if not 1 <= n_dims <= _MAX_DIMS:
            raise cur.fail(f"tensor {name!r} has {n_dims} dimensions (must be 1 to {_MAX_DIMS})")
        shape = tuple(cur.u64(f"dimension {d} of tensor {name!r}") for d in range(n_dims))
        n_elements = 1
        for d, dim in enumerate(shape):
            if dim > _INT64_MAX:
                raise cur.fail(f"tensor {name!r} dimension {d} is negative ({dim - (1 << 64)})")
            n_elements *= dim
        if n_elements >= _INT64_MAX:
            raise cur.fail(f"tensor {name!r} shape {list(shape)} overflows int64 element count")
        type_id = cur.u32(f"ggml type of tensor {name!r}")
        known = ggml_types.get(type_id)
        if known is None:
            raise cur.fail(f"tensor {name!r} has unknown ggml type {type_id}")
        type_name, block_size, type_size = known
        if shape[0] % block_size:
            raise cur.fail(
                f"tensor {name!r} of type {type_name} has rows of {shape[0]} elements, "
                f"not a multiple of the block size {block_size}"
            )
        n_bytes = n_elements // block_size * type_size
        if n_bytes > _SIZE_MAX:
            raise cur.fail(f"tensor {name!r} shape {list(shape)} is over 2**64 bytes")
        rel_offset = cur.u64(f"data offset of tensor {name!r}")
        infos.append(_RawTensor(name, shape, type_name, rel_offset, n_bytes))
    return infos


def _place_tensors(
    cur: _Cursor, infos: list[_RawTensor], alignment: int, data_offset: int
) -> list[TensorInfo]:
    """Check alignment, overlap, packing and bounds of tensor data; return absolute offsets."""
    for info in infos:
        if info.rel_offset % alignment:
            raise cur.fail(
                f"tensor {info.name!r} data offset {info.rel_offset} is not a multiple of "
                f"the alignment {alignment}"
            )
    ordered = sorted((t for t in infos if t.n_bytes), key=lambda t: t.rel_offset)
    for prev, nxt in itertools.pairwise(ordered):
        if prev.rel_offset + prev.n_bytes > nxt.rel_offset:
            raise cur.fail(
                f"tensor {nxt.name!r} data (offset {nxt.rel_offset}) overlaps tensor "
                f"{prev.name!r} (offset {prev.rel_offset}, {prev.n_bytes} bytes)"
            )
    expected = 0
    for info in infos:
        if info.rel_offset != expected:
            raise cur.fail(
                f"tensor {info.name!r} has data offset {info.rel_offset}, expected {expected}: "
                "llama.cpp requires tensor data packed in header order"
            )
        expected += _pad(info.n_bytes, alignment)
    if cur.total is not None:
        for info in infos:
            end = data_offset + info.rel_offset + info.n_bytes
            if end > cur.total:
                raise cur.fail(
                    f"truncated file: tensor {info.name!r} data ends at byte {end} "
                    f"but the file is only {cur.total} bytes"
                )
    return [
        TensorInfo(t.name, t.shape, t.type_name, data_offset + t.rel_offset, t.n_bytes)
        for t in infos
    ]


def _pad(offset: int, alignment: int) -> int:
    return (offset + alignment - 1) // alignment * alignment


def _summarise(
    *,
    source: str,
    version: int,
    file_size: int | None,
    alignment: int,
    data_offset: int,
    metadata: dict[str, Any],
    types: dict[str, int],
    tensors: list[TensorInfo],
) -> GGUFInfo:
    arch = _str(metadata, "general.architecture")
    prefix = f"{arch}." if arch else "\0"  # "\0": no key matches without an architecture

    def arch_int(suffix: str) -> int | None:
        return _int(metadata, prefix + suffix)

    type_counts: dict[str, int] = {}
    type_bytes: dict[str, int] = {}
    for t in tensors:
        type_counts[t.ggml_type_name] = type_counts.get(t.ggml_type_name, 0) + 1
        type_bytes[t.ggml_type_name] = type_bytes.get(t.ggml_type_name, 0) + t.n_bytes
    params = sum(t.n_elements for t in tensors)
    data_bytes = sum(t.n_bytes for t in tensors)

    embedding = arch_int("embedding_length")
    head_count = _int_or_list(metadata, prefix + "attention.head_count")
    default_head_dim = None
    if isinstance(head_count, int) and head_count and embedding:
        default_head_dim = embedding // head_count
    key_length = arch_int("attention.key_length")
    value_length = arch_int("attention.value_length")

    tokens = metadata.get("tokenizer.ggml.tokens")
    if isinstance(tokens, list):
        vocab_size: int | None = len(tokens)
    elif isinstance(tokens, dict):
        vocab_size = int(tokens["len"])
    else:
        vocab_size = arch_int("vocab_size")

    add_bos = metadata.get("tokenizer.ggml.add_bos_token")
    return GGUFInfo(
        source=source,
        version=version,
        file_size=file_size,
        tensor_count=len(tensors),
        alignment=alignment,
        data_offset=data_offset,
        metadata=metadata,
        tensors=tensors,
        architecture=arch,
        name=_str(metadata, "general.name"),
        parameter_count=params,
        file_type=_file_type_name(_int(metadata, "general.file_type")),
        tensor_type_counts=type_counts,
        tensor_type_bytes=type_bytes,
        tensor_data_bytes=data_bytes,
        bits_per_weight=data_bytes * 8 / params if params else None,
        context_length=arch_int("context_length"),
        block_count=arch_int("block_count"),
        embedding_length=embedding,
        head_count=head_count,
        head_count_kv=_int_or_list(metadata, prefix + "attention.head_count_kv"),
        key_length=key_length if key_length is not None else default_head_dim,
        value_length=value_length if value_length is not None else default_head_dim,
        sliding_window=arch_int("attention.sliding_window"),
        sliding_window_pattern=metadata.get(prefix + "attention.sliding_window_pattern"),
        vocab_size=vocab_size,
        tokenizer_model=_str(metadata, "tokenizer.ggml.model"),
        chat_template=_str(metadata, "tokenizer.chat_template"),
        bos_token_id=_int(metadata, "tokenizer.ggml.bos_token_id"),
        eos_token_id=_int(metadata, "tokenizer.ggml.eos_token_id"),
        add_bos_token=add_bos if isinstance(add_bos, bool) else None,
        metadata_types={k: _VALUE_TYPE_NAMES[v] for k, v in types.items()},
    )


def _file_type_name(value: int | None) -> str | None:
    """``general.file_type`` (llama_ftype) as a short name: 15 -> "Q4_K_M", 0 -> "F32"."""
    if value is None:
        return None
    from gguf import LlamaFileType

    try:
        name = LlamaFileType(value).name
    except ValueError:
        return f"unknown({value})"
    return name.removeprefix("MOSTLY_").removeprefix("ALL_")


def _str(metadata: dict[str, Any], key: str) -> str | None:
    value = metadata.get(key)
    return value if isinstance(value, str) else None


def _int(metadata: dict[str, Any], key: str) -> int | None:
    value = metadata.get(key)
    # bool is an int subclass; a flag is not a count.
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _int_or_list(metadata: dict[str, Any], key: str) -> int | list[int] | None:
    value = metadata.get(key)
    if isinstance(value, list) and all(isinstance(v, int) for v in value):
        return value
    return _int(metadata, key)
