"""Cross-check `lifecycle bench` against llama.cpp's own `llama-bench`, side by side.

Build llama-bench from the llama.cpp tree vendored in llama-cpp-python's source distribution
(same llama.cpp as the engine), then run both on the same GGUF with the same threads:

    pip download llama-cpp-python==$(python -c 'import llama_cpp; print(llama_cpp.__version__)') \
        --no-deps --no-binary :all: -d /tmp/sdist
    tar xzf /tmp/sdist/llama_cpp_python-*.tar.gz -C /tmp/sdist
    cmake -S /tmp/sdist/llama_cpp_python-*/vendor/llama.cpp -B /tmp/lb -G Ninja \
        -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF
    cmake --build /tmp/lb --target llama-bench
    python benchmarks/llama_bench_crosscheck.py /tmp/lb/bin/llama-bench MODEL.gguf -t 2

llama-bench runs with ``-fa 0 -b 512 -ub 512`` because llama-cpp-python's context has flash
attention off and n_batch 512. Prints both tools' tokens/sec per test and the difference; the
issue's acceptance bound is 10%. Speed targets are printed, never asserted in the test suite.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("llama_bench", type=Path)
    parser.add_argument("model", type=Path)
    parser.add_argument("-t", "--threads", type=int, default=2)
    parser.add_argument("-p", "--n-prompt", type=int, default=512)
    parser.add_argument("-n", "--n-gen", type=int, default=128)
    parser.add_argument("-r", "--repetitions", type=int, default=5)
    args = parser.parse_args()

    command = [str(args.llama_bench), "-m", str(args.model), "-t", str(args.threads)]
    command += ["-p", str(args.n_prompt), "-n", str(args.n_gen), "-r", str(args.repetitions)]
    command += ["-fa", "0", "-b", "512", "-ub", "512", "-o", "json"]
    reference = subprocess.run(
        command,
        capture_output=True,
        text=True,
        check=True,
    )
    theirs = {(r["n_prompt"], r["n_gen"]): r for r in json.loads(reference.stdout)}

    from lifecycle.bench import BenchOptions, run_bench

    options = BenchOptions(
        n_prompt=args.n_prompt,
        n_gen=args.n_gen,
        repetitions=args.repetitions,
        n_ctx=args.n_prompt + args.n_gen,
        n_threads=args.threads,
        bandwidth=False,
    )
    ours = {(r.n_prompt, r.n_gen): r for r in run_bench(args.model, options).rows}
    print(f"{'test':8} {'llama-bench t/s':>18} {'lifecycle t/s':>18} {'diff':>7}")
    worst = 0.0
    for key, row in sorted(ours.items()):
        ref = theirs.get(key)
        if ref is None:
            continue
        diff = (row.avg_ts - ref["avg_ts"]) / ref["avg_ts"] * 100
        worst = max(worst, abs(diff))
        print(
            f"{row.test:8} {ref['avg_ts']:10.2f} ± {ref['stddev_ts']:<6.2f} "
            f"{row.avg_ts:10.2f} ± {row.stddev_ts:<6.2f} {diff:+6.1f}%"
        )
    print(f"largest difference: {worst:.1f}% (bound: 10%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
