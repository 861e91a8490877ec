"""llama.cpp in embedding mode: pooled vectors for retrieval suites (lifecycle.retrieval).

The pooling (how a text's token states become one vector) is what makes a GGUF an embedding
model, and llama.cpp reads it from ``<arch>.pooling_type`` in the metadata. A Modelfile may
override it with ``PARAMETER pooling mean|cls|last``. A model that names neither is refused:
llama.cpp would otherwise return per-token states (pooling "none"), and silently averaging
them would pin vectors nobody chose.

Vectors come back as llama.cpp computes them (not normalised); the caller L2-normalises.
Texts are decoded many at a time (llama-cpp-python packs up to ``n_batch`` tokens of distinct
sequences into one decode), so a corpus costs a few decodes, not one per text.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from llama_cpp import Llama

from lifecycle.crashguard import note
from lifecycle.engines.base import LoadOptions
from lifecycle.errors import EngineError, ModelError
from lifecycle.fsutil import quiet_stderr
from lifecycle.gguf import read_gguf
from lifecycle.hostinfo import physical_cores

# llama.cpp's enum llama_pooling_type, by the names of its --pooling flag.
POOLING_TYPES = {"none": 0, "mean": 1, "cls": 2, "last": 3, "rank": 4}
# What a retrieval suite can use: one vector per text ("none" is per token, "rank" a score).
USABLE_POOLING = ("mean", "cls", "last")


def model_pooling(model_path: Path) -> str | None:
    """The pooling the GGUF's metadata names (``<arch>.pooling_type``); None when absent."""
    info = read_gguf(model_path)
    value = info.metadata.get(f"{info.architecture}.pooling_type")
    if not isinstance(value, int):
        return None
    names = {number: name for name, number in POOLING_TYPES.items()}
    return names.get(value, f"unknown ({value})")


def resolve_pooling(model_path: Path, parameter: str | None) -> str:
    """The pooling to load with: the Modelfile's PARAMETER pooling, else the GGUF's own.

    Raises ModelError naming the file when neither gives one vector per text.
    """
    if parameter is not None:
        return parameter
    found = model_pooling(model_path)
    if found is None:
        raise ModelError(
            "the GGUF names no pooling type (no pooling_type in its metadata) and the "
            "Modelfile sets no PARAMETER pooling: say how token states become one vector "
            f"(PARAMETER pooling {'|'.join(USABLE_POOLING)})",
            path=model_path,
        )
    if found not in USABLE_POOLING:
        raise ModelError(
            f"the GGUF's pooling type is {found}, which gives no single vector per text; "
            f"set PARAMETER pooling {'|'.join(USABLE_POOLING)} in the Modelfile",
            path=model_path,
        )
    return found


class LlamaCppEmbedder:
    """A GGUF loaded into a llama.cpp context with embeddings on and a fixed pooling."""

    normalised = False

    def __init__(self, model_path: Path, options: LoadOptions, pooling: str | None) -> None:
        self.pooling = resolve_pooling(model_path, pooling)
        threads = options.n_threads or physical_cores()
        start = time.perf_counter()
        note(phase="load")
        # One decode holds n_batch tokens; a text longer than that cannot be embedded whole.
        self.max_tokens = min(options.n_ctx, options.n_batch)
        try:
            with quiet_stderr():
                self._llm = Llama(
                    model_path=str(model_path),
                    embedding=True,
                    pooling_type=POOLING_TYPES[self.pooling],
                    n_ctx=options.n_ctx,
                    n_batch=self.max_tokens,
                    n_ubatch=self.max_tokens,
                    n_threads=threads,
                    n_threads_batch=threads,
                    n_gpu_layers=options.n_gpu_layers,
                    seed=options.seed,
                    use_mmap=options.use_mmap,
                    verbose=False,
                    # As the generation engine: a CPU-only load keeps the KV cache and
                    # batched operations off any GPU too (llama_cpp.cpu_only_context).
                    offload_kqv=options.n_gpu_layers > 0,
                    op_offload=options.n_gpu_layers > 0,
                )
        except (ValueError, RuntimeError, OSError) as exc:
            raise EngineError(
                f"llama.cpp could not load the model for embeddings: {exc}", path=model_path
            ) from None
        self.load_ms = (time.perf_counter() - start) * 1000.0
        self.n_threads = threads
        self.dimension = int(self._llm.n_embd())

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        for index, text in enumerate(texts):
            n = len(self._llm.tokenize(text.encode("utf-8")))
            if n > self.max_tokens:
                raise EngineError(
                    f"text {index + 1} has {n} tokens, more than one decode holds "
                    f"({self.max_tokens}: num_ctx and num_batch); it would be truncated"
                )
        note(phase="embedding")
        try:
            with quiet_stderr():
                vectors = self._llm.embed(list(texts), normalize=False, truncate=False)
        except (ValueError, RuntimeError) as exc:
            raise EngineError(f"llama.cpp could not embed: {exc}") from None
        out = [[float(x) for x in vector] for vector in vectors]
        for vector in out:
            if vector and isinstance(vector[0], list):  # per-token states: pooling "none"
                raise EngineError("llama.cpp returned per-token states, not pooled vectors")
        return out

    def close(self) -> None:
        llm = self.__dict__.pop("_llm", None)
        if llm is not None:
            llm.close()
