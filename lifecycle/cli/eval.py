"""``lifecycle eval``: run the workspace's golden suites on the local engine."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from lifecycle.cli._options import workspace_option
from lifecycle.cli._output import emit_json, progress, table
from lifecycle.errors import EXIT_FAILURE, EXIT_GATE_FAILED, EXIT_OK, UsageError

if TYPE_CHECKING:
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
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Cases in flight at once (HTTP engines).",
)
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0.001), help="Seconds per case.")
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads for the engine.")
@click.option("--limit", type=click.IntRange(min=1), help="Run only the first N cases per suite.")
@click.option(
    "--shard",
    metavar="I/N",
    help="Run the I-th of N deterministic slices of (variant x case); combine with `merge`.",
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
    concurrency: int,
    timeout_s: float | None,
    threads: int | None,
    limit: int | None,
    shard: str | None,
    as_json: bool,
    quiet: bool,
) -> int:
    """Run golden-set JSON evals and report per case and in summary.

    Exit codes: 0 every suite met its threshold; 3 a pass rate is under its threshold;
    2 usage or config error; 1 the tool failed (model missing or corrupt, a variant the engine
    could not load; the other variants still run).
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
        timeout_s=timeout_s,
        engine_settings={"base_url": base_url, "host": host},
    )
    record = run_eval(workspace, options, progress=None if quiet else progress)
    return _save_and_report(record, workspace.runs_dir, as_json)


@click.command("merge")
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@workspace_option
@click.option("--json", "as_json", is_flag=True, help="Print the merged run record as JSON.")
def merge_command(runs: tuple[Path, ...], workspace_dir: Path | None, as_json: bool) -> int:
    """Merge the run records of `eval --shard` into one run (saved like an eval run).

    RUNS are run.json files or run directories. Gate, pin and report treat the result exactly
    like an unsharded run. Exit codes follow `eval`: 3 when a pass rate is under its threshold.
    """
    import json

    from lifecycle.config import load_workspace
    from lifecycle.results import RunRecord, merge_runs

    records = []
    for path in runs:
        file = path / "run.json" if path.is_dir() else path
        try:
            records.append(RunRecord.from_dict(json.loads(file.read_text(encoding="utf-8"))))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UsageError(f"not a run record: {exc}", path=file) from None
    try:
        merged = merge_runs(records)
    except ValueError as exc:
        raise UsageError(f"cannot merge: {exc}") from None
    return _save_and_report(merged, load_workspace(workspace_dir).runs_dir, as_json)


def _save_and_report(record: RunRecord, runs_dir: Path, as_json: bool) -> int:
    """Save the run, print it (JSON or table), and return the eval exit code."""
    from lifecycle.runner import save_run

    path = save_run(record, runs_dir)
    if as_json:
        emit_json(record.to_dict())
    else:
        click.echo(render_run(record.to_dict()))
    progress(f"run record: {path}")
    if any(v.error for v in record.variants):
        return EXIT_FAILURE  # a variant could not be run at all: the tool failed for it
    return EXIT_OK if record.passed else EXIT_GATE_FAILED


def _parse_shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise UsageError(f"invalid --shard {text!r}: expected I/N, e.g. 2/4") from None
    return i, n


def render_run(run: dict[str, Any]) -> str:
    """The human report: one row per (variant, suite, mode), then the failing cases."""
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
            "ok" if s["met_threshold"] else "BELOW",
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
        f"{env['engine_version']}, threads {env['threads']}"
    )
    lines.append("verdict: " + ("PASS" if run["passed"] else "FAIL (pass rate under threshold)"))
    return "\n".join(lines)
