"""The header-only memory estimator against what llama.cpp itself allocates.

The source of truth is llama.cpp's own load log (the KV and compute buffer sizes it prints,
captured by the engine's ``load_measured``), for a tiny llama and a tiny gemma3 whose
sliding-window layers get their own cache.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

try:  # the tiny-model writer is moving into the package (lifecycle doctor's canary uses it)
    from lifecycle.tinymodel import _vocabulary
except ImportError:  # pragma: no cover - before that move
    from tinymodel import _vocabulary  # type: ignore[attr-defined,no-redef]

from lifecycle.engines import LoadOptions
from lifecycle.engines.devices import buffer_placement
from lifecycle.engines.llama_cpp import LlamaCppEngine
from lifecycle.errors import UsageError
from lifecycle.estimate import estimate_file, estimate_memory
from lifecycle.gguf import read_gguf

# llama.cpp logs buffer sizes in MiB with two decimals: each buffer is known to +-0.005 MiB.
LOG_PRECISION = 0.005 * 1024 * 1024


def write_tiny_gemma3(path: Path, *, n_layer: int = 7, window: int = 64) -> Path:
    """A random-weight gemma3 GGUF: 2 heads, 1 KV head of dim 32, sliding window on 5 of 6."""
    n_embd, n_head, n_head_kv, head_dim, n_ff = 64, 2, 1, 32, 128
    tokens, scores, types = _vocabulary()
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(path), "gemma3")
    w.add_name("tiny-gemma3")
    w.add_context_length(4096)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(10000.0)
    w.add_sliding_window(window)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)

    def weight(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.05).astype(np.float32)

    def ones(n: int) -> np.ndarray:
        return np.ones(n, dtype=np.float32)

    w.add_tensor("token_embd.weight", weight(len(tokens), n_embd))
    for i in range(n_layer):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", ones(n_embd))
        w.add_tensor(p + "attn_q.weight", weight(n_head * head_dim, n_embd))
        w.add_tensor(p + "attn_k.weight", weight(n_head_kv * head_dim, n_embd))
        w.add_tensor(p + "attn_v.weight", weight(n_head_kv * head_dim, n_embd))
        w.add_tensor(p + "attn_q_norm.weight", ones(head_dim))
        w.add_tensor(p + "attn_k_norm.weight", ones(head_dim))
        w.add_tensor(p + "attn_output.weight", weight(n_embd, n_head * head_dim))
        w.add_tensor(p + "post_attention_norm.weight", ones(n_embd))
        w.add_tensor(p + "ffn_norm.weight", ones(n_embd))
        w.add_tensor(p + "ffn_gate.weight", weight(n_ff, n_embd))
        w.add_tensor(p + "ffn_up.weight", weight(n_ff, n_embd))
        w.add_tensor(p + "ffn_down.weight", weight(n_embd, n_ff))
        w.add_tensor(p + "post_ffw_norm.weight", ones(n_embd))
    w.add_tensor("output_norm.weight", ones(n_embd))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def tiny_gemma3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gemma3(tmp_path_factory.mktemp("gemma3") / "tiny-gemma3.gguf")


def measured(path: Path, n_ctx: int, n_batch: int = 512):  # type: ignore[no-untyped-def]
    model = LlamaCppEngine().load_measured(
        path, LoadOptions(n_ctx=n_ctx, n_threads=1, n_batch=n_batch)
    )
    try:
        buffers = model.buffer_bytes()
        assert buffers is not None
        return buffers
    finally:
        model.close()


@pytest.mark.parametrize("n_ctx", [256, 1000, 4096])
def test_kv_cache_matches_llama_cpp_for_llama(tiny_model: Path, n_ctx: int) -> None:
    estimate = estimate_file(tiny_model, n_ctx)
    buffers = measured(tiny_model, n_ctx)
    assert buffers.kv_cells == (estimate.n_ctx_padded,)
    assert abs(estimate.kv_cache_bytes - buffers.kv_cache_bytes) <= LOG_PRECISION
    # 2 x layers x ctx x kv_heads x head_dim x 2 bytes (f16), ctx padded to 256.
    assert estimate.kv_cache_bytes == 2 * 2 * estimate.n_ctx_padded * 2 * 64 * 2
    assert buffers.type_k == buffers.type_v == "f16"


@pytest.mark.parametrize(("n_ctx", "n_batch"), [(512, 512), (2048, 512), (2048, 128)])
def test_compute_buffer_close_to_llama_cpp(tiny_model: Path, n_ctx: int, n_batch: int) -> None:
    estimate = estimate_file(tiny_model, n_ctx, n_batch=n_batch)
    buffers = measured(tiny_model, n_ctx, n_batch)
    # The estimate models the CPU backend's compute buffer: compare it with the host one (on a
    # CUDA build llama.cpp may reserve a second, GPU compute buffer even at n_gpu_layers 0).
    host_compute = buffer_placement(buffers.devices)["host_bytes"]["compute"]
    assert estimate.compute_bytes == pytest.approx(host_compute, rel=0.05)
    allocated = estimate.weights_bytes + buffers.kv_cache_bytes + host_compute
    assert estimate.total_bytes == pytest.approx(allocated, rel=0.05)


@pytest.mark.parametrize("n_ctx", [256, 3000])
def test_sliding_window_layers_follow_llama_cpp(tiny_gemma3: Path, n_ctx: int) -> None:
    estimate = estimate_file(tiny_gemma3, n_ctx)
    # gemma3's built-in pattern: every sixth layer is full attention -> 7 layers = 6 SWA + 1.
    assert (estimate.layers_swa, estimate.layers_full) == (6, 1)
    buffers = measured(tiny_gemma3, n_ctx)
    assert len(buffers.kv_cells) == 2  # llama.cpp keeps a full and a sliding-window cache
    assert abs(estimate.kv_cache_bytes - buffers.kv_cache_bytes) <= 2 * LOG_PRECISION


def test_sliding_window_cache_is_smaller_without_swa_full(tiny_gemma3: Path) -> None:
    info = read_gguf(tiny_gemma3)
    full = estimate_memory(info, 4096, swa_full=True)
    windowed = estimate_memory(info, 4096, swa_full=False)
    per_cell = 1 * (32 + 32) * 2  # one KV head, K and V of dim 32, f16
    assert full.kv_cache_bytes == 7 * 4096 * per_cell
    # SWA layers hold pad(window + ubatch, 256) = 768 cells; the full layer all 4096.
    assert windowed.swa_cells == 768
    assert windowed.kv_cache_bytes == (4096 + 6 * 768) * per_cell
    assert windowed.kv_bytes_per_token == per_cell


def test_quantised_cache_types_count_block_overhead(tiny_model: Path) -> None:
    info = read_gguf(tiny_model)
    f16 = estimate_memory(info, 2048)
    q8 = estimate_memory(info, 2048, type_k="q8_0", type_v="q8_0")
    q4k = estimate_memory(info, 2048, type_k="q8_0", type_v="q4_0")
    assert q8.kv_cache_bytes == f16.kv_cache_bytes * 34 // 64  # 34 bytes per 32 elements
    assert q4k.kv_cache_bytes == 2 * 2048 * 2 * 64 * (34 + 18) // 32


def test_bad_input_is_a_usage_error(tiny_model: Path) -> None:
    info = read_gguf(tiny_model)
    with pytest.raises(UsageError, match="positive"):
        estimate_memory(info, 0)
    with pytest.raises(UsageError, match="cache type"):
        estimate_memory(info, 512, type_k="q3_k")


def test_context_above_trained_length_is_noted(tiny_model: Path) -> None:
    estimate = estimate_file(tiny_model, 8192)
    assert estimate.exceeds_trained_context
    assert "trained context 2048" in estimate.notes[0]
    assert estimate.to_dict()["exceeds_trained_context"] is True
