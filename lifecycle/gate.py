"""The regression gate: the latest run against the committed baseline, under thresholds.

A baseline is what the currently pinned variants did: per-case verdicts and outputs, summary
rates, bench figures and the environment, kept in ``baselines/<model>.json`` next to
``models.lock`` (their format is :mod:`lifecycle.baselines`; :mod:`lifecycle.pin` writes
them). The gate matches the run's variants to the baseline's by variant name (a slot of the
workspace's variant matrix; its content id changes whenever the weights or the Modelfile do)
and fails a variant on:

- a regression: a case (suite, mode, id) that passed in the baseline and fails now;
- a suite pass rate under its threshold, or a variant that did not run at all;
- pass, JSON-valid or schema-valid rate dropping by more than the configured points;
- generation tokens/sec dropping, or peak memory (RSS, VRAM) growing, by more than the
  configured fraction.

A change of environment is reported as such. On different hardware speed and memory are not
comparable, so those checks are skipped with the reason; a different engine build, thread
count or seed on the same hardware still gates (an engine upgrade that halves tokens/sec is
the point of the gate), but the failure is attributed to the environment, not the model.

Thresholds live in ``lifecycle.toml``::

    [gate]
    max_pass_rate_drop = 0.0       # absolute drop allowed, 0..1 (0.05 = five points)
    max_json_valid_drop = 0.0
    max_schema_valid_drop = 0.0
    max_tokens_per_s_drop = 0.3    # relative drop allowed, 0..1
    max_memory_growth = 0.2        # relative growth allowed, >= 0
    fail_on_regression = true      # false: regressions are listed but only rates gate
    fail_on_candidates = false     # true: a refused candidate fails the gate too
    require_passing_variant = false  # true: fail when no variant of a model passes

Pinned vs candidate: a variant named in ``models.lock`` is production, any other is a
candidate. The gate fails (exit 3) when a pinned variant regresses or misses a threshold; a
candidate that does is *refused* (not pinned, reported) unless ``fail_on_candidates``. A
variant the engine could not run (crash, timeout, load failure) gets no verdict at all: the
result says the engine failed, and the CLI exits 1.

Same machine: a regression is a case the baseline model passed *on this machine* that the
current variant fails. When the environment differs from the baseline's (CPU, engine build,
CPU kernels in use) and the weights and prompt are unchanged, every flip is the
environment's: reported as such, never a regression. When the variant changed as well, the
pinned variant evaluated here (``references``) is the baseline for regressions.

Partial runs (``--limit``, ``--mode``, one shard) are gated on the cases they ran: rates are
compared with the baseline's rates over the same cases, and the result says so.

The verdict is rendered (terminal, Markdown, JUnit) by :mod:`lifecycle.gaterender`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from lifecycle.baselines import Baseline, BaselineCase, CaseKey, JudgedCase, variant_environment
from lifecycle.checks import Check
from lifecycle.config import Workspace, read_toml
from lifecycle.errors import EXIT_FAILURE, EXIT_GATE_FAILED, EXIT_OK
from lifecycle.latency import latency_checks
from lifecycle.results import CaseResult, RunRecord, SuiteSummary, VariantInfo, VariantRun
from lifecycle.retrieval import retrieval_checks
from lifecycle.runtime import environment_runtime_change, runtime_defaults, runtime_of
from lifecycle.stats import mcnemar_exact, wilson_interval
from lifecycle.texttable import percent
from lifecycle.vectors import REINDEX_BELOW, baseline_pairs, reindex_notes, vector_checks

if TYPE_CHECKING:
    from lifecycle.calibrate import SignalCalibration
    from lifecycle.golden import Calibration

# Environment keys whose change makes speed and memory incomparable (another machine).
HARDWARE_KEYS = ("machine", "cpu", "cpu_count_logical", "cpu_count_physical", "ram_bytes")
# Keys of the engine and its settings: a change here is the environment's, not the model's.
ENGINE_KEYS = (
    "engine",
    "engine_version",
    "threads",
    "batch_size",
    "gpu_layers",
    "seed",
    "extra_bufts",
    "parallel",
    "kv_cache_type_k",
    "kv_cache_type_v",
    "flash_attention",
    "schema_decoder",
    "free_drafting",
    "cpu_features",  # derived (see _environment_changes): the kernels the engine build runs
)
# Keys whose change can alter greedy outputs themselves (other kernels, other rounding,
# another KV cache precision): across such a change a flip is judged by its decision margin.
# (Batched decoding groups other tokens into each matrix product: "parallel" is one such key.)
NUMERIC_KEYS = (
    "engine",
    "engine_version",
    "cpu",
    "machine",
    "gpu_layers",
    "extra_bufts",
    "parallel",
    "kv_cache_type_k",
    "kv_cache_type_v",
    "flash_attention",
    "schema_decoder",  # llguidance's canonical forced tokens vs the GBNF path's own choices
    "free_drafting",  # prompt-lookup drafts verified in batches: other rounding
    # The instruction sets of the CPU kernels llama.cpp runs: another CPU variant of the build
    # (AVX512 instead of AVX2) rounds differently, on machines whose model name is the same.
    "cpu_features",
)
# What the gate made of a flip across a numeric environment change (see EnvironmentFlip).
FlipJudgement = Literal["noise", "regression", "gained", "unknown"]
# Engine settings a team chooses whose change makes tokens/s a measurement of another
# configuration: speeds are not compared across them (a deliberate 2 → 1 threads is no
# slowdown of the engine); memory still is.
SPEED_SETTING_KEYS = ("threads", "parallel", "batch_size")
# The default [gate] noise_margin, in logits (= nats of log-probability). Chosen from the
# verdict-trust benchmark (benchmarks/verdict_trust.py; docs/gate-and-pins.md has the table).
NOISE_MARGIN = 0.5
# Eval speed is judged only when both runs generated for at least this long: a tiny model's
# fraction of a second of generation measures the machine's jitter, not the model.
MIN_SPEED_SAMPLE_S = 2.0


@dataclass(frozen=True)
class GateSettings:
    """Thresholds of ``[gate]`` in ``lifecycle.toml``; see the module docstring."""

    max_pass_rate_drop: float = 0.0
    max_json_valid_drop: float = 0.0
    max_schema_valid_drop: float = 0.0
    max_tokens_per_s_drop: float = 0.3
    max_memory_growth: float = 0.2
    # Speeds are judged only when other processes used at most this share of the CPU during
    # the eval (and the baseline's): a loaded machine slows llama.cpp far beyond its share.
    max_foreign_cpu_share: float = 0.15
    fail_on_regression: bool = True
    # A candidate (a variant not in models.lock) that fails is refused and reported; true
    # makes it fail the gate as well.
    fail_on_candidates: bool = False
    # Fail when no variant of a model passes, even if none of them is pinned yet.
    require_passing_variant: bool = False
    # Cascade calibration (suites with [calibration]), off unless set: the largest allowed
    # drop of the coverage at the suite's target accuracy, and rise of the ECE (absolute).
    max_coverage_drop: float | None = None
    max_ece_rise: float | None = None
    # A flip across a numeric environment change (engine build, CPU, batching, KV cache) is
    # noise only when the case's decision margin (logit gap of its deciding token) is under
    # this in both runs; any other flip is a regression. See the module docstring.
    noise_margin: float = NOISE_MARGIN
    # Retrieval suites (lifecycle.vectors): the largest allowed drift (1 - cosine) of a text's
    # vector from its pinned one (None: not gated), and the cosine under which a text's
    # vector marks the variant "re-index needed".
    max_vector_drift: float | None = None
    reindex_below: float = REINDEX_BELOW
    # The suites' [calibration] tables by suite name, read by read_gate_settings when a
    # calibration bound is set (not a [gate] key).
    calibration: Mapping[str, Calibration] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        del out["calibration"]
        return out


@dataclass(frozen=True)
class Regression:
    """A case that passed in the baseline and fails now."""

    variant: str
    model: str
    suite: str
    mode: str
    case: str
    reason: str
    diff: str | None
    output: str
    baseline_output: str
    expected: Any
    causes: list[str]
    # Decision margins of the case (see decision_margin) in the baseline and now; None when
    # unknown. Shown so a reader sees how confident the lost answer was.
    baseline_margin: float | None = None
    margin: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CaseVerdict:
    """Every case of the run with its baseline status, for JUnit and the report."""

    variant: str
    suite: str
    mode: str
    case: str
    passed: bool
    baseline_passed: bool | None  # None: the case is new or there is no baseline
    reason: str
    output: str
    diff: str | None
    environment_only: bool = False  # same weights, other environment: never a regression
    errored: bool = False  # the engine gave no answer

    @property
    def regressed(self) -> bool:
        return (
            self.baseline_passed is True
            and not self.passed
            and not self.environment_only
            and not self.errored
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "regressed": self.regressed}


@dataclass(frozen=True)
class VariantVerdict:
    """The gate's answer for one variant: may it be pinned?"""

    variant: str
    model: str
    variant_id: str
    passed: bool
    has_baseline: bool
    baseline_variant_id: str | None
    failures: list[str]
    pinned: bool = False  # in models.lock: production
    engine_error: str | None = None  # the engine could not run it: no verdict

    @property
    def status(self) -> str:
        """``holds``/``regressed`` for a pinned variant, ``accepted``/``refused`` for a
        candidate, ``error`` when the engine failed."""
        if self.engine_error:
            return "error"
        if self.pinned:
            return "holds" if self.passed else "regressed"
        return "accepted" if self.passed else "refused"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "status": self.status}


