"""One comparison a gate step made, whichever module made it.

The gate (lifecycle.gate) and the modules that judge a part of a run for it (the serving SLA
in lifecycle.latency, retrieval metrics in lifecycle.retrieval, vector drift in
lifecycle.vectors) all return these, so none of them imports the gate to build one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Check:
    """One comparison the gate made; ``status`` is ``pass``, ``fail`` or ``skip``."""

    name: str
    variant: str
    status: str
    message: str
    suite: str | None = None
    mode: str | None = None
    baseline: float | None = None
    current: float | None = None
    threshold: float | None = None
    cause: str | None = None  # "model", "golden set", "environment" when known

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
