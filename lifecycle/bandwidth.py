"""The physical bound on generation speed: memory read bandwidth, probed the way a decode reads.

Generating a token reads every weight once, so tg speed is bounded by memory bandwidth / bytes
per token. For rows whose weights and KV cache are in host RAM, the read bandwidth is probed
with the same number of threads, each re-reading its own slice of a buffer the size of what one
token reads (so caches help the probe exactly as they help the decode), SIMD max-reductions
(not the compute-bound float sum), best of several passes. Beyond the caches the size no
longer matters, so one figure measured over a buffer of at least four times the last-level
cache serves every larger working set. Figures are cached under ``LIFECYCLE_HOME/bench`` with
when they were taken and how busy the machine was; one older than a week or taken under load
is measured again.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lifecycle.clock import age_s, utc_now
from lifecycle.hostinfo import last_level_cache_bytes

_PROBE_METHOD = (
    "numpy float32 max-reduction (SIMD), one slice per thread re-read in place, "
    "best of 7 timed passes after a warm-up"
)


_PROBE_VERSION = 2  # part of the cache key: figures of the old float-sum probe are not reused


# A cached bandwidth figure is reused for a week, and only if it was taken on a quiet machine:
# the same 15 % of the CPU used by other processes that the gate's speed checks allow.
BANDWIDTH_MAX_AGE_S = 7 * 24 * 3600.0


BANDWIDTH_MAX_FOREIGN_SHARE = 0.15


def measure_bandwidth(
    threads: int,
    *,
    home: Path | None = None,
    buffer_bytes: int = 256 * 1024 * 1024,
    working_set_bytes: int | None = None,
    max_age_s: float = BANDWIDTH_MAX_AGE_S,
    max_foreign_share: float = BANDWIDTH_MAX_FOREIGN_SHARE,
) -> dict[str, Any]:
    """Sustained read bandwidth with ``threads`` readers, cached per machine.

    Without ``working_set_bytes``: the main-memory figure, over a buffer of at least
    ``buffer_bytes`` and four times the last-level cache. With it: the bandwidth a decode
    step reading that many bytes per token can use, i.e. the same threads re-reading a buffer
    of that size (rounded up to a quarter octave), where the caches help as they help the
    decode; working sets at least as large as the main-memory buffer get the main-memory
    figure. Each thread max-reduces its own slice (numpy releases the GIL; the float sum the
    first probe used is compute-bound at about 12 GB/s per thread and read low), repeated
    inside the thread so that a pass lasts milliseconds, not the thread pool's dispatch time.
    The result is cached in ``<home>/bench/bandwidth.json`` under a key of probe version,
    CPU model, cores, RAM, threads and buffer size (``cached: true`` when reused), with when
    it was measured and ``foreign_cpu_share``, the CPU other processes used meanwhile. A
    figure older than ``max_age_s``, or taken while others used more than
    ``max_foreign_share`` of the CPU (or with that unknown), is measured again rather than
    reused: a probe that competed for the cores reads low, and would bound every later bench
    low too. ``remeasured`` says why a cached figure was replaced; ``age_s`` how old a reused
    one is.
    """
    import numpy as np

    from lifecycle.config import lifecycle_home
    from lifecycle.fsutil import atomic_write_text
    from lifecycle.results import ForeignLoad, host_environment

    threads = max(1, int(threads))
    llc = last_level_cache_bytes()
    main_buffer = max(int(buffer_bytes), 4 * (llc or 0), threads * 4096)
    size = main_buffer
    if working_set_bytes is not None and 0 < working_set_bytes < main_buffer:
        size = _quarter_octave(max(int(working_set_bytes), threads * 4096))
    host = host_environment()
    machine = f"{host['cpu']}|{host['cpu_count_logical']}|{host['ram_bytes']}|{threads}"
    key_source = f"v{_PROBE_VERSION}|{machine}|{size}"
    key = hashlib.sha256(key_source.encode()).hexdigest()[:16]
    cache = (home or lifecycle_home()) / "bench" / "bandwidth.json"
    try:
        entries = json.loads(cache.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        entries = {}
    remeasured = None
    if isinstance(entries, dict) and isinstance(entries.get(key), dict):
        old = entries[key]
        age = age_s(old.get("measured_at"))
        share = old.get("foreign_cpu_share")
        if age is None or age > max_age_s:
            remeasured = "stale" if age is not None else "no measurement time"
        elif not isinstance(share, int | float):
            remeasured = "load at measurement unknown"
        elif share > max_foreign_share:
            remeasured = f"taken under load (others used {share:.0%} of the CPU)"
        else:
            return {**old, "cached": True, "age_s": round(age)}

    from concurrent.futures import ThreadPoolExecutor

    buffer = np.ones(max(size // 4, threads * 1024), dtype=np.float32)
    chunks = np.array_split(buffer, threads)
    repeats = max(1, (64 * 1024 * 1024) // max(buffer.nbytes, 1))  # >= 64 MiB read per pass
    barrier = threading.Barrier(threads)

    def read(chunk: Any) -> None:
        barrier.wait()
        for _ in range(repeats):
            np.maximum.reduce(chunk)

    best = math.inf
    load, load_started = ForeignLoad().start(), time.monotonic()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for attempt in range(8):  # the first pass warms pages, caches and threads up
            start = time.perf_counter()
            list(pool.map(read, chunks))
            elapsed = time.perf_counter() - start
            if attempt:
                best = min(best, elapsed)
    entry = {
        "read_bytes_per_s": int(buffer.nbytes * repeats / best),
        "threads": threads,
        "buffer_bytes": int(buffer.nbytes),
        "main_memory": size >= main_buffer,
        "llc_bytes": llc,
        "method": _PROBE_METHOD,
        "measured_at": utc_now(),
        "foreign_cpu_share": _load_share(load, load_started),
        "machine": machine,
    }
    entries = entries if isinstance(entries, dict) else {}
    entries[key] = entry
    cache.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(cache, json.dumps(entries, indent=2, sort_keys=True) + "\n")
    return {**entry, "cached": False, "age_s": 0, "remeasured": remeasured}


def _load_share(load: Any, started: float, window_s: float = 0.5) -> float:
    """Others' CPU share over at least ``window_s``: a probe of a few milliseconds is shorter
    than the kernel's CPU-time tick, and its raw share reads 0 % or over 100 %."""
    time.sleep(max(0.0, window_s - (time.monotonic() - started)))
    return float(min(1.0, load.share()))