@dataclass(frozen=True)
class EnvironmentFlip:
    """A case whose verdict changed across a numeric environment change (engine build, CPU,
    batching, KV cache), with both decision margins and what the gate made of it:

    - ``noise``: a near tie in both runs (margins under ``noise_margin``), not a regression;
    - ``regression``: a confident case lost (listed under regressions too);
    - ``gained``: failed in the baseline, passes now;
    - ``unknown``: a margin is missing (a baseline pinned before margins, an engine without
      logits): the old rule applies, the environment's, and the gate says so.
    """

    variant: str
    suite: str
    mode: str
    case: str
    baseline_passed: bool
    passed: bool
    output: str
    baseline_output: str
    judged: FlipJudgement = "unknown"
    baseline_margin: float | None = None
    margin: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class GateResult:
    """Everything ``lifecycle gate`` decided, with a stable ``--json`` form."""

    passed: bool
    run_id: str
    variants: list[VariantVerdict]
    checks: list[Check]
    regressions: list[Regression]
    cases: list[CaseVerdict]
    environment_changes: list[dict[str, Any]]
    settings: GateSettings = field(default_factory=GateSettings)
    environment_flips: list[EnvironmentFlip] = field(default_factory=list)
    partial: list[str] = field(default_factory=list)  # "variant suite/mode: k of n cases"
    failures: list[str] = field(default_factory=list)  # gate-wide (require_passing_variant)
    # Per variant: "runtime changed: llama-cpp-python 0.3.36 → 0.3.37, kv_cache_type f16 →
    # q4_0" when the runtime differs from its baseline's (lifecycle.runtime).
    runtime_changes: dict[str, str] = field(default_factory=dict)

    def verdict(self, variant: str) -> VariantVerdict | None:
        return next((v for v in self.variants if v.variant == variant), None)

    @property
    def engine_failed(self) -> bool:
        """Some variant could not be run: the tool failed (exit 1), not the model."""
        return any(v.engine_error for v in self.variants)

    @property
    def exit_code(self) -> int:
        if self.engine_failed:
            return EXIT_FAILURE
        return EXIT_OK if self.passed else EXIT_GATE_FAILED

    def headline(self) -> str:
        """One line a team can act on: "2 pinned variants hold; 2 candidates refused"."""
        counts: dict[str, int] = {}
        for v in self.variants:
            counts[v.status] = counts.get(v.status, 0) + 1
        words = (
            ("holds", "pinned variant holds", "pinned variants hold"),
            ("regressed", "pinned variant regressed", "pinned variants regressed"),
            ("accepted", "candidate accepted", "candidates accepted"),
            ("refused", "candidate refused", "candidates refused"),
            ("error", "variant not run (engine failed)", "variants not run (engine failed)"),
        )
        parts = [
            f"{counts[key]} {one if counts[key] == 1 else many}"
            for key, one, many in words
            if counts.get(key)
        ]
        unknown = sum(1 for f in self.environment_flips if f.judged == "unknown")
        noise = sum(1 for f in self.environment_flips if f.judged == "noise")
        if unknown:
            parts.append(f"{unknown} case(s) flipped by the environment")
        if noise:
            parts.append(f"{noise} near tie(s) flipped (noise)")
        parts += sorted(set(self.runtime_changes.values()))
        parts += reindex_notes(self.checks)  # lifecycle.vectors
        return "; ".join(parts + self.failures) or "nothing to gate"

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "exit_code": self.exit_code,
            "headline": self.headline(),
            "engine_failed": self.engine_failed,
            "partial": self.partial,
            "failures": self.failures,
            "environment_flips": [f.to_dict() for f in self.environment_flips],
            "runtime_changes": self.runtime_changes,
            "run_id": self.run_id,
            "variants": [v.to_dict() for v in self.variants],
            "regressions": [r.to_dict() for r in self.regressions],
            "checks": [c.to_dict() for c in self.checks],
            "environment_changes": self.environment_changes,
            "cases": [c.to_dict() for c in self.cases],
            "settings": self.settings.to_dict(),
        }


