"""Cascade calibration: when should the local model hand a case to a bigger one?

A cascade keeps a case local when the model's confidence is at or above a threshold and
escalates it otherwise. From a run record (no re-generation: the run holds the signals, see
:mod:`lifecycle.confidence`) this computes, per (variant, suite, mode) and per signal:

- reliability bins (equal width over [0, 1]): mean confidence vs accuracy in each;
- expected calibration error, ECE = sum over bins of (n_bin / n) * |accuracy - confidence|;
- Brier score, mean of (confidence - correct)^2;
- a threshold sweep: for each confidence value t seen, keep local the cases with
  confidence >= t; coverage = kept / all cases, accuracy = correct kept / kept;
- the lowest threshold whose kept cases reach the suite's target accuracy, with the coverage
  it buys, or a statement that none does (with the best accuracy and its coverage).

"Correct" is the routed field matching (``[calibration] routed_field``) when the suite names
one, else the whole case passing. Cases without a usable confidence (field missing, not a
number, outside [0, 1], or no token probabilities) are "no confidence": they are always
escalated (they count in the coverage denominator, never as kept) and reported with the
reasons. Cases the engine failed on (crash, timeout) carry no verdict and are left out.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lifecycle.confidence import routed_correct, stated_confidence
from lifecycle.errors import UsageError
from lifecycle.golden import Calibration, Suite
from lifecycle.results import CaseResult, RunRecord

SIGNALS = ("stated", "engine")
# Thresholds always shown in the table (the Harbor Support guide escalates under 0.85).
GRID = (0.5, 0.7, 0.8, 0.85, 0.9, 0.95, 0.99)


@dataclass(frozen=True)
class Outcome:
    """One case as calibration sees it: its confidence (or why none) and whether it was right."""

    case_id: str
    confidence: float | None
    correct: bool
    note: str | None = None


@dataclass(frozen=True)
class ReliabilityBin:
    low: float
    high: float
    count: int
    mean_confidence: float | None  # None: empty bin
    accuracy: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "low": self.low,
            "high": self.high,
            "count": self.count,
            "mean_confidence": self.mean_confidence,
            "accuracy": self.accuracy,
        }


@dataclass(frozen=True)
class SweepPoint:
    """Keep local every case with confidence >= threshold."""

    threshold: float
    kept: int
    correct_kept: int
    coverage: float  # kept / all cases (no-confidence cases included, never kept)
    accuracy: float | None  # correct_kept / kept; None when nothing is kept

    def to_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "kept": self.kept,
            "correct_kept": self.correct_kept,
            "coverage": self.coverage,
            "accuracy": self.accuracy,
        }


@dataclass(frozen=True)
class Recommendation:
    """The lowest threshold reaching the target, or the best there is when none does."""

    target: float
    reached: bool
    threshold: float | None
    coverage: float | None
    accuracy: float | None
    statement: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "reached": self.reached,
            "threshold": self.threshold,
            "coverage": self.coverage,
            "accuracy": self.accuracy,
            "statement": self.statement,
        }


@dataclass(frozen=True)
class SignalCalibration:
    """How well one confidence signal of one (variant, suite, mode) is calibrated."""

    signal: str  # "stated" (the model's own number) or "engine" (token probability)
    cases: int
    with_confidence: int
    no_confidence: int
    no_confidence_reasons: dict[str, int]
    accuracy: float | None  # over all cases: what "everything local" gets
    ece: float | None
    brier: float | None
    bins: list[ReliabilityBin]
    sweep: list[SweepPoint]  # one point per distinct confidence value, ascending
    grid: list[SweepPoint]  # the GRID thresholds, for the table
    recommendation: Recommendation

    def to_dict(self) -> dict[str, Any]:
        return {
            "signal": self.signal,
            "cases": self.cases,
            "with_confidence": self.with_confidence,
            "no_confidence": self.no_confidence,
            "no_confidence_reasons": dict(self.no_confidence_reasons),
            "accuracy": self.accuracy,
            "ece": self.ece,
            "brier": self.brier,
            "bins": [b.to_dict() for b in self.bins],
            "sweep": [p.to_dict() for p in self.sweep],
            "grid": [p.to_dict() for p in self.grid],
            "recommendation": self.recommendation.to_dict(),
        }


@dataclass(frozen=True)
class GroupCalibration:
    variant: str
    suite: str
    mode: str
    correct_means: str
    errored: int  # engine failures, left out
    signals: list[SignalCalibration]

    def to_dict(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            "suite": self.suite,
            "mode": self.mode,
            "correct_means": self.correct_means,
            "errored": self.errored,
            "signals": [s.to_dict() for s in self.signals],
        }


@dataclass
class CalibrationReport:
    run_id: str
    groups: list[GroupCalibration]
    skipped_suites: list[str] = field(default_factory=list)  # no [calibration] table
    chart: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "groups": [g.to_dict() for g in self.groups],
            "skipped_suites": list(self.skipped_suites),
            "chart": self.chart,
        }


def _r(value: float) -> float:
    return round(value, 6)


def calibrate_outcomes(
    outcomes: Sequence[Outcome], *, signal: str, target: float, bins: int = 10
) -> SignalCalibration:
    """Every figure of one signal from its outcomes: a pure function, no run needed."""
    n = len(outcomes)
    scored = [(o.confidence, o.correct) for o in outcomes if o.confidence is not None]
    reasons = Counter(o.note or "no confidence" for o in outcomes if o.confidence is None)

    table: list[ReliabilityBin] = []
    ece = 0.0
    for i in range(bins):
        low, high = i / bins, (i + 1) / bins
        inside = [(c, ok) for c, ok in scored if min(int(c * bins), bins - 1) == i]
        if inside:
            conf = sum(c for c, _ in inside) / len(inside)
            acc = sum(ok for _, ok in inside) / len(inside)
            ece += len(inside) / len(scored) * abs(acc - conf)
            table.append(ReliabilityBin(_r(low), _r(high), len(inside), _r(conf), _r(acc)))
        else:
            table.append(ReliabilityBin(_r(low), _r(high), 0, None, None))

    sweep = [sweep_point(scored, n, t) for t in sorted({c for c, _ in scored})]
    return SignalCalibration(
        signal=signal,
        cases=n,
        with_confidence=len(scored),
        no_confidence=n - len(scored),
        no_confidence_reasons=dict(sorted(reasons.items())),
        accuracy=_r(sum(o.correct for o in outcomes) / n) if n else None,
        ece=_r(ece) if scored else None,
        brier=_r(sum((c - ok) ** 2 for c, ok in scored) / len(scored)) if scored else None,
        bins=table,
        sweep=sweep,
        grid=[sweep_point(scored, n, t) for t in GRID],
        recommendation=recommend(sweep, target),
    )


def sweep_point(scored: Sequence[tuple[float, bool]], total: int, threshold: float) -> SweepPoint:
    """Keep the cases with confidence >= ``threshold`` out of ``total`` cases."""
    kept = [ok for c, ok in scored if c >= threshold]
    right = sum(kept)
    return SweepPoint(
        threshold=_r(threshold),
        kept=len(kept),
        correct_kept=right,
        coverage=_r(len(kept) / total) if total else 0.0,
        accuracy=_r(right / len(kept)) if kept else None,
    )


def recommend(sweep: Sequence[SweepPoint], target: float) -> Recommendation:
    """The lowest threshold whose kept cases reach ``target`` (the most coverage that does)."""
    reaching = [p for p in sweep if p.accuracy is not None and p.accuracy >= target]
    if reaching:
        best = min(reaching, key=lambda p: p.threshold)
        return Recommendation(
            target=target,
            reached=True,
            threshold=best.threshold,
            coverage=best.coverage,
            accuracy=best.accuracy,
            statement=(
                f"threshold {best.threshold:g} keeps {best.coverage:.0%} local at "
                f"{best.accuracy:.0%} accuracy (target {target:.0%})"
            ),
        )
    scored = [p for p in sweep if p.accuracy is not None]
    if not scored:
        return Recommendation(
            target, False, None, None, None, "no case has a confidence: nothing to threshold"
        )
    best = max(scored, key=lambda p: (p.accuracy or 0.0, p.coverage))
    return Recommendation(
        target=target,
        reached=False,
        threshold=best.threshold,
        coverage=best.coverage,
        accuracy=best.accuracy,
        statement=(
            f"no threshold reaches {target:.0%} accuracy; the best is {best.accuracy:.0%} "
            f"at threshold {best.threshold:g}, keeping {best.coverage:.0%} local"
        ),
    )


def outcomes_for(
    cases: Sequence[CaseResult], suite: Suite, calibration: Calibration, signal: str
) -> list[Outcome]:
    """The outcomes of one signal over one group's cases (engine failures excluded)."""
    by_id = {c.id: c for c in suite.cases}
    routed = calibration.routed_field
    out = []
    for case in cases:
        if case.errored:
            continue
        correct = case.passed
        if routed:
            correct = (
                case.routed_correct
                if case.routed_correct is not None
                else case.id in by_id and routed_correct(suite, by_id[case.id], case.parsed, routed)
            )
        if signal == "stated":
            value, note = stated_confidence(case.parsed, calibration.confidence_field or "")
        else:
            value = case.answer_probability
            note = case.answer_probability_note or (
                None if value is not None else "no answer probability in this run"
            )
        out.append(Outcome(case.id, value, bool(correct), note))
    return out


