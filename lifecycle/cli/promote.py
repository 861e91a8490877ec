"""``lifecycle gate | pin | report | smoke | check-lock``: promotion from the command line."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from lifecycle.cli._options import json_option, workspace_option
from lifecycle.cli._output import emit, emit_json, library_progress, progress, table
from lifecycle.envnames import ENV_GITHUB_STEP_SUMMARY
from lifecycle.errors import EXIT_FAILURE, EXIT_OK, LifecycleError, UsageError

if TYPE_CHECKING:
    from lifecycle.config import Workspace
    from lifecycle.gate import GateResult
    from lifecycle.gitbase import BaseReview
    from lifecycle.results import RunRecord


run_option = click.option(
    "--run",
    "run_ref",
    help="Run record: a run.json path or a run id (default: the latest run).",
)
bench_option = click.option(
    "--bench",
    "bench_files",
    multiple=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="`lifecycle bench --json` output (repeatable); adds speed and memory checks.",
)


@click.command("gate")
@workspace_option
@run_option
@bench_option
@click.option(
    "--junit",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write JUnit XML: one test case per golden case.",
)
@click.option(
    "--markdown",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the Markdown summary to this file.",
)
@click.option(
    "--base",
    "base_ref",
    metavar="REF",
    help="Gate against the pins, baselines, [gate] and suites of this git ref (a PR's base "
    "branch), and fail on what the change lowered unless a commit in REF..HEAD has a "
    "'Lifecycle-Rebaseline: <reason>' trailer.",
)
@json_option
def gate_command(
    workspace_dir: Path | None,
    run_ref: str | None,
    bench_files: tuple[Path, ...],
    junit: Path | None,
    markdown: Path | None,
    base_ref: str | None,
    as_json: bool,
) -> int:
    """Compare the latest run with the committed baselines under the [gate] thresholds.

    Fails (exit 3) on a regression (a case that passed in the baseline fails now), a suite
    under its threshold, a rate drop or a speed/memory change over its threshold. The Markdown
    summary is appended to $GITHUB_STEP_SUMMARY when that is set.
    """
    from lifecycle.gaterender import (
        render_base_markdown,
        render_base_text,
        render_gate_text,
        render_junit,
        render_markdown,
    )

    if base_ref is None:
        _workspace, _record, gate, _bench = _gate(workspace_dir, run_ref, bench_files)
        review = None
    else:
        gate, review = _gate_base(workspace_dir, run_ref, bench_files, base_ref)
    if gate.engine_failed:
        progress("error: the engine failed on some variant: no verdict on it (exit 1)")
    text = render_markdown(gate) + (render_base_markdown(review) if review else "")
    _write_outputs(text, markdown)
    if junit is not None:
        from lifecycle.fsutil import atomic_write_text

        atomic_write_text(junit, render_junit(gate))
        progress(f"junit: {junit}")
    document = gate.to_dict() | ({"base": review.to_dict()} if review else {})
    emit(
        as_json,
        document,
        lambda: render_gate_text(gate) + (render_base_text(review) if review else ""),
    )
    return gate.exit_code


@click.command("pin")
@workspace_option
@run_option
@bench_option
@click.option("--commit", is_flag=True, help="Commit models.lock and the baselines (git).")
@click.option("--branch", help="Commit on this new branch (implies --commit), for a PR.")
@click.option("--refresh", is_flag=True, help="Rewrite entries whose pin did not change, too.")
@click.option("--no-prune", is_flag=True, help="Keep entries of variants no longer in the matrix.")
@json_option
def pin_command(
    workspace_dir: Path | None,
    run_ref: str | None,
    bench_files: tuple[Path, ...],
    commit: bool,
    branch: str | None,
    refresh: bool,
    no_prune: bool,
    as_json: bool,
) -> int:
    """Write models.lock (and baselines/) for the variants of the run that pass the gate.

    A variant that fails the gate is never pinned; entries of variants that left the variant
    matrix are removed (unless --no-prune). Exit codes: 0 the gate passed (refused candidates
    are reported, not failures); 3 a pinned variant regressed (the others are still pinned);
    1 the engine failed on some variant; 2 the repository is mid-merge/rebase, the lockfile
    has uncommitted edits, or it is not a git repository.
    """
    from lifecycle.pin import pin
    from lifecycle.pipeline import workspace_variant_names
    from lifecycle.store import Store

    workspace, record, gate, bench = _gate(workspace_dir, run_ref, bench_files)
    result = pin(
        workspace.root,
        record,
        gate,
        Store(workspace.home),
        bench=bench,
        commit=commit,
        branch=branch,
        refresh=refresh,
        keep=None if no_prune else workspace_variant_names(workspace),
    )
    if as_json:
        emit_json(result.to_dict())
    else:
        rows = [
            [
                c.variant,
                c.status,
                c.old_digest and c.old_digest[7:19],
                c.new_digest and c.new_digest[7:19],
                "; ".join(c.reasons),
            ]
            for c in result.changes
        ]
        click.echo(table(["variant", "status", "old", "new", "why"], rows))
        if result.commit:
            click.echo(f"committed {result.commit[:12]}" + (f" on {branch}" if branch else ""))
        click.echo(gate.headline())
    return gate.exit_code


@click.command("report")
@workspace_option
@run_option
@bench_option
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for report.html and report.md (default: <workspace>/reports).",
)
@json_option
def report_command(
    workspace_dir: Path | None,
    run_ref: str | None,
    bench_files: tuple[Path, ...],
    out_dir: Path | None,
    as_json: bool,
) -> int:
    """Write the promotion report: one self-contained HTML file and a Markdown file."""
    from lifecycle.pin import quant_of
    from lifecycle.report import build_report, write_report
    from lifecycle.store import Store

    workspace, record, gate, _bench = _gate(workspace_dir, run_ref, bench_files)
    store = Store(workspace.home)
    quants = {v.variant.name: quant_of(store, v.variant.blob_digest) for v in record.variants}
    docs = [_read_json(p) for p in bench_files]
    report = build_report(record, gate, bench=docs, quants=quants)
    html_path, md_path = write_report(report, out_dir or workspace.root / "reports")
    document = {"verdict": report.verdict, "html": str(html_path), "markdown": str(md_path)}
    emit(as_json, document, lambda: f"{report.verdict}: {html_path}, {md_path}")
    return EXIT_OK


@click.command("smoke")
@workspace_option
@click.option("--commit", is_flag=True, help="Commit the new pins and baselines (git).")
@click.option("--branch", help="Commit on this new branch (implies --commit), for a PR.")
@click.option("--offline", is_flag=True, help="Do not check or pull upstream tags.")
@click.option("--no-bench", is_flag=True, help="Skip the short bench.")
@click.option(
    "--load",
    is_flag=True,
    help="Load-test every [serve] resident at its concurrency; the gate judges sla_p95_ms "
    "and the pins record the p95.",
)
@click.option(
    "--no-cache",
    is_flag=True,
    help="Re-evaluate and regenerate every answer even when cached ones match.",
)
@click.option(
    "--report-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where report.html and report.md go (default: <workspace>/reports).",
)
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads for the engine.")
@click.option(
    "--parallel",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Cases decoded together. 1 keeps the pins and baselines on the sequential reference "
    "path; more is faster, and a flip it causes is reported as the environment's.",
)
@click.option("--no-prune", is_flag=True, help="Keep pins of variants no longer in the matrix.")
@json_option
@click.option("--quiet", "-q", is_flag=True, help="No progress on stderr.")
def smoke_command(
    workspace_dir: Path | None,
    commit: bool,
    branch: str | None,
    offline: bool,
    no_bench: bool,
    load: bool,
    no_cache: bool,
    report_dir: Path | None,
    threads: int | None,
    parallel: int,
    no_prune: bool,
    as_json: bool,
    quiet: bool,
) -> int:
    """The weekly job: check tags, pull what moved, eval, bench, (load,) gate, pin, report.

    Results are cached by variant id + golden-set digests + engine build + CPU, so an
    unchanged workspace finishes fast. Exit code: 0 every pinned variant holds (candidates
    under their threshold are refused and reported, not failures); 3 a pinned variant
    regressed; 1 the engine failed (no verdict, nothing pinned or refused for that variant);
    4 is never used here, an upstream change is pulled and tested instead.
    """
    from lifecycle.config import load_workspace
    from lifecycle.gaterender import render_markdown
    from lifecycle.pipeline import SmokeOptions, render_summary, run_smoke

    workspace = load_workspace(workspace_dir)
    options = SmokeOptions(
        offline=offline,
        bench=not no_bench,
        load=load,
        use_cache=not no_cache,
        commit=commit,
        branch=branch,
        report_dir=report_dir,
        threads=threads,
        parallel=parallel,
        prune=not no_prune,
    )
    with library_progress(enabled=not (as_json or quiet)):
        result = run_smoke(workspace, options, progress=None if quiet else progress)
    _write_outputs(render_markdown(result.gate), None)
    emit(as_json, result.to_dict(), lambda: render_summary(result))
    return result.exit_code


@click.command("check-lock")
@workspace_option
@json_option
def check_lock_command(workspace_dir: Path | None, as_json: bool) -> int:
    """Check the local store against models.lock: every pinned blob present and intact.

    Also says how the runtime here (engine build, CPU features, KV cache settings) differs
    from the one each variant was pinned under; that is reported, not a failure. Exit 1 when
    a pinned blob is missing or corrupt, or a pinned tag now names another blob.
    """
    from lifecycle.config import load_workspace
    from lifecycle.engines import get_engine
    from lifecycle.lockfile import LOCK_FILE, read_lock
    from lifecycle.pin import verify_lock
    from lifecycle.runtime import lock_runtime_changes
    from lifecycle.store import Store
    from lifecycle.variants import matrix_caches

    workspace = load_workspace(workspace_dir)
    checks = verify_lock(workspace.root, Store(workspace.home))
    ok = all(c.status == "ok" for c in checks)
    try:
        engine = get_engine(workspace.engine.name).info()
    except (LifecycleError, ImportError) as exc:  # e.g. an ollama daemon that is not running
        progress(f"warning: runtime not compared: {exc}")
        moves: dict[str, str] = {}
    else:
        lock = read_lock(workspace.root / LOCK_FILE)
        moves = lock_runtime_changes(workspace, lock, engine, matrix_caches(workspace))
    if as_json:
        emit_json({"ok": ok, "variants": [c.to_dict() for c in checks], "runtime_changes": moves})
    else:
        rows = [[c.variant, c.status, c.digest, c.detail] for c in checks]
        click.echo(table(["variant", "status", "digest", "detail"], rows))
        for name, line in moves.items():
            click.echo(f"{name}: {line}")
        click.echo(f"{len(checks)} pin(s), " + ("all ok" if ok else "PROBLEMS FOUND"))
    return EXIT_OK if ok else EXIT_FAILURE


def _gate(
    workspace_dir: Path | None, run_ref: str | None, bench_files: tuple[Path, ...]
) -> tuple[Workspace, RunRecord, GateResult, dict[str, dict[str, Any]]]:
    from lifecycle.baselines import bench_by_variant
    from lifecycle.config import load_workspace
    from lifecycle.pipeline import gate_workspace
    from lifecycle.runs import find_run

    workspace = load_workspace(workspace_dir)
    record = find_run(workspace.runs_dir, run_ref)
    bench = bench_by_variant([_read_json(p) for p in bench_files])
    gate = gate_workspace(workspace, record, bench=bench, progress=progress)
    return workspace, record, gate, bench


def _gate_base(
    workspace_dir: Path | None, run_ref: str | None, bench_files: tuple[Path, ...], ref: str
) -> tuple[GateResult, BaseReview]:
    """The gate against the bar of git ref ``ref`` (see :mod:`lifecycle.gitbase`)."""
    from lifecycle import gitbase
    from lifecycle.baselines import bench_by_variant
    from lifecycle.config import load_workspace
    from lifecycle.gate import run_gate
    from lifecycle.pipeline import reference_runs
    from lifecycle.runs import find_run
    from lifecycle.store import Store

    workspace = load_workspace(workspace_dir)
    record = find_run(workspace.runs_dir, run_ref)
    bench = bench_by_variant([_read_json(p) for p in bench_files])
    base, head, review = gitbase.review_base(workspace.root, ref)
    judged = gitbase.judged_inputs(record, base, head, review)
    store = Store(workspace.home)
    references = reference_runs(workspace, judged.record, judged.baselines, store, progress)
    gate = run_gate(
        judged.record,
        judged.baselines,
        judged.settings,
        bench=bench,
        pinned=judged.pinned,
        references=judged.over_references(references),
    )
    gitbase.apply_review(gate, review)
    return gate, review


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read JSON: {exc}", path=path) from None
    if not isinstance(data, dict):
        raise UsageError("expected a JSON object", path=path)
    return data


def _write_outputs(markdown: str, path: Path | None) -> None:
    """The Markdown summary to ``path`` and appended to ``$GITHUB_STEP_SUMMARY`` when set."""
    if path is not None:
        from lifecycle.fsutil import atomic_write_text

        atomic_write_text(path, markdown)
    summary = os.environ.get(ENV_GITHUB_STEP_SUMMARY)
    if summary:
        with open(summary, "a", encoding="utf-8") as out:
            out.write(markdown + "\n")