# [gate] keys that are switches; every other one is a bound (a number).
_FLAGS = ("fail_on_regression", "fail_on_candidates", "require_passing_variant")


def read_gate_settings(workspace: Workspace) -> GateSettings:
    """``[gate]`` of the workspace's lifecycle.toml, from the document load_workspace parsed
    (as ``[compare]``, ``[serve]`` and ``[store]`` are read); errors name
    ``lifecycle.toml → gate.field``. The calibration bounds bring the suites' [calibration]
    tables from the workspace's evals directory."""
    reader = workspace.document_reader().table("gate")
    reader.reject_unknown(set(GateSettings().to_dict()))
    values: dict[str, Any] = {}
    for key in reader.data:  # in the file's order, so the first bad key is the one named
        if key in _FLAGS:
            values[key] = reader.boolean(key, False)
        else:
            # Growth may exceed 100 %; a margin is in logits, unbounded above.
            upper = None if key in ("max_memory_growth", "noise_margin") else 1.0
            values[key] = reader.number(key, None, minimum=0.0, maximum=upper)
    if values.get("max_coverage_drop") is not None or values.get("max_ece_rise") is not None:
        values["calibration"] = calibration_tables(workspace.evals_dir)
    return GateSettings(**values)


def calibration_tables(evals_dir: Path) -> dict[str, Calibration]:
    """Every suite's [calibration] table in the workspace's evals directory, by suite name."""
    from lifecycle.golden import parse_calibration as _parse_calibration

    tables = {}
    for path in sorted(evals_dir.glob("*.toml")):
        suite = read_toml(path)
        if "calibration" in suite:
            tables[path.stem] = _parse_calibration(path, suite["calibration"])
    return tables


def run_gate(
    record: RunRecord,
    baselines: Mapping[str, Baseline],
    settings: GateSettings | None = None,
    *,
    bench: dict[str, dict[str, Any]] | None = None,
    pinned: set[str] | None = None,
    references: dict[str, list[BaselineCase]] | None = None,
) -> GateResult:
    """Compare ``record`` with ``baselines`` (from :func:`lifecycle.baselines.load_baselines`)
    under ``settings``.

    ``bench`` holds optional bench figures by variant name
    (:func:`lifecycle.baselines.bench_by_variant`);
    ``pinned`` names the variants in ``models.lock`` (default: those with a baseline, which
    pin writes together with the lock); ``references`` holds, by variant name, the cases of
    the pinned variant evaluated in this run's environment (see the module docstring).
    """
    settings = settings or GateSettings()
    bench = bench or {}
    pinned = set(baselines) if pinned is None else set(pinned)
    references = references or {}
    gated = [
        _gate_variant(
            record,
            run,
            baselines.get(run.variant.name),
            settings,
            bench.get(run.variant.name),
            references.get(run.variant.name),
            pinned,
        )
        for run in record.variants
    ]
    verdicts = [g.judged for g in gated]
    gate_failures = []
    if settings.require_passing_variant:
        for model in sorted({v.model for v in verdicts if not v.engine_error}):
            if not any(v.passed for v in verdicts if v.model == model):
                gate_failures.append(f"no variant of {model} passes")
    blocking = [
        v
        for v in verdicts
        if not v.engine_error and not v.passed and (v.pinned or settings.fail_on_candidates)
    ]
    return GateResult(
        passed=bool(verdicts) and not blocking and not gate_failures,
        run_id=record.run_id,
        variants=verdicts,
        checks=[c for g in gated for c in g.checks],
        regressions=[r for g in gated for r in g.regressions],
        cases=[c for g in gated for c in g.cases],
        environment_changes=[g.environment_change for g in gated if g.environment_change],
        settings=settings,
        environment_flips=[f for g in gated for f in g.flips],
        partial=[p for g in gated for p in g.partial],
        failures=gate_failures,
        runtime_changes={g.name: g.runtime_change for g in gated if g.runtime_change},
    )


@dataclass
class _VariantGate:
    """What the gate found for one variant, step by step (see :func:`_gate_variant`)."""

    name: str
    checks: list[Check] = field(default_factory=list)
    regressions: list[Regression] = field(default_factory=list)
    cases: list[CaseVerdict] = field(default_factory=list)
    flips: list[EnvironmentFlip] = field(default_factory=list)
    partial: list[str] = field(default_factory=list)
    environment_change: dict[str, Any] | None = None
    runtime_change: str | None = None
    verdict: VariantVerdict | None = None  # set by the last step

    @property
    def judged(self) -> VariantVerdict:
        if self.verdict is None:
            raise RuntimeError(f"{self.name}: the gate gave no verdict")
        return self.verdict


