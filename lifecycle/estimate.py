"""Memory needed to run a GGUF at a context size, from its header alone (nothing is loaded).

The total is what llama.cpp allocates on the CPU backend:

* **weights**: the tensor data bytes of the file (``llama_model_size``);
* **KV cache**: for every attention layer, ``cells × (n_head_kv × head_dim_k × bytes(type_k)
  + n_head_kv × head_dim_v × bytes(type_v))``, i.e. ``2 × layers × ctx × kv_heads × head_dim ×
  bytes per element`` when K and V agree. ``cells`` is the context padded to 256 like
  ``llama_context`` does; sliding-window layers get ``min(ctx, pad(window + n_ubatch, 256))``
  cells unless ``swa_full`` (llama-cpp-python keeps llama.cpp's default ``swa_full = true``, so
  the engine's contexts hold full-size SWA caches; llama-server and llama-bench turn it off);
* **output buffer**: one row of float logits (``n_vocab × 4``);
* **compute buffer**: approximate. llama.cpp reserves the worst-case graph of one ubatch; its
  largest live tensors are either the logits (``n_ubatch × n_vocab`` floats) or, without flash
  attention, the attention scores plus mask (``n_ubatch × n_kv × (n_head + 1)`` floats). The
  formula ``4 × n_ubatch × max(n_vocab + 2·n_embd, (n_head + 1)·n_kv + 3·n_ff)`` matched
  llama.cpp's logged ``compute buffer size`` within a few percent on llama and gemma3 models.

Which layers use a sliding window follows llama.cpp: the GGUF's
``<arch>.attention.sliding_window_pattern`` (per-layer booleans or a period), else the
architecture's built-in period (gemma2: 2, gemma3: 6, cohere2: 4, ...).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lifecycle.config import KV_CACHE_TYPES
from lifecycle.errors import ModelError, UsageError
from lifecycle.gguf import GGUFInfo, read_gguf

__all__ = ["KV_CACHE_TYPES", "MemoryEstimate", "estimate_file", "estimate_memory", "kv_type_bytes"]

# llama.cpp's built-in sliding-window period per architecture when the GGUF has no
# sliding_window_pattern: (period, dense_first). See each src/models/<arch>.cpp.
_SWA_PERIODS: dict[str, tuple[int, bool]] = {
    "gemma2": (2, False),
    "gemma3": (6, False),
    "gemma3n": (5, False),
    "gemma-embedding": (6, False),
    "cohere2": (4, False),
    "exaone4": (4, False),
    "olmo2": (4, False),
    "llama4": (4, False),
    "gpt-oss": (2, False),
    "afmoe": (4, False),
    "smallthinker": (4, True),
    "modern-bert": (3, True),
}
_CTX_PAD = 256  # llama_context pads n_ctx (and the SWA cache) to a multiple of 256


@dataclass(frozen=True)
class MemoryEstimate:
    """Estimated bytes for one model at one context size; ``total_bytes`` is their sum."""

    source: str
    n_ctx: int  # as requested
    n_ctx_padded: int  # cells of a full-attention layer's cache
    context_length: int | None  # the model's trained context
    n_ubatch: int
    type_k: str
    type_v: str
    swa_full: bool
    flash_attn: bool
    weights_bytes: int
    kv_cache_bytes: int
    compute_bytes: int
    output_bytes: int
    total_bytes: int
    kv_bytes_per_token: int  # full-attention layers only: what each extra token of context adds
    layers_full: int
    layers_swa: int
    swa_cells: int | None
    notes: list[str] = field(default_factory=list)

    @property
    def exceeds_trained_context(self) -> bool:
        return self.context_length is not None and self.n_ctx > self.context_length

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["exceeds_trained_context"] = self.exceeds_trained_context
        return data


def estimate_file(path: str | Path, n_ctx: int, **options: Any) -> MemoryEstimate:
    """:func:`estimate_memory` for the GGUF file at ``path`` (only its header is read)."""
    return estimate_memory(read_gguf(path), n_ctx, **options)


def estimate_memory(
    info: GGUFInfo,
    n_ctx: int,
    *,
    n_batch: int = 512,
    n_ubatch: int = 512,
    type_k: str = "f16",
    type_v: str = "f16",
    swa_full: bool = True,
    flash_attn: bool = False,
    n_seq: int = 1,
) -> MemoryEstimate:
    """Estimate weights + KV cache + output + compute bytes for ``info`` at ``n_ctx`` tokens.

    ``n_batch``/``n_ubatch`` are the engine's logical and physical batch sizes (the compute
    buffer scales with ``min(n_batch, n_ubatch)``); ``type_k``/``type_v`` the KV cache types.
    ``n_seq`` sequences decoded together (batched eval) each get ``n_ctx`` cells of one
    unified cache, as the llama-cpp engine allocates them.
    Raises :class:`UsageError` for a non-positive context or an unknown cache type and
    :class:`ModelError` when the header lacks the attention shape.
    """
    if n_ctx <= 0:
        raise UsageError(f"context size must be a positive number of tokens, got {n_ctx}")
    if n_batch <= 0 or n_ubatch <= 0:
        raise UsageError("batch sizes must be positive")
    k_elem = kv_type_bytes(type_k)
    v_elem = kv_type_bytes(type_v)
    n_layer = info.block_count
    if not n_layer or info.key_length is None or info.value_length is None:
        raise ModelError(
            "GGUF header lacks block_count or the attention head size; cannot estimate",
            path=info.source,
        )
    kv_heads = _per_layer(info.head_count_kv, n_layer, default=_per_layer(info.head_count, n_layer))
    heads = _per_layer(info.head_count, n_layer)
    notes: list[str] = []

    cells = _pad(n_ctx * max(n_seq, 1), _CTX_PAD)
    # llama_context caps the batch at the context for causal models, the ubatch at the batch.
    ubatch = min(n_batch, n_ubatch, cells)
    swa_layers = _swa_layers(info, n_layer, notes)
    window = info.sliding_window or 0
    swa_cells = None
    if any(swa_layers):
        swa_cells = (
            cells if swa_full else min(cells, _pad(window * max(n_seq, 1) + ubatch, _CTX_PAD))
        )

    kv_bytes = 0
    per_token = 0
    for il in range(n_layer):
        row = kv_heads[il] * (info.key_length * k_elem + info.value_length * v_elem)
        layer_cells = swa_cells if swa_layers[il] and swa_cells is not None else cells
        kv_bytes += int(row * layer_cells)
        if not swa_layers[il] or swa_full:
            per_token += int(row)

    n_vocab = info.vocab_size or 0
    n_embd = info.embedding_length or 0
    n_ff = _feed_forward(info)
    max_heads = max(heads) if heads else 0
    attention = (max_heads + 1) * cells + 3 * n_ff
    if flash_attn:  # the scores are never materialised; only the mask remains
        attention = cells + 3 * n_ff
    compute = 4 * ubatch * max(n_vocab + 2 * n_embd, attention)
    output = 4 * n_vocab
    weights = info.tensor_data_bytes
    if info.context_length and n_ctx > info.context_length:
        notes.append(f"context {n_ctx} is above the model's trained context {info.context_length}")
    return MemoryEstimate(
        source=info.source,
        n_ctx=n_ctx,
        n_ctx_padded=cells,
        context_length=info.context_length,
        n_ubatch=ubatch,
        type_k=type_k,
        type_v=type_v,
        swa_full=swa_full,
        flash_attn=flash_attn,
        weights_bytes=weights,
        kv_cache_bytes=kv_bytes,
        compute_bytes=compute,
        output_bytes=output,
        total_bytes=weights + kv_bytes + compute + output,
        kv_bytes_per_token=per_token,
        layers_full=sum(not s for s in swa_layers),
        layers_swa=sum(swa_layers),
        swa_cells=swa_cells,
        notes=notes,
    )


def kv_type_bytes(name: str) -> float:
    """Bytes per element of a KV cache type, block scales included: f16 2, q8_0 34/32,
    q4_0 18/32 (a block of 32 values stores one f16 scale with them)."""
    if name not in KV_CACHE_TYPES:
        raise UsageError(f"unknown KV cache type {name!r}; one of: {', '.join(KV_CACHE_TYPES)}")
    block, size = KV_TYPE_SIZES[name]
    return size / block


# (block size, bytes per block) of each KV cache type: ggml's own, as gguf-py's
# GGML_QUANT_SIZES lists them (tests/test_gguf.py checks), copied so that a batched eval's
# memory check does not import gguf-py (tens of milliseconds) for nine constants.
KV_TYPE_SIZES: dict[str, tuple[int, int]] = {
    "f32": (1, 4),
    "f16": (1, 2),
    "bf16": (1, 2),
    "q8_0": (32, 34),
    "q4_0": (32, 18),
    "q4_1": (32, 20),
    "iq4_nl": (32, 18),
    "q5_0": (32, 22),
    "q5_1": (32, 24),
}


def _per_layer(
    value: int | list[int] | None, n_layer: int, default: list[int] | None = None
) -> list[int]:
    if isinstance(value, list):
        if len(value) < n_layer:
            raise ModelError(f"per-layer head count has {len(value)} entries for {n_layer} layers")
        return [int(v) for v in value[:n_layer]]
    if value is None:
        if default is None:
            raise ModelError("GGUF header lacks attention.head_count")
        return default
    return [int(value)] * n_layer


def _swa_layers(info: GGUFInfo, n_layer: int, notes: list[str]) -> list[bool]:
    """Which layers use the sliding window, the way llama.cpp decides it."""
    if not info.sliding_window:
        return [False] * n_layer
    pattern = info.sliding_window_pattern
    if isinstance(pattern, list) and len(pattern) >= n_layer:
        return [bool(v) for v in pattern[:n_layer]]
    dense_first = False
    if isinstance(pattern, int) and not isinstance(pattern, bool):
        period = pattern
    elif info.architecture in _SWA_PERIODS:
        period, dense_first = _SWA_PERIODS[info.architecture or ""]
    else:
        notes.append(
            f"sliding window {info.sliding_window} without a known layer pattern for "
            f"architecture {info.architecture!r}: every layer counted at full context"
        )
        return [False] * n_layer
    if period == 0:
        return [True] * n_layer
    if dense_first:
        return [il % period != 0 for il in range(n_layer)]
    return [il % period < period - 1 for il in range(n_layer)]


def _feed_forward(info: GGUFInfo) -> int:
    value = info.metadata.get(f"{info.architecture}.feed_forward_length")
    if isinstance(value, list):
        value = max((int(v) for v in value), default=0)
    return int(value) if isinstance(value, int) else 4 * (info.embedding_length or 0)


def _pad(value: int, multiple: int) -> int:
    return (value + multiple - 1) // multiple * multiple
