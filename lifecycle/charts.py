"""PNG charts of bench results (matplotlib, Agg backend: no display needed)."""

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
