"""Free mode with prompt-lookup drafting against plain greedy decoding, side by side.

Loads one variant of a workspace (default: the example's first, Gemma 3 270M Q4_K_M) once
per N (``--parallel 1,4``: 1 = the sequential path, more = the batched decoder) and decodes
the free-mode requests of its suites (the prompts the runner sends, rendered the same way)
through the engine, alternating plain decoding (``LIFECYCLE_FREE_DRAFT=off``) and drafting
(``prompt-lookup[:K]`` for each ``--draft`` K) a few cases at a time (one case at N=1, 2N
cases batched: ``--chunk``) in alternating order, so a burst of load from other work falls on
every path alike; a round is every case once on every path. Engine time only: no model
load, no scoring in the timed part.

    python benchmarks/drafting.py [--workspace .] [--variant NAME] [--parallel 1,4]
        [--draft 4,8] [--rounds 3] [--limit N] [--threads 2] [--chunk C] [--dump FILE]

Prints per path: seconds (median), the plain/draft time ratio measured within each round
(above 1: drafting is faster), the draft acceptance rate (draft tokens the model's argmax
agreed with, over draft tokens decoded), output tokens per decode step, and every case whose
text or verdict differs from plain decoding at the same N, with both decision margins (the
whole output's smallest and the routed field's). Never a pass/fail.
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
from lifecycle.engines import get_engine
from lifecycle.engines.drafting import DraftStats
from lifecycle.envnames import ENV_FREE_DRAFT
from lifecycle.gguf import read_gguf
from lifecycle.golden import load_suites, score_output
from lifecycle.hostinfo import cpu_info
from lifecycle.runner import EvalOptions, _load_options, case_request
from lifecycle.store import Store
from lifecycle.variants import resolve_variants


@dataclass
class Path_:
    """Plain decoding or one draft length at one N, and what it produced."""

    draft: str  # LIFECYCLE_FREE_DRAFT's value
    parallel: int
    seconds: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)  # plain's seconds / this one's, per round
    outputs: dict[str, Any] = field(default_factory=dict)  # case id -> Generation (last round)
    stats: DraftStats = field(default_factory=DraftStats)
    tokens: int = 0  # output tokens (last round)

    @property
    def label(self) -> str:
        return f"{'plain' if self.draft == 'off' else self.draft} N={self.parallel}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, default=Path("."))
    parser.add_argument("--variant", help="variant name (default: the first of the matrix)")
    parser.add_argument("--parallel", default="1,4", help="N values, comma-separated")
    parser.add_argument("--draft", default="8", help="draft lengths K, comma-separated")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--limit", type=int, help="first N cases of each suite")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--chunk", type=int, help="cases per alternation (default: 1 at N=1, 2N batched)"
    )
    parser.add_argument("--dump", type=Path, help="write every path's outputs here (JSON)")
    args = parser.parse_args()

    workspace = load_workspace(args.workspace.resolve())
    store = Store(workspace.home)
    variants = resolve_variants(workspace, store, None)
    variant = next((v for v in variants if v.name == args.variant), None) or variants[0]
    levels = [int(n) for n in args.parallel.split(",") if n.strip()]
    drafts = ["off"] + [f"prompt-lookup:{int(k)}" for k in args.draft.split(",") if k.strip()]
    print(f"variant {variant.name} ({variant.blob_digest[:19]}), threads {args.threads}")
    print(f"cpu: {cpu_info()[0]} ({platform.machine()}), {args.rounds} round(s)")
    print(f"load average at start: {os.getloadavg()[0]:.2f} (other work shares the machine)")

    settings = workspace.models[variant.model]
    suites = load_suites(workspace.evals_dir, list(settings.suites))
    chat_template = read_gguf(variant.blob_path).chat_template
    options = EvalOptions(threads=args.threads)
    items = []  # (suite, case, request)
    for suite in suites:
        if "free" not in suite.modes:
            continue
        for case in suite.cases[: args.limit] if args.limit else suite.cases:
            request = case_request(
                variant, suite, "free", case, chat_template, workspace.engine.seed, options
            )
            items.append((suite, case, request))
    requests = [request for _, _, request in items]

    engine = get_engine("llama-cpp")
    models = {}
    for n in levels:
        load = _load_options(workspace, variant, EvalOptions(threads=args.threads, parallel=n))
        models[n] = engine.load(variant.blob_path, load)
    paths = {(n, d): Path_(d, n) for n in levels for d in drafts}
    try:
        for round_no in range(args.rounds):
            for n in levels:
                # Paths alternate chunk by chunk (a few cases each), in alternating order, so
                # a burst of load from other work falls on every path alike.
                size = args.chunk or (1 if n == 1 else 2 * n)
                chunks = [
                    list(range(i, min(i + size, len(items)))) for i in range(0, len(items), size)
                ]
                totals = dict.fromkeys(drafts, 0.0)
                for d in drafts:
                    paths[(n, d)].stats = DraftStats()
                    paths[(n, d)].tokens = 0
                for c, chunk in enumerate(chunks):
                    order = drafts if (c + round_no) % 2 == 0 else list(reversed(drafts))
                    for d in order:
                        totals[d] += _run(models[n], paths[(n, d)], requests, items, chunk)
                for d in drafts:
                    path = paths[(n, d)]
                    path.seconds.append(totals[d])
                    print(
                        f"  round {round_no + 1}: {path.label}: {path.seconds[-1]:.2f} s",
                        flush=True,
                    )
                for d in drafts:
                    paths[(n, d)].ratios.append(totals["off"] / totals[d])
    finally:
        for model in models.values():
            model.close()
    _report(paths, levels, drafts, items)
    if args.dump:
        args.dump.write_text(
            json.dumps(
                {
                    path.label: {
                        cid: {"text": g.text, "margin": g.margin, "field_margin": g.field_margin}
                        for cid, g in path.outputs.items()
                    }
                    for path in paths.values()
                },
                indent=1,
            )
        )
    return 0


def _run(model: Any, path: Path_, requests: list[Any], items: list[Any], chunk: list[int]) -> float:
    """Decode the requests at ``chunk`` on ``path``; their outputs and drafting counts are
    added to the path; returns the seconds it took."""
    os.environ[ENV_FREE_DRAFT] = path.draft
    before = DraftStats(**vars(model.draft_stats))
    outcomes: dict[int, Any] = {}
    start = time.perf_counter()
    model.generate_batch([requests[i] for i in chunk], outcomes.__setitem__)
    elapsed = time.perf_counter() - start
    after = model.draft_stats
    path.stats.verify_steps += after.verify_steps - before.verify_steps
    path.stats.drafted += after.drafted - before.drafted
    path.stats.accepted += after.accepted - before.accepted
    for k, index in enumerate(chunk):
        outcome = outcomes[k]
        if isinstance(outcome, Exception):
            raise outcome
        path.outputs[items[index][1].id] = outcome
        path.tokens += outcome.completion_tokens
    return elapsed


def _report(
    paths: dict[Any, Path_], levels: list[int], drafts: list[str], items: list[Any]
) -> None:
    print()
    print(f"{len(items)} free-mode generations per path; medians over rounds")
    header = (
        f"{'path':<24} {'seconds':>8} {'plain/this':>10} {'accepted':>14} "
        f"{'tok/step':>8} {'pass':>5} flips"
    )
    print(header)
    print("-" * len(header))
    cases = {case.id: (suite, case) for suite, case, _ in items}
    for n in levels:
        plain = paths[(n, "off")]
        for d in drafts:
            path = paths[(n, d)]
            passed = {
                cid: score_output(suite, case, path.outputs[cid].text).passed
                for cid, (suite, case) in cases.items()
            }
            plain_passed = {
                cid: score_output(suite, case, plain.outputs[cid].text).passed
                for cid, (suite, case) in cases.items()
            }
            flips = [cid for cid in cases if path.outputs[cid].text != plain.outputs[cid].text]
            verdicts = [cid for cid in flips if passed[cid] != plain_passed[cid]]
            stats = path.stats
            # Decode steps: one per output token, less the accepted drafts (each accepted
            # token's logits came with an earlier step).
            steps = path.tokens - stats.accepted
            accepted = (
                f"{stats.accepted}/{stats.drafted} {stats.acceptance:.0%}" if stats.drafted else "-"
            )
            print(
                f"{path.label:<24} {statistics.median(path.seconds):>8.2f} "
                f"{statistics.median(path.ratios):>9.2f}x {accepted:>14} "
                f"{path.tokens / steps if steps else 0:>8.2f} {sum(passed.values()):>5} "
                f"{len(flips)} text, {len(verdicts)} verdict"
            )
            if d != "off":
                print(f"    rounds: {', '.join(f'{r:.2f}x' for r in path.ratios)}")
            for cid in flips:
                a, b = plain.outputs[cid], path.outputs[cid]
                print(
                    f"    {cid}: {json.dumps(a.text)[:60]} -> {json.dumps(b.text)[:60]}\n"
                    f"      margins plain {a.margin} (field {a.field_margin}), "
                    f"draft {b.margin} (field {b.field_margin}); "
                    f"verdict {plain_passed[cid]} -> {passed[cid]}"
                )


if __name__ == "__main__":
    raise SystemExit(main())
