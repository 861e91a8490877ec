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

When the suite names an escalation tier (``[calibration.escalate]``: another variant of the
workspace, or an OpenAI-compatible endpoint), :func:`escalate` answers the cases a threshold
escalates there (only those, through the runner's case filter; answers the run already holds
for that variant are reused) and :func:`cascade_figures` compares the cascade with
"everything local" and "everything escalated": accuracy, share escalated, tokens, latency.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lifecycle.baselines import JudgedCase
from lifecycle.confidence import routed_correct, stated_confidence
from lifecycle.errors import EngineError, LifecycleError, UsageError
from lifecycle.golden import Calibration, Escalation, Suite
from lifecycle.results import CaseResult, RunRecord
from lifecycle.texttable import percent

if TYPE_CHECKING:
    from collections.abc import Callable

    from lifecycle.config import Workspace
    from lifecycle.store import Store

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
    tier: str | None = None  # the escalation tier the suite names, if any
    cascades: list[Cascade] = field(default_factory=list)  # one per signal, once escalated
    tier_error: str | None = None  # the tier could not answer (e.g. the endpoint is down)

    def to_dict(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            "suite": self.suite,
            "mode": self.mode,
            "correct_means": self.correct_means,
            "errored": self.errored,
            "signals": [s.to_dict() for s in self.signals],
            "tier": self.tier,
            "cascades": [c.to_dict() for c in self.cascades],
            "tier_error": self.tier_error,
        }


@dataclass(frozen=True)
class CaseCost:
    """What answering one case cost a tier: tokens (prompt + completion) and latency."""

    tokens: int
    latency_ms: float


@dataclass(frozen=True)
class TierAnswer:
    """One case as the escalation tier answered it (an engine failure counts as wrong)."""

    case_id: str
    correct: bool
    cost: CaseCost
    errored: bool = False


@dataclass(frozen=True)
class Cost:
    """A strategy's cost over all cases: tokens spent on each tier and mean latency per case."""

    local_tokens: int
    tier_tokens: int | None  # None: the tier did not answer
    mean_latency_ms: float | None
    estimated: bool = False  # tier figures extrapolated from the cases it answered

    def to_dict(self) -> dict[str, Any]:
        return {
            "local_tokens": self.local_tokens,
            "tier_tokens": self.tier_tokens,
            "mean_latency_ms": self.mean_latency_ms,
            "estimated": self.estimated,
        }


@dataclass(frozen=True)
class Cascade:
    """One signal's cascade at one threshold vs everything local and everything escalated.

    Every case runs locally first; those with confidence under ``threshold`` (or none) go to
    the tier, whose answer replaces the local one.
    """

    signal: str
    tier: str
    threshold: float | None  # keep local when confidence >= threshold; None: escalate all
    cases: int
    escalated: int
    share_escalated: float
    tier_answered: int  # cases the tier answered (escalated ones, or all with escalate-all)
    tier_errors: int  # escalated cases the tier failed on (counted wrong)
    accuracy: float | None  # the cascade's; None when the tier did not answer
    local_accuracy: float | None  # everything local
    escalated_accuracy: float | None  # everything escalated; None unless the tier did all
    # On the escalated cases alone: what the local model got vs what the tier got.
    local_accuracy_escalated: float | None
    tier_accuracy_escalated: float | None
    cost_local: Cost
    cost_cascade: Cost
    cost_escalated: Cost
    statement: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "signal": self.signal,
            "tier": self.tier,
            "threshold": self.threshold,
            "cases": self.cases,
            "escalated": self.escalated,
            "share_escalated": self.share_escalated,
            "tier_answered": self.tier_answered,
            "tier_errors": self.tier_errors,
            "accuracy": self.accuracy,
            "local_accuracy": self.local_accuracy,
            "escalated_accuracy": self.escalated_accuracy,
            "local_accuracy_escalated": self.local_accuracy_escalated,
            "tier_accuracy_escalated": self.tier_accuracy_escalated,
            "cost": {
                "local": self.cost_local.to_dict(),
                "cascade": self.cost_cascade.to_dict(),
                "escalated": self.cost_escalated.to_dict(),
            },
            "statement": self.statement,
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


