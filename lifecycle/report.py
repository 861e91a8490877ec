"""The promotion report: one self-contained HTML file and a Markdown file.

A reader should see in ten seconds whether to promote: the gate verdict and what would be
pinned come first, then per-variant pass rates, the quant comparison (variants of one model
side by side), speed and memory (vs context when a bench swept it), and the failing cases with
their outputs and diffs. Charts are PNGs drawn by matplotlib's headless Agg backend and
embedded in the HTML as base64 ``data:`` URIs, so the file can be mailed or uploaded alone.
"""

from __future__ import annotations

import base64
import html
import io
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lifecycle.baselines import bench_by_variant
from lifecycle.fsutil import atomic_write_text
from lifecycle.gate import GateResult
from lifecycle.gaterender import render_markdown
from lifecycle.results import CaseResult, RunRecord, SuiteSummary
from lifecycle.texttable import md_cell, percent

REPORT_HTML = "report.html"
REPORT_MD = "report.md"


@dataclass(frozen=True)
class Report:
    """The rendered report; :func:`write_report` puts it on disk."""

    markdown: str
    html: str
    verdict: str  # "promote", "do not promote" or "no gate"


def build_report(
    run: RunRecord,
    gate: GateResult | None = None,
    *,
    pins: dict[str, Any] | None = None,
    bench: list[dict[str, Any]] | None = None,
    quants: dict[str, str | None] | None = None,
    charts: bool = True,
) -> Report:
    """Render a run record with the gate verdict and pin outcome.

    ``pins`` is ``PinResult.to_dict()`` (what was pinned) or None (what *would* be pinned is
    then read from the gate); ``bench`` holds ``lifecycle bench --json`` documents; ``quants``
    maps variant names to their quant level.
    """
    bench = bench or []
    quants = quants or {}
    rows = _variant_rows(run, bench, quants)
    verdict = "no gate" if gate is None else ("promote" if gate.passed else "do not promote")
    would_pin = _would_pin(run, gate, pins)
    images = _charts(run, rows, bench) if charts else []
    markdown = _markdown(run, gate, rows, would_pin, pins, verdict)
    page = _html(run, gate, rows, would_pin, pins, verdict, images)
    return Report(markdown=markdown, html=page, verdict=verdict)


def write_report(report: Report, out_dir: Path) -> tuple[Path, Path]:
    """Write ``report.html`` and ``report.md`` into ``out_dir`` (atomically each)."""
    html_path, md_path = out_dir / REPORT_HTML, out_dir / REPORT_MD
    atomic_write_text(html_path, report.html)
    atomic_write_text(md_path, report.markdown)
    return html_path, md_path


# --- content ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _VariantRow:
    """One variant's line in the report: identity, rates per mode, speeds, bench figures."""

    variant: str
    model: str
    id: str
    quant: str | None
    size: int | None
    num_ctx: Any
    error: str | None
    modes: dict[str, dict[str, float]]
    pass_rate: float | None
    json_valid_rate: float | None
    schema_valid_rate: float | None
    gen_tps: float | None
    p50_ms: float | None
    p95_ms: float | None
    load: dict[str, Any]
    bench_tg: float | None
    bench_pp: float | None
    peak_rss: int | None
    vram: int | None


def _variant_rows(
    run: RunRecord, bench: list[dict[str, Any]], quants: dict[str, str | None]
) -> list[_VariantRow]:
    figures = bench_by_variant(bench)  # a bench and a load test of one variant both count
    rows = []
    for entry in run.variants:
        v = entry.variant
        name = v.name
        summaries = [s for s in run.summaries if s.variant == name]
        cases = [c for c in run.cases if c.variant == name]
        n = len(cases)
        fig = figures.get(name, {})
        rows.append(
            _VariantRow(
                variant=name,
                model=v.model or name,
                id=v.id,
                quant=v.quant or quants.get(name),
                size=v.blob_size,
                num_ctx=v.parameters.get("num_ctx"),
                error=entry.error,
                modes=_mode_rates(cases),
                pass_rate=sum(c.passed for c in cases) / n if n else None,
                json_valid_rate=sum(c.json_valid for c in cases) / n if n else None,
                schema_valid_rate=sum(c.schema_valid for c in cases) / n if n else None,
                gen_tps=_mean([s.generation_tokens_per_s for s in summaries]),
                p50_ms=_mean([s.latency_p50_ms for s in summaries]),
                p95_ms=_mean([s.latency_p95_ms for s in summaries]),
                load=fig.get("loadtest") or {},
                bench_tg=fig.get("tg_tokens_per_s"),
                bench_pp=fig.get("pp_tokens_per_s"),
                peak_rss=fig.get("peak_rss_bytes"),
                vram=fig.get("vram_used_bytes"),
            )
        )
    return rows


