"""Verdicts a team can act on: pinned vs candidate, same-machine baselines, partial runs,
pruning. Real engine on the tiny model and real git repositories, except where a machine
change is needed: there the baseline's recorded environment is what differs."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from _promote import init_repo, make_record, pass_schema_cases, schema_only, write_cases
from tinymodel import write_tiny_llama

from lifecycle.baselines import baseline_entry
from lifecycle.gate import GateSettings, run_gate

Run = Callable[..., tuple[int, str, str]]


def two_variants(root: Path) -> None:
    """Variants tiny:num_predict48 and tiny:num_predict6, schema mode, a 25 % bar.

    The golden set expects the model's own schema-mode categories; with 48 tokens a quarter
    of the tiny model's answers also keep the confidence in range and pass, while 6 tokens
    cut every JSON object short: the first variant meets the bar, the second misses it.
    """
    schema_only(root)
    pass_schema_cases(root)
    config = root / "lifecycle.toml"
    config.write_text(
        config.read_text(encoding="utf-8") + "\n[models.tiny.variants]\nnum_predict = [48, 6]\n",
        encoding="utf-8",
    )
    suite = root / "evals" / "triage.toml"
    text = suite.read_text(encoding="utf-8").replace("threshold = 0.0", "threshold = 0.25")
    suite.write_text(text, encoding="utf-8")


GOOD, SHORT = "tiny:num_predict48", "tiny:num_predict6"


def break_every_case(root: Path) -> None:
    cases = [json.loads(line) for line in (root / "golden" / "triage.jsonl").open()]
    for case in cases:
        case["expected"]["category"] = next(
            c for c in ("billing", "technical", "sales") if c != case["expected"]["category"]
        )
    write_cases(root, cases)


def test_a_candidate_under_its_threshold_is_refused_not_a_failure(
    tiny_workspace: Path, run_cli: Run
) -> None:
    two_variants(tiny_workspace)
    repo = init_repo(tiny_workspace)
    ws = str(tiny_workspace)
    code, out, err = run_cli("smoke", "-C", ws, "--offline", "--no-bench", "--commit", "--json")
    assert code == 0, err
    doc = json.loads(out)
    statuses = {v["variant"]: v["status"] for v in doc["gate"]["variants"]}
    assert statuses == {GOOD: "accepted", SHORT: "refused"}, doc["gate"]["checks"]
    assert doc["pins"]["pinned"] == [GOOD] and doc["pins"]["refused"] == [SHORT]
    assert doc["headline"] == "1 candidate accepted; 1 candidate refused"

    code, out, err = run_cli("smoke", "-C", ws, "--offline", "--no-bench", "--commit", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["headline"] == "1 pinned variant holds; 1 candidate refused"
    assert doc["pins"]["commit"] is None and not repo.is_dirty()

    code, out, _ = run_cli("eval", "-C", ws)
    assert code == 0 and "refused" in out and "1 candidate(s) refused" in out

    # The same refusal fails the gate when the workspace asks for it.
    config = tiny_workspace / "lifecycle.toml"
    config.write_text(config.read_text() + "\n[gate]\nfail_on_candidates = true\n")
    code, out, _ = run_cli("gate", "-C", ws, "--json")
    assert code == 3 and not json.loads(out)["passed"]


def test_a_pinned_variant_that_regresses_fails_with_exit_3(
    tiny_workspace: Path, run_cli: Run
) -> None:
    two_variants(tiny_workspace)
    repo = init_repo(tiny_workspace)
    ws = str(tiny_workspace)
    assert run_cli("smoke", "-C", ws, "--offline", "--no-bench", "--commit")[0] == 0
    passed = {
        c["id"]
        for c in json.loads(run_cli("eval", "-C", ws, "--json")[1])["cases"]
        if c["passed"] and c["variant"] == GOOD
    }
    break_every_case(tiny_workspace)
    repo.git.commit("-am", "golden: change every expectation")
    code, out, _ = run_cli("smoke", "-C", ws, "--offline", "--no-bench", "--json")
    doc = json.loads(out)
    assert code == 3
    assert {v["variant"]: v["status"] for v in doc["gate"]["variants"]}[GOOD] == "regressed"
    assert {r["case"] for r in doc["gate"]["regressions"] if r["variant"] == GOOD} == passed
    code, out, _ = run_cli("eval", "-C", ws, "--exit-zero")
    assert code == 0  # the PR gate's eval step leaves the verdict to `gate`
    code, _, _ = run_cli("eval", "-C", ws)
    assert code == 3  # a pinned variant under its threshold


def test_the_same_weights_on_another_machine_flip_without_regressing() -> None:
    """A CPU change flips one greedy answer of the pinned, unchanged variant: reported as the
    environment's, never a regression (the failure seen on an Intel AVX512 runner)."""
    verdicts = {f"c{i}": True for i in range(4)}
    amd = make_record(verdicts, cpu="AMD EPYC", threshold=0.5)
    intel = make_record({**verdicts, "c2": False}, cpu="Intel Xeon", threshold=0.5)
    baselines = {"tiny": baseline_entry(amd, "tiny", None)}
    gate = run_gate(intel, baselines, GateSettings())
    assert gate.passed and gate.exit_code == 0 and not gate.regressions
    assert [(f.case, f.baseline_passed, f.passed) for f in gate.environment_flips] == [
        ("c2", True, False)
    ]
    assert gate.headline() == "1 pinned variant holds; 1 case(s) flipped by the environment"
    rates = next(c for c in gate.checks if c.name == "rates")
    assert rates.status == "skip" and "cpu" in rates.message
    # On the same machine the same flip is a regression.
    same = make_record({**verdicts, "c2": False}, cpu="AMD EPYC", threshold=0.5)
    gate = run_gate(same, baselines, GateSettings())
    assert not gate.passed and gate.exit_code == 3 and [r.case for r in gate.regressions] == ["c2"]