def _quarter_octave(n: int) -> int:
    """``n`` rounded up to the next 2**(k/4) MiB step (coarse buckets for the probe cache)."""
    mib = max(n / (1024 * 1024), 1.0)
    step = math.ceil(math.log2(mib) * 4 - 1e-9)
    return int(math.ceil(2 ** (step / 4) * 1024 * 1024 / 4096) * 4096)


def bandwidth_bound(
    per_token_bytes: int,
    avg_ts: float,
    offload: str | None,
    n_gpu_layers: int,
    host: Mapping[str, Any] | None,
    gpu_bytes_per_s: float | None,
) -> dict[str, Any]:
    """The tg bound of one row and its speed against it.

    ``offload`` is :func:`buffer_placement`'s (None: unknown, then ``n_gpu_layers`` decides);
    ``host`` the host-memory figure (:func:`measure_bandwidth`) for ``per_token_bytes``.
    Returns ``bandwidth_bound_ts``, ``bandwidth_fraction`` (only when <= 1),
    ``bandwidth_ratio``, ``bandwidth_bytes_per_s`` and ``bandwidth_note`` (the reason when a
    bound or a fraction is missing).
    """
    out: dict[str, Any] = {
        "bandwidth_bound_ts": None,
        "bandwidth_fraction": None,
        "bandwidth_ratio": None,
        "bandwidth_bytes_per_s": None,
        "bandwidth_note": None,
    }
    if offload is None:
        offload = "none" if n_gpu_layers == 0 else "unknown"
    figure: float | None
    if offload == "none":
        figure = float(host["read_bytes_per_s"]) if host else None
        if figure is None:
            out["bandwidth_note"] = "host memory bandwidth not measured"
            return out
        source = "host memory"
    elif offload == "full":
        if not gpu_bytes_per_s:
            out["bandwidth_note"] = (
                "weights and KV cache are on the GPU: host RAM bandwidth does not bound this "
                "row, and no GPU memory bandwidth figure is known"
            )
            return out
        figure, source = float(gpu_bytes_per_s), "GPU memory (given)"
    else:
        what = {
            "partial": "layers split between host RAM and the GPU",
            "ops": "weights in host RAM but ops offloaded to the GPU",
            "unknown": "where llama.cpp put the buffers is unknown",
        }.get(offload, offload)
        out["bandwidth_note"] = f"{what}: no single memory bandwidth bounds this row"
        return out
    if per_token_bytes <= 0 or figure <= 0:
        out["bandwidth_note"] = "no bytes per token to bound"
        return out
    bound = figure / per_token_bytes
    ratio = avg_ts / bound
    out.update(
        bandwidth_bound_ts=round(bound, 3),
        bandwidth_ratio=round(ratio, 4),
        bandwidth_bytes_per_s=int(figure),
    )
    if ratio <= 1.0:
        out["bandwidth_fraction"] = round(ratio, 4)
    else:
        out["bandwidth_note"] = (
            f"ran at {ratio:.2f}x the {source} bound: the bandwidth figure "
            f"({figure / 1e9:.1f} GB/s) is below what this decode used, so the fraction means "
            "nothing; re-measure the bandwidth on a quiet machine"
        )
    return out
