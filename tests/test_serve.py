"""[serve], lifecycle plan (the planner against llama.cpp's allocations on a tiny model) and
lifecycle loadtest through the real batched decoder."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from lifecycle.config import load_workspace
from lifecycle.estimate import estimate_file
from lifecycle.latency import poisson_arrivals
from lifecycle.serve import parse_size

CliResult = tuple[int, str, str]

SERVE = """
[serve]
memory = "{memory}"

[serve.models.tiny]
parallel = 2
concurrency = 2
sla_p95_ms = 60000
"""


def _with_serve(root: Path, text: str) -> Path:
    config = root / "lifecycle.toml"
    config.write_text(config.read_text(encoding="utf-8") + text, encoding="utf-8")
    return root


def test_parse_size() -> None:
    assert parse_size("24GiB") == 24 * 2**30
    assert parse_size("512 MiB") == 512 * 2**20
    assert parse_size("1.5GB") == 1_500_000_000
    assert parse_size("1000") == 1000
    for bad in ("lots", "12 parsecs", "0MiB"):
        with pytest.raises(ValueError):
            parse_size(bad)


@pytest.mark.parametrize(
    ("text", "field", "message"),
    [
        ('[serve]\nmemory = "24 gigs"\n[serve.models.tiny]\n', "serve.memory", "cannot read"),
        ("[serve]\n[serve.models.nope]\n", "serve.models.nope", "not a variant of the matrix"),
        (
            "[serve]\n[serve.models.tiny]\nconcurrency = 0\n",
            "serve.models.tiny.concurrency",
            ">= 1",
        ),
        ("[serve]\n[serve.models.tiny]\nparalel = 2\n", "serve.models.tiny.paralel", "unknown key"),
    ],
)
def test_serve_config_errors_name_the_key(
    tiny_workspace: Path, run_cli: Callable[..., CliResult], text: str, field: str, message: str
) -> None:
    _with_serve(tiny_workspace, "\n" + text)
    code, _out, err = run_cli("plan", "--workspace", str(tiny_workspace))
    assert code == 2
    assert field in err and message in err
    assert len(err.strip().splitlines()) == 1


def test_plan_fits_and_matches_llama_cpp_allocations(
    tiny_workspace: Path, run_cli: Callable[..., CliResult]
) -> None:
    _with_serve(tiny_workspace, SERVE.format(memory="1GiB"))
    code, out, _err = run_cli("plan", "--workspace", str(tiny_workspace), "--measure", "--json")
    assert code == 0, _err
    plan = json.loads(out)
    (model,) = plan["models"]
    assert plan["fits"] and plan["headroom_bytes"] == plan["budget_bytes"] - plan["total_bytes"]
    assert (model["num_ctx"], model["parallel"]) == (1024, 2)
    estimate = estimate_file(tiny_workspace / "modelfiles" / "tiny.gguf", 1024, n_seq=2)
    assert model["total_bytes"] == estimate.total_bytes
    assert (
        model["kv_cache_bytes"]
        == 2 * estimate_file(tiny_workspace / "modelfiles" / "tiny.gguf", 1024).kv_cache_bytes
    )
    assert plan["ollama"]["OLLAMA_NUM_PARALLEL"] == "2"
    assert plan["ollama"]["OLLAMA_MAX_LOADED_MODELS"] == "1"
    assert plan["modelfile_parameters"]["tiny"] == "PARAMETER num_ctx 1024"
    measured = plan["measured"]
    (loaded,) = measured["models"]
    # The planner against what llama.cpp allocated with the model loaded as served.
    assert loaded["allocated_bytes"] > 0
    assert abs(loaded["error_pct"]) <= 10.0
    assert measured["within_tolerance"]


def test_plan_largest_settings_fit_and_one_more_does_not(
    tiny_workspace: Path, run_cli: Callable[..., CliResult]
) -> None:
    _with_serve(tiny_workspace, SERVE.format(memory="40MiB"))
    code, out, _err = run_cli("plan", "--workspace", str(tiny_workspace), "--json")
    assert code == 0, _err
    (model,) = json.loads(out)["models"]
    budget = 40 * 2**20
    gguf = tiny_workspace / "modelfiles" / "tiny.gguf"
    top = model["max_num_ctx"]
    assert estimate_file(gguf, top, n_seq=2).total_bytes <= budget
    assert estimate_file(gguf, top + 1, n_seq=2).total_bytes > budget
    par = model["max_parallel"]
    assert estimate_file(gguf, 1024, n_seq=par).total_bytes <= budget
    assert estimate_file(gguf, 1024, n_seq=par + 1).total_bytes > budget


def test_plan_that_does_not_fit_exits_3_naming_the_overflow_and_loads_nothing(
    tiny_workspace: Path, run_cli: Callable[..., CliResult]
) -> None:
    _with_serve(tiny_workspace, SERVE.format(memory="2MiB"))
    code, out, err = run_cli("plan", "--workspace", str(tiny_workspace), "--measure", "--json")
    assert code == 3
    plan = json.loads(out)
    assert not plan["fits"] and plan["measured"] is None
    assert plan["overflow"].startswith("tiny does not fit") and "over by" in plan["overflow"]
    assert "nothing is loaded" in err


def test_loadtest_closed_and_open_loop_through_the_batched_decoder(
    tiny_workspace: Path, run_cli: Callable[..., CliResult]
) -> None:
    _with_serve(tiny_workspace, SERVE.format(memory="1GiB"))
    code, out, err = run_cli(
        "loadtest", "tiny", "--workspace", str(tiny_workspace), "-c", "1,3", "--rates", "50",
        "-n", "5", "--warmup", "1", "--json",
    )  # fmt: skip
    assert code == 0, err
    doc = json.loads(out)
    assert not doc["partial"] and doc["serve"]["parallel"] == 2
    loops = [(p["loop"], p["concurrency"], p["rate"]) for p in doc["points"]]
    # the [serve] concurrency (2) is always measured: the gate judges that point
    assert loops == [("closed", 1, None), ("closed", 2, None), ("closed", 3, None),
                     ("open", None, 50.0)]  # fmt: skip
    for point in doc["points"]:
        assert point["requests"] == 5  # the warm-up request is excluded
        assert len(point["samples"]) == 6
        assert point["completed"] + point["errors"] == 5
        assert set(point["latency_ms"]) == {"p50", "p90", "p95", "p99"}
        assert point["ttft_source"] == "engine"
        for s in point["samples"]:
            if s["error"] is None:
                assert 0 < s["ttft_ms"] <= s["latency_ms"]
        assert point["goodput"] is not None
    closed_one = doc["points"][0]["samples"]
    assert all(s["arrival_s"] >= 0 for s in closed_one)
    # open loop: the requests arrived on the seeded Poisson schedule (point index 3)
    open_samples = doc["points"][3]["samples"]
    schedule = poisson_arrivals(50.0, 6, seed=42 + 3)
    got = sorted(s["arrival_s"] for s in open_samples)
    assert got == pytest.approx(schedule, abs=1e-6)
    summary = doc["summary"]
    assert summary["concurrency"] == 2 and summary["sla_p95_ms"] == 60000
    assert summary["latency_p95_ms"] == doc["points"][1]["latency_ms"]["p95"]
    assert Path(doc["chart"]).is_file()
    saved = json.loads(
        (tiny_workspace / ".lifecycle" / "loadtest" / "tiny.json").read_text(encoding="utf-8")
    )
    assert saved["summary"] == summary


def test_loadtest_sequential_slot(tiny_workspace: Path, run_cli: Callable[..., CliResult]) -> None:
    code, out, err = run_cli(
        "loadtest", "tiny", "--workspace", str(tiny_workspace), "--parallel", "1", "-c", "2",
        "-n", "3", "--warmup", "0", "--json",
    )  # fmt: skip
    assert code == 0, err
    doc = json.loads(out)
    (point,) = doc["points"]
    assert point["requests"] == 3 and point["ttft_source"] == "engine"
    # two clients, one slot: both send at once (the second queues, its latency counts from
    # then); the third is sent when the first answer comes back
    arrivals = sorted(s["arrival_s"] for s in point["samples"])
    assert arrivals[0] == arrivals[1] == 0.0 < arrivals[2]


def test_unknown_variant_is_a_usage_error(
    tiny_workspace: Path, run_cli: Callable[..., CliResult]
) -> None:
    code, _out, err = run_cli("loadtest", "nope", "--workspace", str(tiny_workspace))
    assert code == 2 and "unknown model or variant" in err
    assert load_workspace(tiny_workspace).models  # the workspace itself is fine


def test_smoke_load_tests_the_residents_and_the_gate_judges_the_sla(
    tiny_workspace: Path, run_cli: Callable[..., CliResult]
) -> None:
    # Judged whatever else runs on the machine: this test is about the verdict's plumbing.
    config = tiny_workspace / "lifecycle.toml"
    config.write_text(
        config.read_text(encoding="utf-8") + "[gate]\nmax_foreign_cpu_share = 1.0\n",
        encoding="utf-8",
    )
    _with_serve(tiny_workspace, SERVE.format(memory="1GiB"))
    smoke = ("smoke", "-C", str(tiny_workspace), "--offline", "--no-bench", "--load", "--json")
    code, out, err = run_cli(*smoke)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["load_skipped"] is None
    (load,) = doc["load"]
    assert load["concurrency"] == 2 and load["latency_p95_ms"] > 0 and not load["partial"]
    lock = json.loads((tiny_workspace / "models.lock").read_text(encoding="utf-8"))
    pinned = lock["variants"]["tiny"]["bench"]["loadtest"]
    assert pinned["latency_p95_ms"] == load["latency_p95_ms"]
    report = Path(doc["report"]["markdown"]).read_text(encoding="utf-8")
    assert "served p95 ms (SLA)" in report and "@2 (≤ 60000)" in report

    # An SLA no request can meet: the next smoke's load test fails the gate, named as such.
    config.write_text(
        config.read_text(encoding="utf-8").replace("sla_p95_ms = 60000", "sla_p95_ms = 0.001"),
        encoding="utf-8",
    )
    code, out, err = run_cli(*smoke)
    assert code == 3, err
    doc = json.loads(out)
    (check,) = [c for c in doc["gate"]["checks"] if c["name"] == "latency_p95_ms"]
    assert check["status"] == "fail"
    assert "at concurrency 2 over the SLA" in check["message"]
    assert "on the same machine" in check["message"]


def test_smoke_load_without_a_serve_table_says_so(
    tiny_workspace: Path, run_cli: Callable[..., CliResult]
) -> None:
    code, out, err = run_cli(
        "smoke", "-C", str(tiny_workspace), "--offline", "--no-bench", "--load", "--json"
    )
    assert code == 0, err
    doc = json.loads(out)
    assert doc["load"] == [] and "no [serve] table" in doc["load_skipped"]
