"""Every use of llama-cpp-python beyond its public API, in one place.

``Llama`` gives no handle to the llama.cpp context, model or vocabulary it wraps, has no public
sampler or batch objects, and takes no argument for some model and context parameters (extra
buffer types, the load progress callback, sequence slots, a unified KV cache). The engine
needs all of them, so it reaches into llama-cpp-python here and nowhere else: each accessor
names the private attribute it reads, and ``tests/test_compat.py`` fails loudly, naming it,
when an upgrade of llama-cpp-python moves one.

The parameter overrides work by replacing ``llama_cpp.llama_cpp.llama_*_default_params`` (the
functions ``Llama`` fills its parameters from) for the duration of a load. That is
process-wide, so :func:`default_params` holds one lock for as long as the replacement stands:
two loads in two threads cannot see each other's overrides.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

from lifecycle.engines import cpuvariants
from lifecycle.fsutil import quiet_stderr

# A build with every CPU variant loads none until told which (see cpuvariants); the CLI has
# chosen already, a library user gets the best-scoring safe one.
cpuvariants.activate()

from llama_cpp import Llama  # noqa: E402
from llama_cpp import llama_cpp as low_level  # noqa: E402
from llama_cpp._internals import LlamaBatch, LlamaSampler  # noqa: E402

# Load the backends now (Llama() would at its first load): until then a build with dynamic
# backends has none registered, and llama_print_system_info() says nothing of the CPU.
with quiet_stderr():  # "load_backend: loaded CPU backend from ..."
    low_level.llama_backend_init()

__all__ = [
    "LlamaBatch",
    "LlamaSampler",
    "context",
    "context_ptr",
    "default_params",
    "model_ptr",
    "vocab_ptr",
]

# Held while llama_cpp's default-parameter functions are replaced (re-entrant: a load replaces
# the model's and the context's together).
_DEFAULTS_LOCK = threading.RLock()
DEFAULT_PARAM_FUNCTIONS = ("llama_model_default_params", "llama_context_default_params")


def context(llm: Llama) -> Any:
    """llama-cpp-python's context wrapper (``Llama._ctx``): ``kv_cache_seq_rm``, samplers."""
    return llm._ctx


def context_ptr(llm: Llama) -> Any:
    """The ``llama_context *`` (``Llama._ctx.ctx``), for the low-level ``llama_*`` calls."""
    return llm._ctx.ctx


def model_ptr(llm: Llama) -> Any:
    """The ``llama_model *`` (``Llama._model.model``)."""
    return llm._model.model


def vocab_ptr(llm: Llama) -> Any:
    """The ``llama_vocab *`` (``Llama._model.vocab``): tokenizers, grammars, llguidance."""
    return llm._model.vocab


@contextlib.contextmanager
def default_params(name: str, adjust: Callable[[Any], None]) -> Iterator[None]:
    """While the block runs, ``llama_cpp.llama_cpp.<name>()`` (one of
    :data:`DEFAULT_PARAM_FUNCTIONS`) returns llama.cpp's defaults changed by ``adjust``, so a
    ``Llama`` created inside the block is loaded with them. The original is restored after."""
    if name not in DEFAULT_PARAM_FUNCTIONS:
        raise ValueError(f"not a default-parameters function: {name}")
    with _DEFAULTS_LOCK:
        original = getattr(low_level, name)

        def adjusted() -> Any:
            params = original()
            adjust(params)
            return params

        setattr(low_level, name, adjusted)
        try:
            yield
        finally:
            setattr(low_level, name, original)
