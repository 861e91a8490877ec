"""What each machine's own CPU kernels are worth: the portable build against every-CPU-variant.

Runs ``lifecycle bench`` (pp512 and tg128, llama-bench's tests) on one GGUF in fresh
processes, alternating round by round between:

- ``portable``: an interpreter whose llama-cpp-python is the single AVX2 build
  (``LIFECYCLE_ENGINE_BUILD=portable .ci/install-engine``);
- ``all-cpus/<variant>``: an interpreter whose llama-cpp-python carries every CPU variant
  (the default ``.ci/install-engine``), once per variant named with ``--variant`` — by default
  ``haswell`` (the same instruction sets as the portable build: the cost of the dynamic
  backend itself) and the variant lifecycle chooses on this machine.

Each side prints its tokens/s per test (median over rounds) and its ratio to ``portable``
measured in the same rounds. Never a pass/fail: the machine and its load are printed too.

    python benchmarks/cpu_variants.py --portable .venv/bin/python \
        --all-cpus /tmp/venv-all/bin/python MODEL.gguf [--rounds 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
from pathlib import Path

from lifecycle.hostinfo import cpu_info

ONE_BENCH = """
import json, sys
from pathlib import Path
from lifecycle.engines import cpuvariants
from lifecycle.bench import BenchOptions, run_bench
options = BenchOptions(n_prompt=512, n_gen=128, repetitions=int(sys.argv[2]), n_ctx=640,
                       n_threads=int(sys.argv[3]), bandwidth=False)
rows = run_bench(Path(sys.argv[1]), options).rows
choice = cpuvariants.active()
import os
named = Path(os.environ.get("GGML_BACKEND_PATH", "")).stem.removeprefix("libggml-cpu-")
print(json.dumps({"kernels": choice.name if choice else named or "compiled in",
                  "rows": {("pp" if r.n_gen == 0 else "tg"): r.avg_ts for r in rows}}))
"""

CHOOSE = """
import json
from lifecycle.engines import cpuvariants
choice = cpuvariants.activate(canary=True)
print(json.dumps({c.name: c.path for c in choice.candidates} if choice else {}))
print(json.dumps(choice.name if choice else None))
"""


def run_side(python: str, model: Path, env: dict[str, str], reps: int, threads: int) -> dict:
    proc = subprocess.run(
        [python, "-c", ONE_BENCH, str(model), str(reps), str(threads)],
        capture_output=True,
        text=True,
        env={**os.environ, "LIFECYCLE_NO_CANARY": "1", **env},
        check=True,
    )
    return json.loads(proc.stdout.splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--portable", required=True, help="python with the portable build")
    parser.add_argument("--all-cpus", required=True, help="python with every CPU variant")
    parser.add_argument(
        "--variant",
        action="append",
        help="variants to run (default: haswell and lifecycle's choice)",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    chooser = subprocess.run(
        [args.all_cpus, "-c", CHOOSE], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    paths, chosen = json.loads(chooser[-2]), json.loads(chooser[-1])
    variants = args.variant or list(dict.fromkeys(["haswell", chosen]))
    sides: dict[str, tuple[str, dict[str, str]]] = {"portable": (args.portable, {})}
    for name in variants:
        sides[f"all-cpus/{name}"] = (args.all_cpus, {"GGML_BACKEND_PATH": paths[name]})
    print(f"machine: {cpu_info()[0]}, {os.cpu_count()} cores; load {os.getloadavg()[0]:.1f}")
    print(f"lifecycle's choice on this machine: {chosen}")
    results: dict[str, list[dict]] = {side: [] for side in sides}
    for round_no in range(args.rounds):
        for side, (python, env) in sides.items():
            out = run_side(python, args.model, env, args.repetitions, args.threads)
            results[side].append(out["rows"])
            print(
                f"  round {round_no + 1} {side:24} ({out['kernels']}): "
                + ", ".join(f"{k} {v:.1f} t/s" for k, v in out["rows"].items()),
                flush=True,
            )
    print(
        f"\n{'side':26} {'pp512 t/s':>10} {'vs portable':>12} {'tg128 t/s':>10} {'vs portable':>12}"
    )
    for side, rows in results.items():
        cells = []
        for test in ("pp", "tg"):
            ratios = [r[test] / p[test] for r, p in zip(rows, results["portable"], strict=True)]
            median = statistics.median(r[test] for r in rows)
            cells.append(f"{median:>10.1f} {statistics.median(ratios):>11.3f}x")
        print(f"{side:26} {' '.join(cells)}")
    print(f"load at the end: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