def test_new_weights_on_another_machine_are_judged_against_the_pinned_model_here(
    tiny_workspace: Path, run_cli: Run
) -> None:
    schema_only(tiny_workspace)
    pass_schema_cases(tiny_workspace)
    init_repo(tiny_workspace)
    ws = str(tiny_workspace)
    assert run_cli("smoke", "-C", ws, "--offline", "--no-bench")[0] == 0
    # The baseline was recorded on "another machine", where one case the pinned model
    # passes here happened to fail.
    path = tiny_workspace / "baselines" / "tiny.json"
    baseline = json.loads(path.read_text())
    entry = baseline["variants"]["tiny"]
    entry["environment"]["cpu"] = "Some Other CPU"
    here = {c["id"]: c["passed"] for c in entry["cases"]}
    flipped = next(c for c in entry["cases"] if c["passed"])
    flipped["passed"] = False
    path.write_text(json.dumps(baseline))
    # New weights under the same tag: most answers change.
    write_tiny_llama(tiny_workspace / "modelfiles" / "tiny.gguf", seed=3)

    code, out, err = run_cli("eval", "-C", ws, "--json")
    current = {c["id"]: c["passed"] for c in json.loads(out)["cases"]}
    code, out, err = run_cli("gate", "-C", ws, "--json")
    doc = json.loads(out)
    assert "evaluating the pinned variant here" in err
    # Regressions: what the pinned model passes here and the new weights fail; the doctored
    # baseline failure was the other machine's, reported as an environment flip.
    assert sorted(r["case"] for r in doc["regressions"]) == sorted(
        k for k, ok in current.items() if here[k] and not ok
    )
    assert [(f["case"], f["baseline_passed"], f["passed"]) for f in doc["environment_flips"]] == [
        (flipped["id"], False, True)
    ]
    assert code == (3 if doc["regressions"] else 0)
    # Measured once per environment: the second gate reuses the reference run.
    code2, _, err2 = run_cli("gate", "-C", ws, "--json")
    assert code2 == code and "evaluating the pinned variant here" not in err2


def test_a_partial_run_is_gated_on_the_cases_it_ran(tiny_workspace: Path, run_cli: Run) -> None:
    schema_only(tiny_workspace)
    pass_schema_cases(tiny_workspace)
    init_repo(tiny_workspace)
    ws = str(tiny_workspace)
    assert run_cli("smoke", "-C", ws, "--offline", "--no-bench")[0] == 0
    assert run_cli("eval", "-C", ws, "--limit", "2")[0] == 0
    code, out, _ = run_cli("gate", "-C", ws, "--json")
    doc = json.loads(out)
    assert code == 0 and doc["partial"] == ["tiny triage/schema: 2 of 4 cases"]
    threshold = next(c for c in doc["checks"] if c["name"] == "threshold")
    assert threshold["status"] == "skip" and "partial run" in threshold["message"]
    code, out, _ = run_cli("gate", "-C", ws, "--markdown", str(tiny_workspace / "g.md"))
    assert "Partial run" in (tiny_workspace / "g.md").read_text()
    # On a terminal: a table, not Markdown.
    assert out.startswith("gate: PASS — 1 pinned variant holds (run ")
    assert "partial run, gated on the cases it ran:" in out
    assert "<details>" not in out and "|" not in out


def test_added_golden_cases_are_judged_by_threshold_not_as_a_rate_drop(
    tiny_workspace: Path, run_cli: Run
) -> None:
    schema_only(tiny_workspace)
    cases = pass_schema_cases(tiny_workspace)
    repo = init_repo(tiny_workspace)
    ws = str(tiny_workspace)
    assert run_cli("smoke", "-C", ws, "--offline", "--no-bench", "--commit")[0] == 0
    wrong = dict(cases[0], id="new-case")
    wrong["expected"] = dict(wrong["expected"])
    wrong["expected"]["category"] = next(  # type: ignore[index]
        c
        for c in ("billing", "technical", "sales")
        if c != cases[0]["expected"]["category"]  # type: ignore[index]
    )
    write_cases(tiny_workspace, [*cases, wrong])
    repo.git.commit("-am", "golden: one more case")
    code, out, _ = run_cli("smoke", "-C", ws, "--offline", "--no-bench", "--json")
    doc = json.loads(out)
    assert code == 0, doc["gate"]["checks"]
    rate = next(c for c in doc["gate"]["checks"] if c["name"] == "pass_rate")
    assert rate["status"] == "pass" and "over the 4 cases both ran" in rate["message"]


