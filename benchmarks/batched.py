"""Batched decoding against sequential decoding and against llama-server, side by side.

Runs a workspace's suites (default: the example's 60 triage cases, free and schema modes)
on one variant through ``lifecycle``'s runner, alternating sequential decoding
(``parallel 1``) with batched decoding at each N, round after round, so every figure is
measured under the same machine load. Each path's outputs are compared with the sequential
ones: a differing text or verdict is a flip, listed with its case.

With ``--llama-server PATH`` the same prompts also go to ``llama-server -np N`` (a build of
the llama.cpp that llama-cpp-python vendors; ``--server-parallel`` picks the Ns), N requests
in flight at once through its ``/completion`` endpoint, scored the same way. The server runs
with ``--swa-full`` (unless ``--no-swa-full``): on a sliding-window model such as Gemma 3 it
otherwise cannot reuse the shared few-shot prefix from its prompt cache and decodes every
prompt whole, which is not how a user of the server would run it. ``--bare`` adds a plain
llama-cpp-python loop (``Llama.create_completion`` one prompt after another; it reuses the
longest common prefix of the previous prompt), the library without this tool around it.
Server and bare paths are timed after their model is loaded, as the runner's are.

    python benchmarks/batched.py [--workspace .] [--variant NAME] [--parallel 2,4,8]
        [--rounds 2] [--limit N] [--threads 2] [--llama-server /path/to/llama-server]
        [--server-parallel 1,4] [--no-swa-full] [--bare] [--mode free|schema]

Prints one row per path: cases/s (median over rounds), the ratio to sequential measured in
the same rounds, generation tokens/s, passes per mode and flips. Never a pass/fail.
"""

from __future__ import annotations

import argparse
import json
import platform
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import llama_cpp  # noqa: F401  (before numpy, as the engine commands do)

from lifecycle.config import load_workspace
from lifecycle.gguf import read_gguf
from lifecycle.golden import score_output
from lifecycle.hostinfo import cpu_info
from lifecycle.runner import EvalOptions, case_request, run_eval
from lifecycle.store import Store
from lifecycle.variants import resolve_variants


@dataclass
class Path_:
    """One way of running the suite, and what it produced in each round."""

    label: str
    parallel: int
    seconds: list[float] = field(default_factory=list)
    outputs: dict[tuple[str, str], str] = field(default_factory=dict)
    passed: dict[tuple[str, str], bool] = field(default_factory=dict)
    gen_tps: list[float] = field(default_factory=list)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, default=Path("."))
    parser.add_argument("--variant", help="variant name (default: the first of the matrix)")
    parser.add_argument("--parallel", default="2,4,8", help="batched N values, comma-separated")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--limit", type=int, help="first N cases of each suite")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--llama-server", type=Path, help="llama-server binary to compare with")
    parser.add_argument("--server-parallel", help="the server's -np values (default: --parallel)")
    parser.add_argument("--no-swa-full", action="store_true", help="run the server without it")
    parser.add_argument("--bare", action="store_true", help="add a bare llama-cpp-python loop")
    parser.add_argument("--mode", choices=["free", "schema"], help="one output mode only")
    args = parser.parse_args()

    workspace = load_workspace(args.workspace.resolve())
    store = Store(workspace.home)
    variants = resolve_variants(workspace, store, None)
    variant = next((v for v in variants if v.name == args.variant), None) or variants[0]
    levels = [int(n) for n in args.parallel.split(",") if n.strip()]
    print(f"variant {variant.name} ({variant.blob_digest[:19]}), threads {args.threads}")
    print(f"cpu: {cpu_info()[0]} ({platform.machine()}), {args.rounds} round(s)")

    paths = [Path_("sequential", 1)] + [Path_(f"batched N={n}", n) for n in levels]
    server_levels = [int(n) for n in (args.server_parallel or args.parallel).split(",") if n]
    swa = "" if args.no_swa_full else " --swa-full"
    servers = (
        [Path_(f"llama-server -np {n}{swa}", n) for n in server_levels] if args.llama_server else []
    )
    bare = [Path_("llama-cpp-python loop", 1)] if args.bare else []
    requests = _requests(workspace, variant, args)
    for round_no in range(args.rounds):
        for path in paths:
            _run_lifecycle(workspace, variant, path, args)
            print(f"  round {round_no + 1}: {path.label}: {path.seconds[-1]:.1f} s", flush=True)
        for path in servers:
            _run_server(args.llama_server, variant, path, requests, args)
            print(f"  round {round_no + 1}: {path.label}: {path.seconds[-1]:.1f} s", flush=True)
        for path in bare:
            _run_bare(variant, path, requests, args)
            print(f"  round {round_no + 1}: {path.label}: {path.seconds[-1]:.1f} s", flush=True)
    _report(paths + servers + bare, n_cases=len(requests))
    return 0


