"""Inference engines, looked up by name; only the chosen engine's module is imported."""

from __future__ import annotations

import difflib
import importlib
import inspect
from typing import Any

from lifecycle.engines.base import (
    BatchedModel,
    CaseTimeout,
    Engine,
    EngineCrashed,
    EngineInfo,
    Generation,
    GenerationRequest,
    LoadedModel,
    LoadOptions,
    ThreadedModel,
    generate_many,
)
from lifecycle.errors import UsageError

__all__ = [
    "ENGINES",
    "BatchedModel",
    "CaseTimeout",
    "Engine",
    "EngineCrashed",
    "EngineInfo",
    "Generation",
    "GenerationRequest",
    "LoadOptions",
    "LoadedModel",
    "ThreadedModel",
    "generate_many",
    "get_engine",
    "preload",
]

# name -> "module:factory"; imported lazily so `--help` and other engines stay fast.
ENGINES = {
    "llama-cpp": "lifecycle.engines.llama_cpp:LlamaCppEngine",
    "llama-cpp-isolated": "lifecycle.engines.worker:IsolatedLlamaCppEngine",
    "ollama": "lifecycle.engines.ollama:OllamaEngine",
    "openai": "lifecycle.engines.openai:OpenAIEngine",
}


def preload() -> None:
    """Import llama_cpp before numpy and friends (the CLI does, first thing, for the commands
    that run the engine).

    Some llama-cpp-python wheels are linked against their compiler's own libstdc++; when the
    system one was loaded first (by numpy or pandas), the model load can segfault. A missing
    or broken engine is not an error here: the command that needs it reports it properly.
    """
    import contextlib
    import os
    import sys

    from lifecycle import envnames
    from lifecycle.engines import cpuvariants

    # On a build with every CPU variant, pick (and, once per build and CPU, verify) this
    # machine's kernels before llama.cpp loads any.
    canary = not os.environ.get(envnames.ENV_NO_CANARY)
    with contextlib.suppress(Exception):
        cpuvariants.activate(canary=canary, say=lambda m: print(m, file=sys.stderr))
    with contextlib.suppress(Exception):
        import llama_cpp  # noqa: F401


def get_engine(name: str, **settings: Any) -> Engine:
    """Instantiate the engine registered as ``name``; unknown names suggest the closest.

    ``settings`` go to the engine's constructor (e.g. ``base_url`` for openai, ``host`` for
    ollama); None values are dropped, so callers may pass every option they have, and a
    setting the engine does not take is a usage error (``--base-url`` with llama-cpp).
    Engines other packages declare (entry point group ``lifecycle.engines``) come after the
    built-in ones, which they cannot replace.
    """
    from lifecycle import plugins

    target = ENGINES.get(name) or plugins.engine_target(name)
    if target is None:
        known = [*ENGINES, *plugins.engine_names()]
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UsageError(f"unknown engine {name!r}{hint}; known: {', '.join(known)}")
    module_name, attr = target.split(":")
    factory = getattr(importlib.import_module(module_name), attr)
    given = {key: value for key, value in settings.items() if value is not None}
    accepted = inspect.signature(factory).parameters
    for key in given:
        if key not in accepted:
            raise UsageError(f"engine {name!r} takes no setting {key!r}")
    engine: Engine = factory(**given)
    return engine
