"""The per-case answer cache (lifecycle.answers) on the example workspace, side by side.

1. The first ``smoke --offline --no-bench`` from an empty ``.lifecycle/``: with
   ``--no-cache`` (every answer generated: the behaviour before the cache) against the
   default, where the ctx1024 and ctx2048 variants of a quant share their answers.
2. A pull request that adds 3 golden tickets: ``eval --parallel 1`` after the smoke, counting
   the answers generated per variant, against a full ``eval --parallel 1 --no-cache``.

Each side runs in its own copy of the workspace (same model store), one after the other in
this one run, through the real CLI. ``--cases N`` keeps the first N golden tickets in the
copies, for a busy machine (the ratios hold per case; say so when quoting them).

    python benchmarks/answer_cache.py [--cases 20]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
COPIED = ("lifecycle.toml", "models.lock", "modelfiles", "golden", "evals", "baselines")
NEW_TICKETS = [
    ("pr-invoice-vat", "billing", "Our invoice for March is missing the VAT number we added."),
    ("pr-sso-loop", "technical", "SSO login redirects back to the sign-in page in a loop."),
    ("pr-edu-discount", "sales", "Do you offer a discount for a university with 400 seats?"),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=None, help="keep the first N tickets")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="answer-cache-") as tmp:
        before, after = (
            _copy(Path(tmp) / "before", args.cases),
            _copy(Path(tmp) / "after", args.cases),
        )
        smoke = ["smoke", "--offline", "--no-bench", "--json"]
        old_s, old = _run(before, [*smoke, "--no-cache"])
        new_s, new = _run(after, smoke)
        same = _verdicts(old["run"]) == _verdicts(new["run"])
        print(f"first smoke --no-bench, empty cache: {old_s:.1f} s generating every answer, "
              f"{new_s:.1f} s with the answer cache: ratio {new_s / old_s:.2f} "
              f"(verdicts identical: {same})")  # fmt: skip
        print(f"  answers per variant: {_sources(new['run'])}")

        golden = after / "golden" / "triage.jsonl"
        with golden.open("a", encoding="utf-8") as out:
            for case_id, category, text in NEW_TICKETS:
                ticket = {"id": case_id, "messages": [{"role": "user", "content": text}],
                          "expected": {"category": category, "confidence": 0.9}}  # fmt: skip
                out.write(json.dumps(ticket) + "\n")
        evaluate = ["eval", "--parallel", "1", "--no-resume", "--json", "--exit-zero"]
        pr_s, pr = _run(after, evaluate)
        full_s, _full = _run(after, [*evaluate, "--no-cache"])
        print(f"eval after a PR adding {len(NEW_TICKETS)} tickets: {pr_s:.1f} s, full eval "
              f"--no-cache {full_s:.1f} s: ratio {pr_s / full_s:.2f}")  # fmt: skip
        print(f"  answers per variant: {_sources(pr)}")
    return 0


def _copy(dest: Path, cases: int | None) -> Path:
    dest.mkdir(parents=True)
    for name in COPIED:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, dest / name)
        elif source.exists():
            shutil.copy2(source, dest / name)
    if cases:
        golden = dest / "golden" / "triage.jsonl"
        lines = golden.read_text(encoding="utf-8").splitlines(keepends=True)
        golden.write_text("".join(lines[:cases]), encoding="utf-8")
    return dest


def _run(workspace: Path, args: list[str]) -> tuple[float, dict[str, Any]]:
    command = [sys.executable, "-m", "lifecycle.cli", *args, "--workspace", str(workspace)]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ))
    seconds = time.perf_counter() - started
    if done.returncode not in (0, 3):
        sys.exit(f"{' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    doc = json.loads(done.stdout)
    if "run" in doc and isinstance(doc["run"], str):  # smoke: the run record's path
        doc["run"] = json.loads(Path(doc["run"]).read_text(encoding="utf-8"))
    return seconds, doc


def _verdicts(run: dict[str, Any]) -> dict[tuple[str, str, str], tuple[bool, str]]:
    return {(c["variant"], c["mode"], c["id"]): (c["passed"], c["output"]) for c in run["cases"]}


def _sources(run: dict[str, Any]) -> str:
    counts: Counter[tuple[str, str]] = Counter()
    for case in run["cases"]:
        counts[(case["variant"], "cached" if case.get("cached_from") else "generated")] += 1
    names = sorted({v for v, _ in counts})
    return "; ".join(
        f"{n} {counts[(n, 'generated')]} generated / {counts[(n, 'cached')]} cached" for n in names
    )


if __name__ == "__main__":
    sys.exit(main())
