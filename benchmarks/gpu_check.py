"""Verify the GPU findings of issue 11 on a machine with a GPU and a CUDA build of llama.cpp.

    CMAKE_ARGS=-DGGML_CUDA=on .venv/bin/pip install llama-cpp-python==0.3.36   # a CUDA build
    .venv/bin/pip install nvidia-ml-py                                          # VRAM figures
    .venv/bin/python benchmarks/gpu_check.py [MODEL.gguf ...] [--pytest]

Runs ``lifecycle.bench`` on a tiny generated llama (tests/tinymodel.py) and on each GGUF given,
at ``n_gpu_layers`` 0 and 99, and checks each finding, printing every figure it judged:

1. a row asked to run on the CPU (``n_gpu_layers`` 0) allocates no GPU buffer (llama.cpp's
   buffer log) and is labelled ``CPU``; the VRAM its process held is printed;
2. a GPU row (weights and KV cache on the GPU) has no host-RAM bandwidth bound (null, with the
   reason), and no row anywhere reports a bandwidth fraction above 1;
3. a context sweep on the GPU compares the estimate with VRAM growth, never with RSS;
4. with the GPU hidden (``CUDA_VISIBLE_DEVICES=""``), ``--gpu`` says no GPU device answered
   (naming the CUDA backend), not that the build has no GPU backend, and the JSON names no GPU;
   the CPU row's prompt speed there is printed next to the visible-GPU CPU row's;
5. with ``--pytest``: the bench, CLI-bench and estimate tests pass on this machine.

Exit 0: every check passed; 1: a finding is not fixed (each violation is printed); 2: nothing
could be verified (no CUDA backend in this llama.cpp build, or no GPU device answered).
Speed figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

MIB = 1024 * 1024


class Checks:
    def __init__(self) -> None:
        self.violations: list[str] = []
        self.passed = 0

    def expect(self, ok: bool, what: str, detail: str = "") -> None:
        mark = "ok  " if ok else "FAIL"
        print(f"  [{mark}] {what}" + (f": {detail}" if detail else ""), flush=True)
        if ok:
            self.passed += 1
        else:
            self.violations.append(f"{what}: {detail}" if detail else what)


def bench(model: Path, home: Path, **options: Any) -> dict[str, Any]:
    from lifecycle.bench import BenchOptions, run_bench

    defaults: dict[str, Any] = {"n_prompt": 512, "n_gen": 64, "repetitions": 3, "n_ctx": 1024}
    result = run_bench(model, BenchOptions(**{**defaults, **options}), home=home)
    return result.to_dict()


def mib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / MIB:.1f} MiB"


def check_model(
    model: Path, home: Path, checks: Checks, threads: int, gpu_bw: float | None
) -> float:
    """Findings 1-3 on one model; returns the CPU row's pp t/s (for the hidden-GPU comparison)."""
    print(f"\n== {model.name}")
    cpu = bench(model, home, n_gpu_layers=0, n_threads=threads)
    (point,) = cpu["points"]
    checks.expect(point["ok"], "n_gpu_layers 0 point measured", str(point["error"] or ""))
    pp_ts = 0.0
    if point["ok"]:
        placement = point["placement"]
        checks.expect(
            not placement["gpu_devices"],
            "CPU row allocates no GPU buffer",
            f"buffers {placement['host_bytes']} host, {placement['gpu_bytes']} GPU",
        )
        for row in point["rows"]:
            checks.expect(
                row["backend"] == "CPU" and row["backend_note"] is None,
                f"CPU row {row['test']} labelled CPU",
                f"backend {row['backend']}, {row['avg_ts']:.1f} t/s, note {row['backend_note']}",
            )
            if row["n_gen"]:
                frac = row["bandwidth_fraction"]
                checks.expect(
                    frac is None or frac <= 1,
                    f"CPU row {row['test']} fraction of its bound <= 1",
                    f"ratio {row['bandwidth_ratio']}, bound {row['bandwidth_bound_ts']} t/s "
                    f"from {(row['bandwidth_bytes_per_s'] or 0) / 1e9:.1f} GB/s; "
                    f"note {row['bandwidth_note']}",
                )
            else:
                pp_ts = float(row["avg_ts"])
        vram = point["memory"].get("vram_used_bytes")
        print(f"  info: CPU row's process held {mib(vram)} of VRAM (NVML)")

    gpu = bench(
        model,
        home,
        n_gpu_layers=99,
        gpu=True,
        n_threads=threads,
        contexts=[1024, 16384],  # KV grows 16x: well above NVML's allocation granularity
        n_prompt=256,
        n_gen=32,
        gpu_bandwidth_bytes_per_s=gpu_bw,
    )
    for point in gpu["points"]:
        checks.expect(
            point["ok"], f"n_gpu_layers 99 ctx {point['n_ctx']} measured", str(point["error"] or "")
        )
        if not point["ok"]:
            continue
        checks.expect(
            point["placement"]["offload"] == "full",
            f"GPU point ctx {point['n_ctx']} fully offloaded",
            f"backend {point['backend']}, GPU {point['placement']['gpu_bytes']}",
        )
        for row in point["rows"]:
            if not row["n_gen"]:
                continue
            if gpu_bw:
                ok = row["bandwidth_bytes_per_s"] == int(gpu_bw)
            else:
                ok = row["bandwidth_bound_ts"] is None and "host RAM" in (
                    row["bandwidth_note"] or ""
                )
            checks.expect(
                ok and (row["bandwidth_fraction"] is None or row["bandwidth_fraction"] <= 1),
                f"GPU row {row['test']} not bounded by host RAM",
                f"{row['avg_ts']:.1f} t/s, bound {row['bandwidth_bound_ts']}, "
                f"fraction {row['bandwidth_fraction']}, note {row['bandwidth_note']}",
            )
        checks.expect(
            point["estimate_rss_error_pct"] is None and bool(point["estimate_rss_reason"]),
            f"GPU point ctx {point['n_ctx']}: no RSS comparison",
            str(point["estimate_rss_reason"]),
        )
        print(
            f"  info: ctx {point['n_ctx']}: VRAM {mib(point['memory'].get('vram_used_bytes'))}, "
            f"GPU buffers {mib(point['placement']['gpu_buffer_bytes'])}, "
            f"estimate {mib(point['estimate']['total_bytes'])} "
            f"({point['estimate_error_pct']}% vs llama.cpp's buffers)"
        )
    scaling = gpu["scaling"]
    checks.expect(scaling is not None, "GPU sweep has scaling figures")
    if scaling:
        checks.expect(
            scaling["peak_rss_growth_bytes"] is None
            and scaling["estimate_vs_rss_error_pct"] is None
            and bool(scaling["rss_reason"]),
            "GPU sweep: RSS not compared with the estimate",
            str(scaling["rss_reason"]),
        )
        checks.expect(
            scaling["vram_growth_bytes"] is not None,
            "GPU sweep: estimate compared with VRAM growth",
            f"estimate +{mib(scaling['estimate_growth_bytes'])}, VRAM "
            f"+{mib(scaling['vram_growth_bytes'])}, error {scaling['estimate_vs_vram_error_pct']}%"
            f" ({scaling['vram_reason'] or 'measured'})",
        )
    env = gpu["environment"]
    checks.expect(bool(env["gpu"]) and env["gpu_offload"], "visible GPU named", str(env["gpu"]))
    return pp_ts


