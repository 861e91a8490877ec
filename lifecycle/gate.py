"""The regression gate: the latest run against the committed baseline, under thresholds.

A baseline is what the currently pinned variants did: per-case verdicts and outputs, summary
rates, bench figures and the environment, kept in ``baselines/<model>.json`` next to
``models.lock`` (written by :mod:`lifecycle.pin`). The gate matches the run's variants to the
baseline's by variant name (a slot of the workspace's variant matrix; its content id changes
whenever the weights or the Modelfile do) and fails a variant on:

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
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lifecycle.config import read_toml
from lifecycle.errors import ConfigError, UsageError
from lifecycle.results import RunRecord

BASELINE_SCHEMA_VERSION = 1
BASELINES_DIR = "baselines"

# Environment keys whose change makes speed and memory incomparable (another machine).
HARDWARE_KEYS = ("machine", "cpu", "cpu_count_logical", "cpu_count_physical", "ram_bytes")
# Keys of the engine and its settings: a change here is the environment's, not the model's.
ENGINE_KEYS = ("engine", "engine_version", "threads", "batch_size", "gpu_layers", "seed")


@dataclass(frozen=True)
class GateSettings:
    """Thresholds of ``[gate]`` in ``lifecycle.toml``; see the module docstring."""

    max_pass_rate_drop: float = 0.0
    max_json_valid_drop: float = 0.0
    max_schema_valid_drop: float = 0.0
    max_tokens_per_s_drop: float = 0.3
    max_memory_growth: float = 0.2
    fail_on_regression: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Check:
    """One comparison the gate made; ``status`` is ``pass``, ``fail`` or ``skip``."""

    name: str
    variant: str
    status: str
    message: str
    suite: str | None = None
    mode: str | None = None
    baseline: float | None = None
    current: float | None = None
    threshold: float | None = None
    cause: str | None = None  # "model", "golden set", "environment" when known

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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

    @property
    def regressed(self) -> bool:
        return self.baseline_passed is True and not self.passed

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

    def verdict(self, variant: str) -> VariantVerdict | None:
        return next((v for v in self.variants if v.variant == variant), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "run_id": self.run_id,
            "variants": [v.to_dict() for v in self.variants],
            "regressions": [r.to_dict() for r in self.regressions],
            "checks": [c.to_dict() for c in self.checks],
            "environment_changes": self.environment_changes,
            "cases": [c.to_dict() for c in self.cases],
            "settings": self.settings.to_dict(),
        }


def load_gate_settings(config_path: Path) -> GateSettings:
    """Read ``[gate]`` from ``lifecycle.toml``; errors name ``lifecycle.toml → gate.field``."""
    data = read_toml(config_path)
    table = data.get("gate", {})
    if not isinstance(table, dict):
        raise ConfigError("must be a table", path=config_path, field="gate")
    defaults = GateSettings()
    allowed = set(defaults.to_dict())
    values: dict[str, Any] = {}
    for key, value in table.items():
        where = f"gate.{key}"
        if key not in allowed:
            hint = ", ".join(sorted(allowed))
            raise ConfigError(
                f"unknown key (expected one of: {hint})", path=config_path, field=where
            )
        if key == "fail_on_regression":
            if not isinstance(value, bool):
                raise ConfigError("must be true or false", path=config_path, field=where)
        else:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError("must be a number", path=config_path, field=where)
            upper = None if key == "max_memory_growth" else 1.0
            if value < 0 or (upper is not None and value > upper):
                bounds = ">= 0" if upper is None else "between 0 and 1"
                raise ConfigError(f"must be {bounds}", path=config_path, field=where)
            value = float(value)
        values[key] = value
    return GateSettings(**values)


def baseline_path(root: Path, model: str) -> Path:
    """``baselines/<model>.json`` under the workspace root."""
    if not model or "/" in model or "\\" in model or model.startswith("."):
        raise UsageError(f"model name {model!r} cannot name a baseline file")
    return root / BASELINES_DIR / f"{model}.json"


def load_baselines(root: Path) -> dict[str, dict[str, Any]]:
    """Every committed baseline variant entry, by variant name (empty when none exist)."""
    entries: dict[str, dict[str, Any]] = {}
    directory = root / BASELINES_DIR
    if not directory.is_dir():
        return entries
    for path in sorted(directory.glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot read baseline: {exc}", path=path) from None
        if not isinstance(data, dict) or data.get("schema_version") != BASELINE_SCHEMA_VERSION:
            raise UsageError(
                f"unsupported baseline (schema_version {BASELINE_SCHEMA_VERSION} expected)",
                path=path,
            )
        for name, entry in data.get("variants", {}).items():
            entries[name] = entry
    return entries


def baseline_entry(
    record: RunRecord, variant_name: str, bench: dict[str, Any] | None
) -> dict[str, Any]:
    """The baseline of one variant from a run: what a later gate compares against.

    Per-case timings are left out (only summaries keep speed) so that re-pinning identical
    results is an identical file.
    """
    run = next(v for v in record.variants if v.variant.get("name") == variant_name)
    suites = sorted({c.suite for c in record.cases if c.variant == variant_name})
    return {
        "variant": run.variant,
        "run_id": record.run_id,
        "environment": variant_environment(record.environment, variant_name),
        "golden_sets": {s: record.golden_sets[s] for s in suites if s in record.golden_sets},
        "summaries": [s.to_dict() for s in record.summaries if s.variant == variant_name],
        "cases": [
            {
                "suite": c.suite,
                "mode": c.mode,
                "id": c.id,
                "passed": c.passed,
                "reason": c.reason,
                "output": c.output,
                "parsed": c.parsed,
                "expected": c.expected,
                "json_valid": c.json_valid,
                "schema_valid": c.schema_valid,
                "diff": c.diff,
            }
            for c in record.cases
            if c.variant == variant_name
        ],
        "bench": bench,
    }


def variant_environment(environment: dict[str, Any], variant_name: str) -> dict[str, Any]:
    """The run environment as it applied to one variant (its thread count, its blob)."""
    env = {k: v for k, v in environment.items() if k not in ("threads", "blobs")}
    threads = environment.get("threads")
    env["threads"] = threads.get(variant_name) if isinstance(threads, dict) else threads
    return env


def bench_figures(document: dict[str, Any]) -> dict[str, Any] | None:
    """The gate's figures from a ``lifecycle bench --json`` document (its first good point).

    Returns None when no point was measured. Speeds are llama-bench's mean tokens/sec.
    """
    points = [p for p in document.get("points", []) if p.get("ok")]
    if not points:
        return None
    point = points[0]
    figures: dict[str, Any] = {"n_ctx": point.get("n_ctx")}
    for row in point.get("rows", []):
        kind = "tg" if row.get("n_gen") else "pp"
        figures[f"{kind}_tokens_per_s"] = row.get("avg_ts")
    memory = point.get("memory") or {}
    for key in ("peak_rss_bytes", "model_rss_bytes", "allocated_bytes", "vram_used_bytes"):
        figures[key] = memory.get(key)
    figures["engine_version"] = (document.get("environment") or {}).get("engine_version")
    return figures


def bench_by_variant(documents: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Bench figures keyed by the variant name each bench document names."""
    out: dict[str, dict[str, Any]] = {}
    for doc in documents:
        name = (doc.get("variant") or {}).get("name")
        figures = bench_figures(doc)
        if name and figures:
            out[str(name)] = figures
    return out


