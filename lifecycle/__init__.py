"""lifecycle: make a local-LLM model update a reviewed, tested, pinned change.

The Python API (:mod:`lifecycle.api`), importable from here without loading any engine::

    import lifecycle

    workspace = lifecycle.load_workspace("examples/harbor")
    record = lifecycle.evaluate(workspace, parallel=4)
    verdict = lifecycle.judge(workspace, record)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["GateResult", "RunRecord", "Workspace", "evaluate", "judge", "load_workspace"]

if TYPE_CHECKING:
    from lifecycle.api import evaluate, judge, load_workspace
    from lifecycle.config import Workspace
    from lifecycle.gate import GateResult
    from lifecycle.results import RunRecord

# name -> module: imported on first use, so `import lifecycle` (and the CLI's start) stays cheap.
# No name here may be a submodule's (lifecycle.gate, ...): importing that module sets it on the
# package, in place of the name (tests/test_plugins.py checks).
_LAZY = {
    "load_workspace": "lifecycle.api",
    "evaluate": "lifecycle.api",
    "judge": "lifecycle.api",
    "Workspace": "lifecycle.config",
    "GateResult": "lifecycle.gate",
    "RunRecord": "lifecycle.results",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lifecycle' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