def _rounded(value: float) -> float:
    # Rates and thresholds in reports: stable JSON, no float noise in diffs.
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
            table.append(
                ReliabilityBin(
                    _rounded(low), _rounded(high), len(inside), _rounded(conf), _rounded(acc)
                )
            )
        else:
            table.append(ReliabilityBin(_rounded(low), _rounded(high), 0, None, None))

    sweep = [sweep_point(scored, n, t) for t in sorted({c for c, _ in scored})]
    return SignalCalibration(
        signal=signal,
        cases=n,
        with_confidence=len(scored),
        no_confidence=n - len(scored),
        no_confidence_reasons=dict(sorted(reasons.items())),
        accuracy=_rounded(sum(o.correct for o in outcomes) / n) if n else None,
        ece=_rounded(ece) if scored else None,
        brier=_rounded(sum((c - ok) ** 2 for c, ok in scored) / len(scored)) if scored else None,
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
        threshold=_rounded(threshold),
        kept=len(kept),
        correct_kept=right,
        coverage=_rounded(len(kept) / total) if total else 0.0,
        accuracy=_rounded(right / len(kept)) if kept else None,
    )


def recommend(sweep: Sequence[SweepPoint], target: float) -> Recommendation:
    """The lowest threshold whose kept cases reach ``target`` (the most coverage that does)."""
    scored = [p for p in sweep if p.accuracy is not None]
    if not scored:
        return Recommendation(
            target, False, None, None, None, "no case has a confidence: nothing to threshold"
        )
    reaching = [p for p in scored if (p.accuracy or 0.0) >= target]
    if reaching:
        best = min(reaching, key=lambda p: p.threshold)
        statement = (
            f"threshold {best.threshold:g} keeps {best.coverage:.0%} local at "
            f"{best.accuracy:.0%} accuracy (target {target:.0%})"
        )
    else:
        best = max(scored, key=lambda p: (p.accuracy or 0.0, p.coverage))
        statement = (
            f"no threshold reaches {target:.0%} accuracy; the best is {best.accuracy:.0%} "
            f"at threshold {best.threshold:g}, keeping {best.coverage:.0%} local"
        )
    return Recommendation(
        target=target,
        reached=bool(reaching),
        threshold=best.threshold,
        coverage=best.coverage,
        accuracy=best.accuracy,
        statement=statement,
    )


def outcomes_for(
    cases: Sequence[CaseResult], suite: Suite, calibration: Calibration, signal: str
) -> list[Outcome]:
    """The outcomes of one signal over one group's cases (engine failures excluded)."""
    out = []
    for case in cases:
        if case.errored:
            continue
        correct = case_correct(case, calibration, suite)
        if signal == "stated":
            value, note = stated_confidence(case.parsed, calibration.confidence_field or "")
            out.append(Outcome(case.id, value, correct, note))
        else:
            note = case.answer_probability_note or (
                None if case.answer_probability is not None else "no answer probability in this run"
            )
            out.append(recorded_outcome(case, signal, calibration, note=note, suite=suite))
    return out


def case_correct(
    case: JudgedCase, calibration: Calibration | None = None, suite: Suite | None = None
) -> bool:
    """Whether calibration counts a case right: where the suite routes (``routed_field``),
    the routed field's value matched, as the run recorded it or, with ``suite``, judged from
    the output now when it recorded none; otherwise the case passed. Without the suite's
    table (a run record alone), what the run recorded: ``routed_correct`` where there is one.
    """
    if calibration is not None and not calibration.routed_field:
        return case.passed
    if case.routed_correct is not None:
        return case.routed_correct
    if calibration is None:
        return case.passed
    if suite is None:
        return False
    golden = next((g for g in suite.cases if g.id == case.id), None)
    return golden is not None and routed_correct(
        suite, golden, case.parsed, calibration.routed_field or ""
    )


def recorded_outcome(
    case: JudgedCase,
    signal: str,
    calibration: Calibration | None = None,
    *,
    note: str | None = None,
    suite: Suite | None = None,
) -> Outcome:
    """One case as calibration sees it, with the confidence the run recorded for ``signal``
    ("stated" or "engine") and :func:`case_correct`."""
    value = case.stated_confidence if signal == "stated" else case.answer_probability
    return Outcome(case.id, value, case_correct(case, calibration, suite), note)


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


