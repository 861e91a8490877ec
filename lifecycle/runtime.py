"""The runtime a result was produced under, and what moved between two of them.

Pinning a blob's digest does not pin its answers: the engine build (llama-cpp-python's
release and the llama.cpp/ggml commit it vendors), the CPU kernels the build can use, the
backend, the KV cache element types and flash attention all change the numerics. A runtime
is a flat dict of those facts (``RUNTIME_KEYS``), read from a run environment (one variant's,
as :func:`lifecycle.baselines.variant_environment` flattens it) and pinned in ``models.lock``.
:func:`runtime_changes` says what moved, in words a reviewer reads: ``llama-cpp-python 0.3.36 →
0.3.37``, ``kv_cache_type f16 → q4_0``. A fact one side does not know (an older record, a
server engine that cannot say) is never reported as a change.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lifecycle.config import Workspace, cache_settings
from lifecycle.lockfile import LLAMA_ENGINES, LLAMA_RUNTIME_DEFAULTS, Lock, runtime_with_defaults

RUNTIME_KEYS = (
    "engine",
    "engine_version",
    "ggml_version",
    "ggml_commit",
    "backends",
    "cpu_features",
    "kv_cache_type_k",
    "kv_cache_type_v",
    "flash_attention",
    "schema_decoder",
    "free_drafting",
)
# What llama.cpp ran with before these were settings: records without the keys used these.
_CACHE_DEFAULTS = {"kv_cache_type_k": "f16", "kv_cache_type_v": "f16", "flash_attention": False}


def runtime_of(environment: Mapping[str, Any]) -> dict[str, Any]:
    """The runtime facts of one variant's environment (unknown ones left out)."""
    details = environment.get("engine_details") or {}
    out: dict[str, Any] = {
        "engine": environment.get("engine"),
        "engine_version": environment.get("engine_version"),
        "ggml_version": details.get("ggml_version"),
        "ggml_commit": details.get("ggml_commit"),
        "backends": details.get("backends"),
        "cpu_features": cpu_features(details.get("system_info")),
        # Schema mode's decoder (llguidance with forced tokens, or llama.cpp's GBNF grammar):
        # other tokenizations of the forced text, other batch shapes, other numerics.
        "schema_decoder": environment.get("schema_decoder") or details.get("schema_decoder"),
        # Free-mode prompt-lookup drafting: verify batches round differently (near ties).
        "free_drafting": environment.get("free_drafting") or details.get("free_drafting"),
    }
    for key, default in _CACHE_DEFAULTS.items():
        if key in environment:
            out[key] = environment[key]  # None: the engine could not say
        elif environment.get("engine") in LLAMA_ENGINES:
            out[key] = default
    return runtime_with_defaults({k: v for k, v in out.items() if v is not None})


def runtime_defaults(environment: Mapping[str, Any]) -> dict[str, Any]:
    """The settings a llama.cpp environment ran with before they were recorded (the KV
    cache's, and GBNF for schema mode)."""
    if environment.get("engine") not in LLAMA_ENGINES:
        return {}
    return {**_CACHE_DEFAULTS, **LLAMA_RUNTIME_DEFAULTS}


def cpu_features(system_info: Any) -> list[str] | None:
    """The CPU features a llama.cpp build uses, from ``llama_print_system_info()``
    (``CPU : SSE3 = 1 | AVX = 1 | ...``): the ones set to 1, in the order printed."""
    if not isinstance(system_info, str) or not system_info:
        return None
    found = []
    for part in system_info.replace(":", "|").split("|"):
        name, _, value = part.partition("=")
        if value.strip() == "1" and name.strip():
            found.append(name.strip())
    return found or None


