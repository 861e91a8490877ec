"""The SLA gate on the example: a Modelfile change that doubles the prompt fails it.

In a copy of the example workspace reduced to the served variant (harbor-triage:q4_k_m-ctx1024,
4 slots, 2 clients, sla_p95_ms from lifecycle.toml) and the first ``--cases`` tickets:

1. ``smoke --offline --no-bench --load`` pins the variant here, with its load test (p95 at the
   [serve] concurrency) and this machine's environment in models.lock;
2. every MESSAGE few-shot of the Modelfile is repeated once (the prompt about doubles);
3. ``smoke --offline --no-bench --load`` again: the gate judges the new p95 against the SLA on
   the same machine.

Prints both load tests' percentiles, the prompt lengths and the gate's latency checks. The
SLA is judged only when the machine was quiet during the load test (``busy`` below the gate's
``max_foreign_cpu_share``): run it on a quiet machine.

    python benchmarks/latency_gate.py [--cases 16] [--sla-ms MS]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
COPIED = ("lifecycle.toml", "modelfiles", "golden", "evals")
VARIANT = "harbor-triage:q4_k_m-ctx1024"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=16, help="golden tickets kept (default 16)")
    parser.add_argument("--sla-ms", type=float, help="override [serve] sla_p95_ms")
    args = parser.parse_args()
    lifecycle = str(Path(sys.executable).with_name("lifecycle"))
    with tempfile.TemporaryDirectory(prefix="latency-gate-") as tmp:
        work = Path(tmp) / "ws"
        _copy_example(work, args.cases, args.sla_ms)
        env = {**os.environ, "LIFECYCLE_NO_PROGRESS": "1"}
        subprocess.run(["git", "init", "-q", str(work)], check=True)
        before = _smoke(lifecycle, work, env)
        modelfile = work / "modelfiles" / "harbor-triage.Modelfile"
        modelfile.write_text(_doubled_few_shots(modelfile.read_text()), encoding="utf-8")
        after = _smoke(lifecycle, work, env)
    for label, (code, doc) in (("pinned", before), ("doubled prompt", after)):
        print(f"--- {label}: smoke exit {code}")
        for load in doc.get("load") or []:
            print(
                f"p50/p95/p99 {_ms(load, 'p50')}/{_ms(load, 'p95')}/{_ms(load, 'p99')} ms "
                f"at concurrency {load.get('concurrency')}, SLA p95 {load.get('sla_p95_ms')} ms, "
                f"busy {load.get('foreign_cpu_share', 0):.0%}"
            )
        for check in doc["gate"]["checks"]:
            if check["name"] in ("latency_p95_ms", "ttft_p95_ms"):
                print(f"gate {check['variant']}: {check['status']}: {check['message']}")
        if doc.get("load_skipped"):
            print(f"load: {doc['load_skipped']}")
    return 0


def _copy_example(work: Path, cases: int, sla_ms: float | None) -> None:
    work.mkdir(parents=True)
    for name in COPIED:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, work / name)
        else:
            shutil.copy2(source, work / name)
    golden = work / "golden" / "triage.jsonl"
    golden.write_text("".join(golden.read_text().splitlines(keepends=True)[:cases]))
    config = (work / "lifecycle.toml").read_text()
    config = config.replace('quant = ["Q4_K_M", "Q4_0"]', 'quant = ["Q4_K_M"]')
    config = config.replace("num_ctx = [1024, 2048]", "num_ctx = [1024]")
    # Only the served variant stays resident; the other would name a variant outside the matrix.
    config = re.sub(r'\n\[serve\.models\."harbor-triage:q4_k_m-ctx2048"\][^\[]*', "\n", config)
    config = re.sub(r"\[models\.harbor-kb\][^\[]*", "", config)  # the kb model, if present
    if sla_ms is not None:
        config = re.sub(r"sla_p95_ms = \d+", f"sla_p95_ms = {sla_ms:g}", config)
    (work / "lifecycle.toml").write_text(config)


def _doubled_few_shots(text: str) -> str:
    """Every MESSAGE line of the Modelfile written twice, in order (history repeated)."""
    lines = text.splitlines(keepends=True)
    messages = [line for line in lines if line.startswith("MESSAGE ")]
    return "".join(lines) + "".join(messages)


def _smoke(lifecycle: str, work: Path, env: dict[str, str]) -> tuple[int, dict[str, Any]]:
    command = [lifecycle, "smoke", "-C", str(work), "--offline", "--no-bench", "--load", "--json"]
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if not done.stdout.strip():
        sys.exit(f"smoke failed ({done.returncode}): {done.stderr[-2000:]}")
    return done.returncode, json.loads(done.stdout)


def _ms(load: dict[str, Any], q: str) -> str:
    value = load.get(f"latency_{q}_ms")
    return "-" if value is None else f"{value:.0f}"


if __name__ == "__main__":
    raise SystemExit(main())