@dataclass(frozen=True)
class _Changes:
    """What differs between a variant's baseline and this run."""

    environment: list[dict[str, Any]]  # {"key", "baseline", "current"}
    causes: list[str]  # "model", "golden set", "environment"
    same_weights: bool
    golden_changed: bool
    hardware_changed: bool

    @property
    def numeric_keys(self) -> list[str]:
        return [c["key"] for c in self.environment if c["key"] in NUMERIC_KEYS]

    @property
    def speed_settings(self) -> list[str]:
        """Changed settings that make tokens/s another measurement ("threads 2 → 1")."""
        return [
            f"{c['key']} {_setting(c['baseline'])} → {_setting(c['current'])}"
            for c in self.environment
            if c["key"] in SPEED_SETTING_KEYS
        ]


def _setting(value: Any) -> str:
    """A per-variant setting as recorded ({variant: value} in run environments) or plain."""
    if isinstance(value, dict) and len(value) == 1:
        value = next(iter(value.values()))
    return str(value)


def _gate_variant(
    record: RunRecord,
    run: VariantRun,
    base: Baseline | None,
    settings: GateSettings,
    bench_now: dict[str, Any] | None,
    reference: list[BaselineCase] | None,
    pinned: set[str],
) -> _VariantGate:
    """One variant through the gate's steps: engine failure, suite thresholds, what changed,
    the baseline to judge against, each case, rates, speed and latency, retrieval, verdict."""
    name = run.variant.name
    out = _VariantGate(name)
    cases = [c for c in record.cases if c.variant == name]
    engine_error = run.error or _engine_errors(cases)
    if engine_error:
        # No verdict on a model the engine could not run: not a regression, not a refusal.
        out.checks.append(Check("ran", name, "error", f"engine failed: {engine_error}"))
        out.cases += [_case_verdict(c, None) for c in cases if c.errored]
        failure = f"engine failed: {engine_error}"
        out.verdict = _verdict(run.variant, base, [failure], pinned, engine_error)
        return out
    stored = base.case_map() if base is not None else {}
    out.checks += _threshold_checks(record, name, cases, stored, out.partial)
    causes: list[str] = []
    source: BaselineSource | None = None
    changes: _Changes | None = None
    if base is None:
        out.cases += [_case_verdict(case, None) for case in cases]
        out.checks.append(Check("baseline", name, "skip", "no baseline: first pin of this variant"))
    else:
        changes = _what_changed(record, run, base)
        causes = changes.causes
        if changes.environment:
            out.environment_change = {"variant": name, "changes": changes.environment}
        out.runtime_change = environment_runtime_change(
            base.environment, variant_environment(record.environment, name)
        )
        source = baseline_source(stored, reference, changes.numeric_keys)
        if source.kind == "reference":
            out.checks += _pinned_model_flips(out, stored, source, settings)
        _judge_cases(out, run, cases, source, changes, settings)
        out.checks += _margin_notes(out)
        out.checks += _rates_against(record, name, cases, source, changes, settings)
        out.checks += _speed_checks(
            record,
            name,
            base,
            bench_now,
            settings,
            changes.hardware_changed,
            causes,
            reconfigured=changes.speed_settings,
        )
        # The [serve] SLA over a load test given with --bench (lifecycle.latency).
        out.checks += latency_checks(
            name,
            run.variant.id,
            base.bench,
            base.environment,
            bench_now,
            max_foreign_cpu_share=settings.max_foreign_cpu_share,
            hardware_keys=HARDWARE_KEYS,
            causes=causes,
        )
    # Retrieval suites: metric thresholds and drops, vector drift, re-index (vectors). The
    # pinned sidecar is read (and hashed) once, for both.
    suites_now = record.retrieval.get(name)
    pairs = (
        baseline_pairs(
            suites_now,
            base.extra if base is not None else {},
            base.directory if base is not None else None,
        )
        if suites_now
        else None
    )
    # Rank swaps are judged by their cosine gaps across a numeric change, same weights.
    rank_noise = bool(source and source.numeric and changes and changes.same_weights)
    out.checks += retrieval_checks(
        record,
        name,
        source.cases if source is not None else None,
        max_drop=settings.max_pass_rate_drop,
        noise_margin=settings.noise_margin,
        numeric=source is not None and source.numeric,
        same_weights=changes is not None and changes.same_weights,
        causes=causes,
        vectors=pairs if rank_noise and isinstance(pairs, dict) else None,
    )
    out.checks += vector_checks(
        name,
        pairs,
        max_vector_drift=settings.max_vector_drift,
        reindex_below=settings.reindex_below,
    )
    if out.regressions:
        out.checks.append(
            Check(
                "regressions",
                name,
                "fail" if settings.fail_on_regression else "skip",
                f"{len(out.regressions)} case(s) passed in the baseline and fail now",
                current=float(len(out.regressions)),
                cause=", ".join(causes) or None,
            )
        )
    failures = [
        c.message if not c.suite else f"{c.suite}/{c.mode}: {c.message}"
        for c in out.checks
        if c.status == "fail"
    ]
    out.verdict = _verdict(run.variant, base, failures, pinned)
    return out


def _threshold_checks(
    record: RunRecord,
    name: str,
    cases: list[CaseResult],
    stored: Mapping[CaseKey, BaselineCase],
    partial: list[str],
) -> list[Check]:
    """Each suite/mode's pass rate against its threshold (full runs only; a partial run's
    groups are appended to ``partial`` as "variant suite/mode: k of n cases")."""
    summaries = [s for s in record.summaries if s.variant == name]
    group_partial = _partial_groups(summaries, cases, stored, record.shard)
    partial += [f"{name} {g}: {text}" for g, text in group_partial.items()]
    checks = []
    for s in summaries:
        group = f"{s.suite}/{s.mode}"
        if group in group_partial:
            message = (
                f"partial run ({group_partial[group]}): the suite threshold is judged "
                "on full runs only"
            )
            status = "skip"
        else:
            status = "pass" if s.met_threshold else "fail"
            message = (
                f"pass rate {s.pass_rate:.0%} "
                + ("meets" if s.met_threshold else "is under")
                + f" the suite threshold {percent(s.threshold)}"
            )
        checks.append(
            Check(
                "threshold",
                name,
                status,
                message,
                suite=s.suite,
                mode=s.mode,
                current=s.pass_rate,
                threshold=s.threshold,
            )
        )
    return checks


