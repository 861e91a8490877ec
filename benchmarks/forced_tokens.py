"""Schema mode with forced-token fast-forward (llguidance) against the GBNF path, side by side.

Runs a workspace's schema-mode cases (default: the example's 60 triage tickets) on one
variant through ``lifecycle``'s runner, alternating the two schema decoders round after
round at each N (``parallel 1`` = sequential, ``4`` = batched), so both are measured under
the same machine load:

- before: ``LIFECYCLE_SCHEMA_DECODER=gbnf``, llama.cpp's grammar compiled from the schema,
  every output token sampled;
- after: llguidance, separators fixed to the golden format, the tokens the schema forces
  decoded together with the sampled token before them.

    python benchmarks/forced_tokens.py [--workspace .] [--variant NAME] [--parallel 1,4]
        [--rounds 3] [--limit N] [--threads 2]

Prints per path: seconds (median), the ratio after/before measured in the same rounds
(before's time over after's: above 1 is faster), decode steps per answer (sampling steps:
output tokens minus forced ones), the forced share of output tokens, and every case whose
verdict or text differs from the GBNF path's at the same N, with the GBNF answer's margins.
Never a pass/fail.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import llama_cpp  # noqa: F401  (before numpy, as the engine commands do)

from lifecycle.config import load_workspace
from lifecycle.engines.structured import ENV_DECODER
from lifecycle.hostinfo import cpu_info
from lifecycle.runner import EvalOptions, run_eval
from lifecycle.store import Store
from lifecycle.variants import resolve_variants


@dataclass
class Path_:
    """One decoder at one N, and what it produced in each round."""

    decoder: str  # "gbnf" or "llguidance"
    parallel: int
    seconds: list[float] = field(default_factory=list)
    cases: dict[str, Any] = field(default_factory=dict)  # case id -> CaseResult (last round)
    steps: list[float] = field(default_factory=list)  # sampled tokens per answer
    forced_share: list[float] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.decoder} N={self.parallel}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, default=Path("."))
    parser.add_argument("--variant", help="variant name (default: the first of the matrix)")
    parser.add_argument("--parallel", default="1,4", help="N values, comma-separated")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--limit", type=int, help="first N cases of each suite")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    workspace = load_workspace(args.workspace.resolve())
    store = Store(workspace.home)
    variants = resolve_variants(workspace, store, None)
    variant = next((v for v in variants if v.name == args.variant), None) or variants[0]
    levels = [int(n) for n in args.parallel.split(",") if n.strip()]
    print(f"variant {variant.name} ({variant.blob_digest[:19]}), threads {args.threads}")
    print(f"cpu: {cpu_info()[0]} ({platform.machine()}), {args.rounds} round(s)")
    print(f"load average at start: {os.getloadavg()[0]:.2f} (other work shares the machine)")

    paths = [Path_(d, n) for n in levels for d in ("gbnf", "llguidance")]
    for round_no in range(args.rounds):
        # Alternate the order inside each round too, so neither decoder always runs first.
        order = paths if round_no % 2 == 0 else [p for n in levels for p in _pair(paths, n)[::-1]]
        for path in order:
            _run(workspace, variant, path, args)
            print(
                f"  round {round_no + 1}: {path.label}: {path.seconds[-1]:.1f} s "
                f"(load {os.getloadavg()[0]:.2f})",
                flush=True,
            )
    _report(paths, levels)
    return 0


def _pair(paths: list[Path_], n: int) -> list[Path_]:
    return [p for p in paths if p.parallel == n]


def _run(workspace: Any, variant: Any, path: Path_, args: argparse.Namespace) -> None:
    os.environ[ENV_DECODER] = path.decoder
    options = EvalOptions(
        threads=args.threads,
        limit=args.limit,
        parallel=path.parallel,
        resume=False,
        canary=False,
        answers=False,  # timed: every case generated
        modes=("schema",),
    )
    start = time.perf_counter()
    record = run_eval(workspace, options, variants=[variant])
    elapsed = time.perf_counter() - start
    load_s = sum((v.load_ms or 0.0) for v in record.variants) / 1000.0
    path.seconds.append(elapsed - load_s)
    schema = [c for c in record.cases if c.mode == "schema"]
    path.cases = {c.id: c for c in schema}
    output = sum(c.completion_tokens for c in schema)
    forced = sum(c.forced_tokens or 0 for c in schema)
    path.steps.append((output - forced) / max(len(schema), 1))
    path.forced_share.append(forced / output if output else 0.0)


def _report(paths: list[Path_], levels: list[int]) -> None:
    print()
    print("schema mode; medians over rounds; busy machine (see the load averages above)")
    header = (
        f"{'path':<18} {'seconds':>8} {'speed-up':>9} {'sampled/answer':>15} "
        f"{'forced':>7} {'passed':>7}"
    )
    print(header)
    print("-" * len(header))
    for n in levels:
        before, after = _pair(paths, n)
        ratios = [b / a for b, a in zip(before.seconds, after.seconds, strict=True)]
        for path in (before, after):
            passed = sum(c.passed for c in path.cases.values())
            ratio = f"{statistics.median(ratios):.2f}x" if path is after else "1.00x"
            print(
                f"{path.label:<18} {statistics.median(path.seconds):>8.1f} {ratio:>9} "
                f"{statistics.median(path.steps):>15.2f} "
                f"{statistics.median(path.forced_share):>6.0%} {passed:>3}/{len(path.cases)}"
            )
        _flips(before, after)
    if len(levels) > 1:
        base = _pair(paths, levels[0])[0]
        for n in levels[1:]:
            after = _pair(paths, n)[1]
            ratios = [b / a for b, a in zip(base.seconds, after.seconds, strict=True)]
            print(f"{after.label} vs {base.label}: {statistics.median(ratios):.2f}x (same rounds)")


def _flips(before: Path_, after: Path_) -> None:
    texts = [i for i, c in after.cases.items() if c.output != before.cases[i].output]
    verdicts = [i for i in texts if after.cases[i].passed != before.cases[i].passed]
    print(
        f"  N={after.parallel}: {len(texts)} output(s) differ from GBNF's, "
        f"{len(verdicts)} verdict(s) flip"
    )
    for case_id in texts:
        b, a = before.cases[case_id], after.cases[case_id]
        same_answer = b.parsed == a.parsed
        kind = "VERDICT " if case_id in verdicts else ("format  " if same_answer else "answer  ")
        print(
            f"    {kind}{case_id}: {json.dumps(b.output)} -> {json.dumps(a.output)}; "
            f"GBNF margin {b.margin} (field {b.field_margin}), "
            f"llguidance margin {a.margin} (field {a.field_margin})"
        )


if __name__ == "__main__":
    raise SystemExit(main())
