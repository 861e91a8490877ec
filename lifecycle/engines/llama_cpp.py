"""The default engine: llama-cpp-python in-process.

The model is loaded once per run. Prompts are tokenized here (special tokens parsed, BOS added
the way the GGUF asks) and passed as token lists, so llama-cpp-python's prefix matching keeps
the evaluated system prompt and few-shot turns in the KV cache between cases. Timings come
from llama.cpp's own perf counters (``llama_perf_context``), reset before every generation.

JSON-schema grammars are built explicitly: the schema is converted to GBNF and compiled by
llama.cpp before any generation. llama-cpp-python's ``response_format`` path would silently
fall back to plain JSON when a schema cannot be compiled; here that is an error.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import llama_cpp
from llama_cpp import Llama, LlamaGrammar
from llama_cpp.llama_grammar import json_schema_to_gbnf

from lifecycle.engines.base import (
    EngineInfo,
    Generation,
    GenerationRequest,
    LoadOptions,
)
from lifecycle.errors import EngineError, GoldenSetError


class LlamaCppEngine:
    """Factory for in-process llama.cpp models."""

    name = "llama-cpp"

    def info(self) -> EngineInfo:
        system_info = llama_cpp.llama_print_system_info()
        text = system_info.decode(errors="replace") if isinstance(system_info, bytes) else ""
        return EngineInfo(
            name=self.name,
            version=f"llama-cpp-python {llama_cpp.__version__}",
            details={
                "llama_cpp_python": llama_cpp.__version__,
                "system_info": text.strip(),
                "gpu_offload": bool(llama_cpp.llama_supports_gpu_offload()),
            },
        )

    def load(self, model_path: Path, options: LoadOptions) -> LlamaCppModel:
        return LlamaCppModel(model_path, options)


class LlamaCppModel:
    """A GGUF loaded into one llama.cpp context."""

    def __init__(self, model_path: Path, options: LoadOptions) -> None:
        self.options = options
        threads = options.n_threads or _physical_cores()
        start = time.perf_counter()
        try:
            with _quiet_stderr():
                self._llm = Llama(
                    model_path=str(model_path),
                    n_ctx=options.n_ctx,
                    n_batch=options.n_batch,
                    n_threads=threads,
                    n_threads_batch=threads,
                    n_gpu_layers=options.n_gpu_layers,
                    seed=options.seed,
                    use_mmap=options.use_mmap,
                    verbose=False,
                )
        except (ValueError, RuntimeError, OSError) as exc:
            raise EngineError(f"llama.cpp could not load the model: {exc}", path=model_path) from None
        self.load_ms = (time.perf_counter() - start) * 1000.0
        self.n_threads = threads
        self._grammars: dict[str, LlamaGrammar] = {}
        self._bos = self._llm.token_bos()

    def tokenize(self, text: str) -> list[int]:
        """Tokens for a rendered prompt: special tokens parsed, BOS added as the GGUF asks."""
        tokens = self._llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)
        # A template that writes the BOS text itself would otherwise give two BOS tokens.
        if len(tokens) >= 2 and tokens[0] == tokens[1] == self._bos:
            tokens = tokens[1:]
        return tokens

    def check_schema(self, schema: Mapping[str, Any]) -> None:
        """Compile ``schema`` to a llama.cpp grammar now; raise if llama.cpp rejects it."""
        self._grammar_for(schema)

    def generate(self, request: GenerationRequest) -> Generation:
        grammar = self._grammar_for(request.json_schema) if request.json_schema else None
        tokens = self.tokenize(request.prompt)
        if len(tokens) + request.max_tokens > self.options.n_ctx:
            raise EngineError(
                f"prompt of {len(tokens)} tokens + max_tokens {request.max_tokens} exceeds "
                f"num_ctx {self.options.n_ctx}"
            )
        ctx = self._llm._ctx.ctx
        llama_cpp.llama_perf_context_reset(ctx)
        start = time.perf_counter()
        try:
            result: Any = self._llm.create_completion(
                prompt=tokens,
                max_tokens=request.max_tokens,
                temperature=request.temperature,
                top_k=request.top_k,
                top_p=request.top_p,
                min_p=request.min_p,
                repeat_penalty=request.repeat_penalty,
                stop=list(request.stop),
                seed=request.seed,
                grammar=grammar,
            )
        except (ValueError, RuntimeError) as exc:
            raise EngineError(f"generation failed: {exc}") from None
        latency_ms = (time.perf_counter() - start) * 1000.0
        perf = llama_cpp.llama_perf_context(ctx)
        choice = result["choices"][0]
        usage = result["usage"]
        return Generation(
            text=choice["text"],
            prompt_tokens=int(usage["prompt_tokens"]),
            completion_tokens=int(usage["completion_tokens"]),
            prompt_eval_tokens=int(perf.n_p_eval),
            prompt_ms=float(perf.t_p_eval_ms),
            eval_tokens=int(perf.n_eval),
            generation_ms=float(perf.t_eval_ms),
            latency_ms=latency_ms,
            finish_reason=str(choice.get("finish_reason") or "stop"),
        )

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._llm.close()

    def _grammar_for(self, schema: Mapping[str, Any]) -> LlamaGrammar:
        key = json.dumps(schema, sort_keys=True)
        cached = self._grammars.get(key)
        if cached is not None:
            return cached
        try:
            gbnf = json_schema_to_gbnf(key)
        except Exception as exc:  # the converter raises bare Exceptions on unsupported schemas
            raise GoldenSetError(f"JSON Schema cannot be compiled to a grammar: {exc}") from None
        # llama-cpp-python only parses the grammar lazily inside the sampler, where a failure
        # yields a NULL sampler; compile it here so a bad grammar is an error up front.
        vocab = self._llm._model.vocab
        with _quiet_stderr():
            sampler = llama_cpp.llama_sampler_init_grammar(vocab, gbnf.encode(), b"root")
        if not sampler:
            raise GoldenSetError("llama.cpp rejected the grammar compiled from the JSON Schema")
        llama_cpp.llama_sampler_free(sampler)
        grammar = LlamaGrammar.from_string(gbnf, verbose=False)
        self._grammars[key] = grammar
        return grammar


def _physical_cores() -> int:
    try:
        import psutil

        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:
        return os.cpu_count() or 1


@contextlib.contextmanager
def _quiet_stderr() -> Any:
    """Silence llama.cpp's C-level logging on fd 2 unless LIFECYCLE_DEBUG is set."""
    if os.environ.get("LIFECYCLE_DEBUG") or platform.system() == "Windows":
        yield
        return
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
