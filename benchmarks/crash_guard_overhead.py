"""What crash safety costs: the supervisor and the engine canary, measured side by side.

Runs the same `lifecycle eval` (one variant, schema mode, the first N cases, no checkpoint
reuse) alternately with the defaults (supervised child process + cached canary) and with both
turned off (``LIFECYCLE_NO_SUPERVISOR=1 LIFECYCLE_NO_CANARY=1``), and times one cold canary
(a subprocess that loads the model and decodes a few tokens) against a cached one. Prints
medians and the ratio; asserts nothing.

    python benchmarks/crash_guard_overhead.py [-C WORKSPACE] [-m VARIANT] [--limit 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-C", "--workspace", type=Path, default=Path(__file__).parents[1])
    parser.add_argument("-m", "--variant", default="harbor-triage:q4_k_m-ctx1024")
    parser.add_argument("--limit", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from lifecycle.config import load_workspace
    from lifecycle.engines.doctor import ENGINE_CHECKS_DIR, check_model, host_cpu
    from lifecycle.store import Store
    from lifecycle.variants import resolve_variants

    workspace = load_workspace(args.workspace)
    (variant,) = resolve_variants(workspace, Store(workspace.home), [args.variant])
    checks = workspace.home / ENGINE_CHECKS_DIR
    started = time.perf_counter()
    cold = check_model(
        checks, variant.blob_path, name=variant.name, digest=variant.blob_digest, refresh=True
    )
    cold_s = time.perf_counter() - started
    started = time.perf_counter()
    warm = check_model(checks, variant.blob_path, name=variant.name, digest=variant.blob_digest)
    warm_s = time.perf_counter() - started
    assert warm.cached and cold.ok

    command = [sys.executable, "-m", "lifecycle.cli", "eval", "-C", str(args.workspace)]
    command += ["-m", args.variant, "--mode", "schema", "--limit", str(args.limit)]
    command += ["--no-resume", "--no-cache", "--json", "-q"]
    bare_env = {**os.environ, "LIFECYCLE_NO_SUPERVISOR": "1", "LIFECYCLE_NO_CANARY": "1"}
    guarded: list[float] = []
    bare: list[float] = []
    outputs: set[str] = set()
    for _ in range(args.rounds):
        for env, times in ((os.environ, guarded), (bare_env, bare)):
            started = time.perf_counter()
            done = subprocess.run(command, env=dict(env), capture_output=True, text=True)
            times.append(time.perf_counter() - started)
            if done.returncode not in (0, 3):
                print(done.stderr, file=sys.stderr)
                return 1
            cases = json.loads(done.stdout)["cases"]
            outputs.add(json.dumps([(c["id"], c["output"]) for c in cases]))

    cpu = host_cpu()
    print(f"cpu: {cpu['model']} ({', '.join(cpu['flags'])})")
    print(f"engine canary on {variant.name}: cold {cold_s:.2f} s, cached {warm_s * 1000:.1f} ms")
    g, b = statistics.median(guarded), statistics.median(bare)
    print(
        f"eval {args.variant} schema x{args.limit}, {args.rounds} alternating rounds: "
        f"supervised+canary {g:.2f} s vs bare {b:.2f} s (median) -> ratio {g / b:.3f}"
    )
    print(f"  supervised: {', '.join(f'{t:.2f}' for t in guarded)}")
    print(f"  bare:       {', '.join(f'{t:.2f}' for t in bare)}")
    print(f"identical outputs across all runs: {'yes' if len(outputs) == 1 else 'NO'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