def run_gate(
    record: RunRecord,
    baselines: dict[str, dict[str, Any]],
    settings: GateSettings | None = None,
    *,
    bench: dict[str, dict[str, Any]] | None = None,
) -> GateResult:
    """Compare ``record`` with ``baselines`` (from :func:`load_baselines`) under ``settings``.

    ``bench`` holds optional bench figures by variant name (:func:`bench_by_variant`).
    """
    settings = settings or GateSettings()
    bench = bench or {}
    verdicts: list[VariantVerdict] = []
    checks: list[Check] = []
    regressions: list[Regression] = []
    verdict_cases: list[CaseVerdict] = []
    env_changes: list[dict[str, Any]] = []

    for run in record.variants:
        name = str(run.variant.get("name"))
        model = str(run.variant.get("model") or name)
        base = baselines.get(name)
        env_now = variant_environment(record.environment, name)
        failures: list[str] = []
        variant_checks: list[Check] = []
        if run.error:
            variant_checks.append(Check("ran", name, "fail", f"did not run: {run.error}"))
        for s in (s for s in record.summaries if s.variant == name):
            ok = s.met_threshold
            variant_checks.append(
                Check(
                    "threshold",
                    name,
                    "pass" if ok else "fail",
                    f"pass rate {s.pass_rate:.0%} "
                    + ("meets" if ok else "is under")
                    + f" the suite threshold {_pct(s.threshold)}",
                    suite=s.suite,
                    mode=s.mode,
                    current=s.pass_rate,
                    threshold=s.threshold,
                )
            )
        cases = [c for c in record.cases if c.variant == name]
        causes: list[str] = []
        if base is not None:
            base_cases = {(c["suite"], c["mode"], c["id"]): c for c in base.get("cases", [])}
            changes = _environment_changes(base.get("environment") or {}, env_now)
            if changes:
                env_changes.append({"variant": name, "changes": changes})
            if base.get("variant", {}).get("id") != run.variant.get("id"):
                causes.append("model")
            if any(
                record.golden_sets.get(suite) != digests
                for suite, digests in (base.get("golden_sets") or {}).items()
            ):
                causes.append("golden set")
            if any(c["key"] in ENGINE_KEYS for c in changes):
                causes.append("environment")
            hardware_changed = any(c["key"] in HARDWARE_KEYS for c in changes)
            for case in cases:
                old = base_cases.get((case.suite, case.mode, case.id))
                verdict_cases.append(_case_verdict(case, old))
                if old and old["passed"] and not case.passed:
                    regressions.append(
                        Regression(
                            variant=name,
                            model=model,
                            suite=case.suite,
                            mode=case.mode,
                            case=case.id,
                            reason=case.reason,
                            diff=case.diff,
                            output=case.output,
                            baseline_output=str(old.get("output", "")),
                            expected=case.expected,
                            causes=list(causes),
                        )
                    )
            variant_checks += _rate_checks(record, name, base, settings, causes)
            variant_checks += _speed_checks(
                record, name, base, bench.get(name), settings, hardware_changed, causes
            )
        else:
            verdict_cases += [_case_verdict(case, None) for case in cases]
            variant_checks.append(
                Check("baseline", name, "skip", "no baseline: first pin of this variant")
            )
        regressed = [r for r in regressions if r.variant == name]
        if regressed:
            variant_checks.append(
                Check(
                    "regressions",
                    name,
                    "fail" if settings.fail_on_regression else "skip",
                    f"{len(regressed)} case(s) passed in the baseline and fail now",
                    current=float(len(regressed)),
                    cause=", ".join(causes) or None,
                )
            )
        failures = [
            c.message if not c.suite else f"{c.suite}/{c.mode}: {c.message}"
            for c in variant_checks
            if c.status == "fail"
        ]
        checks += variant_checks
        verdicts.append(
            VariantVerdict(
                variant=name,
                model=model,
                variant_id=str(run.variant.get("id", "")),
                passed=not failures,
                has_baseline=base is not None,
                baseline_variant_id=(base or {}).get("variant", {}).get("id"),
                failures=failures,
            )
        )
    return GateResult(
        passed=bool(verdicts) and all(v.passed for v in verdicts),
        run_id=record.run_id,
        variants=verdicts,
        checks=checks,
        regressions=regressions,
        cases=verdict_cases,
        environment_changes=env_changes,
        settings=settings,
    )