def hidden_child(model: Path, home: Path, threads: int) -> int:
    """Runs under CUDA_VISIBLE_DEVICES="": prints what --gpu said and what a CPU bench named."""
    from lifecycle.errors import UsageError

    out: dict[str, Any] = {}
    try:
        bench(model, home, n_gpu_layers=99, gpu=True, n_threads=threads, bandwidth=False)
        out["gpu_error"] = None
    except UsageError as exc:
        out["gpu_error"] = str(exc)
    doc = bench(model, home, n_gpu_layers=0, n_threads=threads, bandwidth=False)
    out["environment"] = {
        k: doc["environment"].get(k) for k in ("gpu", "gpu_offload", "gpu_reason")
    }
    out["rows"] = [{k: r[k] for k in ("test", "backend", "avg_ts")} for r in doc["rows"]]
    out["vram"] = [p["memory"].get("gpu") for p in doc["points"]]
    print(json.dumps(out))
    return 0


def check_hidden(model: Path, home: Path, checks: Checks, threads: int, visible_pp: float) -> None:
    print('\n== GPU hidden (CUDA_VISIBLE_DEVICES="")')
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, __file__, "--hidden-child", str(model), "--home", str(home),
         "--threads", str(threads)],
        capture_output=True, text=True, env=env, check=False, timeout=900,
    )  # fmt: skip
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        checks.expect(False, "hidden-GPU run", last)
        return
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    message = out["gpu_error"] or ""
    checks.expect(
        "no GPU device answered" in message
        and "CUDA" in message
        and "no GPU backend" not in message,
        "--gpu with the GPU hidden names the backend and the missing device",
        message,
    )
    environment = out["environment"]
    checks.expect(
        environment["gpu"] is None and environment["gpu_offload"] is False,
        "JSON names no GPU while gpu_offload is false",
        json.dumps(environment),
    )
    checks.expect(all(v is None for v in out["vram"]), "points name no GPU", str(out["vram"]))
    pp = [r for r in out["rows"] if not r["test"].startswith("tg")]
    if pp and visible_pp:
        print(
            f"  info: CPU row pp speed, GPU visible {visible_pp:.1f} t/s vs hidden "
            f"{pp[0]['avg_ts']:.1f} t/s (ratio {visible_pp / pp[0]['avg_ts']:.2f}; the issue saw "
            "4830 vs 2303 when n_gpu_layers 0 still offloaded ops)"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", type=Path, help="GGUF files to check as well")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (default: cores)")
    parser.add_argument("--gpu-bandwidth", type=float, help="GPU bandwidth in GB/s, if known")
    parser.add_argument("--pytest", action="store_true", help="also run the bench test files")
    parser.add_argument("--hidden-child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--home", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hidden_child:
        return hidden_child(args.hidden_child, args.home, args.threads)

    from tinymodel import write_tiny_llama

    from lifecycle.engines.devices import ggml_devices, gpu_memory
    from lifecycle.engines.llama_cpp import physical_cores

    threads = args.threads or physical_cores()
    inventory = ggml_devices()
    print(f"llama.cpp backends: {inventory['backends']}; devices: "
          f"{[(d['name'], d['description']) for d in inventory['devices']]}")  # fmt: skip
    print(f"NVML: {gpu_memory(None)}")
    if "CUDA" not in inventory["backends"]:
        print("cannot verify: this llama.cpp build has no CUDA backend "
              "(CMAKE_ARGS=-DGGML_CUDA=on pip install llama-cpp-python)")  # fmt: skip
        return 2
    if not any(d["type"] == "GPU" for d in inventory["devices"]):
        print("cannot verify: the CUDA backend reports no device (is the GPU hidden?)")
        return 2

    checks = Checks()
    gpu_bw = args.gpu_bandwidth * 1e9 if args.gpu_bandwidth else None
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        home = Path(tmp) / "home"
        os.environ["LIFECYCLE_HOME"] = str(home)
        tiny = write_tiny_llama(Path(tmp) / "tiny.gguf")
        models = [tiny, *args.models]
        pp = {m: check_model(m, home, checks, threads, gpu_bw) for m in models}
        target = args.models[0] if args.models else tiny
        check_hidden(target, home, checks, threads, pp[target])
    if args.pytest:
        print("\n== tests on this machine")
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
             "tests/test_bench.py", "tests/test_cli_bench.py", "tests/test_estimate.py"],
            cwd=REPO, capture_output=True, text=True, check=False,
        )  # fmt: skip
        tail = proc.stdout.strip().splitlines()[-1:] or [""]
        checks.expect(proc.returncode == 0, "bench/estimate tests pass", tail[0])
        if proc.returncode:
            print(proc.stdout[-4000:])
    print(f"\n{checks.passed} checks passed, {len(checks.violations)} failed")
    for violation in checks.violations:
        print(f"  violation: {violation}")
    return 1 if checks.violations else 0


if __name__ == "__main__":
    sys.exit(main())
