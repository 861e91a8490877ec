"""The one timestamp format every record uses: UTC, whole seconds, ISO 8601 with ``Z``.

Manifests, pins, run records, bench results and doctor checks all stamp times here, so
two records never disagree on ``+00:00`` vs ``Z`` (``datetime.fromisoformat`` reads both).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def utc_now() -> str:
    """Now, e.g. ``2026-11-30T23:59:59Z``."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def age_s(stamp: Any) -> float | None:
    """Seconds since an ISO-8601 timestamp; None when it is missing or unreadable."""
    try:
        then = datetime.fromisoformat(str(stamp))
    except ValueError:
        return None
    if then.tzinfo is None:
        then = then.replace(tzinfo=UTC)
    return max(0.0, (datetime.now(UTC) - then).total_seconds())