def signals_of(calibration: Calibration) -> list[str]:
    """The signals a suite's [calibration] table makes available."""
    names = []
    if calibration.confidence_field:
        names.append("stated")
    if calibration.routed_field:
        names.append("engine")
    return names


def calibrate_run(
    record: RunRecord,
    suites: Mapping[str, Suite],
    *,
    variants: Sequence[str] | None = None,
    signals: Sequence[str] = SIGNALS,
) -> CalibrationReport:
    """Calibration of every (variant, suite, mode) in ``record`` whose suite has a table.

    ``variants`` selects by variant name or model name (the part before ``:``); an unknown
    one is a UsageError. ``suites`` maps suite names to the loaded suites.
    """
    names = list(dict.fromkeys(c.variant for c in record.cases))
    if variants:
        unknown = [v for v in variants if not any(n == v or n.split(":", 1)[0] == v for n in names)]
        if unknown:
            raise UsageError(
                f"not in run {record.run_id}: {', '.join(unknown)}; "
                f"variants in it: {', '.join(names) or 'none'}"
            )
        names = [n for n in names if any(n == v or n.split(":", 1)[0] == v for v in variants)]
    groups: list[GroupCalibration] = []
    skipped: list[str] = []
    order = list(dict.fromkeys((c.variant, c.suite, c.mode) for c in record.cases))
    for variant, suite_name, mode in order:
        if variant not in names:
            continue
        suite = suites[suite_name]
        calibration = suite.calibration
        if calibration is None:
            if suite_name not in skipped:
                skipped.append(suite_name)
            continue
        cases = [
            c for c in record.cases if (c.variant, c.suite, c.mode) == (variant, suite_name, mode)
        ]
        results = [
            calibrate_outcomes(
                outcomes_for(cases, suite, calibration, signal),
                signal=signal,
                target=calibration.target,
                bins=calibration.bins,
            )
            for signal in signals_of(calibration)
            if signal in signals
        ]
        groups.append(
            GroupCalibration(
                variant=variant,
                suite=suite_name,
                mode=mode,
                correct_means=(
                    f"{calibration.routed_field!r} matches"
                    if calibration.routed_field
                    else "the case passes"
                ),
                errored=sum(c.errored for c in cases),
                signals=results,
            )
        )
    return CalibrationReport(run_id=record.run_id, groups=groups, skipped_suites=skipped)


