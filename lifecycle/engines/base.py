"""The engine protocol: what the rest of the tool may ask of an inference engine.

An engine loads a model file once, then generates completions for fully rendered prompts.
Prompt rendering (templates) happens above this layer so that every engine receives the same
text; sampling parameters come from the Modelfile's PARAMETERs. Timings are the engine's own
counters where it has them (llama.cpp's perf context, Ollama's duration fields).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True)
class LoadOptions:
    """How to load a model: context size, threads, batch, GPU offload, seed."""

    n_ctx: int = 2048
    n_threads: int = 0  # 0: the engine's default
    n_batch: int = 512
    n_gpu_layers: int = 0
    seed: int = 42
    use_mmap: bool = True


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class EngineInfo:
    """What identifies an engine build, recorded in every run."""

    name: str
    version: str
    details: Mapping[str, Any] = field(default_factory=dict)


class LoadedModel(Protocol):
    """A model resident in an engine, ready to generate."""

    load_ms: float

    def generate(self, request: GenerationRequest) -> Generation: ...

    def tokenize(self, text: str) -> list[int]: ...

    def check_schema(self, schema: Mapping[str, Any]) -> None:
        """Raise when the engine cannot enforce ``schema`` (never fall back silently)."""
        ...

    def close(self) -> None: ...


class Engine(Protocol):
    """A named engine that loads model files."""

    name: str

    def info(self) -> EngineInfo: ...

    def load(self, model_path: Path, options: LoadOptions) -> LoadedModel: ...


class BenchableModel(LoadedModel, Protocol):
    """A loaded model that can be measured the way llama-bench measures (optional for engines).

    ``decode_prompt`` decodes n synthetic tokens as one prompt (in n_batch batches) after what
    the KV cache holds; ``decode_tokens`` decodes n tokens one at a time. Both return an object
    with ``n_tokens``, ``wall_ns``, ``perf_ns`` (the engine's own timer) and ``perf_tokens``.
    """

    def model_info(self) -> dict[str, Any]: ...

    def kv_cache_bytes(self) -> int | None: ...

    def clear(self) -> None: ...

    def truncate(self, n_keep: int) -> None: ...

    def decode_prompt(self, n_tokens: int, *, seed: int = 0) -> Any: ...

    def decode_tokens(self, n_tokens: int, *, seed: int = 0) -> Any: ...
