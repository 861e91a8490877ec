"""``lifecycle eval``: run the workspace's golden suites on the local engine."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from lifecycle.cli._options import template_option, workspace_option
from lifecycle.cli._output import emit, library_progress, progress, table
from lifecycle.errors import EXIT_FAILURE, EXIT_GATE_FAILED, EXIT_OK, UsageError

if TYPE_CHECKING:
    from lifecycle.config import Workspace
    from lifecycle.results import RunRecord


@click.command("eval")
@workspace_option
@click.option("--model", "-m", "models", multiple=True, help="Model(s) from lifecycle.toml.")
@click.option(
    "--suite", "-s", "suites", multiple=True, help="Suite(s) from evals/ (default: the model's)."
)
@click.option(
    "--mode",
    "modes",
    multiple=True,
    type=click.Choice(["free", "schema"]),
    help="Output mode(s) to run (default: the suite's).",
)
@click.option(
    "--engine",
    help="Engine: llama-cpp, llama-cpp-isolated (worker process), ollama, openai "
    "(default: lifecycle.toml's).",
)
@click.option("--base-url", help="openai engine: the server's base URL (…/v1).")
@click.option("--host", help="ollama engine: the daemon URL (default $OLLAMA_HOST or :11434).")
@template_option
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Cases in flight at once (HTTP engines).",
)
@click.option(
    "--parallel",
    type=click.IntRange(min=1),
    help="Cases decoded together in one llama.cpp context (default: [engine] parallel; "
    "1 = one at a time, the reference path).",
)
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0.001), help="Seconds per case.")
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads for the engine.")
@click.option("--limit", type=click.IntRange(min=1), help="Run only the first N cases per suite.")
@click.option(
    "--shard",
    metavar="I/N",
    help="Run the I-th of N deterministic slices of (variant x case); combine with `merge`.",
)
@click.option(
    "--exit-zero",
    is_flag=True,
    help="Exit 0 even when a pinned variant misses its threshold (leave it to `gate`); "
    "engine failures still exit 1.",
)
@click.option("--no-resume", is_flag=True, help="Ignore checkpoints of an interrupted run.")
@click.option(
    "--no-cache",
    is_flag=True,
    help="Generate every answer, even those cached in .lifecycle/answers (scoring always reruns).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the run record as JSON on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="No per-case progress on stderr.")
def eval_command(
    workspace_dir: Path | None,
    models: tuple[str, ...],
    suites: tuple[str, ...],
    modes: tuple[str, ...],
    engine: str | None,
    base_url: str | None,
    host: str | None,
    template: str | None,
    concurrency: int,
    parallel: int | None,
    timeout_s: float | None,
    threads: int | None,
    limit: int | None,
    shard: str | None,
    exit_zero: bool,
    no_resume: bool,
    no_cache: bool,
    as_json: bool,
    quiet: bool,
) -> int:
    """Run golden-set JSON evals and report per case and in summary.

    A variant pinned in models.lock is production; any other is a candidate. Exit codes:
    0 every pinned variant met its thresholds (a candidate under one is refused and
    reported); 3 a pinned variant is under a threshold; 2 usage or config error; 1 the tool
    failed: a model missing or corrupt, an engine that crashed, timed out or could not load
    a variant (its cases are errors, not failures; the other variants still run).
    Results are checkpointed as they come: an interrupted run resumes where it stopped.
    Answers are cached per case by what decides them (weights digest, prompt, sampling,
    schema, engine build, numeric settings): a case asked again is scored on its cached
    answer; --no-cache generates everything.
    """
    from lifecycle.config import load_workspace
    from lifecycle.runner import EvalOptions, run_eval

    workspace = load_workspace(workspace_dir)
    options = EvalOptions(
        models=models or None,
        suites=suites or None,
        modes=modes or None,
        engine=engine,
        threads=threads,
        limit=limit,
        shard=_parse_shard(shard) if shard else None,
        concurrency=concurrency,
        parallel=parallel,
        timeout_s=timeout_s,
        engine_settings={"base_url": base_url, "host": host, "template": template},
        resume=not no_resume,
        answers=not no_cache,
    )
    with library_progress(enabled=not (as_json or quiet)):
        record = run_eval(workspace, options, progress=None if quiet else progress)
    return _save_and_report(record, workspace, as_json, exit_zero=exit_zero)


@click.command("merge")
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@workspace_option
@click.option(
    "--exit-zero", is_flag=True, help="Exit 0 even when a pinned variant misses its threshold."
)
@click.option("--json", "as_json", is_flag=True, help="Print the merged run record as JSON.")
def merge_command(
    runs: tuple[Path, ...], workspace_dir: Path | None, exit_zero: bool, as_json: bool
) -> int:
    """Merge the run records of `eval --shard` into one run (saved like an eval run).

    RUNS are run.json files or run directories. Gate, pin and report treat the result exactly
    like an unsharded run. Exit codes follow `eval`: 3 when a pinned variant's pass rate is
    under its threshold (unless --exit-zero), 1 when the engine failed on some case.
    """

    from lifecycle.config import load_workspace
    from lifecycle.results import merge_runs
    from lifecycle.runs import read_run

    records = [read_run(path) for path in runs]
    try:
        merged = merge_runs(records)
    except ValueError as exc:
        raise UsageError(f"cannot merge: {exc}") from None
    return _save_and_report(merged, load_workspace(workspace_dir), as_json, exit_zero=exit_zero)


def _save_and_report(
    record: RunRecord, workspace: Workspace, as_json: bool, *, exit_zero: bool = False
) -> int:
    """Save the run, print it (JSON or table), and return the eval exit code."""
    from lifecycle.lockfile import LOCK_FILE, read_lock
    from lifecycle.runner import save_run

    path = save_run(record, workspace.runs_dir)
    pinned = set(read_lock(workspace.root / LOCK_FILE).variants)
    emit(as_json, record.to_dict(), lambda: render_run(record.to_dict(), pinned))
    progress(f"run record: {path}")
    failed = engine_failures(record)
    if failed:
        progress(
            f"error: the engine failed on {', '.join(failed)}: no verdict on "
            f"{'it' if len(failed) == 1 else 'them'} (exit 1)"
        )
        return EXIT_FAILURE
    below = {s.variant for s in record.summaries if not s.met_threshold}
    if below & pinned and not exit_zero:
        return EXIT_GATE_FAILED
    return EXIT_OK


def engine_failures(record: RunRecord) -> list[str]:
    """Variants the engine could not run, or could not answer some cases of."""
    failed = {v.variant.name for v in record.variants if v.error}
    failed |= {c.variant for c in record.cases if c.errored}
    return sorted(failed)


def _parse_shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise UsageError(f"invalid --shard {text!r}: expected I/N, e.g. 2/4") from None
    return i, n


def render_run(run: dict[str, Any], pinned: set[str] | None = None) -> str:
    """The human report: one row per (variant, suite, mode), then the failing cases."""
    pinned = pinned or set()

    def verdict(s: dict[str, Any]) -> str:
        if s.get("errors"):
            return "ERROR"
        if s["met_threshold"]:
            return "ok"
        return "BELOW" if s["variant"] in pinned else "refused"

    rows = [
        [
            s["variant"],
            s["suite"],
            s["mode"],
            f"{s['passed']}/{s['cases']}",
            f"{s['pass_rate']:.0%}",
            f"{s['json_valid_rate']:.0%}",
            f"{s['schema_valid_rate']:.0%}",
            s["latency_p50_ms"],
            s["latency_p95_ms"],
            s["generation_tokens_per_s"],
            "-" if s["threshold"] is None else f"{s['threshold']:.0%}",
            verdict(s),
        ]
        for s in run["summaries"]
    ]
    headers = [
        "variant", "suite", "mode", "passed", "rate", "json", "schema",
        "p50 ms", "p95 ms", "gen tok/s", "threshold", "verdict",
    ]  # fmt: skip
    lines = [table(headers, rows), ""]
    failures = [c for c in run["cases"] if not c["passed"]]
    if failures:
        lines.append(f"failing cases ({len(failures)}):")
        for case in failures:
            output = case["output"].strip().replace("\n", "\\n")
            if len(output) > 70:
                output = output[:67] + "..."
            lines.append(
                f"  {case['variant']} {case['suite']}/{case['mode']} {case['id']}: {case['reason']}"
            )
            lines.append(f"      output: {output}")
        lines.append("")
    summary = run["summary"]
    env = run["environment"]
    lines.append(
        f"{summary['passed']}/{summary['cases']} passed ({summary['pass_rate']:.0%}), "
        f"JSON-valid {summary['json_valid_rate']:.0%}, schema-valid "
        f"{summary['schema_valid_rate']:.0%}; prompt {summary['prompt_tokens_per_s']} tok/s, "
        f"generation {summary['generation_tokens_per_s']} tok/s, load {summary['load_ms']:.0f} ms; "
        f"{env['engine_version']}, threads {_threads(env['threads'])}; "
        f"answers: {_answer_sources(run['cases'])}{_schema_tokens(summary)}"
    )
    names = [str(v["variant"]["name"]) for v in run["variants"]]
    errored = {s["variant"] for s in run["summaries"] if s.get("errors")}
    errored |= {str(v["variant"]["name"]) for v in run["variants"] if v.get("error")}
    below = {s["variant"] for s in run["summaries"] if not s["met_threshold"]} - errored
    holds = [n for n in names if n in pinned and n not in below | errored]
    parts = []
    if holds:
        parts.append(f"{len(holds)} pinned variant(s) meet their thresholds")
    if below & pinned:
        parts.append(f"{len(below & pinned)} pinned variant(s) BELOW threshold")
    if below - pinned:
        parts.append(f"{len(below - pinned)} candidate(s) refused (under threshold)")
    if errored:
        parts.append(f"{len(errored)} variant(s) not run: ENGINE FAILED")
    lines.append("verdict: " + ("; ".join(parts) or "nothing ran"))
    return "\n".join(lines)


def _answer_sources(cases: list[dict[str, Any]]) -> str:
    """How many answers were generated by the run and how many came from the cache."""
    answered = [c for c in cases if c.get("finish_reason") != "error"]
    cached = sum(1 for c in answered if c.get("cached_from"))
    return f"{len(answered) - cached} generated, {cached} from cache"


def _schema_tokens(summary: dict[str, Any]) -> str:
    """Schema mode's output tokens: sampled ones, and those the schema forced (no step)."""
    forced = summary.get("forced_tokens")
    if forced is None:
        return ""
    return f"; schema tokens: {summary.get('sampled_tokens')} sampled, {forced} forced"


def _threads(value: Any) -> str:
    """A run's thread counts: one number when every variant used the same."""
    if isinstance(value, dict):
        counts = sorted({v for v in value.values() if v is not None})
        return ", ".join(str(c) for c in counts) or "-"
    return str(value)
