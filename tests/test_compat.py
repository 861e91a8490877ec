"""lifecycle/engines/compat.py: every private llama-cpp-python API the engine relies on.

These fail, naming the attribute, when an upgrade of llama-cpp-python moves one, before any
eval would crash on it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from llama_cpp import Llama
from llama_cpp import llama_cpp as low_level

from lifecycle.engines import compat


@pytest.fixture(scope="module")
def llm(tiny_model: Path) -> Iterator[Llama]:
    model = Llama(str(tiny_model), n_ctx=256, n_threads=1, verbose=False)
    yield model
    model.close()


def test_the_private_handles_are_where_the_engine_reads_them(llm: Llama) -> None:
    assert compat.context_ptr(llm), "Llama._ctx.ctx (the llama_context pointer) moved"
    assert compat.model_ptr(llm), "Llama._model.model (the llama_model pointer) moved"
    assert compat.vocab_ptr(llm), "Llama._model.vocab (the llama_vocab pointer) moved"
    internal = compat.context(llm)
    for method in ("kv_cache_seq_rm", "kv_cache_clear"):
        assert callable(getattr(internal, method, None)), f"Llama._ctx.{method} moved"
    assert low_level.llama_n_ctx(compat.context_ptr(llm)) == 256
    assert low_level.llama_vocab_n_tokens(compat.vocab_ptr(llm)) == llm.n_vocab()
    for method in ("add_penalties", "add_greedy", "sample"):
        assert callable(getattr(compat.LlamaSampler, method, None)), f"LlamaSampler.{method}"
    batch = compat.LlamaBatch(n_tokens=4, embd=0, n_seq_max=1, verbose=False)
    assert batch.batch is not None


def test_default_params_override_one_load_and_restore(llm: Llama) -> None:
    for name, fields in (
        ("llama_model_default_params", ("use_extra_bufts", "progress_callback")),
        ("llama_context_default_params", ("n_seq_max", "kv_unified")),
    ):
        original = getattr(low_level, name)
        for field in fields:
            assert hasattr(original(), field), f"{name}().{field} moved"
    before = low_level.llama_context_default_params().n_seq_max

    def adjust(params: object) -> None:
        params.n_seq_max = 5  # type: ignore[attr-defined]

    with compat.default_params("llama_context_default_params", adjust):
        assert low_level.llama_context_default_params().n_seq_max == 5
        # Another thread cannot replace the defaults meanwhile: the lock is held.
        taken: list[bool] = []
        probe = threading.Thread(target=lambda: taken.append(compat._DEFAULTS_LOCK.acquire(False)))
        probe.start()
        probe.join()
        assert taken == [False]
    assert low_level.llama_context_default_params().n_seq_max == before
    with (
        pytest.raises(ValueError, match="not a default-parameters function"),
        compat.default_params("llama_backend_init", adjust),
    ):
        pass
