"""What recording decision margins costs: the example's eval with margins and without.

Every sampled step computes its decision margin (lifecycle.engines.margins): in free mode two
reductions over the vocabulary, under a grammar a bound first and the 64-logit probe or the
cached mask only when the bound could be the smallest. "Without" replaces the margin
computation with a constant in this process (a benchmark-only switch: the tool always records
margins). Rounds alternate the two; the median seconds of each, their ratio, and whether the
outputs are the same (they must be: margins only observe) are printed.

    python benchmarks/margin_cost.py [--workspace .] [--variant NAME] [--rounds 3]
        [--limit N] [--parallel 4]

Never a pass/fail; say which CPU the figures came from when quoting them.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import platform
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import llama_cpp  # noqa: F401  (before numpy, as the engine commands do)

from lifecycle.config import load_workspace
from lifecycle.engines import llama_cpp as engine_module
from lifecycle.hostinfo import cpu_info
from lifecycle.runner import EvalOptions, run_eval
from lifecycle.store import Store
from lifecycle.variants import resolve_variants


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, default=Path("."))
    parser.add_argument("--variant", help="variant name (default: the first of the matrix)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--limit", type=int, help="first N cases of each suite")
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    workspace = load_workspace(args.workspace.resolve())
    variants = resolve_variants(workspace, Store(workspace.home), None)
    variant = next((v for v in variants if v.name == args.variant), None) or variants[0]
    print(f"variant {variant.name}, free+schema, parallel {args.parallel}, threads {args.threads}")
    print(f"cpu: {cpu_info()[0] or platform.processor()} ({platform.machine()})")
    runs: dict[str, list[float]] = {"with margins": [], "without": []}
    outputs: dict[str, dict[tuple[str, str], str]] = {}
    for round_no in range(args.rounds):
        for label in runs:
            with margins_off() if label == "without" else contextlib.nullcontext():
                seconds, texts = _eval(workspace, variant.name, args)
            runs[label].append(seconds)
            outputs.setdefault(label, texts)
            print(f"  round {round_no + 1}: {label}: {seconds:.1f} s", flush=True)
    with_s, without_s = (statistics.median(runs[k]) for k in runs)
    same = outputs["with margins"] == outputs["without"]
    print(
        f"median {with_s:.1f} s with margins vs {without_s:.1f} s without: "
        f"{with_s / without_s:.3f}x; outputs {'identical' if same else 'DIFFER'}"
    )
    return 0


@contextlib.contextmanager
def margins_off() -> Iterator[None]:
    """The engine with its margin arithmetic replaced by constants (this process only)."""
    best_other = engine_module._best_other
    margin = engine_module.Grammar.margin
    engine_module._best_other = lambda logits, token: -math.inf  # type: ignore[assignment]
    engine_module.Grammar.margin = lambda self, *a, **k: math.inf  # type: ignore[method-assign]
    try:
        yield
    finally:
        engine_module._best_other = best_other
        engine_module.Grammar.margin = margin  # type: ignore[method-assign]


def _eval(workspace: Any, variant: str, args: argparse.Namespace) -> tuple[float, dict]:
    options = EvalOptions(
        models=[variant],
        threads=args.threads,
        limit=args.limit,
        parallel=args.parallel,
        resume=False,
        canary=False,
        answers=False,  # timed: every case generated
    )
    start = time.perf_counter()
    record = run_eval(workspace, options)
    load_s = sum((v.load_ms or 0.0) for v in record.variants) / 1000.0
    return time.perf_counter() - start - load_s, {(c.mode, c.id): c.output for c in record.cases}


if __name__ == "__main__":
    raise SystemExit(main())
