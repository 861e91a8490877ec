"""Crash isolation's cost: `llama-cpp-isolated` (worker process) vs `llama-cpp` (in-process).

Both run the same `lifecycle eval` selection on the example workspace, alternating for
``--repeat`` rounds in one process run; the ratio of the median wall times is printed.

    python benchmarks/worker_overhead.py --limit 20 --repeat 3

Target: ratio <= 1.05.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from lifecycle.config import load_workspace
from lifecycle.runner import EvalOptions, run_eval


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workspace", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--variant", default="harbor-triage:q4_k_m-ctx1024")
    parser.add_argument("--limit", type=int, default=20, help="first N cases per suite")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    workspace = load_workspace(args.workspace)
    times: dict[str, list[float]] = {"llama-cpp": [], "llama-cpp-isolated": []}
    outputs: dict[str, list[str]] = {}
    for round_index in range(args.repeat):
        for engine in times:
            options = EvalOptions(
                models=[args.variant], engine=engine, limit=args.limit, answers=False
            )
            start = time.perf_counter()
            record = run_eval(workspace, options)
            times[engine].append(time.perf_counter() - start)
            outputs[engine] = [c.output for c in record.cases]
            print(f"round {round_index + 1}: {engine} {times[engine][-1]:.2f} s", file=sys.stderr)
    same = outputs["llama-cpp"] == outputs["llama-cpp-isolated"]
    inproc = statistics.median(times["llama-cpp"])
    isolated = statistics.median(times["llama-cpp-isolated"])
    print(f"variant: {args.variant}; {len(outputs['llama-cpp'])} generations per run")
    print(f"in-process median: {inproc:.2f} s")
    print(f"isolated median:   {isolated:.2f} s")
    print(f"overhead ratio:    {isolated / inproc:.3f} (target <= 1.05); same outputs: {same}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
