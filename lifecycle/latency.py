"""Latency under load: percentiles, goodput, Poisson arrivals and the SLA's gate checks.

Pure functions over samples (no engine): :mod:`lifecycle.loadtest` produces the samples, the
gate judges them with :func:`latency_checks`. Percentiles interpolate linearly between order
statistics, numpy's default method, so a figure here matches ``numpy.percentile`` on the same
samples.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

from lifecycle.checks import Check
from lifecycle.results import percentile

QUANTILES = (50, 90, 95, 99)


def percentiles(values: Sequence[float], quantiles: Sequence[int] = QUANTILES) -> dict[str, float]:
    """``{"p50": …, "p90": …}`` of ``values`` (numpy's linear method); empty for no values."""
    if not values:
        return {}
    data = [float(v) for v in values]
    return {f"p{q}": round(percentile(data, q), 3) for q in quantiles}


def goodput(latencies_ms: Sequence[float], sla_ms: float | None) -> float | None:
    """The share of requests that finished within ``sla_ms`` (None without an SLA or samples).

    A request exactly at the SLA meets it."""
    if sla_ms is None or not latencies_ms:
        return None
    return sum(1 for v in latencies_ms if v <= sla_ms) / len(latencies_ms)


def poisson_arrivals(rate_per_s: float, count: int, seed: int) -> list[float]:
    """``count`` arrival times (seconds from 0) of a Poisson process at ``rate_per_s``.

    The gaps are exponential with mean ``1 / rate``; the same seed gives the same schedule, so
    an open-loop load test replays the same traffic on every machine.
    """
    if rate_per_s <= 0:
        raise ValueError(f"arrival rate must be positive, got {rate_per_s}")
    rng = random.Random(seed)
    at, out = 0.0, []
    for _ in range(count):
        at += rng.expovariate(rate_per_s)
        out.append(at)
    return out


def latency_checks(
    name: str,
    variant_id: Any,
    base_bench: Mapping[str, Any] | None,
    base_environment: Mapping[str, Any],
    bench_now: Mapping[str, Any] | None,
    *,
    max_foreign_cpu_share: float,
    hardware_keys: Sequence[str],
    causes: Sequence[str] = (),
) -> list[Check]:
    """The SLA checks for one variant.

    ``bench_now["loadtest"]`` is this change's load test (``lifecycle loadtest --json``, given to
    the gate with ``--bench``), ``base_bench["loadtest"]`` the pinned one. The SLA is absolute,
    yet a latency says something about the serving box only when taken on it: like speed, it is
    judged only on the hardware the pins were measured on and when other processes left the
    CPU alone during the load test; otherwise the check says "not judged" and why.
    """
    now = (bench_now or {}).get("loadtest")
    was = (base_bench or {}).get("loadtest")
    if not isinstance(now, Mapping):
        if isinstance(was, Mapping) and was.get("sla_p95_ms") is not None:
            return [
                _check(
                    name,
                    "latency_p95_ms",
                    "skip",
                    "latency: not measured for this change (run `lifecycle loadtest --json` "
                    "and pass it with --bench)",
                    baseline=was.get("latency_p95_ms"),
                )
            ]
        return []
    wanted = [
        ("latency_p95_ms", "p95 latency", now.get("sla_p95_ms")),
        ("ttft_p95_ms", "p95 time to first token", now.get("sla_ttft_p95_ms")),
    ]
    wanted = [w for w in wanted if w[2] is not None]
    if not wanted:
        return [
            _check(
                name,
                "latency_p95_ms",
                "skip",
                f"p95 latency {_ms(now.get('latency_p95_ms'))} at concurrency "
                f"{now.get('concurrency')}: no [serve] sla_p95_ms for this variant",
                current=now.get("latency_p95_ms"),
            )
        ]
    reason = _not_judged(now, variant_id, base_environment, max_foreign_cpu_share, hardware_keys)
    checks = []
    for key, label, sla in wanted:
        current, baseline = now.get(key), (was or {}).get(key)
        if reason is not None or current is None:
            why = reason or "not measured"
            checks.append(
                _check(
                    name,
                    key,
                    "skip",
                    f"{label}: not judged, {why}",
                    baseline=baseline,
                    current=current,
                    threshold=sla,
                    cause="environment" if reason else None,
                )
            )
            continue
        ok = float(current) <= float(sla or 0.0)
        message = (
            f"{label} {_ms(current)} at concurrency {now.get('concurrency')} "
            + ("within" if ok else "over")
            + f" the SLA {_ms(sla)} on the same machine"
        )
        if baseline is not None:
            message += f" (pinned: {_ms(baseline)})"
        checks.append(
            _check(
                name,
                key,
                "pass" if ok else "fail",
                message,
                baseline=baseline,
                current=current,
                threshold=sla,
                cause=None if ok else (", ".join(causes) or None),
            )
        )
    return checks


def _not_judged(
    now: Mapping[str, Any],
    variant_id: Any,
    base_environment: Mapping[str, Any],
    max_share: float,
    hardware_keys: Sequence[str],
) -> str | None:
    """Why the load test in ``now`` cannot be judged here (None: it can)."""
    if now.get("partial"):
        return "the load test did not finish (partial samples)"
    if variant_id is not None and now.get("variant_id") not in (None, variant_id):
        return "the load test measured another build of this variant; run it again"
    share = now.get("foreign_cpu_share")
    if isinstance(share, int | float) and share > max_share:
        return (
            f"the machine was busy (other processes used {share:.0%} of the CPU during the "
            f"load test; the bound is {max_share:.0%}); re-run on a quiet machine"
        )
    hardware = now.get("hardware") or {}
    moved = [
        k
        for k in hardware_keys
        if k in hardware and k in base_environment and hardware[k] != base_environment[k]
    ]
    if moved:
        return (
            "hardware changed since the pins were measured ("
            + ", ".join(f"{k}: {base_environment[k]} → {hardware[k]}" for k in moved)
            + "); the SLA is judged on the serving box only"
        )
    return None


def _check(name: str, key: str, status: str, message: str, **fields: Any) -> Check:
    return Check(name=key, variant=name, status=status, message=message, **fields)


def _ms(value: Any) -> str:
    return "-" if value is None else f"{float(value):.0f} ms"