def _what_changed(record: RunRecord, run: VariantRun, base: Baseline) -> _Changes:
    name = run.variant.name
    changes = _environment_changes(base.environment, variant_environment(record.environment, name))
    same_weights = base.variant_id == run.variant.id
    golden_changed = any(
        record.golden_sets.get(suite) != digests for suite, digests in base.golden_sets.items()
    )
    causes = []
    if not same_weights:
        causes.append("model")
    if golden_changed:
        causes.append("golden set")
    if any(c["key"] in ENGINE_KEYS for c in changes):
        causes.append("environment")
    return _Changes(
        environment=changes,
        causes=causes,
        same_weights=same_weights,
        golden_changed=golden_changed,
        # Other CPU kernels are another machine to a speed comparison, as another CPU is.
        hardware_changed=any(c["key"] in (*HARDWARE_KEYS, "cpu_features") for c in changes),
    )


def _pinned_model_flips(
    out: _VariantGate,
    stored: Mapping[CaseKey, BaselineCase],
    source: BaselineSource,
    settings: GateSettings,
) -> list[Check]:
    """The pinned model evaluated here against its stored baseline: what the runtime change
    did to production on its own. A confident case lost is the runtime's regression,
    whatever the candidate does."""
    own = [
        judge_flip(out.name, old, now, settings.noise_margin, same_weights=True)
        for key, now in source.cases.items()
        if (old := stored.get(key)) is not None and old.passed != now.passed
    ]
    out.flips += own
    lost = [f for f in own if f.judged == "regression"]
    if not lost:
        return []
    return [
        Check(
            "runtime",
            out.name,
            "fail",
            f"{len(lost)} confident case(s) of the pinned model flipped across the runtime "
            f"change ({', '.join(source.numeric_keys)}): "
            + ", ".join(f"{f.suite}/{f.mode} {f.case}" for f in lost[:5]),
            current=float(len(lost)),
            cause="environment",
        )
    ]


def _judge_cases(
    out: _VariantGate,
    run: VariantRun,
    cases: list[CaseResult],
    source: BaselineSource,
    changes: _Changes,
    settings: GateSettings,
) -> None:
    """Each case against its baseline entry: a lost pass is a regression, unless the pair of
    runs differs numerically and the flip is judged noise (or unknown) by its margins."""
    model = run.variant.model or out.name
    for case in cases:
        old = source.cases.get((case.suite, case.mode, case.id))
        if old is None:
            out.cases.append(_case_verdict(case, None))
            continue
        # The golden set changed and the very same output now scores otherwise: the golden
        # set did that, not the environment.
        rescored = changes.golden_changed and old.output == case.output
        if source.numeric and old.passed != case.passed and not rescored:
            flip = judge_flip(out.name, old, case, settings.noise_margin, changes.same_weights)
            out.flips.append(flip)
            if flip.judged != "regression":
                out.cases.append(_case_verdict(case, old, environment_flip=True))
                continue
        out.cases.append(_case_verdict(case, old))
        if old.passed and not case.passed:
            was, now = decision_margins(old, case)
            out.regressions.append(
                Regression(
                    variant=out.name,
                    model=model,
                    suite=case.suite,
                    mode=case.mode,
                    case=case.id,
                    reason=case.reason,
                    diff=case.diff,
                    output=case.output,
                    baseline_output=old.output,
                    expected=case.expected,
                    causes=list(changes.causes),
                    baseline_margin=was,
                    margin=now,
                )
            )


def _margin_notes(out: _VariantGate) -> list[Check]:
    """Say so when flips were judged without margins (the rule before margins)."""
    unknown = [f for f in out.flips if f.judged == "unknown"]
    if not unknown:
        return []
    return [
        Check(
            "margins",
            out.name,
            "skip",
            f"{len(unknown)} flipped case(s) without decision margins (a baseline pinned before "
            "margins, or an engine that returns no logits): blamed on the environment by the "
            "rule before margins; re-pin to judge them",
            cause="environment",
        )
    ]


def _rates_against(
    record: RunRecord,
    name: str,
    cases: list[CaseResult],
    source: BaselineSource,
    changes: _Changes,
    settings: GateSettings,
) -> list[Check]:
    """Rate and calibration checks over the pairs the source lets the gate judge."""
    judged = source.judged_pairs(cases, settings.noise_margin, changes.same_weights)
    if judged is None:
        return [
            Check(
                "rates",
                name,
                "skip",
                "same weights and prompt as the baseline in another environment ("
                + ", ".join(source.numeric_keys)
                + ") and the baseline predates decision margins: rate changes are not judged "
                "(re-pin to judge them)",
                cause="environment",
            )
        ]
    return _rate_checks(record, name, settings, changes.causes, source.cases, keep=judged) + (
        _calibration_checks(record, name, settings, changes.causes, source.cases)
    )


# Which (run case, baseline case) pairs a rate check counts.
PairFilter = Callable[[CaseResult, BaselineCase], bool]


@dataclass(frozen=True)
class BaselineSource:
    """What a variant's cases are judged against, chosen once per variant:

    - ``stored``: the committed baseline, recorded in this same numeric environment (greedy
      decoding is deterministic there, so every flip is caused by what changed: a
      regression when a pass is lost);
    - ``stored-across-runtime``: the committed baseline, recorded under another engine build,
      CPU, batching or KV cache (``numeric_keys``): each flip is judged by its margins;
    - ``reference``: the pinned model evaluated here (a changed variant after a runtime
      change), so the candidate is judged like for like, in this environment.
    """

    kind: Literal["stored", "stored-across-runtime", "reference"]
    cases: Mapping[CaseKey, BaselineCase]
    numeric_keys: tuple[str, ...] = ()

    @property
    def numeric(self) -> bool:
        """The pair of runs differs in its numeric environment: flips need margins."""
        return self.kind == "stored-across-runtime"

    def judged_pairs(
        self, cases: list[CaseResult], noise_margin: float, same_weights: bool
    ) -> PairFilter | None:
        """Which (run, baseline) case pairs the rate checks count: every pair in one
        environment; across a runtime change, those that are not a near tie on both sides.
        None when no pair can be judged (margins unknown with the same weights: the rule
        before margins, which lets the environment move the rates)."""
        if not self.numeric:
            return _every_pair

        def keep(case: CaseResult, old: BaselineCase) -> bool:
            was, now = decision_margins(old, case)
            if was is None or now is None:
                return not same_weights
            return not (was < noise_margin and now < noise_margin)

        keys = [(c, self.cases[k]) for c in cases if (k := (c.suite, c.mode, c.id)) in self.cases]
        return keep if any(keep(c, old) for c, old in keys) or not keys else None