def test_pins_of_variants_that_left_the_matrix_are_pruned(
    tiny_workspace: Path, run_cli: Run
) -> None:
    schema_only(tiny_workspace)
    pass_schema_cases(tiny_workspace)
    repo = init_repo(tiny_workspace)
    ws = str(tiny_workspace)
    assert run_cli("smoke", "-C", ws, "--offline", "--no-bench", "--commit")[0] == 0
    lock_path = tiny_workspace / "models.lock"
    lock = json.loads(lock_path.read_text())
    lock["variants"]["tiny:gone"] = dict(lock["variants"]["tiny"], variant_id="old")
    lock_path.write_text(json.dumps(lock, indent=2, sort_keys=True) + "\n")
    baseline_file = tiny_workspace / "baselines" / "tiny.json"
    baseline = json.loads(baseline_file.read_text())
    baseline["variants"]["tiny:gone"] = baseline["variants"]["tiny"]
    baseline_file.write_text(json.dumps(baseline, indent=2, sort_keys=True) + "\n")
    repo.git.commit("-am", "a variant that is no longer in the matrix")

    code, out, err = run_cli("smoke", "-C", ws, "--offline", "--no-bench", "--commit", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["pins"]["pruned"] == ["tiny:gone"]
    assert "tiny:gone" not in json.loads(lock_path.read_text())["variants"]
    assert "tiny:gone" not in json.loads(baseline_file.read_text())["variants"]
    assert "pin removed, no longer in the variant matrix" in repo.head.commit.message


def test_a_changed_expectation_is_a_regression_even_across_an_environment_change() -> None:
    """The PR gate judges a batched eval (parallel 4) against sequential baselines: an
    environment change. A golden-set edit that fails the very same output is still the
    golden set's doing, so it must not hide as an environment flip."""
    verdicts = {f"c{i}": True for i in range(4)}
    sequential = make_record(verdicts, cpu="AMD EPYC", threshold=0.5)
    baselines = {"tiny": baseline_entry(sequential, "tiny", None)}
    edited = make_record(
        {**verdicts, "c2": False},
        cpu="Intel Xeon",
        threshold=0.5,
        golden_digest="sha256:" + "2" * 64,
    )
    gate = run_gate(edited, baselines, GateSettings())
    assert not gate.passed and gate.exit_code == 3
    assert [r.case for r in gate.regressions] == ["c2"] and not gate.environment_flips


def test_a_variant_gone_from_the_matrix_keeps_its_stored_baseline_and_nothing_else_is_skipped(
    tiny_workspace: Path, run_cli: Run
) -> None:
    """The gate's same-machine reference skips exactly one case: the judged run names a
    variant the workspace's matrix no longer has. Any other failure to rebuild it is an error
    the user sees (it once hid behind ``except ValueError: continue``)."""
    schema_only(tiny_workspace)
    pass_schema_cases(tiny_workspace)
    init_repo(tiny_workspace)
    ws = str(tiny_workspace)
    assert run_cli("smoke", "-C", ws, "--offline", "--no-bench")[0] == 0
    # A baseline from another machine and new weights: the gate wants a reference run here.
    path = tiny_workspace / "baselines" / "tiny.json"
    baseline = json.loads(path.read_text())
    baseline["variants"]["tiny"]["environment"]["cpu"] = "Some Other CPU"
    path.write_text(json.dumps(baseline))
    write_tiny_llama(tiny_workspace / "modelfiles" / "tiny.gguf", seed=3)
    assert run_cli("eval", "-C", ws)[0] in (0, 3)
    # The matrix changes after the run: "tiny" is now "tiny:num_predict48".
    config = tiny_workspace / "lifecycle.toml"
    original = config.read_text(encoding="utf-8")
    config.write_text(original + "\n[models.tiny.variants]\nnum_predict = [48]\n")
    code, out, err = run_cli("gate", "-C", ws, "--json")
    assert code in (0, 3), err
    assert "gate tiny: no longer in this workspace's matrix; stored baseline used" in err
    assert "evaluating the pinned variant here" not in err
    assert [v["variant"] for v in json.loads(out)["variants"]] == ["tiny"]
    # Back in the matrix but its Modelfile now broken: an error naming the file, no fallback.
    config.write_text(original)
    modelfile = tiny_workspace / "modelfiles" / "tiny.Modelfile"
    modelfile.write_text(modelfile.read_text().replace("FROM ./tiny.gguf", "FROM ./gone.gguf"))
    code, _, err = run_cli("gate", "-C", ws)
    assert code == 2 and "tiny.Modelfile" in err and "file not found" in err, err
