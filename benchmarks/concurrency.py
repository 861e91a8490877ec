"""Throughput of the openai engine at concurrency 1, 2, 4 against llama-cpp-python's server.

Starts ``python -m llama_cpp.server`` on loopback with the tests' tiny GGUF (or ``--model``),
sends the same golden-style cases through :func:`lifecycle.engines.generate_many` at each
concurrency and prints cases/s, completion tokens/s and latency percentiles side by side.

llama-cpp-python's server decodes one request at a time (a lock around its single context),
so extra concurrency mostly adds queueing latency there; a server with parallel slots
(``llama-server -np 4``, vLLM) is where concurrency raises throughput.

    python benchmarks/concurrency.py [--model PATH] [--cases 16] [--max-tokens 32]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from test_engine_openai import GEMMA_TEMPLATE, start_llama_server
from tinymodel import write_tiny_llama

from lifecycle.engines import (
    Generation,
    GenerationRequest,
    LoadOptions,
    generate_many,
    get_engine,
)

TICKETS = [
    "I was charged twice this month.",
    "The API returns HTTP 500 on every call.",
    "How much for 200 seats?",
    "Please send a receipt for INV-2231.",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="GGUF to serve (default: the tiny model)")
    parser.add_argument("--cases", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--levels", default="1,2,4")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model_path = args.model or write_tiny_llama(
            Path(tmp) / "tiny-chat.gguf", chat_template=GEMMA_TEMPLATE
        )
        process, url = start_llama_server(model_path)
        try:
            model = get_engine("openai", base_url=url).load(model_path, LoadOptions())
            requests = [
                GenerationRequest(
                    prompt="",
                    messages=({"role": "user", "content": f"{TICKETS[i % 4]} (#{i})"},),
                    max_tokens=args.max_tokens,
                    seed=i,
                )
                for i in range(args.cases)
            ]
            generate_many(model, requests[:2], concurrency=1)  # warm up
            print(f"server: llama-cpp-python {url}, model {model_path.name}, {args.cases} cases")
            print(f"{'concurrency':>11} {'cases/s':>8} {'tok/s':>8} {'p50 ms':>8} {'p95 ms':>8}")
            for level in (int(x) for x in args.levels.split(",")):
                start = time.perf_counter()
                results = generate_many(model, requests, concurrency=level)
                wall = time.perf_counter() - start
                done = [r for r in results if isinstance(r, Generation)]
                if len(done) != len(results):
                    print(f"{level:>11} {len(results) - len(done)} cases failed", file=sys.stderr)
                tokens = sum(g.completion_tokens for g in done)
                latencies = sorted(g.latency_ms for g in done)
                p95 = latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))]
                print(
                    f"{level:>11} {len(done) / wall:>8.2f} {tokens / wall:>8.1f} "
                    f"{statistics.median(latencies):>8.0f} {p95:>8.0f}"
                )
        finally:
            process.terminate()
            process.wait(timeout=30)


if __name__ == "__main__":
    main()