def reliability_chart(report: CalibrationReport, path: Path, *, curves: bool = True) -> Path:
    """Per group: the reliability diagram (left) and coverage vs kept accuracy (right).

    ``curves=False`` draws the reliability diagrams alone, in a grid (the report, which
    knows no suite target).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not curves:
        return _diagrams_only(report, path)
    rows = max(len(report.groups), 1)
    fig, axes = plt.subplots(rows, 2, figsize=(11, 4 * rows), squeeze=False)
    for (diagram, curve), group in zip(axes, report.groups, strict=False):
        target = None
        for result in group.signals:
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
        _diagram(diagram, group, title)
        curve.set(xlim=(0, 1.02), ylim=(0, 1.02), xlabel="coverage (kept local)")
        curve.set(ylabel="accuracy of kept cases")
        curve.set_title("threshold sweep")
        curve.legend(fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# --- the cascade ---------------------------------------------------------------------------


def escalated_ids(outcomes: Sequence[Outcome], threshold: float | None) -> list[str]:
    """Cases a cascade escalates: no confidence, or confidence under ``threshold``."""
    return [
        o.case_id
        for o in outcomes
        if o.confidence is None or threshold is None or o.confidence < threshold
    ]


def cascade_figures(
    outcomes: Sequence[Outcome],
    local: Mapping[str, CaseCost],
    tier: Mapping[str, TierAnswer] | None,
    *,
    threshold: float | None,
    signal: str,
    tier_name: str,
) -> Cascade:
    """The cascade at ``threshold`` from local outcomes and costs and the tier's answers.

    A pure function (no run needed). ``tier`` holds the tier's answers by case id (at least
    every escalated case; all cases give an exact "everything escalated"); None: the tier
    could not answer, and only the local figures are given.
    """
    n = len(outcomes)
    down = escalated_ids(outcomes, threshold)
    escalated = set(down)
    local_tokens = sum(local[o.case_id].tokens for o in outcomes)
    local_ms = sum(local[o.case_id].latency_ms for o in outcomes)
    local_right = sum(o.correct for o in outcomes)
    right_escalated_locally = sum(o.correct for o in outcomes if o.case_id in escalated)
    everything_local = Cost(local_tokens, 0, _rounded(local_ms / n) if n else None)
    share = _rounded(len(down) / n) if n else 0.0
    base: dict[str, Any] = {
        "signal": signal,
        "tier": tier_name,
        "threshold": threshold,
        "cases": n,
        "escalated": len(down),
        "share_escalated": share,
        "local_accuracy": _rounded(local_right / n) if n else None,
        "local_accuracy_escalated": _rounded(right_escalated_locally / len(down)) if down else None,
        "cost_local": everything_local,
    }
    missing = [i for i in down if tier is None or i not in tier]
    if tier is None or missing:
        why = (
            "the tier did not answer"
            if tier is None
            else f"{len(missing)} escalated case(s) unanswered"
        )
        nothing = Cost(0, None, None)
        return Cascade(
            **base,
            tier_answered=0 if tier is None else len(tier),
            tier_errors=0,
            accuracy=None,
            escalated_accuracy=None,
            tier_accuracy_escalated=None,
            cost_cascade=Cost(local_tokens, None, None),
            cost_escalated=nothing,
            statement=(
                f"threshold {_threshold_text(threshold)} escalates {share:.0%}; {why}: "
                "no cascade figures"
            ),
        )
    answers = {o.case_id: tier[o.case_id] for o in outcomes if o.case_id in tier}
    tier_right_escalated = sum(answers[i].correct for i in down)
    kept_right = sum(o.correct for o in outcomes if o.case_id not in escalated)
    accuracy = _rounded((kept_right + tier_right_escalated) / n) if n else None
    tier_ms = sum(answers[i].cost.latency_ms for i in down)
    cascade = Cost(
        local_tokens, sum(answers[i].cost.tokens for i in down), _rounded((local_ms + tier_ms) / n)
    )
    # Everything escalated: exact when the tier answered every case, else extrapolated from
    # the cases it did answer (its accuracy is then unknown: escalated cases are the hard ones).
    complete = len(answers) == n
    if answers:
        mean_tokens = sum(a.cost.tokens for a in answers.values()) / len(answers)
        mean_ms = sum(a.cost.latency_ms for a in answers.values()) / len(answers)
        all_tier = Cost(0, round(mean_tokens * n), _rounded(mean_ms), estimated=not complete)
    else:
        all_tier = Cost(0, None, None)
    escalated_accuracy = (
        _rounded(sum(a.correct for a in answers.values()) / n) if complete and n else None
    )
    statement = (
        f"threshold {_threshold_text(threshold)} escalates {share:.0%} ({len(down)}/{n}) "
        f"to {tier_name}: "
        f"accuracy {percent(accuracy)} vs {percent(base['local_accuracy'])} all local"
        + (
            f", {percent(escalated_accuracy)} all escalated"
            if escalated_accuracy is not None
            else ""
        )
    )
    return Cascade(
        **base,
        tier_answered=len(answers),
        tier_errors=sum(answers[i].errored for i in down),
        accuracy=accuracy,
        escalated_accuracy=escalated_accuracy,
        tier_accuracy_escalated=_rounded(tier_right_escalated / len(down)) if down else None,
        cost_cascade=cascade,
        cost_escalated=all_tier,
        statement=statement,
    )


def _threshold_text(threshold: float | None) -> str:
    return "none (escalate all)" if threshold is None else f"{threshold:g}"


def case_cost(case: CaseResult) -> CaseCost:
    return CaseCost(case.prompt_tokens + case.completion_tokens, case.latency_ms)


def escalate(
    report: CalibrationReport,
    record: RunRecord,
    suites: Mapping[str, Suite],
    workspace: Workspace,
    *,
    store: Store | None = None,
    threshold: float | None = None,
    all_cases: bool = False,
    progress: Callable[[str], None] | None = None,
) -> CalibrationReport:
    """Answer each group's escalated cases on its suite's tier and add the cascade figures.

    The threshold is ``threshold`` when given, else each signal's recommended one (or, when no
    threshold reaches the target, the best there is). Answers the run already holds for a
    tier variant are reused; the rest go through the runner with a case filter. A tier that
    cannot answer (endpoint down, model that cannot load) sets the group's ``tier_error``;
    the local figures stay.
    """
    say = progress or (lambda _m: None)
    groups = []
    for group in report.groups:
        suite = suites[group.suite]
        calibration = suite.calibration
        tier = calibration.escalate if calibration else None
        # The tier itself has nothing to escalate to.
        if calibration is None or tier is None or tier.variant == group.variant:
            groups.append(group)
            continue
        cases = [
            c
            for c in record.cases
            if (c.variant, c.suite, c.mode) == (group.variant, group.suite, group.mode)
            and not c.errored
        ]
        per_signal = {
            s.signal: (
                outcomes_for(cases, suite, calibration, s.signal),
                threshold if threshold is not None else s.recommendation.threshold,
            )
            for s in group.signals
        }
        wanted = (
            [c.id for c in cases]
            if all_cases
            else list(
                dict.fromkeys(i for outs, t in per_signal.values() for i in escalated_ids(outs, t))
            )
        )
        answers: dict[str, TierAnswer] | None
        error = None
        try:
            answers = tier_answers(
                tier, record, group, suite, calibration, wanted, workspace, store, say
            )
        except (EngineError, LifecycleError) as exc:
            if isinstance(exc, UsageError):
                raise
            answers, error = None, f"{tier.label}: {exc}"
            say(f"error: escalation tier {error}")
        local = {c.id: case_cost(c) for c in cases}
        cascades = [
            cascade_figures(outs, local, answers, threshold=t, signal=name, tier_name=tier.label)
            for name, (outs, t) in per_signal.items()
        ]
        groups.append(replace(group, tier=tier.label, cascades=cascades, tier_error=error))
    report.groups = groups
    return report


def tier_answers(
    tier: Escalation,
    record: RunRecord,
    group: GroupCalibration,
    suite: Suite,
    calibration: Calibration,
    wanted: Sequence[str],
    workspace: Workspace,
    store: Store | None,
    say: Callable[[str], None],
) -> dict[str, TierAnswer]:
    """The tier's answers to ``wanted``: from the run where it holds them, else generated.

    Every answer the run holds for a tier variant is taken (they cost nothing), so that
    "everything escalated" is measured rather than extrapolated when the run has them all.
    """
    answers: dict[str, TierAnswer] = {}
    if tier.variant:
        for c in record.cases:
            same = (c.variant, c.suite, c.mode) == (tier.variant, group.suite, group.mode)
            if same and not c.errored:
                answers[c.id] = TierAnswer(c.id, case_correct(c, calibration), case_cost(c))
    todo = [i for i in wanted if i not in answers]
    if not todo:
        return answers
    from lifecycle.runner import EvalOptions, run_eval
    from lifecycle.store import Store as _Store
    from lifecycle.variants import resolve_variants

    store = store or _Store(workspace.home)
    if tier.variant:
        variants = resolve_variants(workspace, store, [tier.variant])
        options = EvalOptions(suites=[suite.name], modes=[group.mode], case_ids=todo, resume=False)
    else:
        # The endpoint gets each case's conversation after the local variant's SYSTEM and
        # MESSAGE history, as the openai engine does for any run.
        variants = resolve_variants(workspace, store, [group.variant])
        options = EvalOptions(
            suites=[suite.name],
            modes=[group.mode],
            case_ids=todo,
            resume=False,
            canary=False,
            engine="openai",
            engine_settings={"base_url": tier.base_url, "model": tier.model},
        )
    if len(variants) != 1:
        names = ", ".join(v.name for v in variants)
        raise UsageError(
            f"escalate.variant {tier.variant!r} names {len(variants)} variants ({names}): name one"
        )
    say(
        f"escalating {len(todo)} case(s) of {group.variant} {group.suite}/{group.mode} "
        f"to {tier.label}"
    )
    run = run_eval(workspace, options, store=store, progress=say, variants=variants)
    failed = next((v.error for v in run.variants if v.error), None)
    if failed:
        raise EngineError(failed)
    for c in run.cases:
        answers[c.id] = TierAnswer(
            c.id, not c.errored and case_correct(c, calibration), case_cost(c), c.errored
        )
    return answers


def _diagram(axis: Any, group: GroupCalibration, title: str) -> None:
    """One group's reliability diagram: accuracy vs mean confidence per bin, each signal."""
    axis.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect")
    for result in group.signals:
        filled = [b for b in result.bins if b.count]
        ece = "-" if result.ece is None else f"{result.ece:.3f}"
        axis.plot(
            [b.mean_confidence for b in filled],
            [b.accuracy for b in filled],
            marker="o",
            label=f"{result.signal} (ECE {ece}, n={result.with_confidence})",
        )
    axis.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="confidence", ylabel="accuracy")
    axis.set_title(f"reliability: {title}", fontsize="medium")
    axis.legend(fontsize="small")