def _mode_rates(cases: list[CaseResult]) -> dict[str, dict[str, float]]:
    """Pass, JSON-valid and schema-valid rates per output mode.

    Kept apart because the modes measure different things: schema mode is JSON-valid by
    construction, so a total over both modes says nothing about either.
    """
    out = {}
    for mode in sorted({c.mode for c in cases}):
        in_mode = [c for c in cases if c.mode == mode]
        out[mode] = {
            "passed": sum(c.passed for c in in_mode) / len(in_mode),
            "json_valid": sum(c.json_valid for c in in_mode) / len(in_mode),
            "schema_valid": sum(c.schema_valid for c in in_mode) / len(in_mode),
        }
    return out


def _run_modes(rows: list[_VariantRow]) -> list[str]:
    return sorted({mode for r in rows for mode in r.modes})


def _mode_cells(row: _VariantRow, modes: list[str]) -> list[str]:
    cells = []
    for mode in modes:
        rates = row.modes.get(mode)
        for key in ("passed", "json_valid", "schema_valid"):
            cells.append(percent(rates[key]) if rates else "-")
    return cells


def threads_text(value: Any) -> str:
    """A run's thread counts in words: one number when every variant used the same.

    Merged runs record threads per variant (a dict); the report header shows the distinct
    counts, never the raw mapping.
    """
    if isinstance(value, dict):
        counts = sorted({v for v in value.values() if v is not None})
        return ", ".join(str(c) for c in counts) or "-"
    return "-" if value is None else str(value)


def _failing_in_order(
    run: RunRecord, gate: GateResult | None
) -> tuple[list[CaseResult], list[tuple[str, list[CaseResult]]], set[tuple[str, str, str, str]]]:
    """Failing cases as (regressions, [(reason kind, cases)], regressed keys).

    Regressions are what a reviewer must read; they come first. The rest are grouped by the
    kind of failure (``not JSON``, ``schema``, ``category``…), largest group first, so 60
    alike "not JSON" rows read as one group instead of burying everything after them.
    """
    regressed = {(r.variant, r.suite, r.mode, r.case) for r in gate.regressions} if gate else set()
    failing = [c for c in run.cases if not c.passed]
    first = [c for c in failing if (c.variant, c.suite, c.mode, c.id) in regressed]
    groups: dict[str, list[CaseResult]] = {}
    for c in failing:
        if (c.variant, c.suite, c.mode, c.id) not in regressed:
            groups.setdefault(_reason_kind(c), []).append(c)
    ordered = sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    return first, ordered, regressed


def _reason_kind(case: CaseResult) -> str:
    """A heading for the failure: "not JSON", "schema invalid", "wrong category", ..."""
    if case.errored:
        return "engine error"
    reason = case.reason or ""
    # "not JSON (Extra data …): …", "schema: $.x …", "category: expected …": the part before.
    head = reason.split(":", 1)[0].split(" (", 1)[0].strip()
    if head in ("not JSON", ""):
        return head or "other"
    return "schema invalid" if head == "schema" else f"wrong {head}"


def _would_pin(
    run: RunRecord, gate: GateResult | None, pins: dict[str, Any] | None
) -> list[tuple[str, str]]:
    """(variant, status) for every variant: pinned/unchanged/refused, or would/would not."""
    if pins is not None:
        return [(c["variant"], c["status"]) for c in pins["changes"]]
    out = []
    for entry in run.variants:
        name = entry.variant.name
        verdict = gate.verdict(name) if gate else None
        if verdict is None:
            out.append((name, "not gated"))
        else:
            out.append((name, "would pin" if verdict.passed else "would NOT pin"))
    return out