def load_run(path: Path) -> RunRecord:
    """A run record from ``run.json``, a run directory or ``latest.json``."""
    file = path / "run.json" if path.is_dir() else path
    try:
        return RunRecord.from_dict(json.loads(file.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise UsageError("no run record here; run `lifecycle eval` first", path=file) from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"not a run record: {exc}", path=file) from None


def reliability_chart(report: CalibrationReport, path: Path) -> Path:
    """Per group: the reliability diagram (left) and coverage vs kept accuracy (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = max(len(report.groups), 1)
    fig, axes = plt.subplots(rows, 2, figsize=(11, 4 * rows), squeeze=False)
    for (diagram, curve), group in zip(axes, report.groups, strict=False):
        diagram.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect")
        target = None
        for result in group.signals:
            filled = [b for b in result.bins if b.count]
            ece = "-" if result.ece is None else f"{result.ece:.3f}"
            diagram.plot(
                [b.mean_confidence for b in filled],
                [b.accuracy for b in filled],
                marker="o",
                label=f"{result.signal} (ECE {ece}, n={result.with_confidence})",
            )
            curve.plot(
                [p.coverage for p in result.sweep],
                [p.accuracy for p in result.sweep],
                marker=".",
                label=result.signal,
            )
            target = result.recommendation.target
        if target is not None:
            curve.axhline(target, color="grey", linestyle="--", label=f"target {target:.0%}")
        title = f"{group.variant} {group.suite}/{group.mode}"
        diagram.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="confidence", ylabel="accuracy")
        diagram.set_title(f"reliability: {title}")
        diagram.legend(fontsize="small")
        curve.set(xlim=(0, 1.02), ylim=(0, 1.02), xlabel="coverage (kept local)")
        curve.set(ylabel="accuracy of kept cases")
        curve.set_title("threshold sweep")
        curve.legend(fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
