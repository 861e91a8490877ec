"""PNG charts of bench and eval results (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def context_chart(result: dict[str, Any], path: Path) -> Path:
    """Tokens/sec (pp and tg) and memory (peak RSS, KV cache, estimate) vs context size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = sorted((p for p in result["points"] if p["ok"]), key=lambda p: p["n_ctx"])
    ctx = [p["n_ctx"] for p in points]
    fig, (speed, memory) = plt.subplots(1, 2, figsize=(11, 4))
    for kind, key in (("pp", "n_prompt"), ("tg", "n_gen")):
        xs, ys, errs = [], [], []
        for point in points:
            for row in point["rows"]:
                if row[key]:
                    xs.append(point["n_ctx"])
                    ys.append(row["avg_ts"])
                    errs.append(row["stddev_ts"])
        if xs:
            speed.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, label=kind)
    speed.set(xscale="log", yscale="log", xlabel="context (tokens)", ylabel="tokens/s")
    speed.set_title("speed at the end of the context")
    speed.legend()

    def mib(key: str, source: str = "memory") -> list[float]:
        return [((p[source] or {}).get(key) or 0) / 2**20 for p in points]

    memory.plot(ctx, mib("peak_rss_bytes"), marker="o", label="peak RSS")
    memory.plot(ctx, mib("allocated_bytes"), marker="s", label="llama.cpp buffers")
    memory.plot(ctx, mib("total_bytes", "estimate"), linestyle="--", label="estimate")
    memory.plot(ctx, mib("kv_cache_bytes"), marker="^", label="KV cache")
    memory.set(xscale="log", xlabel="context (tokens)", ylabel="MiB")
    memory.set_title("memory")
    memory.legend()
    fig.suptitle(str(result.get("variant", {}).get("name") or ""))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def bar_labels(names: list[str]) -> tuple[str, list[str]]:
    """Short x-axis labels: the part after a prefix every name shares (the model), and it.

    "harbor-triage:q4_k_m-ctx1024" and "harbor-triage:q4_0-ctx1024" become "q4_k_m-ctx1024"
    and "q4_0-ctx1024" under the title "harbor-triage": long repeated prefixes are what made
    neighbouring labels collide.
    """
    if len(names) < 2:
        return "", list(names)
    prefix = names[0]
    for name in names[1:]:
        while not name.startswith(prefix):
            prefix = prefix[:-1]
    cut = max(prefix.rfind(":"), prefix.rfind("/")) + 1  # cut at a separator, never mid-word
    if cut == 0 or any(len(n) == cut for n in names):
        return "", list(names)
    return names[0][: cut - 1], [n[cut:] for n in names]


def grouped_bar_figure(
    names: list[str],
    series: list[tuple[str, list[float | None]]],
    *,
    title: str,
    ylabel: str,
    percent: bool = False,
) -> Any:
    """Bars per name, one colour per series, each bar labelled with its value.

    A value of 0 gets its label too (a 0 % bar is otherwise invisible) and a missing one
    reads "n/a". Labels are shortened by :func:`bar_labels`, wrapped onto two lines at a
    dash when still long, and the figure grows with the number of bars so they never
    overlap (``tests/test_example_polish.py`` measures the label boxes).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import PercentFormatter

    common, labels = bar_labels(names)
    labels = [_wrap(label) for label in labels]
    n_series = max(1, len(series))
    width = 0.8 / n_series
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(names) * n_series + 1.5), 3.6))
    top = max((v for _, vs in series for v in vs if v is not None), default=0.0)
    for si, (label, values) in enumerate(series):
        xs = [i - 0.4 + width * (si + 0.5) for i in range(len(names))]
        bars = ax.bar(xs, [v or 0.0 for v in values], width, label=label)
        texts = ["n/a" if v is None else (f"{v:.0%}" if percent else f"{v:.1f}") for v in values]
        ax.bar_label(bars, texts, padding=2, fontsize="x-small")
    ax.set_xticks(range(len(names)), labels, fontsize="small")
    upper = 1.15 if percent else max(1.0, top * 1.18)
    ax.set(ylim=(0, upper), ylabel=ylabel)
    if percent:
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_title(f"{title} — {common}" if common else title)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return fig


def _wrap(label: str, width: int = 14) -> str:
    if len(label) <= width or "-" not in label:
        return label
    head, _, tail = label.rpartition("-")
    return f"{head}\n{tail}"
