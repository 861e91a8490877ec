"""Inference engines, looked up by name; only the chosen engine's module is imported."""

from __future__ import annotations

import difflib
import importlib

from lifecycle.engines.base import (
    Engine,
    EngineInfo,
    Generation,
    GenerationRequest,
    LoadedModel,
    LoadOptions,
)
from lifecycle.errors import UsageError

__all__ = [
    "ENGINES",
    "Engine",
    "EngineInfo",
    "Generation",
    "GenerationRequest",
    "LoadOptions",
    "LoadedModel",
    "get_engine",
]

# name -> "module:factory"; imported lazily so `--help` and other engines stay fast.
ENGINES = {
    "llama-cpp": "lifecycle.engines.llama_cpp:LlamaCppEngine",
}


def get_engine(name: str) -> Engine:
    """Instantiate the engine registered as ``name``; unknown names suggest the closest."""
    target = ENGINES.get(name)
    if target is None:
        close = difflib.get_close_matches(name, ENGINES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UsageError(f"unknown engine {name!r}{hint}; known: {', '.join(ENGINES)}")
    module_name, attr = target.split(":")
    factory = getattr(importlib.import_module(module_name), attr)
    engine: Engine = factory()
    return engine