def render_markdown(result: GateResult) -> str:
    """The gate verdict as Markdown fit for a PR comment or ``$GITHUB_STEP_SUMMARY``."""
    icon = "✅" if result.passed else "❌"
    lines = [f"## {icon} lifecycle gate: {'PASS' if result.passed else 'FAIL'}", ""]
    lines += [f"Run `{result.run_id}`.", ""]
    lines += ["| variant | id | baseline | verdict |", "| --- | --- | --- | --- |"]
    for v in result.variants:
        base = "none (first pin)"
        if v.has_baseline:
            base = "same" if v.baseline_variant_id == v.variant_id else f"`{v.baseline_variant_id}`"
        verdict = "pass" if v.passed else "**FAIL**: " + "; ".join(v.failures)
        lines.append(f"| {_md(v.variant)} | `{v.variant_id}` | {base} | {_md(verdict)} |")
    lines.append("")
    failed = [c for c in result.checks if c.status == "fail"]
    if failed:
        lines += ["### Failed checks", ""]
        for c in failed:
            where = f" {c.suite}/{c.mode}" if c.suite else ""
            cause = f" (cause: {c.cause})" if c.cause else ""
            lines.append(f"- {_md(c.variant)}{where} `{c.name}`: {_md(c.message)}{cause}")
        lines.append("")
    if result.regressions:
        lines += [f"### Regressions ({len(result.regressions)})", ""]
        for r in result.regressions:
            cause = f" — changed: {', '.join(r.causes)}" if r.causes else ""
            lines.append(
                f"- **{_md(r.variant)}** {r.suite}/{r.mode} `{r.case}`: {_md(r.reason)}{cause}"
            )
            body = [f"expected: {json.dumps(r.expected, ensure_ascii=False)}"]
            body += [f"output:   {r.output.strip()}", f"baseline: {r.baseline_output.strip()}"]
            if r.diff:
                body += ["", r.diff]
            lines += [
                "  <details><summary>diff</summary>",
                "",
                "  ```",
                *[f"  {line}" for line in "\n".join(body).splitlines()],
                "  ```",
                "  </details>",
            ]
        lines.append("")
    if result.environment_changes:
        lines += ["### Environment changes (not model regressions)", ""]
        for entry in result.environment_changes:
            for c in entry["changes"]:
                lines.append(
                    f"- {_md(entry['variant'])} {c['key']}: `{c['baseline']}` → `{c['current']}`"
                )
        lines.append("")
    skipped = [c for c in result.checks if c.status == "skip" and c.name != "baseline"]
    if skipped:
        lines += ["<details><summary>skipped checks</summary>", ""]
        lines += [f"- {_md(c.variant)} `{c.name}`: {_md(c.message)}" for c in skipped]
        lines += ["", "</details>", ""]
    return "\n".join(lines)


