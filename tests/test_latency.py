"""Latency math (percentiles against numpy, goodput, seeded Poisson arrivals) and the SLA
gate's skip rules (lifecycle.latency), plus the load-test figures the gate reads."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest

from lifecycle.baselines import bench_by_variant
from lifecycle.gate import HARDWARE_KEYS, Check
from lifecycle.latency import goodput, latency_checks, percentiles, poisson_arrivals

SAMPLES = [
    [412.0],
    [100.0, 900.0],
    [5.0, 1.0, 4.0, 2.0, 3.0],
    [float(v) for v in np.random.default_rng(3).lognormal(6, 0.7, size=97)],
    [250.0] * 10 + [4000.0],  # one slow outlier: p99 interpolates toward it
]


@pytest.mark.parametrize("values", SAMPLES)
def test_percentiles_match_numpy(values: list[float]) -> None:
    got = percentiles(values)
    for q in (50, 90, 95, 99):
        assert got[f"p{q}"] == pytest.approx(float(np.percentile(values, q)), abs=1e-3)


def test_percentiles_of_nothing_is_empty() -> None:
    assert percentiles([]) == {}


def test_goodput_counts_requests_within_the_sla() -> None:
    assert goodput([100.0, 420.0, 421.0, 900.0], 420.0) == 0.5  # at the SLA meets it
    assert goodput([100.0], None) is None
    assert goodput([], 420.0) is None


def test_poisson_arrivals_are_reproducible_by_seed() -> None:
    a = poisson_arrivals(4.0, 50, seed=11)
    assert a == poisson_arrivals(4.0, 50, seed=11)
    assert a != poisson_arrivals(4.0, 50, seed=12)
    assert all(x < y for x, y in itertools.pairwise(a))
    many = poisson_arrivals(4.0, 20000, seed=1)
    assert many[-1] / len(many) == pytest.approx(0.25, rel=0.03)  # mean gap 1 / rate
    with pytest.raises(ValueError):
        poisson_arrivals(0.0, 3, seed=1)


HARDWARE = {"machine": "x86_64", "cpu": "Xeon", "cpu_count_logical": 2,
            "cpu_count_physical": 1, "ram_bytes": 8 << 30}  # fmt: skip


def _loadtest(**over: Any) -> dict[str, Any]:
    figures = {
        "variant_id": "v1",
        "concurrency": 4,
        "sla_p95_ms": 420.0,
        "sla_ttft_p95_ms": None,
        "latency_p95_ms": 380.0,
        "ttft_p95_ms": 90.0,
        "foreign_cpu_share": 0.02,
        "hardware": dict(HARDWARE),
        "partial": False,
    }
    return {"loadtest": {**figures, **over}}


def _checks(now: dict[str, Any] | None, **kw: Any) -> list[Check]:
    args = {
        "base_bench": {"loadtest": _loadtest(latency_p95_ms=300.0)["loadtest"]},
        "base_environment": dict(HARDWARE),
        "max_foreign_cpu_share": 0.15,
        "hardware_keys": HARDWARE_KEYS,
    }
    args.update(kw)
    return latency_checks("m:v", "v1", bench_now=now, **args)


def test_sla_met_and_missed_on_the_same_machine() -> None:
    (ok,) = _checks(_loadtest())
    assert (ok.status, ok.current, ok.threshold, ok.baseline) == ("pass", 380.0, 420.0, 300.0)
    assert "same machine" in ok.message
    (bad,) = _checks(_loadtest(latency_p95_ms=900.0), causes=["model"])
    assert bad.status == "fail" and bad.cause == "model"
    assert "over the SLA 420 ms" in bad.message


def test_ttft_sla_is_its_own_check() -> None:
    checks = _checks(_loadtest(sla_ttft_p95_ms=50.0))
    assert [(c.name, c.status) for c in checks] == [
        ("latency_p95_ms", "pass"),
        ("ttft_p95_ms", "fail"),
    ]


@pytest.mark.parametrize(
    ("over", "why"),
    [
        ({"foreign_cpu_share": 0.6}, "the machine was busy"),
        ({"hardware": {**HARDWARE, "cpu": "EPYC"}}, "hardware changed"),
        ({"variant_id": "v0"}, "another build"),
        ({"partial": True}, "did not finish"),
    ],
)
def test_sla_not_judged_off_the_serving_box(over: dict[str, Any], why: str) -> None:
    (check,) = _checks(_loadtest(latency_p95_ms=5000.0, **over))
    assert check.status == "skip"
    assert "not judged" in check.message and why in check.message


def test_no_sla_and_no_measurement() -> None:
    (check,) = _checks(_loadtest(sla_p95_ms=None))
    assert check.status == "skip" and "no [serve] sla_p95_ms" in check.message
    (missing,) = _checks(None)  # pinned with a load test, none given now
    assert missing.status == "skip" and "not measured" in missing.message
    assert latency_checks("m:v", "v1", None, {}, None, max_foreign_cpu_share=0.15,
                          hardware_keys=HARDWARE_KEYS) == []  # fmt: skip


def test_a_load_test_and_a_bench_of_one_variant_both_reach_the_gate() -> None:
    bench_doc = {
        "variant": {"name": "m:v"},
        "points": [{"ok": True, "n_ctx": 512, "rows": [{"n_gen": 16, "avg_ts": 50.0}],
                    "memory": {"peak_rss_bytes": 1}}],
    }  # fmt: skip
    load_doc = {"kind": "loadtest", "variant": {"name": "m:v"}, "summary": {"latency_p95_ms": 1.0}}
    figures = bench_by_variant([bench_doc, load_doc])["m:v"]
    assert figures["tg_tokens_per_s"] == 50.0
    assert figures["loadtest"] == {"latency_p95_ms": 1.0}