def _diagrams_only(report: CalibrationReport, path: Path) -> Path:
    import matplotlib.pyplot as plt

    count = max(len(report.groups), 1)
    columns = min(count, 2)
    rows = (count + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(5.5 * columns, 4 * rows), squeeze=False)
    flat = [axis for row in axes for axis in row]
    for axis, group in zip(flat, report.groups, strict=False):
        _diagram(axis, group, f"{group.variant} {group.suite}/{group.mode}")
    for axis in flat[len(report.groups) :]:
        axis.set_visible(False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90, metadata={"Software": None})
    plt.close(fig)
    return path


def calibrate_record_cases(cases: Sequence[CaseResult], bins: int = 10) -> CalibrationReport:
    """Calibration from a run record's cases alone (for the report): no suite needed.

    Correct and the signals are what the eval recorded (:func:`recorded_outcome`). Without
    the suite's target the recommendation is computed against the default target and not
    shown by the report.
    """
    order: dict[tuple[str, str, str], list[CaseResult]] = {}
    for case in cases:
        if case.errored:
            continue
        order.setdefault((case.variant, case.suite, case.mode), []).append(case)
    groups = []
    for (variant, suite, mode), members in order.items():
        results = []
        for signal in SIGNALS:
            notes = [_recorded_note(c, signal) for c in members]
            values = [
                recorded_outcome(c, signal, note=n) for c, n in zip(members, notes, strict=True)
            ]
            if not any(o.confidence is not None or o.note for o in values):
                continue  # the suite did not ask for this signal
            results.append(
                calibrate_outcomes(values, signal=signal, target=Calibration().target, bins=bins)
            )
        if results:
            groups.append(GroupCalibration(variant, suite, mode, "recorded", 0, results))
    return CalibrationReport(run_id="", groups=groups)


def _recorded_note(case: CaseResult, signal: str) -> str | None:
    return case.stated_confidence_note if signal == "stated" else case.answer_probability_note
