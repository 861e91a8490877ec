"""``lifecycle calibrate``: when should the local model hand a case to a bigger one?"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from lifecycle.cli._options import json_option, workspace_option
from lifecycle.cli._output import emit_json, progress, table
from lifecycle.errors import EXIT_OK, LifecycleError

if TYPE_CHECKING:
    from lifecycle.calibrate import CalibrationReport


@click.command("calibrate")
@click.argument("variants", nargs=-1)
@workspace_option
@click.option(
    "--run",
    "run_path",
    type=click.Path(path_type=Path),
    help="A run.json or run directory (default: the latest run).",
)
@click.option(
    "--signal",
    "signals",
    multiple=True,
    type=click.Choice(["stated", "engine"]),
    help="Confidence signal(s): the model's stated number, the engine's answer probability "
    "(default: both, as the suite's [calibration] allows).",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for reliability.png (default: .lifecycle/calibration).",
)
@click.option("--no-chart", is_flag=True, help="Do not draw the reliability diagram.")
@json_option
def calibrate_command(
    variants: tuple[str, ...],
    workspace_dir: Path | None,
    run_path: Path | None,
    signals: tuple[str, ...],
    out_dir: Path | None,
    no_chart: bool,
    as_json: bool,
) -> int:
    """Calibrate confidence for a cascade from a run: reliability, ECE, Brier, threshold sweep.

    VARIANTS are variant or model names in the run (default: all). Reads the signals the
    eval recorded for suites with a [calibration] table (no re-generation) and finds the
    lowest confidence threshold whose locally kept cases reach the suite's target accuracy.
    Exit codes: 0 calibrated; 2 usage or config error (no run, unknown variant, no suite
    with [calibration]); 1 the tool failed (e.g. the chart could not be written).
    """
    from lifecycle.calibrate import SIGNALS, calibrate_run, load_run, reliability_chart
    from lifecycle.config import load_workspace
    from lifecycle.errors import UsageError
    from lifecycle.golden import load_suites

    workspace = load_workspace(workspace_dir)
    record = load_run(run_path or workspace.runs_dir / "latest.json")
    names = list(dict.fromkeys(c.suite for c in record.cases))
    suites = {s.name: s for s in load_suites(workspace.evals_dir, names)}
    report = calibrate_run(record, suites, variants=variants or None, signals=signals or SIGNALS)
    if not report.groups:
        raise UsageError(
            "nothing to calibrate: no suite of this run has a [calibration] table"
            + (f" (suites: {', '.join(report.skipped_suites)})" if report.skipped_suites else "")
        )
    if not no_chart:
        path = (out_dir or workspace.root / ".lifecycle" / "calibration") / "reliability.png"
        try:
            report.chart = str(reliability_chart(report, path))
        except OSError as exc:
            raise LifecycleError(f"cannot write the chart: {exc}", path=path) from None
    if as_json:
        emit_json(report.to_dict())
    else:
        click.echo(render_calibration(report))
    if report.chart:
        progress(f"reliability diagram: {report.chart}")
    return EXIT_OK


def render_calibration(report: CalibrationReport) -> str:
    """One summary row per (variant, suite, mode, signal), then each one's threshold grid."""
    rows = []
    for group in report.groups:
        for s in group.signals:
            rec = s.recommendation
            rows.append(
                [
                    group.variant,
                    f"{group.suite}/{group.mode}",
                    s.signal,
                    s.cases,
                    s.no_confidence,
                    _pct(s.accuracy),
                    s.ece,
                    s.brier,
                    _pct(rec.target),
                    (f"{rec.threshold:g}" if rec.reached and rec.threshold is not None else "none"),
                    _pct(rec.coverage) if rec.reached else "-",
                    _pct(rec.accuracy),
                ]
            )
    headers = [
        "variant", "suite/mode", "signal", "cases", "no conf", "acc all", "ECE", "Brier",
        "target", "threshold", "coverage", "acc kept",
    ]  # fmt: skip
    lines = [f"run {report.run_id}", table(headers, rows), ""]
    for group in report.groups:
        for s in group.signals:
            lines.append(
                f"{group.variant} {group.suite}/{group.mode} [{s.signal}]: "
                f"{s.recommendation.statement}"
            )
            for reason, count in s.no_confidence_reasons.items():
                lines.append(f"    no confidence ({count}): {reason}")
            grid = [
                [f">= {p.threshold:g}", p.kept, _pct(p.coverage), _pct(p.accuracy)] for p in s.grid
            ]
            sub = table(["keep if", "kept", "coverage", "accuracy"], grid)
            lines += ["    " + line for line in sub.splitlines()]
        if group.errored:
            lines.append(f"    {group.errored} case(s) the engine failed on are left out")
    lines.append("")
    lines.append("correct = " + "; ".join(sorted({g.correct_means for g in report.groups})))
    if report.skipped_suites:
        lines.append(f"suites without [calibration]: {', '.join(report.skipped_suites)}")
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"
