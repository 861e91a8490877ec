"""``lifecycle calibrate``: when should the local model hand a case to a bigger one?"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from lifecycle.cli._options import json_option, workspace_option
from lifecycle.cli._output import emit, progress, table
from lifecycle.errors import EXIT_FAILURE, EXIT_OK, LifecycleError

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
@click.option(
    "--threshold",
    type=click.FloatRange(0.0, 1.0),
    help="Cascade threshold: keep local at confidence >= this (default: each signal's "
    "recommended threshold).",
)
@click.option(
    "--escalate-all",
    is_flag=True,
    help="Answer every case on the escalation tier, not only the escalated ones (an exact "
    "'everything escalated' instead of one extrapolated from the escalated cases).",
)
@click.option(
    "--no-escalate",
    is_flag=True,
    help="Do not run the suite's escalation tier ([calibration.escalate]).",
)
@json_option
def calibrate_command(
    variants: tuple[str, ...],
    workspace_dir: Path | None,
    run_path: Path | None,
    signals: tuple[str, ...],
    out_dir: Path | None,
    no_chart: bool,
    threshold: float | None,
    escalate_all: bool,
    no_escalate: bool,
    as_json: bool,
) -> int:
    """Calibrate confidence for a cascade from a run: reliability, ECE, Brier, threshold sweep.

    VARIANTS are variant or model names in the run (default: all). Reads the signals the
    eval recorded for suites with a [calibration] table (no re-generation) and finds the
    lowest confidence threshold whose locally kept cases reach the suite's target accuracy.
    When the suite names an escalation tier ([calibration.escalate]), the cases under the
    threshold are answered there and the cascade is compared with everything local and
    everything escalated (accuracy, share escalated, tokens, latency).
    Exit codes: 0 calibrated; 2 usage or config error (no run, unknown variant, no suite
    with [calibration]); 1 the tool failed (the chart could not be written, or the
    escalation tier could not answer: the local figures are still reported).
    """
    from lifecycle.calibrate import SIGNALS, calibrate_run, escalate, reliability_chart
    from lifecycle.config import load_workspace
    from lifecycle.errors import UsageError
    from lifecycle.golden import load_suites
    from lifecycle.runs import LATEST, read_run

    workspace = load_workspace(workspace_dir)
    record = read_run(run_path or workspace.runs_dir / LATEST)
    names = list(dict.fromkeys(c.suite for c in record.cases))
    suites = {s.name: s for s in load_suites(workspace.evals_dir, names)}
    report = calibrate_run(record, suites, variants=variants or None, signals=signals or SIGNALS)
    if not report.groups:
        raise UsageError(
            "nothing to calibrate: no suite of this run has a [calibration] table"
            + (f" (suites: {', '.join(report.skipped_suites)})" if report.skipped_suites else "")
        )
    tiers = [s.calibration.escalate for s in suites.values() if s.calibration is not None]
    if not no_escalate and any(tiers):
        report = escalate(
            report,
            record,
            suites,
            workspace,
            threshold=threshold,
            all_cases=escalate_all,
            progress=progress,
        )
    if not no_chart:
        path = (out_dir or workspace.root / ".lifecycle" / "calibration") / "reliability.png"
        try:
            report.chart = str(reliability_chart(report, path))
        except OSError as exc:
            raise LifecycleError(f"cannot write the chart: {exc}", path=path) from None
    emit(as_json, report.to_dict(), lambda: render_calibration(report))
    if report.chart:
        progress(f"reliability diagram: {report.chart}")
    failed = [g.tier_error for g in report.groups if g.tier_error]
    for error in failed:
        progress(f"error: escalation tier {error}")
    return EXIT_FAILURE if failed else EXIT_OK


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
    lines += render_cascades(report)
    lines.append("")
    lines.append("correct = " + "; ".join(sorted({g.correct_means for g in report.groups})))
    if report.skipped_suites:
        lines.append(f"suites without [calibration]: {', '.join(report.skipped_suites)}")
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def render_cascades(report: CalibrationReport) -> list[str]:
    """The cascade vs everything local and everything escalated, per group and signal."""
    lines: list[str] = []
    for group in report.groups:
        if group.tier is None:
            continue
        lines += ["", f"cascade {group.variant} {group.suite}/{group.mode} -> {group.tier}"]
        if group.tier_error:
            lines.append(f"    the tier could not answer: {group.tier_error}")
        rows = []
        for c in group.cascades:
            for name, acc, share, cost in (
                ("all local", c.local_accuracy, 0.0, c.cost_local),
                (
                    f"cascade @ {_threshold(c.threshold)}",
                    c.accuracy,
                    c.share_escalated,
                    c.cost_cascade,
                ),
                ("all escalated", c.escalated_accuracy, 1.0, c.cost_escalated),
            ):
                rows.append(
                    [
                        c.signal,
                        name,
                        _pct(acc),
                        _pct(share),
                        cost.local_tokens,
                        "-"
                        if cost.tier_tokens is None
                        else f"{cost.tier_tokens}{'*' if cost.estimated else ''}",
                        "-"
                        if cost.mean_latency_ms is None
                        else f"{cost.mean_latency_ms:.0f}{'*' if cost.estimated else ''}",
                    ]
                )
        headers = [
            "signal",
            "strategy",
            "accuracy",
            "escalated",
            "local tokens",
            "tier tokens",
            "ms/case",
        ]
        lines += ["    " + line for line in table(headers, rows).splitlines()]
        for c in group.cascades:
            lines.append(f"    [{c.signal}] {c.statement}")
            if c.tier_errors:
                lines.append(
                    f"    [{c.signal}] {c.tier_errors} escalated case(s) failed on the tier "
                    "(counted wrong)"
                )
        if any(c.cost_escalated.estimated for c in group.cascades):
            lines.append(
                "    * extrapolated from the cases the tier answered (--escalate-all measures it)"
            )
    return lines


def _threshold(value: float | None) -> str:
    return "none" if value is None else f"{value:g}"
