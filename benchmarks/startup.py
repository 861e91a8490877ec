"""Fixed costs of a run: ``lifecycle eval --parallel 1`` against a bare llama-cpp-python loop.

Each side is a fresh process over the same rendered prompts (the first ``--limit`` cases of
the example's first variant, free mode by default), the sides alternating round by round:

- ``bare``: a script that imports llama_cpp, loads the model, generates every prompt and
  closes the model: the floor any tool pays;
- ``eval``: ``python -m lifecycle.cli eval ... --parallel 1 --no-cache`` as shipped (under
  the crash supervisor), and ``eval (no supervisor)`` with ``LIFECYCLE_NO_SUPERVISOR=1``;
- ``eval (baseline)``: with ``--baseline-tree DIR``, the same command run from another source
  tree (e.g. ``git archive <commit> | tar -x -C DIR``), for a before/after in one run.

A side's fixed cost is its wall time minus its own model load and generation time (the run
record's ``load_ms`` and per-case ``latency_ms``; the bare script's own clocks), so the cases'
speed (and the load on a shared machine) mostly cancels out. ``excess`` is eval's fixed cost
minus the bare loop's in the same round: what the tool adds to a run (target: under 0.5 s).
The sources are byte-compiled first: an installed package has its ``.pyc`` files, and with
``PYTHONDONTWRITEBYTECODE`` set every run would otherwise recompile the whole package. Every
side runs from a directory without a ``lifecycle`` package (``python -m`` and ``-c`` put the
working directory first on ``sys.path``, so run from a checkout both trees would run the
checkout's code), and each tree is checked to import its own ``lifecycle`` before the rounds.

    python benchmarks/startup.py [--limit 8] [--rounds 5] [--mode free|schema]
                                 [--baseline-tree DIR]

Schema mode is no fair floor: llama-cpp-python's grammar sampler masks Gemma's whole
262k-token vocabulary at every step, so the bare loop takes minutes.
"""

from __future__ import annotations

