"""Harness overhead: `lifecycle eval` vs a bare llama-cpp-python loop, same generations.

Both sides run in this one process on the same model file, with the same prompts, sampling
parameters, grammar and max_tokens; each loads the model once. The bare loop does nothing but
generate (prompts are rendered before its clock starts); lifecycle also renders templates,
tokenizes, scores every output (JSON, schema, matchers, diff) and builds the run record. The
sides alternate for ``--repeat`` rounds and the ratio of the median wall times is printed.

    python benchmarks/eval_overhead.py            # the example workspace, all cases, both modes
    python benchmarks/eval_overhead.py --limit 10 --repeat 3

Target: ratio <= 1.05.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from llama_cpp import Llama, LlamaGrammar

from lifecycle.config import load_workspace
from lifecycle.golden import load_suites
from lifecycle.prompt import render_prompt
from lifecycle.runner import EvalOptions, run_eval
from lifecycle.store import Store
from lifecycle.variants import resolve_variants


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workspace", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--limit", type=int, default=None, help="first N cases per suite")
    parser.add_argument("--repeat", type=int, default=3, help="alternating rounds per side")
    parser.add_argument("--modes", default="free,schema", help="output modes to run")
    args = parser.parse_args()

    workspace = load_workspace(args.workspace)
    store = Store(workspace.home)
    variant = resolve_variants(workspace, store)[0]  # the first variant of the first model
    settings = workspace.models[variant.model]
    suite = load_suites(workspace.evals_dir, list(settings.suites))[0]
    cases = list(suite.cases[: args.limit] if args.limit else suite.cases)
    modes = args.modes.split(",")
    options = EvalOptions(
        models=[variant.name], suites=[suite.name], modes=modes, limit=args.limit, answers=False
    )

    params = variant.modelfile.parameters
    threads = int(params.get("num_thread") or workspace.engine.threads or 2)
    num_predict = int(variant.parameter("num_predict"))
    max_tokens = min(suite.max_tokens, num_predict) if num_predict > 0 else suite.max_tokens
    prompts = [render_prompt(variant.modelfile, c.messages, chat_template=None) for c in cases]
    sampling = {
        "max_tokens": max_tokens,
        "temperature": float(variant.parameter("temperature")),
        "top_k": int(variant.parameter("top_k")),
        "top_p": float(variant.parameter("top_p")),
        "min_p": float(variant.parameter("min_p")),
        "repeat_penalty": float(variant.parameter("repeat_penalty")),
        "stop": list(params.get("stop", [])),
        "seed": int(params.get("seed", 42)),
    }

    def bare() -> tuple[float, int]:
        import json

        start = time.perf_counter()
        llm = Llama(
            model_path=str(variant.blob_path),
            n_ctx=int(variant.parameter("num_ctx")),
            n_threads=threads,
            n_threads_batch=threads,
            n_batch=workspace.engine.batch_size,
            seed=workspace.engine.seed,
            verbose=False,
        )
        grammar = LlamaGrammar.from_json_schema(json.dumps(suite.schema), verbose=False)
        tokens = 0
        for mode in modes:
            for prompt in prompts:
                out = llm.create_completion(
                    prompt=prompt, grammar=grammar if mode == "schema" else None, **sampling
                )
                tokens += out["usage"]["completion_tokens"]  # type: ignore[index]
        llm.close()
        return time.perf_counter() - start, tokens

    def harness() -> tuple[float, int]:
        start = time.perf_counter()
        record = run_eval(workspace, options, store=store)
        return time.perf_counter() - start, sum(c.completion_tokens for c in record.cases)

    bare_times: list[float] = []
    harness_times: list[float] = []
    for round_index in range(args.repeat):
        h, h_tokens = harness()
        b, b_tokens = bare()
        harness_times.append(h)
        bare_times.append(b)
        print(
            f"round {round_index + 1}: lifecycle {h:.2f} s ({h_tokens} tokens), "
            f"bare llama-cpp-python {b:.2f} s ({b_tokens} tokens)",
            file=sys.stderr,
        )
    ratio = statistics.median(harness_times) / statistics.median(bare_times)
    n = len(cases) * len(modes)
    print(f"variant: {variant.name}; modes: {', '.join(modes)}")
    print(f"generations per side per round: {n} ({len(cases)} cases x {len(modes)} modes)")
    print(f"lifecycle eval median: {statistics.median(harness_times):.2f} s")
    print(f"bare loop median:      {statistics.median(bare_times):.2f} s")
    print(f"overhead ratio:        {ratio:.3f} (target <= 1.05)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