def render_junit(result: GateResult) -> str:
    """JUnit XML: one testcase per golden case (per variant and mode), then the gate checks.

    A case that regressed is a ``<failure>``; a case that fails but also failed in the
    baseline (or has none) is ``<skipped>`` with the reason, since the gate does not fail on
    it; a failed threshold, rate or speed check is a ``<failure>`` in the ``gate`` suite.
    """
    from xml.etree import ElementTree as ET

    root = ET.Element("testsuites", name="lifecycle gate")
    by_suite: dict[str, list[CaseVerdict]] = {}
    for verdict in result.cases:
        by_suite.setdefault(f"{verdict.variant}.{verdict.suite}", []).append(verdict)
    for suite_name, cases in by_suite.items():
        failures = sum(c.regressed for c in cases)
        skipped = sum(not c.passed and not c.regressed for c in cases)
        suite = ET.SubElement(
            root,
            "testsuite",
            name=suite_name,
            tests=str(len(cases)),
            failures=str(failures),
            errors="0",
            skipped=str(skipped),
        )
        for c in cases:
            tc = ET.SubElement(suite, "testcase", classname=suite_name, name=f"{c.mode}/{c.case}")
            text = f"{c.reason}\noutput: {c.output}" + (f"\n{c.diff}" if c.diff else "")
            if c.regressed:
                node = ET.SubElement(tc, "failure", message=f"regression: {c.reason}")
                node.text = _xml_text(text)
            elif not c.passed:
                why = "also fails in the baseline" if c.baseline_passed is False else "no baseline"
                ET.SubElement(tc, "skipped", message=_xml_text(f"fails ({why}): {c.reason}"))
    gate_checks = [c for c in result.checks if c.name not in ("regressions",)]
    suite = ET.SubElement(
        root,
        "testsuite",
        name="gate",
        tests=str(len(gate_checks)),
        failures=str(sum(c.status == "fail" for c in gate_checks)),
        errors="0",
        skipped=str(sum(c.status == "skip" for c in gate_checks)),
    )
    for check in gate_checks:
        name = check.name + (f" {check.suite}/{check.mode}" if check.suite else "")
        tc = ET.SubElement(suite, "testcase", classname=f"gate.{check.variant}", name=name)
        if check.status == "fail":
            ET.SubElement(tc, "failure", message=_xml_text(check.message))
        elif check.status == "skip":
            ET.SubElement(tc, "skipped", message=_xml_text(check.message))
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _case_verdict(case: Any, old: dict[str, Any] | None) -> CaseVerdict:
    return CaseVerdict(
        variant=case.variant,
        suite=case.suite,
        mode=case.mode,
        case=case.id,
        passed=case.passed,
        baseline_passed=None if old is None else bool(old["passed"]),
        reason=case.reason,
        output=case.output,
        diff=case.diff,
    )


