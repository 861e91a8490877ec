"""Tiny GGUF models: a real llama-architecture file llama.cpp loads in milliseconds.

Used by the tests and by the engine canary of ``lifecycle doctor``.

Random F32 weights (seeded, so every run builds the same bytes) and a SentencePiece-style
vocabulary of byte tokens plus printable ASCII, so any text tokenizes and a grammar can spell
any JSON. The model says nothing sensible, but every code path through the real engine runs.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

# Gemma-style turn markers as control tokens, so Modelfile TEMPLATEs that use them tokenize
# to single special tokens as they do with real models.
SPECIAL_TEXT_TOKENS = ("<start_of_turn>", "<end_of_turn>")

TOKEN_NORMAL = 1
TOKEN_UNKNOWN = 2
TOKEN_CONTROL = 3
TOKEN_BYTE = 6


def write_tiny_llama(
    path: Path,
    *,
    n_embd: int = 256,
    n_layer: int = 2,
    n_head: int = 4,
    n_head_kv: int = 2,
    n_ff: int = 512,
    n_ctx: int = 2048,
    seed: int = 0,
    chat_template: str | None = None,
    name: str = "tiny-llama",
    pooling: str | None = None,
) -> Path:
    """Write a tiny llama GGUF to ``path`` and return it (about 3 MB with the defaults)."""
    tokens, scores, types = _vocabulary()
    n_vocab = len(tokens)
    rng = np.random.default_rng(seed)
    head_dim = n_embd // n_head

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(name)
    writer.add_context_length(n_ctx)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    if chat_template is not None:
        writer.add_chat_template(chat_template)
    if pooling is not None:  # "mean", "cls", "last": an embedding model (llama.pooling_type)
        writer.add_pooling_type(gguf.PoolingType[pooling.upper()])

    def weight(*shape: int, scale: float = 0.08) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    # numpy shapes are (rows, cols) = GGUF ne reversed: (out_features, in_features).
    writer.add_tensor("token_embd.weight", weight(n_vocab, n_embd, scale=1.0))
    for i in range(n_layer):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(n_embd, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.attn_q.weight", weight(n_embd, n_embd))
        writer.add_tensor(f"blk.{i}.attn_k.weight", weight(n_head_kv * head_dim, n_embd))
        writer.add_tensor(f"blk.{i}.attn_v.weight", weight(n_head_kv * head_dim, n_embd))
        writer.add_tensor(f"blk.{i}.attn_output.weight", weight(n_embd, n_embd))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", weight(n_ff, n_embd))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", weight(n_ff, n_embd))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", weight(n_embd, n_ff))
    writer.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    writer.add_tensor("output.weight", weight(n_vocab, n_embd, scale=1.0))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _vocabulary() -> tuple[list[str], list[float], list[int]]:
    tokens = ["<unk>", "<s>", "</s>"]
    types = [TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [TOKEN_BYTE] * 256
    tokens += list(SPECIAL_TEXT_TOKENS)
    types += [TOKEN_CONTROL] * len(SPECIAL_TEXT_TOKENS)
    # "▁" is SentencePiece's space; printable ASCII as normal pieces keeps detokenized text clean.
    pieces = ["▁", *[chr(c) for c in range(0x21, 0x7F)]]
    tokens += pieces
    types += [TOKEN_NORMAL] * len(pieces)
    scores = [0.0] * len(tokens)
    return tokens, scores, types
