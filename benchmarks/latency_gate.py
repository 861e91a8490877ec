"""The SLA gate on the example: a Modelfile change that doubles the prompt fails it.

In a copy of the example workspace reduced to the served variant (harbor-triage:q4_k_m-ctx1024,
4 slots, 2 clients, sla_p95_ms from lifecycle.toml) and the first ``--cases`` tickets:

1. ``smoke --offline --no-bench --load`` pins the variant here, with its load test (p95 at the
   [serve] concurrency) and this machine's environment in models.lock;
2. one Modelfile change at a time, each judged by ``smoke --offline --no-bench --load`` against
   that pin (the workspace is reset between them), on the same machine:
   - ``few-shots``: every MESSAGE few-shot written twice (the shared prefix doubles; a server's
     prompt cache, and the load test's, decode it once per slot);
   - ``instructions``: the TEMPLATE repeats the SYSTEM instructions after the ticket (a
     "sandwich" prompt): the tokens each request decodes beyond the shared prefix about triple.

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
        git = ["git", "-C", str(work), "-c", "user.name=bench", "-c", "user.email=b@example.com"]
        subprocess.run([*git, "init", "-q"], check=True)
        results = [("pinned", _smoke(lifecycle, work, env))]
        subprocess.run([*git, "add", "-A", "."], check=True)
        subprocess.run([*git, "commit", "-qm", "pinned"], check=True)
        modelfile = work / "modelfiles" / "harbor-triage.Modelfile"
        pinned = modelfile.read_text(encoding="utf-8")
        for label, change in (("few-shots", _doubled_few_shots), ("instructions", _sandwich)):
            modelfile.write_text(change(pinned), encoding="utf-8")
            results.append((label, _smoke(lifecycle, work, env)))
            subprocess.run([*git, "checkout", "-q", "--", "."], check=True)
    for label, (code, doc) in results:
        print(f"--- {label}: smoke exit {code}; {doc['prompt_tokens']:.0f} prompt tokens per case")
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
    # Only the served variant stays resident (the other would name a variant outside the
    # matrix), and the knowledge-base model goes: this is about the triage model's latency.
    config = _drop_table(config, '[serve.models."harbor-triage:q4_k_m-ctx2048"]')
    config = _drop_table(config, "[models.harbor-kb]")
    if sla_ms is not None:
        config = re.sub(r"sla_p95_ms = \d+", f"sla_p95_ms = {sla_ms:g}", config)
    (work / "lifecycle.toml").write_text(config)


def _drop_table(config: str, header: str) -> str:
    """``config`` without the TOML table ``header`` (its lines up to the next table)."""
    out, dropping = [], False
    for line in config.splitlines(keepends=True):
        if line.startswith("["):
            dropping = line.strip() == header
        if not dropping:
            out.append(line)
    return "".join(out)


def _doubled_few_shots(text: str) -> str:
    """Every MESSAGE line of the Modelfile written twice, in order (history repeated)."""
    lines = text.splitlines(keepends=True)
    messages = [line for line in lines if line.startswith("MESSAGE ")]
    return "".join(lines) + "".join(messages)


def _sandwich(text: str) -> str:
    """The TEMPLATE restating the SYSTEM instructions after the ticket being answered."""
    before = "Ticket: {{ .Content }}\nJSON:"
    if before not in text:
        sys.exit("the example's TEMPLATE changed: update benchmarks/latency_gate.py")
    after = "Ticket: {{ .Content }}\n{{ if $last }}Remember: {{ $.System }}\n{{ end }}JSON:"
    return text.replace(before, after)


def _smoke(lifecycle: str, work: Path, env: dict[str, str]) -> tuple[int, dict[str, Any]]:
    command = [lifecycle, "smoke", "-C", str(work), "--offline", "--no-bench", "--load", "--json"]
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if not done.stdout.strip():
        sys.exit(f"smoke failed ({done.returncode}): {done.stderr[-2000:]}")
    doc = json.loads(done.stdout)
    run = json.loads(Path(doc["run"]).read_text(encoding="utf-8"))
    tokens = [c["prompt_tokens"] for c in run["cases"] if c.get("prompt_tokens")]
    doc["prompt_tokens"] = sum(tokens) / len(tokens) if tokens else 0.0
    return done.returncode, doc


def _ms(load: dict[str, Any], q: str) -> str:
    value = load.get(f"latency_{q}_ms")
    return "-" if value is None else f"{value:.0f}"


if __name__ == "__main__":
    raise SystemExit(main())
