"""lifecycle: make a local-LLM model update a reviewed, tested, pinned change.

The Python API (:mod:`lifecycle.api`), importable from here without loading any engine::

    import lifecycle

    workspace = lifecycle.load_workspace("examples/harbor")
    record = lifecycle.evaluate(workspace, parallel=4)
    verdict = lifecycle.gate(workspace, record)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["GateResult", "RunRecord", "Workspace", "evaluate", "gate", "load_workspace"]

if TYPE_CHECKING:
    from lifecycle.api import evaluate, gate, load_workspace
    from lifecycle.config import Workspace
    from lifecycle.gate import GateResult
    from lifecycle.results import RunRecord

# name -> module: imported on first use, so `import lifecycle` (and the CLI's start) stays cheap.
_LAZY = {
    "load_workspace": "lifecycle.api",
    "evaluate": "lifecycle.api",
    "gate": "lifecycle.api",
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
