"""What the engine confidence signal costs: an eval with and without ``routed_field``.

Naming ``routed_field`` in a suite's ``[calibration]`` makes the llama-cpp engine record the
probability of the tokens that write the routed value; in schema mode each of those is a
softmax over the tokens the grammar allows at that step. This runs the workspace's suites on
one variant twice per round, alternating — as they are, and from a copy whose suites have no
``[calibration]`` table — decoding one case at a time, and prints the median seconds of each,
their ratio, and whether the outputs are the same (they must be: the signal only observes).

    python benchmarks/logprob_cost.py [--workspace .] [--variant NAME] [--mode schema]
        [--rounds 3] [--limit N] [--threads 2]

Never a pass/fail; say which CPU the figures came from when quoting them.
"""

from __future__ import annotations

import argparse
import platform
import re
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import llama_cpp  # noqa: F401  (before numpy, as the engine commands do)

from lifecycle.config import load_workspace
from lifecycle.hostinfo import cpu_info
from lifecycle.runner import EvalOptions, run_eval
from lifecycle.store import Store
from lifecycle.variants import resolve_variants


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, default=Path("."))
    parser.add_argument("--variant", help="variant name (default: the first of the matrix)")
    parser.add_argument("--mode", default="schema", choices=("free", "schema"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--limit", type=int, help="first N cases of each suite")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    with_signal = load_workspace(args.workspace.resolve())
    with tempfile.TemporaryDirectory() as scratch:
        without_signal = load_workspace(_without_calibration(with_signal.root, Path(scratch)))
        variants = resolve_variants(with_signal, Store(with_signal.home), None)
        variant = next((v for v in variants if v.name == args.variant), None) or variants[0]
        print(f"variant {variant.name}, mode {args.mode}, threads {args.threads}")
        print(f"cpu: {cpu_info()[0] or platform.processor()} ({platform.machine()})")
        runs: dict[str, list[float]] = {"with the signal": [], "without": []}
        outputs: dict[str, dict[tuple[str, str], str]] = {}
        for round_no in range(args.rounds):
            for label, workspace in (("with the signal", with_signal), ("without", without_signal)):
                seconds, texts = _eval(workspace, variant.name, args)
                runs[label].append(seconds)
                outputs.setdefault(label, texts)
                print(f"  round {round_no + 1}: {label}: {seconds:.1f} s", flush=True)
    with_s, without_s = (statistics.median(runs[k]) for k in ("with the signal", "without"))
    same = outputs["with the signal"] == outputs["without"]
    print(
        f"median {with_s:.1f} s with the signal vs {without_s:.1f} s without: "
        f"{with_s / without_s:.2f}x; outputs {'identical' if same else 'DIFFER'}"
    )
    return 0


def _without_calibration(root: Path, scratch: Path) -> Path:
    """A copy of the workspace whose suites have no [calibration] tables."""
    copy = scratch / "workspace"
    for name in ("lifecycle.toml", "modelfiles", "evals", "golden"):
        source = root / name
        if source.is_dir():
            shutil.copytree(source, copy / name)
        elif source.is_file():
            copy.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, copy / name)
    for suite in (copy / "evals").glob("*.toml"):
        text = suite.read_text(encoding="utf-8")
        suite.write_text(re.split(r"(?m)^\[calibration", text)[0], encoding="utf-8")
    return copy


def _eval(workspace: Any, variant: str, args: argparse.Namespace) -> tuple[float, dict]:
    options = EvalOptions(
        models=[variant],
        modes=[args.mode],
        threads=args.threads,
        limit=args.limit,
        parallel=1,
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