def _every_pair(_case: CaseResult, _old: BaselineCase) -> bool:
    return True


def baseline_source(
    stored: Mapping[CaseKey, BaselineCase],
    reference: list[BaselineCase] | None,
    numeric_keys: list[str],
) -> BaselineSource:
    """Choose what a variant is judged against (see :class:`BaselineSource`)."""
    if not numeric_keys:
        return BaselineSource("stored", stored)
    if reference is not None:
        here = {c.key: c for c in reference}
        return BaselineSource("reference", here, tuple(numeric_keys))
    return BaselineSource("stored-across-runtime", stored, tuple(numeric_keys))


def decision_margins(old: JudgedCase, now: JudgedCase) -> tuple[float | None, float | None]:
    """The margins that decided a case in the baseline and now.

    The routed field's margin when both runs wrote that field (the value the verdict
    hinges on, where a near tie on a confidence digit would hide a confident category);
    otherwise the whole output's smallest margin. None where a run recorded none.
    """
    if old.field_margin is not None and now.field_margin is not None:
        return float(old.field_margin), float(now.field_margin)
    was, is_ = old.margin, now.margin
    return (
        None if was is None else float(was),
        None if is_ is None else float(is_),
    )


def judge_flip(
    variant: str,
    old: JudgedCase,
    now: JudgedCase,
    noise_margin: float,
    same_weights: bool,
) -> EnvironmentFlip:
    """A case whose verdict differs across a numeric environment change, judged by margin.

    Noise only when it was a near tie in both runs; a lost confident case is a regression
    whatever changed. Without both margins the rule before margins holds: with the same
    weights the environment is blamed (and the flip says ``unknown``), otherwise the model.
    """
    was, is_ = decision_margins(old, now)
    judged: FlipJudgement
    if not old.passed:
        judged = "gained"
    elif was is None or is_ is None:
        judged = "unknown" if same_weights else "regression"
    elif was < noise_margin and is_ < noise_margin:
        judged = "noise"
    else:
        judged = "regression"
    return EnvironmentFlip(
        variant=variant,
        suite=now.suite,
        mode=now.mode,
        case=now.id,
        baseline_passed=bool(old.passed),
        passed=bool(now.passed),
        output=now.output,
        baseline_output=old.output,
        judged=judged,
        baseline_margin=was,
        margin=is_,
    )


def _verdict(
    variant: VariantInfo,
    base: Baseline | None,
    failures: list[str],
    pinned: set[str],
    engine_error: str | None = None,
) -> VariantVerdict:
    name = variant.name
    return VariantVerdict(
        variant=name,
        model=variant.model or name,
        variant_id=variant.id,
        passed=not failures and not engine_error,
        has_baseline=base is not None,
        baseline_variant_id=base.variant_id if base is not None else None,
        failures=failures,
        pinned=name in pinned,
        engine_error=engine_error,
    )


def _case_verdict(
    case: CaseResult, old: BaselineCase | None, *, environment_flip: bool = False
) -> CaseVerdict:
    return CaseVerdict(
        variant=case.variant,
        suite=case.suite,
        mode=case.mode,
        case=case.id,
        passed=case.passed,
        baseline_passed=None if old is None else bool(old.passed),
        reason=case.reason,
        output=case.output,
        diff=case.diff,
        environment_only=environment_flip,
        errored=case.errored,
    )


def _engine_errors(cases: list[CaseResult]) -> str | None:
    """Why the engine could not answer some of a variant's cases (None when it answered all)."""
    errored = [c for c in cases if c.errored]
    if not errored:
        return None
    return f"{len(errored)} of {len(cases)} case(s) got no answer ({errored[0].reason})"


def _partial_groups(
    summaries: list[SuiteSummary],
    cases: list[CaseResult],
    base_cases: Mapping[CaseKey, BaselineCase],
    shard: str | None,
) -> dict[str, str]:
    """Groups (suite/mode) this run covered only in part, with "k of n cases"."""
    out = {}
    for s in summaries:
        ran = sum(1 for c in cases if c.suite == s.suite and c.mode == s.mode)
        known = sum(1 for k in base_cases if k[0] == s.suite and k[1] == s.mode)
        if shard or (known and ran < known):
            of = f"{ran} of {known}" if known else f"{ran}"
            out[f"{s.suite}/{s.mode}"] = f"{of} cases" + (f", shard {shard}" if shard else "")
    return out


