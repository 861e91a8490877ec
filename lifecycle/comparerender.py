"""The comparison as people and files see it: the text report, the chart, the saved files.

:mod:`lifecycle.compare` measures and judges; this module only presents its
:class:`~lifecycle.compare.CompareReport`: two plain tables and the verdict for the terminal,
a PNG of quality against size and speed, and ``<id>.json`` / ``<id>.run.json`` / ``<id>.png``
under the compare directory.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lifecycle.compare import CompareEntry, CompareReport, mib
from lifecycle.fsutil import atomic_write_text


def save_report(report: CompareReport, directory: Path) -> tuple[Path, Path | None]:
    """Write ``<id>.json`` (and the eval run as ``<id>.run.json``) and the chart ``<id>.png``.

    Fills in the report's ``chart`` (or ``chart_error``) and ``eval_run``, so its
    :meth:`~lifecycle.compare.CompareReport.to_dict` is then exactly what was written.
    """
    directory.mkdir(parents=True, exist_ok=True)
    base = directory / report.compare_id
    try:
        report.chart = comparison_chart(report, base.with_suffix(".png"))
    except (ImportError, ValueError, OSError) as exc:  # the report matters more than the chart
        report.chart_error = str(exc)
    if report.run_record is not None:
        run_path = base.with_name(base.name + ".run.json")
        atomic_write_text(run_path, json.dumps(report.run_record.to_dict(), indent=2) + "\n")
        report.eval_run = run_path
    path = base.with_suffix(".json")
    atomic_write_text(path, json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n")
    return path, report.chart


def comparison_chart(report: CompareReport, path: Path) -> Path:
    """Quality vs size (mean KLD, pass rate) and speed per subject, as a PNG (matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = report.variants
    fig, (quality, speed) = plt.subplots(1, 2, figsize=(11, 4))
    sizes = [e.cost["file_size_bytes"] / 2**20 for e in entries]
    if any(e.embedding for e in entries):  # an embedding model: vectors, not KLD
        ylabel = "min cosine to the reference's vectors"
        values = [
            1.0 if e.is_reference
            else ((e.embedding_quality or {}).get("vectors") or {}).get("min")
            for e in entries
        ]  # fmt: skip
    else:
        ylabel = "mean KLD vs reference (lower is better)"
        values = [(e.token_quality or {}).get("kld", {}).get("mean") for e in entries]
    for x, y, e in zip(sizes, values, entries, strict=True):
        if y is not None:
            quality.scatter([x], [y], marker="o", color="tab:blue")
            quality.annotate(e.name, (x, y), textcoords="offset points", xytext=(4, 4),
                             fontsize=8)  # fmt: skip
    quality.set(xlabel="file size (MiB)", ylabel=ylabel)
    quality.set_title("quality vs size")
    rates = [e.task_quality.pass_rate if e.task_quality else None for e in entries]
    if any(r is not None for r in rates):
        twin = quality.twinx()
        points = [(x, r) for x, r in zip(sizes, rates, strict=True) if r is not None]
        twin.scatter([x for x, _ in points], [r for _, r in points], marker="s", color="tab:green")
        twin.set_ylabel("golden pass rate (squares)")
        twin.set_ylim(-0.05, 1.05)
    labels = [e.name for e in entries]
    xs = np.arange(len(entries))
    width = 0.27
    series = (
        [(0.0, "texts_per_s", "texts embedded")]
        if any(e.embedding for e in entries)
        else [
            (-width, "prompt_tokens_per_s", "prompt (eval)"),
            (0.0, "generation_tokens_per_s", "generation (eval)"),
            (width, "score_tokens_per_s", "scoring (text)"),
        ]
    )
    for offset, key, label in series:
        values = [e.cost.get(key) or 0.0 for e in entries]
        speed.bar(xs + offset, values, width, label=label)
    speed.set_xticks(xs, labels, rotation=15, fontsize=8)
    speed.set(ylabel="texts/s" if len(series) == 1 else "tokens/s")
    speed.set_title("speed")
    speed.legend(fontsize=8)
    fig.suptitle(f"lifecycle compare (reference {report.reference})")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def render_report(report: CompareReport) -> str:
    """The human report: token quality, then task quality and cost, then the verdict.

    Two tables of at most ~100 columns rather than one of ~190: the model name every row
    shares is printed once above them, and each row carries only what differs.
    """
    from lifecycle.charts import bar_labels
    from lifecycle.texttable import table

    entries = report.variants
    common, short = bar_labels([e.name for e in entries])
    names = [s + (" (ref)" if e.is_reference else "") for s, e in zip(short, entries, strict=True)]
    token_rows, task_rows = [], []
    for name, e in zip(names, entries, strict=True):
        t = e.token_quality
        q = e.task_quality
        c = e.cost
        token_rows.append(
            [
                name,
                e.quant or "-",
                None if c["bits_per_weight"] is None else round(c["bits_per_weight"], 2),
                None if not t else f"{t['kld']['mean']:.4f}±{t['kld']['stderr']:.4f}",
                None if not t else f"{t['kld']['p99']:.3f}",
                None if not t else f"{100 * t['same_top_p']:.1f}%",
                None if not t else f"{100 * t['rms_dp']:.1f}%",
                None if not t else _ppl(t["ppl"]),
                None if not t else f"{t['ppl_ratio']:.3f}",
            ]
        )
        task_rows.append(
            [
                name,
                mib(c["file_size_bytes"]),
                None if not q else f"{q.pass_rate:.0%}",
                None if not q or q.agreement_rate is None else f"{q.agreement_rate:.0%}",
                None if not q else len(q.flipped),
                c.get("generation_tokens_per_s"),
                None if c.get("load_ms") is None else round(c["load_ms"]),
                None if not c.get("peak_rss_bytes") else mib(c["peak_rss_bytes"]),
                "yes" if e.within_thresholds else "no",
            ]
        )
    token_headers = [
        "variant", "quant", "bpw", "mean KLD", "p99 KLD", "same top", "RMS Δp", "PPL", "PPL ratio",
    ]  # fmt: skip
    task_headers = [
        "variant", "size", "pass", "agree", "flips", "gen tok/s", "load ms", "peak RSS", "within",
    ]  # fmt: skip
    lines = [f"model: {common}", ""] if common else []
    embedding = any(e.embedding for e in entries)
    if embedding:
        lines += [
            "vectors (cosine to the reference's, per text) and retrieval (Δ vs the reference):",
            _embedding_table(names, entries),
            "",
        ]
        task_headers[2] = "hit"
        task_headers[5] = "texts/s"
        for row, e in zip(task_rows, entries, strict=True):
            row[5] = e.cost.get("texts_per_s")
            load_ms = e.cost.get("eval_load_ms")  # no text pass: the eval run's load
            row[6] = None if load_ms is None else round(load_ms)
    else:
        lines += ["token quality (reference text):", table(token_headers, token_rows), ""]
    lines += ["task quality (golden set) and cost:", table(task_headers, task_rows), ""]
    for e in entries:
        for dimension in ("token_quality", "task_quality", "embedding_quality"):
            if dimension == "token_quality" and embedding:
                continue  # the table says how an embedding model is compared instead
            why = e.skipped(dimension)
            if why:
                lines.append(f"{e.name}: {dimension.replace('_', ' ')}: {why}")
        for flip in e.task_quality.flipped if e.task_quality else []:
            lines.append(
                f"{e.name} {flip.suite}/{flip.mode} {flip.id}: {flip.change} ({flip.reason})"
            )
            lines.append(f"    reference: {_short(flip.reference_output)}")
            lines.append(f"    {e.name}: {_short(flip.output)}")
    settings = report.token_settings
    if settings:
        lines.append(
            f"text: {settings['text']}; {settings['tokens']} tokens, {settings['chunks']} chunks "
            f"of {settings['n_ctx']}, {settings['scored_positions']} positions scored "
            f"({settings['score']}), reference top-{settings['top_k']} kept"
        )
    lines.append("verdict: " + report.verdict.summary)
    return "\n".join(lines)


def _embedding_table(names: list[str], entries: list[CompareEntry]) -> str:
    """One row per variant and retrieval suite: the cosines, then each metric and its Δ."""
    from lifecycle.texttable import table

    rows = []
    for name, e in zip(names, entries, strict=True):
        quality = e.embedding_quality or {}
        vectors = quality.get("vectors") or {}
        cos = [None if not vectors else f"{vectors[k]:.4f}" for k in ("min", "p5", "median")]
        if e.is_reference:
            cos = ["1 (ref)", "", ""]
        for suite, ab in sorted((quality.get("retrieval") or {}).items()):
            cells = []
            for metric in ("hit_rate", "recall_at_k", "mrr", "ndcg_at_k"):
                value = ab["metrics"].get(metric)
                delta = ab["difference"].get(metric)
                shown = None if value is None else f"{value:.3f}"
                if shown and delta is not None and not e.is_reference:
                    shown += f" ({delta:+.3f})"
                cells.append(shown)
            rows.append([name, suite, *cos, *cells])
        if not quality.get("retrieval"):
            rows.append([name, None, *cos, None, None, None, None])
    k_values = {
        ab.get("k")
        for e in entries
        for ab in ((e.embedding_quality or {}).get("retrieval") or {}).values()
    }
    k = f"@{k_values.pop()}" if len(k_values) == 1 else "@k"
    headers = ["variant", "suite", "min cos", "p5 cos", "median cos", "hit",
               f"recall{k}", "MRR", f"nDCG{k}"]  # fmt: skip
    return table(headers, rows)


def _ppl(value: float) -> str:
    # A random or broken model's perplexity runs to 20 digits; keep the column narrow.
    return f"{value:.2f}" if value < 1e5 else f"{value:.2e}"


def _short(text: str, width: int = 90) -> str:
    text = text.strip().replace("\n", "\\n")
    return text if len(text) <= width else text[: width - 3] + "..."


__all__ = ["comparison_chart", "render_report", "save_report"]