def _markdown(
    run: RunRecord,
    gate: GateResult | None,
    rows: list[_VariantRow],
    would_pin: list[tuple[str, str]],
    pins: dict[str, Any] | None,
    verdict: str,
) -> str:
    lines = [f"# lifecycle report — {verdict.upper()}", ""]
    env = run.environment
    lines.append(
        f"Run `{run.run_id}` finished {run.finished_at}; {env.get('engine_version')}, "
        f"{env.get('cpu')}, threads {threads_text(env.get('threads'))}."
    )
    lines += ["", "## Pins", ""]
    lines += [f"- {md_cell(name)}: {status}" for name, status in would_pin]
    if pins and pins.get("commit"):
        branch = f" on branch `{pins['branch']}`" if pins.get("branch") else ""
        lines.append(f"- committed `{pins['commit'][:12]}`{branch}")
    modes = _run_modes(rows)
    mode_heads = [f"{m} {k}" for m in modes for k in ("pass", "JSON-valid", "schema-valid")]
    heads = ["variant", "quant", "size", *mode_heads, "latency p50/p95 ms"]
    served = any(r.load for r in rows)
    heads += ["served p95 ms (SLA)"] if served else []
    heads += ["gen tok/s", "bench tg tok/s", "peak RSS"]
    lines += ["", "## Variants", ""]
    lines += [
        "| " + " | ".join(heads) + " |",
        "| --- | --- | " + " | ".join("---:" for _ in heads[2:]) + " |",
    ]
    for r in rows:
        cells = [
            md_cell(r.variant),
            r.quant or "-",
            _size(r.size),
            *_mode_cells(r, modes),
            f"{_one_decimal(r.p50_ms)}/{_one_decimal(r.p95_ms)}",
            *([served_latency(r.load)] if served else []),
            _one_decimal(r.gen_tps),
            _one_decimal(r.bench_tg),
            _size(r.peak_rss),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "### Per suite and mode", ""]
    lines += [
        "| variant | suite | mode | passed | rate | threshold | tokens forced |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for s in run.summaries:
        lines.append(
            f"| {md_cell(s.variant)} | {s.suite} | {s.mode} | "
            f"{s.passed}/{s.cases} | {percent(s.pass_rate)} | {percent(s.threshold)} | "
            f"{forced_share(s)} |"
        )
    lines.append("")
    lines += _calibration_markdown(run)
    if gate is not None:
        lines += [render_markdown(gate).replace("## ", "## Gate: ", 1), ""]
    regressions, groups, _ = _failing_in_order(run, gate)
    total = len(regressions) + sum(len(cs) for _, cs in groups)
    if total:
        lines += [f"## Failing cases ({total})", ""]
        sections = [("Regressions", regressions)] if regressions else []
        sections += [(f"{kind}", cs) for kind, cs in groups]
        for title, cases in sections:
            lines += [f"### {md_cell(title)} ({len(cases)})", ""]
            for c in cases:
                lines.append(
                    f"- **{md_cell(c.variant)}** {c.suite}/{c.mode} `{c.id}`: {md_cell(c.reason)}"
                )
                body = [f"expected: {json.dumps(c.expected, ensure_ascii=False)}"]
                body.append(f"output:   {c.output.strip()}")
                if c.diff:
                    body += ["", c.diff]
                lines += ["  ```", *[f"  {x}" for x in "\n".join(body).splitlines()], "  ```"]
            lines.append("")
    return "\n".join(lines)


def _html(
    run: RunRecord,
    gate: GateResult | None,
    rows: list[_VariantRow],
    would_pin: list[tuple[str, str]],
    pins: dict[str, Any] | None,
    verdict: str,
    images: list[tuple[str, str]],
) -> str:
    e = html.escape
    colour = {"promote": "#1a7f37", "do not promote": "#cf222e"}.get(verdict, "#57606a")
    env = run.environment
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>lifecycle report {e(run.run_id)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f'<div class="verdict" style="background:{colour}">{e(verdict.upper())}</div>',
        f"<p>Run <code>{e(run.run_id)}</code> finished {e(run.finished_at)}; "
        f"{e(str(env.get('engine_version')))}, {e(str(env.get('cpu')))}, "
        f"threads {e(threads_text(env.get('threads')))}.</p>",
        "<h2>Pins</h2><ul>",
        *[f"<li>{e(name)}: <b>{e(status)}</b></li>" for name, status in would_pin],
    ]
    if pins and pins.get("commit"):
        parts.append(f"<li>committed <code>{e(pins['commit'][:12])}</code></li>")
    parts.append("</ul>")
    if gate is not None:
        failed = [c for c in gate.checks if c.status == "fail"]
        parts.append(f"<h2>Gate: {'PASS' if gate.passed else 'FAIL'}</h2>")
        if failed:
            parts.append("<ul>")
            for c in failed:
                where = f" {c.suite}/{c.mode}" if c.suite else ""
                cause = f" (cause: {c.cause})" if c.cause else ""
                parts.append(
                    f"<li class='bad'>{e(c.variant)}{e(where)} <code>{e(c.name)}</code>: "
                    f"{e(c.message)}{e(cause)}</li>"
                )
            parts.append("</ul>")
        if gate.regressions:
            parts.append(
                f"<p><b>{len(gate.regressions)} regression(s)</b>: cases that passed "
                "in the baseline and fail now (details below).</p>"
            )
        for entry in gate.environment_changes:
            for c in entry["changes"]:
                parts.append(
                    f"<p class='env'>environment ({e(entry['variant'])}): {e(c['key'])} "
                    f"{e(str(c['baseline']))} → {e(str(c['current']))}</p>"
                )
    modes = _run_modes(rows)
    measures = {
        "gen tok/s": [_one_decimal(r.gen_tps) for r in rows],
        "p50 ms": [_one_decimal(r.p50_ms) for r in rows],
        "p95 ms": [_one_decimal(r.p95_ms) for r in rows],
        "served p95 ms (SLA)": [served_latency(r.load) for r in rows],
        "bench pp tok/s": [_one_decimal(r.bench_pp) for r in rows],
        "bench tg tok/s": [_one_decimal(r.bench_tg) for r in rows],
        "peak RSS": [_size(r.peak_rss) for r in rows],
        "VRAM": [_size(r.vram) for r in rows],
    }
    # Columns nothing was measured for (no bench given, no GPU) only widen the table.
    after = [h for h, values in measures.items() if any(v != "-" for v in values)]
    parts += ["<h2>Variants</h2>", "<table><tr>"]
    parts += [f"<th rowspan='2'>{h}</th>" for h in ("variant", "quant", "size")]
    parts += [f"<th colspan='3'>{e(m)} mode</th>" for m in modes]
    parts += [f"<th rowspan='2'>{h}</th>" for h in after]
    parts.append("</tr><tr>")
    parts += ["<th>pass</th><th>JSON-valid</th><th>schema-valid</th>" for _ in modes]
    parts.append("</tr>")
    for i, r in enumerate(rows):
        cells = [
            r.variant,
            r.quant or "-",
            _size(r.size),
            *_mode_cells(r, modes),
            *[measures[h][i] for h in after],
        ]
        parts.append("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in cells) + "</tr>")
    parts.append("</table>")
    models: dict[str, list[_VariantRow]] = {}
    for r in rows:
        models.setdefault(r.model, []).append(r)
    compared = {m: rs for m, rs in models.items() if len(rs) > 1}
    if compared:
        parts.append("<h2>Quant comparison</h2>")
        for model, rs in compared.items():
            best = max(rs, key=lambda r: (r.pass_rate or 0, r.gen_tps or 0))
            mode_heads = "".join(f"<th>{e(m)} pass</th>" for m in modes)
            parts.append(
                f"<h3>{e(model)}</h3><table><tr><th>variant</th><th>quant</th>"
                f"<th>size</th>{mode_heads}<th>gen tok/s</th><th>peak RSS</th></tr>"
            )
            for r in rs:
                mark = " ★" if r is best else ""
                passes = "".join(
                    f"<td>{percent(r.modes[m]['passed']) if m in r.modes else '-'}</td>"
                    for m in modes
                )
                parts.append(
                    f"<tr><td>{e(r.variant)}{mark}</td><td>{e(str(r.quant or '-'))}</td>"
                    f"<td>{_size(r.size)}</td>{passes}"
                    f"<td>{_one_decimal(r.gen_tps)}</td><td>{_size(r.peak_rss)}</td></tr>"
                )
            parts.append("</table>")
    parts.append(
        "<h2>Per suite and mode</h2><table><tr><th>variant</th><th>suite</th>"
        "<th>mode</th><th>passed</th><th>rate</th><th>threshold</th><th>tokens forced</th></tr>"
    )
    for s in run.summaries:
        cls = "" if s.met_threshold else " class='bad'"
        parts.append(
            f"<tr{cls}><td>{e(s.variant)}</td><td>{e(s.suite)}</td><td>{e(s.mode)}</td>"
            f"<td>{s.passed}/{s.cases}</td><td>{percent(s.pass_rate)}</td>"
            f"<td>{percent(s.threshold)}</td><td>{e(forced_share(s))}</td></tr>"
        )
    parts.append("</table>")
    parts += _calibration_html(run)
    if images:
        parts.append("<h2>Charts</h2>")
        for title, data in images:
            parts.append(
                f"<figure><img alt='{e(title)}' src='data:image/png;base64,{data}'>"
                f"<figcaption>{e(title)}</figcaption></figure>"
            )
    regressions, groups, regressed = _failing_in_order(run, gate)
    total = len(regressions) + sum(len(cs) for _, cs in groups)
    if total:
        parts.append(f"<h2>Failing cases ({total})</h2>")
        sections = [("Regressions", regressions)] if regressions else []
        sections += groups
        parts.append("<p>" + ", ".join(f"{e(title)}: {len(cs)}" for title, cs in sections) + "</p>")
        for title, cases in sections:
            parts.append(f"<h3>{e(title)} ({len(cases)})</h3>")
            for case in cases:
                key = (case.variant, case.suite, case.mode, case.id)
                tag = " <span class='bad'>REGRESSION</span>" if key in regressed else ""
                parts.append(
                    f"<details{' open' if tag else ''}><summary>{e(case.variant)} "
                    f"{e(case.suite)}/{e(case.mode)} <code>{e(case.id)}</code>: "
                    f"{e(case.reason)}{tag}</summary>"
                    f"<pre>expected: {e(json.dumps(case.expected, ensure_ascii=False))}\n"
                    f"output:   {e(case.output)}"
                    + (f"\n\n{e(case.diff)}" if case.diff else "")
                    + "</pre></details>"
                )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# --- charts ----------------------------------------------------------------------------------


def _charts(
    run: RunRecord, rows: list[_VariantRow], bench: list[dict[str, Any]]
) -> list[tuple[str, str]]:
    """(title, base64 PNG) pairs."""
    from lifecycle.charts import grouped_bar_figure

    images = []
    groups = sorted({f"{s.suite}/{s.mode}" for s in run.summaries})
    names = [r.variant for r in rows]
    if groups and names:
        rates = {(s.variant, f"{s.suite}/{s.mode}"): s.pass_rate for s in run.summaries}
        series = [(group, [rates.get((name, group)) for name in names]) for group in groups]
        fig = grouped_bar_figure(
            names, series, title="pass rate per variant", ylabel="pass rate", percent=True
        )
        images.append(("pass rate per variant", _png(fig)))
    images += _reliability_image(run)  # next to the pass rates
    if any(r.gen_tps or r.bench_tg for r in rows):
        series = [
            ("eval generation", [r.gen_tps for r in rows]),
            ("bench tg", [r.bench_tg for r in rows]),
        ]
        fig = grouped_bar_figure(names, series, title="generation speed", ylabel="tokens/s")
        images.append(("generation speed", _png(fig)))
    for doc in bench:
        if sum(1 for p in doc.get("points", []) if p.get("ok")) > 1:
            from lifecycle.charts import context_chart

            with tempfile.TemporaryDirectory() as tmp:
                path = context_chart(doc, Path(tmp) / "context.png")
                data = base64.b64encode(path.read_bytes()).decode("ascii")
            name = (doc.get("variant") or {}).get("name", "")
            images.append((f"{name}: tokens/s and memory vs context", data))
    return images


# --- calibration (suites with [calibration]: the confidence signals the eval recorded) -------


def _calibration_rows(run: RunRecord) -> list[list[str]]:
    from lifecycle.calibrate import calibrate_record_cases

    rows = []
    for group in calibrate_record_cases(run.cases).groups:
        for s in group.signals:
            rows.append(
                [
                    group.variant,
                    f"{group.suite}/{group.mode}",
                    s.signal,
                    f"{s.with_confidence}/{s.cases}",
                    percent(s.accuracy),
                    "-" if s.ece is None else f"{s.ece:.3f}",
                    "-" if s.brier is None else f"{s.brier:.3f}",
                ]
            )
    return rows


_CALIBRATION_HEADS = [
    "variant",
    "suite/mode",
    "signal",
    "with confidence",
    "accuracy",
    "ECE",
    "Brier",
]


def _calibration_markdown(run: RunRecord) -> list[str]:
    rows = _calibration_rows(run)
    if not rows:
        return []
    lines = ["### Calibration", ""]
    lines += [
        "| " + " | ".join(_CALIBRATION_HEADS) + " |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    lines += ["| " + " | ".join(md_cell(c) for c in row) + " |" for row in rows]
    lines += [
        "",
        "ECE over 10 equal-width bins. Coverage at the suite's target and the recommended "
        "threshold: `lifecycle calibrate`.",
        "",
    ]
    return lines


def _calibration_html(run: RunRecord) -> list[str]:
    rows = _calibration_rows(run)
    if not rows:
        return []
    e = html.escape
    parts = ["<h2>Calibration</h2><table><tr>"]
    parts += [f"<th>{e(h)}</th>" for h in _CALIBRATION_HEADS] + ["</tr>"]
    for row in rows:
        parts.append("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>")
    parts.append(
        "</table><p>ECE over 10 equal-width bins; the reliability diagram is among the "
        "charts. Coverage at the suite's target: <code>lifecycle calibrate</code>.</p>"
    )
    return parts


def _reliability_image(run: RunRecord) -> list[tuple[str, str]]:
    from lifecycle.calibrate import calibrate_record_cases, reliability_chart

    report = calibrate_record_cases(run.cases)
    if not report.groups:
        return []
    with tempfile.TemporaryDirectory() as tmp:
        path = reliability_chart(report, Path(tmp) / "reliability.png", curves=False)
        data = base64.b64encode(path.read_bytes()).decode("ascii")
    return [("reliability diagram (confidence vs accuracy)", data)]


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout()
    # No timestamps in the PNG, so identical results give an identical report.
    fig.savefig(buffer, format="png", dpi=90, metadata={"Software": None})
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:70em;color:#1f2328}
.verdict{color:#fff;font-size:2em;font-weight:bold;padding:.4em .8em;border-radius:6px}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #d0d7de;padding:3px 8px}
th{background:#f6f8fa}td{text-align:right;white-space:nowrap}td:first-child{text-align:left}
.bad{color:#cf222e}.env{color:#9a6700}pre{background:#f6f8fa;padding:.6em;overflow:auto}
figure{display:inline-block;margin:.5em}img{max-width:100%}
""".strip()


def forced_share(summary: SuiteSummary) -> str:
    """Schema mode's output tokens the grammar forced, of all: ``64% (2162 of 3360)``."""
    forced, sampled = summary.forced_tokens, summary.sampled_tokens
    if forced is None or sampled is None or forced + sampled == 0:
        return "-"
    return f"{percent(forced / (forced + sampled))} ({forced} of {forced + sampled})"


def served_latency(load: dict[str, Any]) -> str:
    """A load test's p95 at the served concurrency, with its SLA: ``2810 @2 (≤ 3000)``."""
    if not load or load.get("latency_p95_ms") is None:
        return "-"
    text = f"{float(load['latency_p95_ms']):.0f} @{load.get('concurrency')}"
    if load.get("sla_p95_ms") is not None:
        text += f" (≤ {float(load['sla_p95_ms']):g})"
    return text + (" partial" if load.get("partial") else "")


def _mean(values: list[Any]) -> float | None:
    nums = [float(v) for v in values if v is not None]
    return round(sum(nums) / len(nums), 2) if nums else None


def _one_decimal(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _size(value: int | None) -> str:
    if not value:
        return "-"
    return f"{value / 2**20:.1f} MiB" if value >= 2**20 else f"{value / 1024:.0f} KiB"