def runtime_changes(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> list[str]:
    """What moved from runtime ``old`` to ``new``, one phrase per fact: ``llama-cpp-python
    0.3.36 → 0.3.37``, ``kv_cache_type f16 → q4_0``, ``cpu features -AVX512F``. Facts either
    side lacks are skipped; empty when nothing known moved."""
    a, b = runtime_with_defaults(dict(old or {})), runtime_with_defaults(dict(new or {}))

    def moved(key: str) -> bool:
        return key in a and key in b and a[key] != b[key]

    phrases = []
    if moved("engine"):
        phrases.append(f"engine {a['engine']} → {b['engine']}")
    if moved("engine_version"):
        phrases.append(_version_move(str(a["engine_version"]), str(b["engine_version"])))
    if moved("ggml_commit"):
        phrases.append(f"ggml {a['ggml_commit']} → {b['ggml_commit']}")
    elif moved("ggml_version"):
        phrases.append(f"ggml {a['ggml_version']} → {b['ggml_version']}")
    if moved("backends"):
        phrases.append(f"backend {_join(a['backends'])} → {_join(b['backends'])}")
    if moved("cpu_features"):
        lost = [f"-{f}" for f in a["cpu_features"] if f not in b["cpu_features"]]
        gained = [f"+{f}" for f in b["cpu_features"] if f not in a["cpu_features"]]
        phrases.append("cpu features " + " ".join(gained + lost))
    k, v = "kv_cache_type_k", "kv_cache_type_v"
    if all(key in a and key in b for key in (k, v)) and a[k] == a[v] and b[k] == b[v]:
        if a[k] != b[k]:
            phrases.append(f"kv_cache_type {a[k]} → {b[k]}")
    else:
        phrases += [f"{key} {a[key]} → {b[key]}" for key in (k, v) if moved(key)]
    if moved("flash_attention"):
        phrases.append(f"flash_attention {_on(a['flash_attention'])} → {_on(b['flash_attention'])}")
    if moved("schema_decoder"):
        phrases.append(f"schema decoder {a['schema_decoder']} → {b['schema_decoder']}")
    if moved("free_drafting"):
        phrases.append(f"free-mode drafting {a['free_drafting']} → {b['free_drafting']}")
    return phrases


def describe_runtime_change(
    old: Mapping[str, Any] | None, new: Mapping[str, Any] | None
) -> str | None:
    """One line for a headline: ``runtime changed: llama-cpp-python 0.3.36 → 0.3.37,
    kv_cache_type f16 → q4_0``; None when nothing known moved."""
    phrases = runtime_changes(old, new)
    return "runtime changed: " + ", ".join(phrases) if phrases else None


def environment_runtime_change(
    baseline_environment: Mapping[str, Any], current_environment: Mapping[str, Any]
) -> str | None:
    """:func:`describe_runtime_change` of two variant environments (a baseline's and one
    variant's of the current run, as :func:`lifecycle.baselines.variant_environment` gives)."""
    return describe_runtime_change(
        runtime_of(baseline_environment), runtime_of(current_environment)
    )


def lock_runtime_changes(
    workspace: Workspace, lock: Lock, engine: Any, caches: Mapping[str, dict[str, Any]]
) -> dict[str, str]:
    """Per pinned variant, how the runtime here differs from the one it was pinned under.

    ``engine`` is the engine's :class:`~lifecycle.engines.EngineInfo`; ``caches`` each
    variant's KV cache overrides (``variants.matrix_caches``). Entries pinned before the
    runtime was recorded are skipped.
    """
    out = {}
    for name, entry in sorted(lock.variants.items()):
        if not entry.runtime:
            continue
        settings = cache_settings(workspace.engine, caches.get(name, {}))
        here = runtime_of(
            {
                "engine": engine.name,
                "engine_version": engine.version,
                "engine_details": dict(engine.details),
                **(settings.to_dict() if engine.name in LLAMA_ENGINES else {}),
            }
        )
        line = describe_runtime_change(entry.runtime, here)
        if line:
            out[name] = line
    return out


def _version_move(old: str, new: str) -> str:
    """``llama-cpp-python 0.3.36 → 0.3.37`` (the shared package name said once)."""
    a, b = old.rsplit(" ", 1), new.rsplit(" ", 1)
    if len(a) == 2 and len(b) == 2 and a[0] == b[0]:
        return f"{a[0]} {a[1]} → {b[1]}"
    return f"{old} → {new}"


def _join(value: Any) -> str:
    return "+".join(map(str, value)) if isinstance(value, list) else str(value)


def _on(value: Any) -> str:
    return "on" if value else "off"