def numeric_changes(base: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """Environment keys that differ and can change greedy outputs by themselves."""
    return [c["key"] for c in _environment_changes(base, now) if c["key"] in NUMERIC_KEYS]


def _environment_changes(base: dict[str, Any], now: dict[str, Any]) -> list[dict[str, Any]]:
    # A baseline recorded before the KV cache was a setting ran with llama.cpp's defaults.
    base = {**runtime_defaults(base), **_derived_keys(base), **base}
    now = {**runtime_defaults(now), **_derived_keys(now), **now}
    return [
        {"key": key, "baseline": base.get(key), "current": now.get(key)}
        for key in (*ENGINE_KEYS, *HARDWARE_KEYS)
        if key in base and not _same_setting(key, base.get(key), now.get(key))
    ]


def _derived_keys(environment: Mapping[str, Any]) -> dict[str, Any]:
    """Environment facts read out of what was recorded: the build's CPU features, from
    llama.cpp's system info line (recorded by every llama.cpp run, old baselines included)."""
    features = runtime_of(environment).get("cpu_features")
    return {"cpu_features": features} if features else {}


def _same_setting(key: str, was: Any, now: Any) -> bool:
    # The RAM a VM reports moves by a few pages from boot to boot: not another machine.
    if key == "ram_bytes" and isinstance(was, int) and isinstance(now, int) and was > 0:
        return abs(now - was) / was < 0.01
    return bool(was == now)


def _rate_checks(
    record: RunRecord,
    name: str,
    settings: GateSettings,
    causes: list[str],
    base_cases: Mapping[CaseKey, BaselineCase],
    *,
    keep: PairFilter = _every_pair,
) -> list[Check]:
    """Rates now vs the baseline's, over the cases both have (like with like) and ``keep``
    accepts (across a runtime change: the cases that are not near ties in both runs).

    A case added to the golden set since the baseline is judged by the suite threshold only,
    and a partial run is compared on the cases it ran. The pass rate's message carries both
    rates' Wilson intervals and the exact McNemar p-value of the flips, so a reader sees
    whether a move is beyond chance.
    """
    checks = []
    limits = (
        ("pass_rate", "passed", settings.max_pass_rate_drop),
        ("json_valid_rate", "json_valid", settings.max_json_valid_drop),
        ("schema_valid_rate", "schema_valid", settings.max_schema_valid_drop),
    )
    for s in (s for s in record.summaries if s.variant == name):
        ran, both = _common_cases(record, s, base_cases)
        common = [(c, old) for c, old in both if keep(c, old)]
        if not common:
            continue
        scope = "" if len(common) == ran else f" over the {len(common)} cases both ran"
        if len(common) < len(both):
            scope = (
                f" over the {len(common)} cases not near ties in both runs "
                f"({len(both) - len(common)} left out)"
            )
        for key, attr, limit in limits:
            was_n = sum(bool(getattr(old, attr)) for _c, old in common)
            now_n = sum(bool(getattr(c, attr)) for c, _old in common)
            was, now = was_n / len(common), now_n / len(common)
            drop = round(was - now, 6)
            ok = drop <= limit
            message = f"{key.replace('_', ' ')} {was:.0%} → {now:.0%}{scope}"
            if key == "pass_rate":
                message += _chance(common, was_n, now_n)
            if not ok:
                message += f" (drop {drop:.0%} > allowed {limit:.0%})"
            checks.append(_bound_check(key, name, ok, message, s, was, now, limit, causes))
    return checks


def _chance(pairs: list[tuple[CaseResult, BaselineCase]], was_n: int, now_n: int) -> str:
    """ "; 95 % CI a–b % → c–d %, flips 3 lost / 1 gained, McNemar p=0.62" for a pass rate."""
    lost = sum(1 for c, old in pairs if old.passed and not c.passed)
    gained = sum(1 for c, old in pairs if not old.passed and c.passed)
    lo0, hi0 = wilson_interval(was_n, len(pairs))
    lo1, hi1 = wilson_interval(now_n, len(pairs))
    text = f"; 95% CI {lo0:.0%}–{hi0:.0%} → {lo1:.0%}–{hi1:.0%}"
    if lost or gained:
        text += (
            f", flips {lost} lost / {gained} gained, McNemar p={mcnemar_exact(lost, gained):.2g}"
        )
    return text


def _common_cases(
    record: RunRecord,
    summary: SuiteSummary,
    base_cases: Mapping[CaseKey, BaselineCase],
    *,
    answered_only: bool = False,
) -> tuple[int, list[tuple[CaseResult, BaselineCase]]]:
    """How many cases of a summary's variant and suite/mode ran now, and those the baseline
    has too, each with its baseline entry (like with like)."""
    ran = [
        c
        for c in record.cases
        if (c.variant, c.suite, c.mode) == (summary.variant, summary.suite, summary.mode)
        and not (answered_only and c.errored)
    ]
    common = [(c, base_cases[key]) for c in ran if (key := (c.suite, c.mode, c.id)) in base_cases]
    return len(ran), common


def _calibration_checks(
    record: RunRecord,
    name: str,
    settings: GateSettings,
    causes: list[str],
    base_cases: Mapping[CaseKey, BaselineCase],
) -> list[Check]:
    """Coverage at the target accuracy and ECE now vs the baseline's, over common cases.

    Both sides are computed from the per-case confidence signals under the suite's current
    [calibration] table (same target, bins and signals), so only the model's answers differ.
    """
    from lifecycle.calibrate import calibrate_outcomes, recorded_outcome, signals_of

    if settings.max_coverage_drop is None and settings.max_ece_rise is None:
        return []
    checks = []
    for s in (s for s in record.summaries if s.variant == name):
        table = settings.calibration.get(s.suite)
        if table is None:
            continue
        _ran, answered = _common_cases(record, s, base_cases, answered_only=True)
        common: list[tuple[JudgedCase, JudgedCase]] = list(answered)
        if not common:
            continue
        if table.routed_field and any(old.routed_correct is None for _c, old in common):
            checks.append(
                Check(
                    "calibration",
                    name,
                    "skip",
                    "the baseline holds no confidence signals (pinned before [calibration]): "
                    "re-pin to judge calibration",
                    suite=s.suite,
                    mode=s.mode,
                )
            )
            continue
        for signal in signals_of(table):
            was, now = (
                calibrate_outcomes(
                    [recorded_outcome(side[i], signal, table) for side in common],
                    signal=signal,
                    target=table.target,
                    bins=table.bins,
                )
                for i in (1, 0)
            )
            bounds = (
                ("coverage_at_target", settings.max_coverage_drop, _coverage(was), _coverage(now)),
                ("ece", settings.max_ece_rise, was.ece, now.ece),
            )
            for key, limit, before, after in bounds:
                if limit is None:
                    continue
                label = (
                    f"coverage at {table.target:.0%} accuracy"
                    if key == "coverage_at_target"
                    else "ECE"
                )
                if before is None or after is None:
                    checks.append(
                        Check(
                            key, name, "skip", f"{label} [{signal}]: no case has a confidence",
                            suite=s.suite, mode=s.mode,
                        )
                    )  # fmt: skip
                    continue
                change = before - after if key == "coverage_at_target" else after - before
                ok = round(change, 6) <= limit
                shown = (
                    f"{before:.0%} → {after:.0%}"
                    if key == "coverage_at_target"
                    else f"{before:.3f} → {after:.3f}"
                )
                message = f"{label} [{signal}] {shown}"
                if not ok:
                    what = "drop" if key == "coverage_at_target" else "rise"
                    message += f" ({what} {change:.3g} > allowed {limit:g})"
                checks.append(_bound_check(key, name, ok, message, s, before, after, limit, causes))
    return checks


def _bound_check(
    key: str,
    name: str,
    ok: bool,
    message: str,
    summary: SuiteSummary,
    was: float,
    now: float,
    limit: float,
    causes: list[str],
) -> Check:
    """A per-suite/mode figure against its baseline and its ``[gate]`` bound."""
    return Check(
        key,
        name,
        "pass" if ok else "fail",
        message,
        suite=summary.suite,
        mode=summary.mode,
        baseline=round(was, 4),
        current=round(now, 4),
        threshold=limit,
        cause=None if ok else (", ".join(causes) or None),
    )


def _coverage(result: SignalCalibration) -> float | None:
    """Coverage at the target accuracy: 0 when no threshold reaches it."""
    if result.ece is None:
        return None
    rec = result.recommendation
    return (rec.coverage or 0.0) if rec.reached else 0.0


def _speed_checks(
    record: RunRecord,
    name: str,
    base: Baseline,
    bench_now: dict[str, Any] | None,
    settings: GateSettings,
    hardware_changed: bool,
    causes: list[str],
    *,
    reconfigured: list[str] | None = None,
) -> list[Check]:
    pairs: list[tuple[str, float | None, float | None, bool]] = []  # name, old, new, lower-worse
    old_speed, old_s = _eval_speed(base.summaries)
    new_speed, new_s = _eval_speed([s for s in record.summaries if s.variant == name])
    too_short = min(old_s, new_s) < MIN_SPEED_SAMPLE_S
    # Speeds measured while other processes kept the CPU busy say nothing about the engine.
    busy = [
        share
        for share in (
            base.environment.get("foreign_cpu_share"),
            variant_environment(record.environment, name).get("foreign_cpu_share"),
        )
        if isinstance(share, int | float) and share > settings.max_foreign_cpu_share
    ]
    pairs.append(("generation_tokens_per_s", old_speed, new_speed, True))
    old_bench, new_bench = base.bench or {}, bench_now or {}
    if old_bench or new_bench:
        pairs.append(
            (
                "bench_tg_tokens_per_s",
                old_bench.get("tg_tokens_per_s"),
                new_bench.get("tg_tokens_per_s"),
                True,
            )
        )
        for key in ("peak_rss_bytes", "vram_used_bytes"):
            pairs.append((key, old_bench.get(key), new_bench.get(key), False))
    checks = []
    env_cause = "environment" if "environment" in causes else None
    for key, was, now, lower_is_worse in pairs:
        if was is None or now is None or was <= 0:
            if was is None and now is None:
                continue
            checks.append(Check(key, name, "skip", f"{key}: not measured in both runs"))
            continue
        if key == "generation_tokens_per_s" and too_short:
            checks.append(
                Check(
                    key,
                    name,
                    "skip",
                    f"{key}: not judged, {min(old_s, new_s):.2f} s of generation is too short "
                    f"a sample (at least {MIN_SPEED_SAMPLE_S:g} s in both runs)",
                    baseline=was,
                    current=now,
                )
            )
            continue
        if busy and lower_is_worse:
            checks.append(
                Check(
                    key,
                    name,
                    "skip",
                    f"{key}: not judged, the machine was busy (other processes used "
                    f"{max(busy):.0%} of the CPU during the eval; the bound is "
                    f"{settings.max_foreign_cpu_share:.0%}); re-run on a quiet machine",
                    baseline=was,
                    current=now,
                    cause="environment",
                )
            )
            continue
        if reconfigured and lower_is_worse:
            checks.append(
                Check(
                    key,
                    name,
                    "skip",
                    f"{key}: not judged, the engine settings changed ({', '.join(reconfigured)}):"
                    " another configuration, not a slowdown",
                    baseline=was,
                    current=now,
                    cause="environment",
                )
            )
            continue
        if hardware_changed:
            checks.append(
                Check(
                    key,
                    name,
                    "skip",
                    f"{key}: hardware changed, not comparable",
                    baseline=was,
                    current=now,
                    cause="environment",
                )
            )
            continue
        change = (now - was) / was
        if lower_is_worse:
            limit, worse = settings.max_tokens_per_s_drop, -change
        else:
            limit, worse = settings.max_memory_growth, change
        ok = worse <= limit
        label = "drop" if lower_is_worse else "growth"
        message = f"{key} {_num(was)} → {_num(now)} ({change:+.0%})"
        if not ok:
            message += f": {label} over the allowed {limit:.0%}"
        checks.append(
            Check(
                key,
                name,
                "pass" if ok else "fail",
                message,
                baseline=was,
                current=now,
                threshold=limit,
                cause=None if ok else (env_cause or ", ".join(causes) or None),
            )
        )
    return checks


def _eval_speed(summaries: list[SuiteSummary]) -> tuple[float | None, float]:
    """Generation tokens/sec over a variant's summaries, weighted by tokens generated, and
    the seconds of generation behind it (0 when unknown)."""
    pairs = [
        (float(s.generation_tokens_per_s), int(s.completion_tokens or 0))
        for s in summaries
        if s.generation_tokens_per_s
    ]
    if not pairs:
        return None, 0.0
    timed = [s.generation_s for s in summaries if s.generation_tokens_per_s]
    if all(isinstance(t, int | float) for t in timed):
        # Timed answers only (summaries since the answer cache): their tokens and seconds.
        seconds = sum(float(t) for t in timed if t is not None)
        tokens = sum(r * float(t) for (r, _), t in zip(pairs, timed, strict=True) if t)
        return (round(tokens / seconds, 2) if seconds > 0 else None), seconds
    tokens = sum(n for _, n in pairs)
    if tokens <= 0:
        return sum(r for r, _ in pairs) / len(pairs), 0.0
    # Harmonic weighting: total tokens over total time, time per summary = tokens / rate.
    seconds = sum(n / r for r, n in pairs)
    return round(tokens / seconds, 2), seconds


def _num(value: float) -> str:
    if value >= 2**20 and float(value).is_integer():
        return f"{value / 2**20:.1f} MiB"
    return f"{value:.1f}"
