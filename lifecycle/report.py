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

from lifecycle.fsutil import atomic_write_text
from lifecycle.gate import GateResult, bench_figures, render_markdown

REPORT_HTML = "report.html"
REPORT_MD = "report.md"


@dataclass(frozen=True)
class Report:
    """The rendered report; :func:`write_report` puts it on disk."""

    markdown: str
    html: str
    verdict: str  # "promote", "do not promote" or "no gate"


def build_report(
    run: dict[str, Any],
    gate: GateResult | None = None,
    *,
    pins: dict[str, Any] | None = None,
    bench: list[dict[str, Any]] | None = None,
    quants: dict[str, str | None] | None = None,
    charts: bool = True,
) -> Report:
    """Render a run record (``RunRecord.to_dict()``) with the gate verdict and pin outcome.

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


def _variant_rows(
    run: dict[str, Any], bench: list[dict[str, Any]], quants: dict[str, str | None]
) -> list[dict[str, Any]]:
    figures = {str((d.get("variant") or {}).get("name")): bench_figures(d) or {} for d in bench}
    rows = []
    for entry in run["variants"]:
        v = entry["variant"]
        name = v["name"]
        summaries = [s for s in run["summaries"] if s["variant"] == name]
        cases = [c for c in run["cases"] if c["variant"] == name]
        n = len(cases)
        fig = figures.get(name, {})
        rows.append(
            {
                "variant": name,
                "model": v.get("model") or name,
                "id": v.get("id"),
                "quant": v.get("quant") or quants.get(name),
                "size": v.get("blob_size"),
                "num_ctx": (v.get("parameters") or {}).get("num_ctx"),
                "error": entry.get("error"),
                "summaries": summaries,
                "pass_rate": sum(c["passed"] for c in cases) / n if n else None,
                "json_valid_rate": sum(c["json_valid"] for c in cases) / n if n else None,
                "schema_valid_rate": sum(c["schema_valid"] for c in cases) / n if n else None,
                "gen_tps": _mean([s["generation_tokens_per_s"] for s in summaries]),
                "p50_ms": _mean([s["latency_p50_ms"] for s in summaries]),
                "bench_tg": fig.get("tg_tokens_per_s"),
                "bench_pp": fig.get("pp_tokens_per_s"),
                "peak_rss": fig.get("peak_rss_bytes"),
                "vram": fig.get("vram_used_bytes"),
            }
        )
    return rows


def _would_pin(
    run: dict[str, Any], gate: GateResult | None, pins: dict[str, Any] | None
) -> list[tuple[str, str]]:
    """(variant, status) for every variant: pinned/unchanged/refused, or would/would not."""
    if pins is not None:
        return [(c["variant"], c["status"]) for c in pins["changes"]]
    out = []
    for entry in run["variants"]:
        name = entry["variant"]["name"]
        verdict = gate.verdict(name) if gate else None
        if verdict is None:
            out.append((name, "not gated"))
        else:
            out.append((name, "would pin" if verdict.passed else "would NOT pin"))
    return out


def _markdown(
    run: dict[str, Any],
    gate: GateResult | None,
    rows: list[dict[str, Any]],
    would_pin: list[tuple[str, str]],
    pins: dict[str, Any] | None,
    verdict: str,
) -> str:
    lines = [f"# lifecycle report — {verdict.upper()}", ""]
    env = run["environment"]
    lines.append(
        f"Run `{run['run_id']}` finished {run['finished_at']}; {env.get('engine_version')}, "
        f"{env.get('cpu')}."
    )
    lines += ["", "## Pins", ""]
    lines += [f"- {_md(name)}: {status}" for name, status in would_pin]
    if pins and pins.get("commit"):
        branch = f" on branch `{pins['branch']}`" if pins.get("branch") else ""
        lines.append(f"- committed `{pins['commit'][:12]}`{branch}")
    lines += ["", "## Variants", ""]
    lines += [
        "| variant | quant | size | pass | JSON-valid | schema-valid | gen tok/s | bench tg tok/s"
        " | peak RSS |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {_md(r['variant'])} | {r['quant'] or '-'} | {_size(r['size'])} | "
            f"{_pct(r['pass_rate'])} | {_pct(r['json_valid_rate'])} | "
            f"{_pct(r['schema_valid_rate'])} | {_f(r['gen_tps'])} | {_f(r['bench_tg'])} | "
            f"{_size(r['peak_rss'])} |"
        )
    lines += ["", "### Per suite and mode", ""]
    lines += [
        "| variant | suite | mode | passed | rate | threshold |",
        "| --- | --- | --- | ---: | ---: | ---: |",
    ]
    for s in run["summaries"]:
        lines.append(
            f"| {_md(s['variant'])} | {s['suite']} | {s['mode']} | {s['passed']}/{s['cases']} | "
            f"{_pct(s['pass_rate'])} | {_pct(s['threshold'])} |"
        )
    lines.append("")
    if gate is not None:
        lines += [render_markdown(gate).replace("## ", "## Gate: ", 1), ""]
    failing = [c for c in run["cases"] if not c["passed"]]
    if failing:
        lines += [f"## Failing cases ({len(failing)})", ""]
        for c in failing:
            lines.append(
                f"- **{_md(c['variant'])}** {c['suite']}/{c['mode']} `{c['id']}`: "
                f"{_md(c['reason'])}"
            )
            body = [f"expected: {json.dumps(c['expected'], ensure_ascii=False)}"]
            body.append(f"output:   {c['output'].strip()}")
            if c.get("diff"):
                body += ["", c["diff"]]
            lines += ["  ```", *[f"  {x}" for x in "\n".join(body).splitlines()], "  ```"]
        lines.append("")
    return "\n".join(lines)


def _html(
    run: dict[str, Any],
    gate: GateResult | None,
    rows: list[dict[str, Any]],
    would_pin: list[tuple[str, str]],
    pins: dict[str, Any] | None,
    verdict: str,
    images: list[tuple[str, str]],
) -> str:
    e = html.escape
    colour = {"promote": "#1a7f37", "do not promote": "#cf222e"}.get(verdict, "#57606a")
    env = run["environment"]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>lifecycle report {e(run['run_id'])}</title>",
        f"<style>{_CSS}</style></head><body>",
        f'<div class="verdict" style="background:{colour}">{e(verdict.upper())}</div>',
        f"<p>Run <code>{e(run['run_id'])}</code> finished {e(run['finished_at'])}; "
        f"{e(str(env.get('engine_version')))}, {e(str(env.get('cpu')))}, "
        f"threads {e(json.dumps(env.get('threads')))}.</p>",
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
    parts += ["<h2>Variants</h2>", "<table><tr>"]
    headers = [
        "variant",
        "quant",
        "size",
        "pass",
        "JSON-valid",
        "schema-valid",
        "gen tok/s",
        "p50 ms",
        "bench pp tok/s",
        "bench tg tok/s",
        "peak RSS",
        "VRAM",
    ]
    parts += [f"<th>{h}</th>" for h in headers]
    parts.append("</tr>")
    for r in rows:
        cells = [
            r["variant"],
            r["quant"] or "-",
            _size(r["size"]),
            _pct(r["pass_rate"]),
            _pct(r["json_valid_rate"]),
            _pct(r["schema_valid_rate"]),
            _f(r["gen_tps"]),
            _f(r["p50_ms"]),
            _f(r["bench_pp"]),
            _f(r["bench_tg"]),
            _size(r["peak_rss"]),
            _size(r["vram"]),
        ]
        parts.append("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in cells) + "</tr>")
    parts.append("</table>")
    models: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        models.setdefault(r["model"], []).append(r)
    compared = {m: rs for m, rs in models.items() if len(rs) > 1}
    if compared:
        parts.append("<h2>Quant comparison</h2>")
        for model, rs in compared.items():
            best = max(rs, key=lambda r: (r["pass_rate"] or 0, r["gen_tps"] or 0))
            parts.append(
                f"<h3>{e(model)}</h3><table><tr><th>variant</th><th>quant</th>"
                "<th>size</th><th>pass</th><th>gen tok/s</th><th>peak RSS</th></tr>"
            )
            for r in rs:
                mark = " ★" if r is best else ""
                parts.append(
                    f"<tr><td>{e(r['variant'])}{mark}</td><td>{e(str(r['quant'] or '-'))}</td>"
                    f"<td>{_size(r['size'])}</td><td>{_pct(r['pass_rate'])}</td>"
                    f"<td>{_f(r['gen_tps'])}</td><td>{_size(r['peak_rss'])}</td></tr>"
                )
            parts.append("</table>")
    parts.append(
        "<h2>Per suite and mode</h2><table><tr><th>variant</th><th>suite</th>"
        "<th>mode</th><th>passed</th><th>rate</th><th>threshold</th></tr>"
    )
    for s in run["summaries"]:
        cls = "" if s["met_threshold"] else " class='bad'"
        parts.append(
            f"<tr{cls}><td>{e(s['variant'])}</td><td>{e(s['suite'])}</td><td>{e(s['mode'])}</td>"
            f"<td>{s['passed']}/{s['cases']}</td><td>{_pct(s['pass_rate'])}</td>"
            f"<td>{_pct(s['threshold'])}</td></tr>"
        )
    parts.append("</table>")
    if images:
        parts.append("<h2>Charts</h2>")
        for title, data in images:
            parts.append(
                f"<figure><img alt='{e(title)}' src='data:image/png;base64,{data}'>"
                f"<figcaption>{e(title)}</figcaption></figure>"
            )
    regressed = {(r.variant, r.suite, r.mode, r.case) for r in gate.regressions} if gate else set()
    failing = [c for c in run["cases"] if not c["passed"]]
    if failing:
        parts.append(f"<h2>Failing cases ({len(failing)})</h2>")
        for c in failing:
            key = (c["variant"], c["suite"], c["mode"], c["id"])
            tag = " <span class='bad'>REGRESSION</span>" if key in regressed else ""
            parts.append(
                f"<details{' open' if tag else ''}><summary>{e(c['variant'])} "
                f"{e(c['suite'])}/{e(c['mode'])} <code>{e(c['id'])}</code>: "
                f"{e(c['reason'])}{tag}</summary>"
                f"<pre>expected: {e(json.dumps(c['expected'], ensure_ascii=False))}\n"
                f"output:   {e(c['output'])}"
                + (f"\n\n{e(c['diff'])}" if c.get("diff") else "")
                + "</pre></details>"
            )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# --- charts ----------------------------------------------------------------------------------


def _charts(
    run: dict[str, Any], rows: list[dict[str, Any]], bench: list[dict[str, Any]]
) -> list[tuple[str, str]]:
    """(title, base64 PNG) pairs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = []
    groups = sorted({f"{s['suite']}/{s['mode']}" for s in run["summaries"]})
    names = [r["variant"] for r in rows]
    if groups and names:
        fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(names) * len(groups)), 3.2))
        width = 0.8 / len(groups)
        for gi, group in enumerate(groups):
            values = []
            for name in names:
                found = [
                    s["pass_rate"]
                    for s in run["summaries"]
                    if s["variant"] == name and f"{s['suite']}/{s['mode']}" == group
                ]
                values.append(found[0] if found else 0.0)
            ax.bar([i + gi * width for i in range(len(names))], values, width, label=group)
        ax.set_xticks([i + width * (len(groups) - 1) / 2 for i in range(len(names))], names)
        ax.set(ylim=(0, 1.05), ylabel="pass rate", title="pass rate per variant")
        ax.legend(fontsize="small")
        images.append(("pass rate per variant", _png(fig)))
    speeds = [(r["variant"], r["gen_tps"], r["bench_tg"]) for r in rows]
    if any(s[1] or s[2] for s in speeds):
        fig, ax = plt.subplots(figsize=(max(5.0, 1.5 * len(speeds)), 3.2))
        xs = range(len(speeds))
        ax.bar([x - 0.2 for x in xs], [s[1] or 0 for s in speeds], 0.4, label="eval generation")
        ax.bar([x + 0.2 for x in xs], [s[2] or 0 for s in speeds], 0.4, label="bench tg")
        ax.set_xticks(list(xs), [s[0] for s in speeds])
        ax.set(ylabel="tokens/s", title="generation speed")
        ax.legend(fontsize="small")
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
th{background:#f6f8fa}td{text-align:right}td:first-child{text-align:left}
.bad{color:#cf222e}.env{color:#9a6700}pre{background:#f6f8fa;padding:.6em;overflow:auto}
figure{display:inline-block;margin:.5em}img{max-width:100%}
""".strip()


def _mean(values: list[Any]) -> float | None:
    nums = [float(v) for v in values if v is not None]
    return round(sum(nums) / len(nums), 2) if nums else None


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _size(value: int | None) -> str:
    if not value:
        return "-"
    return f"{value / 2**20:.1f} MiB" if value >= 2**20 else f"{value / 1024:.0f} KiB"


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")
