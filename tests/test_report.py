"""The promotion report: self-contained HTML with embedded charts, and Markdown."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from pathlib import Path

from _promote import make_record, schema_only

from lifecycle.baselines import baseline_entry
from lifecycle.gate import GateSettings, run_gate
from lifecycle.report import build_report, write_report
from lifecycle.results import SuiteSummary

Run = Callable[..., tuple[int, str, str]]


def test_html_is_self_contained_and_escapes_model_output(tmp_path: Path) -> None:
    base = make_record({"a": True, "b": True})
    now = make_record({"a": True, "b": False})
    hostile = dataclasses.replace(now.cases[1], output='<script>alert("x")</script>')
    now.cases[1] = hostile
    gate = run_gate(now, {"tiny": baseline_entry(base, "tiny", None)}, GateSettings())
    bench = {
        "variant": {"name": "tiny"},
        "environment": {},
        "points": [
            {
                "n_ctx": n, "ok": True,
                "rows": [
                    {"n_prompt": 64, "n_gen": 0, "avg_ts": 900.0, "stddev_ts": 5.0},
                    {"n_prompt": 0, "n_gen": 16, "avg_ts": 90.0 - n / 100, "stddev_ts": 1.0},
                ],
                "memory": {"peak_rss_bytes": n << 12, "allocated_bytes": n << 11,
                           "kv_cache_bytes": n << 10},
                "estimate": {"total_bytes": n << 11},
            }
            for n in (512, 1024, 2048)
        ],
    }  # fmt: skip
    report = build_report(now, gate, bench=[bench])
    assert report.verdict == "do not promote"
    page = report.html
    assert "<script>" not in page and "&lt;script&gt;" in page
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert len(images) == 3  # pass rates, speed, the context sweep
    assert not re.search(r"""(src|href)=['"]?https?:""", page)  # nothing fetched from outside
    assert "REGRESSION" in page and "would NOT pin" in page
    html_path, md_path = write_report(report, tmp_path / "out")
    assert html_path.read_text(encoding="utf-8") == page
    markdown = md_path.read_text(encoding="utf-8")
    assert markdown.startswith("# lifecycle report — DO NOT PROMOTE")
    assert "| tiny |" in markdown and "Regressions (1)" in markdown


def test_report_cli(tiny_workspace: Path, run_cli: Run, tmp_path: Path) -> None:
    schema_only(tiny_workspace)
    ws = str(tiny_workspace)
    assert run_cli("eval", "-C", ws, "-q")[0] == 0
    code, out, _ = run_cli("report", "-C", ws, "--out", str(tmp_path / "r"), "--json")
    doc = json.loads(out)
    assert code == 0 and doc["verdict"] == "promote"  # first pin: no baseline to regress from
    page = Path(doc["html"]).read_text(encoding="utf-8")
    assert "data:image/png;base64," in page and "F32" in page  # the quant, read from the blob
    markdown = Path(doc["markdown"]).read_text(encoding="utf-8")
    assert "would pin" in markdown and "| tokens forced |" in markdown


def test_the_forced_share_of_schema_tokens() -> None:
    from lifecycle.report import forced_share

    (summary,) = make_record({"a": True}).summaries
    counted = dataclasses.replace(summary, forced_tokens=2162, sampled_tokens=1198)
    assert forced_share(counted) == "64% (2162 of 3360)"
    free = dataclasses.replace(summary, forced_tokens=None, sampled_tokens=None)
    assert forced_share(free) == "-"  # free mode
    counts = ("forced_tokens", "sampled_tokens")
    before = {k: v for k, v in summary.to_dict().items() if k not in counts}
    assert forced_share(SuiteSummary.from_dict(before)) == "-"  # a record from before the counts
