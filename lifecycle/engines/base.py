"""The engine protocol: what the rest of the tool may ask of an inference engine.

An engine loads a model file once, then generates completions for fully rendered prompts.
Prompt rendering (templates) happens above this layer so that every engine receives the same
text; sampling parameters come from the Modelfile's PARAMETERs. Timings are the engine's own
counters where it has them (llama.cpp's perf context, Ollama's duration fields).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from lifecycle.errors import EngineError

# Every case gets a wall-clock limit; engines that can enforce one use this unless told otherwise.
DEFAULT_CASE_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class LoadOptions:
    """How to load a model: context size, threads, batch, GPU offload, seed."""

    n_ctx: int = 2048
    n_threads: int = 0  # 0: the engine's default
    n_batch: int = 512
    n_gpu_layers: int = 0
    seed: int = 42
    use_mmap: bool = True
    # Sequences decoded together in one context (continuous batching, llama-cpp only); each
    # gets its own num_ctx of KV cells. 1: one case at a time.
    n_parallel: int = 1
    # llama.cpp's extra buffer types (repacked weights, AMX). False is the fallback for CPUs
    # whose repacked kernels crash (AMX advertised inside a VM); `lifecycle doctor` decides.
    extra_bufts: bool = True
    # KV cache element types (llama.cpp's --cache-type-k/-v names) and flash attention; a
    # quantized V cache needs flash attention (config checks it before a load).
    type_k: str = "f16"
    type_v: str = "f16"
    flash_attn: bool = False
    # For engines that create the model from its recipe (ollama) or prepend its SYSTEM and
    # MESSAGE history themselves (openai): the variant's Modelfile text and a name for it.
    modelfile: str | None = None
    model_name: str | None = None


@dataclass(frozen=True)
class GenerationRequest:
    """One completion of an already rendered prompt."""

    prompt: str
    max_tokens: int
    stop: tuple[str, ...] = ()
    temperature: float = 0.0
    seed: int = 42
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    json_schema: Mapping[str, Any] | None = None  # constrain decoding to this schema
    # The case's own conversation, unrendered: engines whose server renders the prompt
    # (ollama, openai) send these (the server applies the template, SYSTEM and MESSAGE
    # history) instead of ``prompt``.
    messages: tuple[Mapping[str, str], ...] | None = None
    timeout_s: float | None = None  # wall-clock limit; None: DEFAULT_CASE_TIMEOUT_S
    # Record each generated token's log-probability (Generation.token_logprobs). Off by
    # default: computing it costs a softmax over the vocabulary at every step.
    logprobs: bool = False
    # With logprobs: only at the steps where this JSON field's value can be written
    # (confidence.value_open); NaN at the others, which saves a vocabulary pass per step.
    logprob_field: str | None = None
    # The JSON field whose value decides the verdict (a suite's routed field): its decision
    # margin is recorded apart from the whole output's (Generation.field_margin).
    margin_field: str | None = None

    def sampling(self) -> dict[str, Any]:
        """The sampler settings by their Modelfile PARAMETER names (Ollama's option names)."""
        return {
            "temperature": self.temperature,
            "seed": self.seed,
            "top_k": self.top_k,
            "top_p": self.top_p,
            "min_p": self.min_p,
            "repeat_penalty": self.repeat_penalty,
        }


@dataclass(frozen=True)
class Generation:
    """The engine's answer with its token counts and timings (milliseconds)."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    prompt_eval_tokens: int  # tokens actually evaluated: prompt minus the reused prefix
    prompt_ms: float
    eval_tokens: int  # tokens decoded one at a time during generation (llama.cpp's n_eval)
    generation_ms: float
    latency_ms: float
    finish_reason: str  # "stop" (EOS or stop sequence) or "length" (hit max_tokens)
    # With a json_schema: False when the output stopped normally yet breaks the schema, i.e. the
    # server did not enforce it; None when no schema was asked for or the engine does not check.
    schema_enforced: bool | None = None
    # With request.logprobs, on engines that can: the natural log of each generated token's
    # probability, and where each token's text starts in ``text`` (character offsets).
    # None when not asked for or the engine cannot say.
    token_logprobs: tuple[float, ...] | None = None
    token_offsets: tuple[int, ...] | None = None
    # When cases share decode steps (batched decoding): this case's share of the engine's wall
    # time (its part of each step, plus its own sampling). None: the case had the engine alone.
    work_ms: float | None = None
    # Decision margins (engines.decoding.Margins): the smallest gap between the chosen token's
    # logit and the best other allowed one over the generated tokens, the step where it
    # occurred, and the smallest over the steps writing request.margin_field's value. None:
    # the engine cannot say (no logits) or no step had an alternative.
    margin: float | None = None
    margin_step: int | None = None
    field_margin: float | None = None
    # Milliseconds from the start of this request's decoding (its admission to a slot) to its
    # first sampled token: the load test's time to first token. None: the engine cannot say.
    first_token_ms: float | None = None
    # Schema mode: how many of the completion's tokens the grammar forced (decoded without a
    # sampling step of their own; the rest were sampled). None: not schema mode, or the engine
    # cannot say.
    forced_tokens: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class EngineInfo:
    """What identifies an engine build, recorded in every run."""

    name: str
    version: str
    details: Mapping[str, Any] = field(default_factory=dict)


class CaseTimeout(EngineError):
    """A generation ran past its wall-clock limit (the engine was stopped or abandoned)."""

    def __init__(self, message: str, *, timeout_s: float) -> None:
        super().__init__(message)
        self.timeout_s = timeout_s


class EngineCrashed(EngineError):
    """The process running the model died (abort, segfault, kill); ``signal`` names it."""

    def __init__(self, message: str, *, signal: str | None, path: str | Path | None = None) -> None:
        super().__init__(message, path=path)
        self.signal = signal


class LoadedModel(Protocol):
    """A model resident in an engine, ready to generate.

    Optional capabilities are the runtime-checkable protocols below (:class:`BatchedModel`,
    :class:`ThreadedModel`, :class:`ConcurrentModel`, ...), checked with ``isinstance``.
    """

    load_ms: float

    def generate(self, request: GenerationRequest) -> Generation: ...

    def tokenize(self, text: str) -> list[int]: ...

    def check_schema(self, schema: Mapping[str, Any]) -> None:
        """Raise when the engine cannot enforce ``schema`` (never fall back silently)."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class BatchedModel(LoadedModel, Protocol):
    """A model that decodes many requests together (llama-cpp with ``n_parallel`` > 1)."""

    @property
    def parallel(self) -> int:
        """Sequences decoded together; 1 means :meth:`generate_batch` runs them in turn."""
        ...

    def generate_batch(
        self,
        requests: Sequence[GenerationRequest],
        on_result: Callable[[int, Generation | EngineError], None],
        on_live: Callable[[list[int]], None] | None = None,
        arrived: Arrived | None = None,
    ) -> None:
        """Generate every request; ``on_result(i, outcome)`` as request i finishes (any
        order); ``on_live(indices)`` before each step with the requests in flight.
        ``arrived(i)``: the ``time.perf_counter()`` at which request i arrives (None: not yet
        known); a request takes a slot only once arrived, in order (a load test's traffic)."""
        ...


@runtime_checkable
class ThreadedModel(Protocol):
    """A model that knows the CPU threads it runs on (the run records them; a server that
    cannot say records the configured value instead)."""

    n_threads: int


@runtime_checkable
class ConcurrentModel(Protocol):
    """A model whose ``generate`` may run from many threads at once (the HTTP engines set
    ``concurrent = True``); others decode one request at a time, keeping prefix reuse."""

    concurrent: bool


def runs_concurrently(model: object) -> bool:
    """Whether ``model`` takes concurrent ``generate`` calls (see :class:`ConcurrentModel`)."""
    return isinstance(model, ConcurrentModel) and model.concurrent


@runtime_checkable
class MeasuredLoadEngine(Protocol):
    """An engine whose load can also note what it allocated (bench and plan read the
    buffers from the returned model); others are measured around a plain ``load``."""

    def load_measured(self, model_path: Path, options: LoadOptions) -> LoadedModel: ...


class Engine(Protocol):
    """A named engine that loads model files."""

    name: str

    def info(self) -> EngineInfo: ...

    def load(self, model_path: Path, options: LoadOptions) -> LoadedModel: ...


@runtime_checkable
class BenchableModel(LoadedModel, Protocol):
    """A loaded model that can be measured the way llama-bench measures (optional for engines).

    ``decode_prompt`` decodes n synthetic tokens as one prompt (in n_batch batches) after what
    the KV cache holds; ``decode_tokens`` decodes n tokens one at a time. Both return an object
    with ``n_tokens``, ``wall_ns``, ``perf_ns`` (the engine's own timer) and ``perf_tokens``.
    """

    def model_info(self) -> dict[str, Any]: ...

    def buffer_bytes(self) -> Any:
        """The buffers the engine allocated at load (weights, KV, compute), or None."""
        ...

    def kv_cache_bytes(self) -> int | None: ...

    def clear(self) -> None: ...

    def truncate(self, n_keep: int) -> None: ...

    def decode_prompt(self, n_tokens: int, *, seed: int = 0) -> Any: ...

    def decode_tokens(self, n_tokens: int, *, seed: int = 0) -> Any: ...


@runtime_checkable
class ParallelBenchModel(BenchableModel, Protocol):
    """A benchable model that also runs llama-batched-bench's test (``bench --parallel``)."""

    def decode_parallel(
        self, n_prompt: int, n_gen: int, n_seq: int, *, seed: int = 0
    ) -> tuple[int, int]:
        """Prompt and generation wall times (ns) of ``n_seq`` sequences decoded together."""
        ...


@runtime_checkable
class EmbeddingModel(Protocol):
    """A model loaded to embed texts: one pooled vector per text (see lifecycle.retrieval).

    ``pooling`` names how token states become one vector ("mean", "cls", "last", or
    "server" when a server decides); ``normalised``: whether the engine already returns unit
    vectors (the caller L2-normalises either way, so cosine is a dot product).
    """

    load_ms: float
    pooling: str
    normalised: bool

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One vector per text, in order; many texts go to the engine together."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class EmbeddingEngine(Protocol):
    """An engine that can load a model for embedding (optional for engines)."""

    name: str

    def info(self) -> EngineInfo: ...

    def load_embedding(
        self, model_path: Path, options: LoadOptions, pooling: str | None
    ) -> EmbeddingModel:
        """Load for embeddings; ``pooling`` is the Modelfile's PARAMETER pooling (None: the
        model's own metadata decides, and a model that names none is an error)."""
        ...


# The perf_counter time request i arrives, None while not known yet (a load test's traffic).
Arrived = Callable[[int], "float | None"]


def wait_until_arrived(arrived: Arrived | None, index: int) -> None:
    """Block until request ``index`` has arrived (no-op without ``arrived``)."""
    while arrived is not None:
        at = arrived(index)
        now = time.perf_counter()
        if at is not None and at <= now:
            return
        time.sleep(0.001 if at is None else min(at - now, 0.01))


def generate_many(
    model: LoadedModel, requests: Sequence[GenerationRequest], *, concurrency: int = 1
) -> list[Generation | EngineError]:
    """Generate every request, up to ``concurrency`` at once; results in request order.

    Only models that run concurrently (:func:`runs_concurrently`) get parallel requests; any
    other model runs them one after another, so its KV-cache prefix reuse still works. A
    request that fails with an :class:`EngineError` (timeout, crash, server error) yields that
    error in its slot, so one bad case never loses the others' results.
    """

    def one(request: GenerationRequest) -> Generation | EngineError:
        try:
            return model.generate(request)
        except EngineError as exc:
            return exc

    if concurrency <= 1 or len(requests) <= 1 or not runs_concurrently(model):
        return [one(r) for r in requests]
    with ThreadPoolExecutor(max_workers=min(concurrency, len(requests))) as pool:
        return list(pool.map(one, requests))
