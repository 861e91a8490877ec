"""``lifecycle compare`` and ``lifecycle quantize`` through the real CLI and the real engine."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

Run = Callable[..., tuple[int, str, str]]

MATRIX = '\n[models.tiny.variants]\nquant = ["F32", "Q8_0", "Q4_K_M"]\n'
NAMES = ["tiny:f32", "tiny:q8_0", "tiny:q4_k_m"]


@pytest.fixture
def workspace(tiny_workspace: Path) -> Path:
    config = tiny_workspace / "lifecycle.toml"
    config.write_text(config.read_text() + MATRIX, encoding="utf-8")
    (tiny_workspace / "text.txt").write_text(
        "Invoice INV-2231 was charged twice; the API returned 500 on POST /v2/bookings. " * 6,
        encoding="utf-8",
    )
    return tiny_workspace


def set_compare(workspace: Path, table: str) -> None:
    config = workspace / "lifecycle.toml"
    config.write_text(config.read_text() + "\n[compare]\n" + table, encoding="utf-8")


def run_compare(run_cli: Run, workspace: Path, *extra: str) -> dict:
    code, out, err = run_cli(
        "compare", *NAMES, "-C", str(workspace), "--text", str(workspace / "text.txt"),
        "--ctx", "64", "--threads", "1", "--json", "-q", *extra,
    )  # fmt: skip
    assert code == 0, err
    return json.loads(out)


def test_compare_reports_token_and_task_quality_cost_and_flips(
    workspace: Path, run_cli: Run
) -> None:
    set_compare(workspace, "max_mean_kld = 1000.0\nmax_pass_rate_drop = 1.0\n")
    doc = run_compare(run_cli, workspace, "--mode", "schema")
    entries = {e["name"]: e for e in doc["variants"]}
    assert doc["reference"] == "tiny:f32" and list(entries) == NAMES
    for name in NAMES:
        entry = entries[name]
        assert set(entry["token_quality"]["kld"]) >= {"mean", "median", "p90", "p99", "max"}
        assert {"same_top_p", "rms_dp", "ppl", "ppl_ratio"} <= set(entry["token_quality"])
        task = entry["task_quality"]
        assert list(task) == [  # the document's order, as before it was typed
            "cases", "passed", "pass_rate", "json_valid_rate", "schema_valid_rate",
            "agreement", "agreement_rate", "flipped", "suites", "pass_rate_drop",
        ]  # fmt: skip
        assert task["cases"] == 4 and 0 <= task["pass_rate"] <= 1
        assert 0 <= task["schema_valid_rate"] <= 1
        cost = entry["cost"]
        assert cost["file_size_bytes"] > 0 and cost["bits_per_weight"] > 0
        assert cost["load_ms"] > 0 and cost["peak_rss_bytes"] > 0
        assert cost["generation_tokens_per_s"] > 0
    assert entries["tiny:f32"]["task_quality"]["agreement_rate"] == 1.0
    # Flipped cases are exactly the cases whose verdict differs from the reference's.
    run = json.loads(Path(doc["eval_run"]).read_text())
    passed = {(c["variant"], c["id"]): c for c in run["cases"]}
    for name in NAMES[1:]:
        expected = sorted(
            cid
            for (variant, cid), case in passed.items()
            if variant == name and case["passed"] != passed[("tiny:f32", cid)]["passed"]
        )
        flips = entries[name]["task_quality"]["flipped"]
        assert sorted(f["id"] for f in flips) == expected
        for flip in flips:
            assert list(flip) == [
                "suite", "mode", "id", "change", "reference_passed", "passed",
                "reference_output", "output", "reason",
            ]  # fmt: skip
            assert flip["output"] == passed[(name, flip["id"])]["output"]
            assert flip["reference_output"] == passed[("tiny:f32", flip["id"])]["output"]
    # Everything is within these loose thresholds, so the smallest file wins.
    assert doc["verdict"]["choice"] == "tiny:q4_k_m"
    chart = Path(doc["chart"])
    assert chart.parent == workspace / ".lifecycle" / "compare"
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # --json prints exactly the saved document; the eval run is a file beside it, not inline.
    saved = chart.with_suffix(".json").read_text(encoding="utf-8")
    assert saved == json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    assert list(doc)[-3:] == ["compare_id", "chart", "eval_run"] and "_run_record" not in saved
    assert Path(doc["eval_run"]) == chart.with_name(f"{doc['compare_id']}.run.json")
    assert run["run_id"] == doc["eval_run_id"]


def test_verdict_is_the_smallest_variant_within_thresholds(workspace: Path, run_cli: Run) -> None:
    # Between Q8_0's KLD (~0.01) and Q4_K_M's (~1) on this model: only Q8_0 qualifies.
    set_compare(workspace, "max_mean_kld = 0.3\n")
    doc = run_compare(run_cli, workspace, "--no-eval")
    entries = {e["name"]: e for e in doc["variants"]}
    assert entries["tiny:q8_0"]["token_quality"]["kld"]["mean"] < 0.3
    assert entries["tiny:q4_k_m"]["token_quality"]["kld"]["mean"] > 0.3
    assert doc["verdict"]["choice"] == "tiny:q8_0"
    assert doc["verdict"]["within"] == ["tiny:f32", "tiny:q8_0"]
    assert not entries["tiny:q4_k_m"]["within_thresholds"]
    assert doc["verdict"]["summary"].startswith("tiny:q8_0 is the smallest within thresholds")


def test_human_report_names_the_verdict(workspace: Path, run_cli: Run) -> None:
    code, out, _ = run_cli(
        "compare", "tiny:f32", "tiny:q8_0", "-C", str(workspace), "--no-eval",
        "--text", str(workspace / "text.txt"), "--ctx", "64", "--threads", "1", "-q",
    )  # fmt: skip
    assert code == 0
    assert "mean KLD" in out and "same top" in out and "tiny:q8_0" in out
    assert out.strip().splitlines()[-1].startswith("verdict: ")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["compare", "tiny:q5_0"], "unknown model or variant 'tiny:q5_0'"),
        (["compare", "tiny:f32", "--text", "missing.txt"], "reference text not found"),
        (["compare", "tiny:f32", "--reference", "tiny:q8_0"], "reference 'tiny:q8_0' is not"),
        (["quantize", "tiny.gguf", "--to", "Q4_KM"], "unknown quant type 'Q4_KM'"),
        (["quantize", "nope.gguf", "--to", "Q8_0"], "neither a tag"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    workspace: Path, run_cli: Run, monkeypatch: pytest.MonkeyPatch, args: list[str], message: str
) -> None:
    monkeypatch.chdir(workspace / "modelfiles")
    code, out, err = (
        run_cli(*args, "-C", str(workspace)) if args[0] == "compare" else run_cli(*args)
    )
    assert code == 2 and out == ""
    assert message in err and len(err.strip().splitlines()) == 1


def test_quantize_stores_blobs_with_provenance(tiny_model: Path, run_cli: Run) -> None:
    code, out, err = run_cli("quantize", str(tiny_model), "--to", "q8_0,Q4_K_M", "--json")
    assert code == 0, err
    doc = json.loads(out)
    rows = {r["target"]: r for r in doc["quantized"]}
    assert set(rows) == {"Q8_0", "Q4_K_M"}
    assert rows["Q8_0"]["source_type"] == "F32" and not rows["Q8_0"]["requantized"]
    assert rows["Q8_0"]["bits_per_weight"] > rows["Q4_K_M"]["bits_per_weight"]
    assert all(Path(r["path"]).is_file() and not r["cached"] for r in rows.values())
    # The same request again is answered from the store.
    code, out, _ = run_cli("quantize", doc["source_digest"], "--to", "Q8_0", "--json")
    assert code == 0 and json.loads(out)["quantized"][0]["cached"]
    # A quantized source needs --allow-requantize, and the result says it was requantized.
    q8 = rows["Q8_0"]["path"]
    code, _, err = run_cli("quantize", q8, "--to", "Q4_0")
    assert code == 2 and "--allow-requantize" in err
    code, out, _ = run_cli("quantize", q8, "--to", "Q4_0", "--allow-requantize", "--json")
    assert code == 0 and json.loads(out)["quantized"][0]["requantized"]