import argparse
import compileall
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
WORKSPACE_FILES = ("lifecycle.toml", "models.lock", "modelfiles", "golden", "evals")
BARE = """
import json, sys, time
started = time.perf_counter()
from llama_cpp import Llama, LlamaGrammar
job = json.load(open(sys.argv[1]))
loading = time.perf_counter()
llm = Llama(model_path=job["model"], n_ctx=job["n_ctx"], n_threads=job["threads"],
            n_threads_batch=job["threads"], n_batch=job["n_batch"], seed=job["seed"], verbose=False)
loaded = time.perf_counter()
grammar = None
if job["schema"] is not None:
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
    parser.add_argument("--limit", type=int, default=8, help="cases (the first N of the suite)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds, after a warm-up")
    parser.add_argument("--mode", choices=("free", "schema"), default="free")
    parser.add_argument(
        "--baseline-tree", type=Path, help="another source tree to run `eval` from, side by side"
    )
    args = parser.parse_args()
    job, variant = _job(args.limit, args.mode)
    trees = {"eval": ROOT}
    if args.baseline_tree:
        trees["eval (baseline)"] = args.baseline_tree.resolve()
    for tree in trees.values():
        compileall.compile_dir(tree / "lifecycle", quiet=1)
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        neutral = Path(tmp) / "cwd"  # no `lifecycle` here: PYTHONPATH decides which tree runs
        neutral.mkdir()
        for tree in trees.values():
            _check_tree(py, tree, neutral)
        job_path = Path(tmp) / "job.json"
        job_path.write_text(json.dumps(job), encoding="utf-8")
        sides: dict[str, tuple[list[str], dict[str, str]]] = {
            "bare llama-cpp-python": ([py, "-c", BARE, str(job_path)], {}),
        }
        for name, tree in trees.items():
            # Each tree evaluates its own copy of the example: the runs it records stay out of
            # the checkout, and a baseline tree reads the workspace format it knows.
            workspace = Path(tmp) / name.replace(" ", "_").strip("()")
            _copy_workspace(tree, workspace)
            command = [py, "-m", "lifecycle.cli", *_eval_args(workspace, variant, args)]
            sides[name] = (command, {"PYTHONPATH": str(tree)})
            if tree == ROOT:
                sides["eval (no supervisor)"] = (
                    command,
                    {"PYTHONPATH": str(tree), "LIFECYCLE_NO_SUPERVISOR": "1"},
                )
        loads = [os.getloadavg()[0]]
        for name, (command, env) in sides.items():  # warm-up: page cache, canary cache
            _run(name, command, env, neutral)
        walls: dict[str, list[float]] = {name: [] for name in sides}
        fixed: dict[str, list[float]] = {name: [] for name in sides}
        for _ in range(args.rounds):
            for name, (command, env) in sides.items():
                wall, work = _run(name, command, env, neutral)
                walls[name].append(wall)
                fixed[name].append(wall - work)
            loads.append(os.getloadavg()[0])
            row = ", ".join(f"{name} {values[-1]:.2f}" for name, values in fixed.items())
            print(f"round {len(loads) - 1}: fixed cost (s) {row}", flush=True)

        bare_name = "bare llama-cpp-python"
        print(
            f"{args.limit} cases, {args.mode} mode, {variant}, --parallel 1; {args.rounds} rounds "
            f"after a warm-up; {os.cpu_count()} CPUs, "
            f"load average {min(loads):.1f}-{max(loads):.1f}"
        )
        print(f"  {'side':24} {'wall':>8} {'fixed cost':>11} {'excess over bare':>17}")
        for name in sides:
            excess = [f - b for f, b in zip(fixed[name], fixed[bare_name], strict=True)]
            print(
                f"  {name:24} {statistics.median(walls[name]):6.2f} s "
                f"{statistics.median(fixed[name]):9.2f} s "
                + ("" if name == bare_name else f"{statistics.median(excess):+15.2f} s")
            )
        print("  (medians; fixed cost = wall - model load - generation; excess paired per round)")
        floor = _median_wall([py, "-c", "pass"], neutral)
        engine = _median_wall([py, "-c", "import llama_cpp"], neutral)
        print(f"python -c pass {floor:.3f} s; import llama_cpp {engine:.3f} s")
        for name, tree in trees.items():
            env = {**os.environ, "PYTHONPATH": str(tree)}
            cli = _median_wall([py, "-c", "import lifecycle.cli"], neutral, env=env)
            runner = _median_wall(
                [py, "-c", "import llama_cpp, lifecycle.runner"], neutral, env=env
            )
            print(
                f"{name}: import lifecycle.cli {cli:.3f} s; lifecycle.runner on top of llama_cpp "
                f"{runner - engine:+.3f} s"
            )

    return 0


def _eval_args(workspace: Path, variant: str, args: argparse.Namespace) -> list[str]:
    return [
        *("eval", "-C", str(workspace), "-m", variant, "--mode", args.mode, "--parallel", "1"),
        *("--limit", str(args.limit), "--no-cache", "--no-resume", "--json", "-q", "--exit-zero"),
    ]


def _copy_workspace(tree: Path, workspace: Path) -> None:
    workspace.mkdir()
    for name in WORKSPACE_FILES:
        source = tree / name
        if source.is_dir():
            shutil.copytree(source, workspace / name)
        elif source.exists():
            shutil.copy2(source, workspace / name)


def _check_tree(py: str, tree: Path, cwd: Path) -> None:
    """Fail unless ``PYTHONPATH=tree`` imports that tree's ``lifecycle`` from ``cwd``."""
    done = subprocess.run(
        [py, "-c", "import lifecycle; print(lifecycle.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(tree)},
    )
    found = Path(done.stdout.strip()).resolve()
    if not found.is_relative_to(tree.resolve()):
        sys.exit(f"PYTHONPATH={tree} imports lifecycle from {found}, not from that tree")


def _run(name: str, command: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """(wall seconds, model load + generation seconds) of one run of a side."""
    started = time.perf_counter()
    done = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, **env}, cwd=cwd
    )
    wall = time.perf_counter() - started
    if done.returncode not in (0, 3):
        sys.exit(f"{name} failed ({done.returncode}): {done.stderr[-2000:]}")
    return wall, _work_s(json.loads(done.stdout))


def _job(limit: int, mode: str) -> tuple[dict[str, object], str]:
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
        "schema": suite.schema if mode == "schema" else None,
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


def _median_wall(
    command: list[str], cwd: Path, n: int = 5, env: dict[str, str] | None = None
) -> float:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, env=env, cwd=cwd)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


if __name__ == "__main__":
    sys.exit(main())
