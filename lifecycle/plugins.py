"""Engines and matchers from other packages, found through entry points.

A package adds an engine (a vLLM deployment, a company gateway) or a matcher by declaring an
entry point in its own ``pyproject.toml``, as pytest and llm plugins do:

    [project.entry-points."lifecycle.engines"]
    my-gateway = "my_package.engine:GatewayEngine"      # an Engine factory (lifecycle.engines)

    [project.entry-points."lifecycle.matchers"]
    lowercase = "my_package.matchers:lowercase"         # check(actual, expected, options)

An engine is named like a built-in (``--engine my-gateway``, ``[engine] name``). A matcher is
named in a suite's ``[match.FIELD]`` (``matcher = "lowercase"``, any other keys are its
options) and is called as ``check(actual, expected, options)``, returning None when the
output is acceptable or a short reason when not. Built-in names cannot be replaced.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import cache
from importlib.metadata import EntryPoint, entry_points
from typing import Any

ENGINE_GROUP = "lifecycle.engines"
MATCHER_GROUP = "lifecycle.matchers"

# check(actual, expected, options) -> None when acceptable, else a short reason
MatcherCheck = Callable[[Any, Any, Mapping[str, Any]], "str | None"]


@cache
def _declared(group: str) -> dict[str, EntryPoint]:
    """The entry points of ``group`` installed in this environment, by name (read once)."""
    return {ep.name: ep for ep in entry_points(group=group)}


def engine_names() -> list[str]:
    return sorted(_declared(ENGINE_GROUP))


def engine_target(name: str) -> str | None:
    """``module:attr`` of the engine plugin named ``name``, or None."""
    ep = _declared(ENGINE_GROUP).get(name)
    return ep.value if ep is not None else None


def matcher_names() -> list[str]:
    return sorted(_declared(MATCHER_GROUP))


def load_matcher(name: str) -> MatcherCheck | None:
    """The check function of the matcher plugin named ``name``, or None when none is."""
    ep = _declared(MATCHER_GROUP).get(name)
    if ep is None:
        return None
    check = ep.load()
    if not callable(check):
        raise TypeError(f"matcher plugin {name!r} ({ep.value}) is not callable")
    return check


def forget() -> None:
    """Read the entry points again (after installing a plugin in this process: tests)."""
    _declared.cache_clear()