def _run_lifecycle(workspace: Any, variant: Any, path: Path_, args: argparse.Namespace) -> None:
    options = EvalOptions(
        threads=args.threads,
        limit=args.limit,
        parallel=path.parallel,
        modes=[args.mode] if args.mode else None,
        resume=False,
        canary=False,
        answers=False,  # timed: every case generated
    )
    start = time.perf_counter()
    record = run_eval(workspace, options, variants=[variant])
    elapsed = time.perf_counter() - start
    load_s = sum((v.load_ms or 0.0) for v in record.variants) / 1000.0
    path.seconds.append(elapsed - load_s)
    for case in record.cases:
        path.outputs[(case.mode, case.id)] = case.output
        path.passed[(case.mode, case.id)] = case.passed
    decoded = sum(c.eval_tokens for c in record.cases)
    gen_ms = sum(c.generation_ms for c in record.cases)
    path.gen_tps.append(decoded / gen_ms * 1000.0 if gen_ms else 0.0)


def _requests(workspace: Any, variant: Any, args: argparse.Namespace) -> list[tuple[Any, ...]]:
    """(suite, mode, case, request) for every case the runner runs, in its order."""
    from lifecycle.golden import load_suites

    settings = workspace.models[variant.model]
    suites = load_suites(workspace.evals_dir, list(settings.suites))
    chat_template = read_gguf(variant.blob_path).chat_template
    options = EvalOptions(threads=args.threads)
    out = []
    for suite in suites:
        for mode in [m for m in suite.modes if args.mode in (None, m)]:
            cases = suite.cases[: args.limit] if args.limit else suite.cases
            for case in cases:
                request = case_request(
                    variant, suite, mode, case, chat_template, workspace.engine.seed, options
                )
                out.append((suite, mode, case, request))
    return out


def _run_server(
    binary: Path, variant: Any, path: Path_, requests: list[tuple[Any, ...]], args: Any
) -> None:
    n_ctx = variant.int_parameter("num_ctx")
    port = _free_port()
    command = [
        str(binary),
        "-m",
        str(variant.blob_path),
        "-c",
        str(n_ctx * path.parallel),
        "-np",
        str(path.parallel),
        "-t",
        str(args.threads),
        "-tb",
        str(args.threads),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--seed",
        "42",
    ]
    if not args.no_swa_full:
        command.append("--swa-full")
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, server)

        def one(item: tuple[Any, ...]) -> tuple[Any, ...]:
            suite, mode, case, request = item
            body: dict[str, Any] = {
                "prompt": request.prompt,
                "n_predict": request.max_tokens,
                "temperature": 0.0,
                "stop": list(request.stop),
                "seed": request.seed,
                "repeat_penalty": request.repeat_penalty,
                "cache_prompt": True,
            }
            if request.json_schema:
                body["json_schema"] = request.json_schema
            reply = _post(f"{url}/completion", body)
            return suite, mode, case, reply

        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=path.parallel) as pool:
            replies = list(pool.map(one, requests))
        path.seconds.append(time.perf_counter() - start)
        decoded = gen_ms = 0.0
        for suite, mode, case, reply in replies:
            text = reply.get("content", "")
            path.outputs[(mode, case.id)] = text
            path.passed[(mode, case.id)] = score_output(suite, case, text).passed
            timings = reply.get("timings", {})
            decoded += timings.get("predicted_n", 0)
            gen_ms += timings.get("predicted_ms", 0.0)
        # The server's per-request timings overlap in time; tokens over wall time instead.
        path.gen_tps.append(decoded / path.seconds[-1] if path.seconds[-1] else 0.0)
    finally:
        server.terminate()
        server.wait(timeout=30)