def _environment_changes(base: dict[str, Any], now: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"key": key, "baseline": base.get(key), "current": now.get(key)}
        for key in (*ENGINE_KEYS, *HARDWARE_KEYS)
        if key in base and base.get(key) != now.get(key)
    ]


def _rate_checks(
    record: RunRecord,
    name: str,
    base: dict[str, Any],
    settings: GateSettings,
    causes: list[str],
) -> list[Check]:
    checks = []
    old = {(s["suite"], s["mode"]): s for s in base.get("summaries", [])}
    limits = (
        ("pass_rate", settings.max_pass_rate_drop),
        ("json_valid_rate", settings.max_json_valid_drop),
        ("schema_valid_rate", settings.max_schema_valid_drop),
    )
    for s in (s for s in record.summaries if s.variant == name):
        prior = old.get((s.suite, s.mode))
        if prior is None:
            continue
        for key, limit in limits:
            was, now = float(prior[key]), float(getattr(s, key))
            drop = round(was - now, 6)
            ok = drop <= limit
            message = f"{key.replace('_', ' ')} {was:.0%} → {now:.0%}"
            if not ok:
                message += f" (drop {drop:.0%} > allowed {limit:.0%})"
            checks.append(
                Check(
                    key,
                    name,
                    "pass" if ok else "fail",
                    message,
                    suite=s.suite,
                    mode=s.mode,
                    baseline=was,
                    current=now,
                    threshold=limit,
                    cause=None if ok else (", ".join(causes) or None),
                )
            )
    return checks


def _speed_checks(
    record: RunRecord,
    name: str,
    base: dict[str, Any],
    bench_now: dict[str, Any] | None,
    settings: GateSettings,
    hardware_changed: bool,
    causes: list[str],
) -> list[Check]:
    pairs: list[tuple[str, float | None, float | None, bool]] = []  # name, old, new, lower-worse
    old_speed = _eval_speed(base.get("summaries", []))
    new_speed = _eval_speed([s.to_dict() for s in record.summaries if s.variant == name])
    pairs.append(("generation_tokens_per_s", old_speed, new_speed, True))
    old_bench, new_bench = base.get("bench") or {}, bench_now or {}
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


def _eval_speed(summaries: list[dict[str, Any]]) -> float | None:
    """Generation tokens/sec over a variant's summaries, weighted by tokens generated."""
    pairs = [
        (float(s["generation_tokens_per_s"]), int(s.get("completion_tokens") or 0))
        for s in summaries
        if s.get("generation_tokens_per_s")
    ]
    if not pairs:
        return None
    tokens = sum(n for _, n in pairs)
    if tokens <= 0:
        return sum(r for r, _ in pairs) / len(pairs)
    # Harmonic weighting: total tokens over total time, time per summary = tokens / rate.
    return round(tokens / sum(n / r for r, n in pairs), 2)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _num(value: float) -> str:
    if value >= 2**20 and float(value).is_integer():
        return f"{value / 2**20:.1f} MiB"
    return f"{value:.1f}"


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _xml_text(text: str) -> str:
    # XML 1.0 cannot carry most control characters, and model output may contain them.
    return "".join(ch for ch in text if ch in "\t\n\r" or ord(ch) >= 0x20)
