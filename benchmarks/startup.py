"""Fixed costs of a run: ``lifecycle eval --parallel 1`` against a bare llama-cpp-python loop.

Side by side in one run, each a fresh process over the same rendered prompts (schema mode,
the first ``--limit`` cases of the example's first variant):

- ``bare``: a script that imports llama_cpp, loads the model and generates every prompt;
- ``eval`` as shipped (the crash supervisor forks the child), with ``--no-cache`` so every
  answer is generated; ``eval (exec supervisor)``: the same with the supervisor's child a
  second interpreter (the way it was before); ``eval (no supervisor)``:
  ``LIFECYCLE_NO_SUPERVISOR=1``.

Each side's fixed cost is its wall time minus its own model load and generation time (the
run record's load_ms and latencies; the bare script's own clocks). Also printed: the import
cost deepdiff adds when a mismatch needs it (imported lazily now).

    python benchmarks/startup.py [--limit 24] [--rounds 1]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXEC_SUPERVISOR = (
    "import sys; import lifecycle.cli; from lifecycle import crashguard; "
    "sys.exit(crashguard.supervise(sys.argv[1:]))"
)
BARE = """
import json, sys, time
started = time.perf_counter()
from llama_cpp import Llama, LlamaGrammar
job = json.load(open(sys.argv[1]))
loading = time.perf_counter()
llm = Llama(model_path=job["model"], n_ctx=job["n_ctx"], n_threads=job["threads"],
            n_threads_batch=job["threads"], n_batch=job["n_batch"], seed=job["seed"], verbose=False)
loaded = time.perf_counter()
grammar = LlamaGrammar.from_json_schema(json.dumps(job["schema"]), verbose=False)
for prompt in job["prompts"]:
    llm.create_completion(prompt=prompt, grammar=grammar, **job["sampling"])
done = time.perf_counter()
llm.close()
print(json.dumps({"import_s": loading - started, "load_s": loaded - loading,
                  "generate_s": done - loaded}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--limit", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    job, variant = _job(args.limit)
    with tempfile.TemporaryDirectory() as tmp:
        job_path = Path(tmp) / "job.json"
        job_path.write_text(json.dumps(job), encoding="utf-8")
        workspace = Path(tmp) / "ws"  # a copy: the runs it records stay out of the checkout
        workspace.mkdir()
        for name in ("lifecycle.toml", "models.lock", "modelfiles", "golden", "evals"):
            source = ROOT / name
            if source.is_dir():
                shutil.copytree(source, workspace / name)
            elif source.exists():
                shutil.copy2(source, workspace / name)
        eval_args = ["eval", "-C", str(workspace), "-m", variant, "--mode", "schema", "--parallel"]
        eval_args += ["1", "--limit", str(args.limit), "--no-cache", "--no-resume", "--json"]
        eval_args += ["-q", "--exit-zero"]
        py = sys.executable
        sides = {
            "bare llama-cpp-python": ([py, "-c", BARE, str(job_path)], {}),
            "eval": ([py, "-m", "lifecycle.cli", *eval_args], {}),
            "eval (exec supervisor)": ([py, "-c", EXEC_SUPERVISOR, *eval_args], {}),
            "eval (no supervisor)": (
                [py, "-m", "lifecycle.cli", *eval_args],
                {"LIFECYCLE_NO_SUPERVISOR": "1"},
            ),
        }
        walls: dict[str, list[float]] = {name: [] for name in sides}
        fixed: dict[str, list[float]] = {name: [] for name in sides}
        for _ in range(args.rounds):
            for name, (command, env) in sides.items():
                started = time.perf_counter()
                done = subprocess.run(
                    command, capture_output=True, text=True, env={**os.environ, **env}
                )
                wall = time.perf_counter() - started
                if done.returncode not in (0, 3):
                    sys.exit(f"{name} failed ({done.returncode}): {done.stderr[-2000:]}")
                walls[name].append(wall)
                fixed[name].append(wall - _work_s(json.loads(done.stdout)))
    floor = _median_wall([sys.executable, "-c", "pass"])
    cli_import = _median_wall([sys.executable, "-c", "import lifecycle.cli"])
    golden = _median_wall([sys.executable, "-c", "import lifecycle.golden"])
    with_diff = _median_wall([sys.executable, "-c", "import lifecycle.golden, deepdiff"])

    bare = statistics.median(walls["bare llama-cpp-python"])
    print(f"{args.limit} cases, schema mode, {variant}, --parallel 1")
    for name in sides:
        wall = statistics.median(walls[name])
        print(
            f"  {name:24} {wall:6.2f} s  ({wall / bare:.2f}x bare), fixed cost "
            f"{statistics.median(fixed[name]):.2f} s"
        )
    print(f"python -c pass {floor:.2f} s; import lifecycle.cli {cli_import:.2f} s")
    print(f"deepdiff on top of lifecycle.golden: {with_diff - golden:+.2f} s (lazy now)")
    return 0


def _job(limit: int) -> tuple[dict[str, object], str]:
    from lifecycle.config import load_workspace
    from lifecycle.gguf import read_gguf
    from lifecycle.golden import load_suites
    from lifecycle.prompt import render_prompt
    from lifecycle.store import Store
    from lifecycle.variants import resolve_variants

    workspace = load_workspace(ROOT)
    variant = resolve_variants(workspace, Store(workspace.home))[0]
    suite = load_suites(workspace.evals_dir, list(workspace.models[variant.model].suites))[0]
    template = read_gguf(variant.blob_path).chat_template
    prompts = [
        render_prompt(variant.modelfile, c.messages, chat_template=template)
        for c in suite.cases[:limit]
    ]
    params = variant.modelfile.parameters
    num_predict = int(variant.parameter("num_predict"))
    job = {
        "model": str(variant.blob_path),
        "n_ctx": int(variant.parameter("num_ctx")),
        "threads": int(params.get("num_thread") or workspace.engine.threads or 2),
        "n_batch": workspace.engine.batch_size,
        "seed": workspace.engine.seed,
        "schema": suite.schema,
        "prompts": prompts,
        "sampling": {
            "max_tokens": min(suite.max_tokens, num_predict)
            if num_predict > 0
            else suite.max_tokens,
            "temperature": float(variant.parameter("temperature")),
            "top_k": int(variant.parameter("top_k")),
            "top_p": float(variant.parameter("top_p")),
            "min_p": float(variant.parameter("min_p")),
            "repeat_penalty": float(variant.parameter("repeat_penalty")),
            "stop": list(params.get("stop", [])),
            "seed": int(params.get("seed", workspace.engine.seed)),
        },
    }
    return job, variant.name


def _work_s(doc: dict[str, object]) -> float:
    """Model load + generation seconds, from a run record or the bare script's report."""
    if "generate_s" in doc:
        return float(doc["load_s"]) + float(doc["generate_s"])  # type: ignore[arg-type]
    cases = doc["cases"]
    load_ms = sum(float(v.get("load_ms") or 0.0) for v in doc["variants"])  # type: ignore[attr-defined]
    return (load_ms + sum(float(c["latency_ms"]) for c in cases)) / 1000.0  # type: ignore[attr-defined]


def _median_wall(command: list[str], n: int = 3) -> float:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


if __name__ == "__main__":
    sys.exit(main())