def _run_bare(variant: Any, path: Path_, requests: list[tuple[Any, ...]], args: Any) -> None:
    """The same prompts through llama-cpp-python's high-level API, one after another."""
    from llama_cpp import Llama, LlamaGrammar

    llm = Llama(
        str(variant.blob_path),
        n_ctx=variant.int_parameter("num_ctx"),
        n_threads=args.threads,
        n_threads_batch=args.threads,
        seed=42,
        verbose=False,
    )
    grammars: dict[str, Any] = {}
    try:
        start = time.perf_counter()
        decoded = 0
        results = []
        for suite, mode, case, request in requests:
            grammar = None
            if request.json_schema:
                key = json.dumps(request.json_schema, sort_keys=True)
                if key not in grammars:
                    grammars[key] = LlamaGrammar.from_json_schema(key, verbose=False)
                grammar = grammars[key]
            reply = llm.create_completion(
                request.prompt,
                max_tokens=request.max_tokens,
                temperature=0.0,
                stop=list(request.stop),
                repeat_penalty=request.repeat_penalty,
                grammar=grammar,
            )
            decoded += int(reply["usage"]["completion_tokens"])
            results.append((suite, mode, case, reply["choices"][0]["text"]))
        path.seconds.append(time.perf_counter() - start)
        for suite, mode, case, text in results:
            path.outputs[(mode, case.id)] = text
            path.passed[(mode, case.id)] = score_output(suite, case, text).passed
        path.gen_tps.append(decoded / path.seconds[-1] if path.seconds[-1] else 0.0)
    finally:
        llm.close()


def _report(paths: list[Path_], *, n_cases: int) -> None:
    reference = paths[0]
    print()
    print(f"{n_cases} generations per path (cases x modes); medians over rounds")
    header = f"{'path':<22} {'cases/s':>8} {'vs seq':>7} {'gen tok/s':>10} {'pass':>14} flips"
    print(header)
    print("-" * len(header))
    for path in paths:
        ratios = [r / p for r, p in zip(reference.seconds, path.seconds, strict=True)]
        modes = sorted({mode for mode, _ in path.passed})
        passes = " ".join(
            f"{m[0]}{sum(v for (mm, _), v in path.passed.items() if mm == m)}" for m in modes
        )
        flips = [
            key
            for key, text in path.outputs.items()
            if text != reference.outputs.get(key) or path.passed[key] != reference.passed.get(key)
        ]
        verdict_flips = [k for k in flips if path.passed[k] != reference.passed.get(k)]
        print(
            f"{path.label:<22} {n_cases / statistics.median(path.seconds):>8.2f} "
            f"{statistics.median(ratios):>6.2f}x {statistics.median(path.gen_tps):>10.1f} "
            f"{passes:>14} {len(flips)} text, {len(verdict_flips)} verdict"
        )
        for mode, case_id in flips[:6]:
            print(
                f"    {mode}/{case_id}: {json.dumps(reference.outputs.get((mode, case_id)))[:50]}"
                f" -> {json.dumps(path.outputs[(mode, case_id)])[:50]}"
            )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(url: str, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"llama-server exited with {server.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise SystemExit("llama-server did not become ready in 120 s")


def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    data = json.dumps(body).encode()
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as reply:
        result: dict[str, Any] = json.loads(reply.read())
        return result


if __name__ == "__main__":
    sys.exit(main())
