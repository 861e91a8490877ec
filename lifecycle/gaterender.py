"""The gate's verdict for people: a terminal summary, Markdown for PRs, JUnit XML for CI.

Plain functions of a :class:`lifecycle.gate.GateResult`; the ``--json`` form is the result's
own ``to_dict``. The Markdown goes to ``--markdown`` and ``$GITHUB_STEP_SUMMARY`` (and into
the report), the JUnit XML to ``--junit``, the text to the terminal.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from lifecycle.gate import CaseVerdict, GateResult
from lifecycle.texttable import md_cell, table

if TYPE_CHECKING:
    from lifecycle.gitbase import BaseReview


def render_gate_text(gate: GateResult) -> str:
    """The gate for a terminal: a headline, one row per variant, then what failed and why.

    The Markdown (with its ``<details>`` blocks) is for ``--markdown`` and the CI step summary.
    """
    word = "PASS" if gate.passed else "FAIL"
    if gate.engine_failed:
        word = "ENGINE FAILED (no verdict)"
    lines = [f"gate: {word} — {gate.headline()} (run {gate.run_id})", ""]
    rows = [
        [v.variant, "pinned" if v.pinned else "candidate", v.status, "; ".join(v.failures)]
        for v in gate.variants
    ]
    lines.append(table(["variant", "role", "status", "why"], rows))
    if gate.partial:
        lines += ["", "partial run, gated on the cases it ran:"]
        lines += [f"  {p}" for p in gate.partial]
    if gate.regressions:
        lines += ["", f"regressions ({len(gate.regressions)}):"]
        for r in gate.regressions:
            margins = (
                f" (margin {format_margin(r.baseline_margin)} → {format_margin(r.margin)})"
                if r.baseline_margin is not None or r.margin is not None
                else ""
            )
            lines.append(f"  {r.variant} {r.suite}/{r.mode} {r.case}: {r.reason}{margins}")
            lines.append(f"      now:      {_one_line(r.output)}")
            lines.append(f"      baseline: {_one_line(r.baseline_output)}")
    if gate.environment_flips:
        lines += [
            "",
            f"flipped across an environment change ({len(gate.environment_flips)}; decision "
            f"margins baseline → now, noise under {gate.settings.noise_margin:g}):",
        ]
        for f in gate.environment_flips:
            was, now = ("pass" if f.baseline_passed else "fail"), ("pass" if f.passed else "fail")
            lines.append(
                f"  {f.variant} {f.suite}/{f.mode} {f.case}: {was} → {now}, "
                f"margin {format_margin(f.baseline_margin)} → {format_margin(f.margin)}: {f.judged}"
            )
    changes = [
        f"  {entry['variant']} {c['key']}: {c['baseline']} → {c['current']}"
        for entry in gate.environment_changes
        for c in entry["changes"]
    ]
    if changes:
        lines += ["", "environment changes (flips across them judged by margin, above):", *changes]
    return "\n".join(lines)


def format_margin(value: float | None) -> str:
    """A decision margin as shown next to a flip: two decimals, or "unknown"."""
    return "unknown" if value is None else f"{value:.2f}"


def _one_line(text: str, width: int = 90) -> str:
    flat = text.strip().replace("\n", "\\n")
    return flat if len(flat) <= width else flat[: width - 3] + "..."


def render_markdown(result: GateResult) -> str:
    """The gate verdict as Markdown fit for a PR comment or ``$GITHUB_STEP_SUMMARY``."""
    if result.engine_failed:
        icon, word = "⚠️", "ENGINE FAILED (no verdict)"
    else:
        icon, word = ("✅", "PASS") if result.passed else ("❌", "FAIL")
    lines = [f"## {icon} lifecycle gate: {word}", "", f"**{md_cell(result.headline())}**", ""]
    lines += [f"Run `{result.run_id}`.", ""]
    if result.partial:
        lines += ["Partial run: gated on the cases it ran only —", ""]
        lines += [f"- {md_cell(p)}" for p in result.partial]
        lines.append("")
    lines += ["| variant | role | id | baseline | verdict |", "| --- | --- | --- | --- | --- |"]
    for v in result.variants:
        base = "none (first pin)"
        if v.has_baseline:
            base = "same" if v.baseline_variant_id == v.variant_id else f"`{v.baseline_variant_id}`"
        verdict = v.status if v.passed else f"**{v.status}**: " + "; ".join(v.failures)
        role = "pinned" if v.pinned else "candidate"
        lines.append(
            f"| {md_cell(v.variant)} | {role} | `{v.variant_id}` | {base} | {md_cell(verdict)} |"
        )
    lines.append("")
    failed = [c for c in result.checks if c.status == "fail"]
    if failed:
        lines += ["### Failed checks", ""]
        for c in failed:
            where = f" {c.suite}/{c.mode}" if c.suite else ""
            cause = f" (cause: {c.cause})" if c.cause else ""
            lines.append(f"- {md_cell(c.variant)}{where} `{c.name}`: {md_cell(c.message)}{cause}")
        lines.append("")
    if result.regressions:
        lines += [f"### Regressions ({len(result.regressions)})", ""]
        for r in result.regressions:
            cause = f" — changed: {', '.join(r.causes)}" if r.causes else ""
            lines.append(
                f"- **{md_cell(r.variant)}** {r.suite}/{r.mode} `{r.case}`: "
                f"{md_cell(r.reason)}{cause}"
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
    if result.environment_flips:
        lines += [
            f"### Flipped across an environment change ({len(result.environment_flips)})",
            "",
            f"A flip is noise only when the case was a near tie (decision margin under "
            f"{result.settings.noise_margin:g}) in both runs; a confident case lost is a "
            "regression whatever changed.",
            "",
        ]
        for f in result.environment_flips:
            was = "pass" if f.baseline_passed else "fail"
            now = "pass" if f.passed else "fail"
            lines.append(
                f"- {md_cell(f.variant)} {f.suite}/{f.mode} `{f.case}`: {was} → {now}, "
                f"margin {format_margin(f.baseline_margin)} → {format_margin(f.margin)}: "
                f"**{f.judged}** "
                f"(baseline output `{md_cell(f.baseline_output.strip()[:80])}`, now "
                f"`{md_cell(f.output.strip()[:80])}`)"
            )
        lines.append("")
    if result.environment_changes:
        lines += ["### Environment changes", ""]
        for entry in result.environment_changes:
            for c in entry["changes"]:
                lines.append(
                    f"- {md_cell(entry['variant'])} {c['key']}: "
                    f"`{c['baseline']}` → `{c['current']}`"
                )
        lines.append("")
    skipped = [c for c in result.checks if c.status == "skip" and c.name != "baseline"]
    if skipped:
        lines += ["<details><summary>skipped checks</summary>", ""]
        lines += [f"- {md_cell(c.variant)} `{c.name}`: {md_cell(c.message)}" for c in skipped]
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
        errors = sum(c.errored for c in cases)
        skipped = sum(not c.passed and not c.regressed and not c.errored for c in cases)
        suite = ET.SubElement(
            root,
            "testsuite",
            name=suite_name,
            tests=str(len(cases)),
            failures=str(failures),
            errors=str(errors),
            skipped=str(skipped),
        )
        for c in cases:
            tc = ET.SubElement(suite, "testcase", classname=suite_name, name=f"{c.mode}/{c.case}")
            text = f"{c.reason}\noutput: {c.output}" + (f"\n{c.diff}" if c.diff else "")
            if c.errored:
                ET.SubElement(tc, "error", message=_xml_text(f"engine failed: {c.reason}"))
            elif c.regressed:
                node = ET.SubElement(tc, "failure", message=f"regression: {c.reason}")
                node.text = _xml_text(text)
            elif not c.passed:
                why = "also fails in the baseline" if c.baseline_passed is False else "no baseline"
                if c.environment_only and c.baseline_passed:
                    why = "a near tie flipped across an environment change (noise)"
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
        if check.status == "error":
            ET.SubElement(tc, "error", message=_xml_text(check.message))
        elif check.status == "fail":
            ET.SubElement(tc, "failure", message=_xml_text(check.message))
        elif check.status == "skip":
            ET.SubElement(tc, "skipped", message=_xml_text(check.message))
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _xml_text(text: str) -> str:
    # XML 1.0 cannot carry most control characters, and model output may contain them.
    return "".join(ch for ch in text if ch in "\t\n\r" or ord(ch) >= 0x20)


def render_base_text(review: BaseReview) -> str:
    """``--base``: what the change lowered against the base, for a terminal."""
    lines = ["", f"against {review.ref} ({review.commit[:12]}): " + _base_verdict(review)]
    lines += [f"  {line}" for line in _base_items(review)]
    lines += [f"  acknowledged by {a.commit[:12]}: {a.reason}" for a in review.acknowledgements]
    return "\n".join(lines)


def render_base_markdown(review: BaseReview) -> str:
    """``--base``: a Markdown section listing what the change lowered and who acknowledged."""
    lines = [f"### Bar of `{md_cell(review.ref)}` (`{review.commit[:12]}`)", ""]
    lines += [f"**{md_cell(_base_verdict(review))}**", ""]
    lines += [f"- {md_cell(line)}" for line in _base_items(review)]
    if review.acknowledgements:
        lines += ["", "Acknowledged (`Lifecycle-Rebaseline`):", ""]
        lines += [f"- `{a.commit[:12]}`: {md_cell(a.reason)}" for a in review.acknowledgements]
    return "\n".join(lines) + "\n"


def _base_verdict(review: BaseReview) -> str:
    if not review.changes:
        return "nothing lowered; judged against its pins, baselines and bounds"
    what = f"{review.changes} change(s) lower the bar"
    if review.acknowledged:
        return what + ", acknowledged"
    return what + ", NOT acknowledged: add a commit trailer 'Lifecycle-Rebaseline: <reason>'"


def _base_items(review: BaseReview) -> list[str]:
    def show(value: object) -> str:
        return "none" if value is None else json.dumps(value, ensure_ascii=False)

    lines = [
        f"re-baselined pass → fail: {r.variant} {r.suite}/{r.mode} {r.case}"
        for r in review.rebaselined
    ]
    lines += [f"lowered: {b.where} {b.key}: {show(b.base)} → {show(b.now)}" for b in review.lowered]
    for e in review.expectations:
        change = (
            e.change
            if e.base is None or e.now is None
            else (f"{e.change}: {show(e.base)} → {show(e.now)}")
        )
        lines.append(f"expectation: {e.suite} {e.case}: {change}")
    return lines
