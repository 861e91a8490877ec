"""``lifecycle gate --base REF``: a change judged against the bar of its base branch.

Real git repositories (gitpython) around the tiny workspace, and real runs of the tiny model
where a run is judged: main holds the pins and baselines, a branch ``pr`` is the change.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import git
import pytest
from _promote import break_case, init_repo, make_record, pass_schema_cases, schema_only
from tinymodel import write_tiny_llama

from lifecycle.errors import ConfigError, UsageError
from lifecycle.gate import run_gate
from lifecycle.gitbase import (
    Acknowledgement,
    BaseReview,
    acknowledgements,
    judged_inputs,
    read_bar,
    read_bar_at,
    review_changes,
)

Run = Callable[..., tuple[int, str, str]]
TRAILER = "Lifecycle-Rebaseline"


@pytest.fixture
def pinned(tiny_workspace: Path, run_cli: Run) -> tuple[Path, git.Repo, str]:
    """The tiny workspace pinned on main, on a new branch ``pr``.

    Each case expects the model's schema-mode category; the ones whose confidence the grammar
    kept in range pass (the grammar does not enforce a number's bounds), the others fail.
    """
    ws = tiny_workspace
    schema_only(ws)
    pass_schema_cases(ws)
    repo = init_repo(ws)
    run = evaluate(run_cli, ws)
    assert run_cli("pin", "-C", str(ws), "--commit", "--run", run)[0] == 0
    assert repo.git.status("--porcelain") == ""
    repo.git.checkout("-b", "pr")
    assert passing(ws), "premise: the pinned model passes some case"
    return ws, repo, run


def evaluate(run_cli: Run, ws: Path) -> str:
    """Run the eval; its run id. (Named explicitly: two runs finishing within one second
    may leave ``latest.json`` on the older one.)"""
    code, out, err = run_cli("eval", "-C", str(ws), "-q", "--json")
    assert code == 0, err
    run_id: str = json.loads(out)["run_id"]
    return run_id


def passing(ws: Path) -> list[str]:
    """The ids of the cases the workspace's baseline of ``tiny`` has passing."""
    doc = json.loads((ws / "baselines" / "tiny.json").read_text(encoding="utf-8"))
    return [c["id"] for c in doc["variants"]["tiny"]["cases"] if c["passed"]]


def commit_all(repo: git.Repo, message: str) -> None:
    repo.git.add("--all")
    repo.git.commit("--allow-empty", "-m", message)


def gate(run_cli: Run, ws: Path, run: str, *args: str) -> tuple[int, dict[str, Any]]:
    code, out, err = run_cli("gate", "-C", str(ws), "--run", run, "--json", *args)
    assert out, err
    doc: dict[str, Any] = json.loads(out)
    return code, doc


def test_a_pr_that_rebaselines_its_broken_case_fails_until_a_commit_acknowledges_it(
    pinned: tuple[Path, git.Repo, str], run_cli: Run, tmp_path: Path
) -> None:
    ws, repo, run = pinned
    # A golden expectation the model no longer meets, on a case it passed.
    case = break_case(ws, int(passing(ws)[0].removeprefix("case-")))
    baseline = ws / "baselines" / "tiny.json"
    doc = json.loads(baseline.read_text(encoding="utf-8"))
    for entry in doc["variants"]["tiny"]["cases"]:
        if entry["id"] == case:
            entry["passed"] = False  # ... and the baseline edited to match
    baseline.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    commit_all(repo, "triage: expect another category")
    run = evaluate(run_cli, ws)

    # Gated on its own bar the change passes by construction: the hole.
    code, own = gate(run_cli, ws, run)
    assert code == 0 and own["passed"] is True and "base" not in own

    code, doc = gate(run_cli, ws, run, "--base", "main")
    assert code == 3 and doc["passed"] is False
    base = doc["base"]
    assert base["commit"] == repo.commit("main").hexsha and base["blocking"] is True
    assert base["rebaselined"] == [
        {"variant": "tiny", "suite": "triage", "mode": "schema", "case": case}
    ]
    [changed] = base["expectations"]
    assert (changed["suite"], changed["case"], changed["change"]) == (
        "triage",
        case,
        "expected changed",
    )
    assert changed["base"] != changed["now"]
    assert base["lowered"] == [] and base["acknowledgements"] == []
    assert [r["case"] for r in doc["regressions"]] == [case]  # the base's baseline passed it
    assert any(TRAILER in f for f in doc["failures"])
    code, text, _ = run_cli("gate", "-C", str(ws), "--run", run, "--base", "main")
    assert code == 3 and f"re-baselined pass → fail: tiny triage/schema {case}" in text

    reason = "the ticket asks for a quote: sales owns it now"
    repo.git.commit("--allow-empty", "-m", f"triage: re-baseline\n\n{TRAILER}: {reason}\n")
    markdown = tmp_path / "gate.md"
    code, doc = gate(run_cli, ws, run, "--base", "main", "--markdown", str(markdown))
    assert code == 0 and doc["passed"] is True and doc["regressions"] == []
    base = doc["base"]
    assert base["blocking"] is False and base["changes"] == 2
    assert base["acknowledgements"] == [{"commit": repo.head.commit.hexsha, "reason": reason}]
    md = markdown.read_text(encoding="utf-8")
    assert "### Bar of `main`" in md and reason in md and f"tiny triage/schema {case}" in md


def test_a_loosened_bound_alone_fails_the_gate_until_acknowledged(
    pinned: tuple[Path, git.Repo, str], run_cli: Run
) -> None:
    ws, repo, run = pinned
    config = ws / "lifecycle.toml"
    config.write_text(
        config.read_text(encoding="utf-8") + "\n[gate]\nmax_pass_rate_drop = 0.5\n", "utf-8"
    )
    commit_all(repo, "gate: tolerate rate drops")
    # The run pinned on main is judged again: nothing regressed, only the bar moved.
    code, doc = gate(run_cli, ws, run, "--base", "main")
    assert code == 3 and doc["regressions"] == []
    base = doc["base"]
    assert base["lowered"] == [
        {"where": "lifecycle.toml [gate]", "key": "max_pass_rate_drop", "base": 0.0, "now": 0.5}
    ]
    assert doc["settings"]["max_pass_rate_drop"] == 0.0  # the base's, until acknowledged
    repo.git.commit("--allow-empty", "-m", f"gate\n\n{TRAILER}: flaky tiny model")
    code, doc = gate(run_cli, ws, run, "--base", "main")
    assert code == 0 and doc["settings"]["max_pass_rate_drop"] == 0.5


def test_a_repinned_worse_model_regresses_against_the_base(
    pinned: tuple[Path, git.Repo, str], run_cli: Run
) -> None:
    ws, repo, run = pinned
    write_tiny_llama(ws / "modelfiles" / "tiny.gguf", seed=1)  # other weights, other answers
    # Re-pinned from scratch on the PR: its own baselines now record the worse model.
    repo.git.rm("--quiet", "models.lock", "baselines/tiny.json")
    commit_all(repo, "modelfile: new weights")
    run = evaluate(run_cli, ws)
    assert run_cli("pin", "-C", str(ws), "--commit", "--run", run)[0] == 0

    assert gate(run_cli, ws, run)[0] == 0  # its own bar
    code, doc = gate(run_cli, ws, run, "--base", "main")
    assert code == 3
    base = doc["base"]
    lost = sorted(r["case"] for r in base["rebaselined"])
    assert lost, "premise: the other weights lose some case the pinned ones passed"
    assert sorted(r["case"] for r in doc["regressions"]) == lost
    [verdict] = doc["variants"]
    assert verdict["pinned"] is True and verdict["status"] == "regressed"
    assert verdict["baseline_variant_id"] != verdict["variant_id"]  # the base's pin


def test_a_repin_with_the_same_answers_needs_no_trailer(
    pinned: tuple[Path, git.Repo, str], run_cli: Run
) -> None:
    ws, repo, run = pinned
    # The weekly job's case: the tag was re-published (new bytes), the answers are the same.
    write_tiny_llama(ws / "modelfiles" / "tiny.gguf", name="tiny-llama-v2")
    commit_all(repo, "modelfile: re-published weights")
    run = evaluate(run_cli, ws)
    assert run_cli("pin", "-C", str(ws), "--commit", "--run", run)[0] == 0
    assert repo.git.diff("--name-only", "main", "HEAD", "--", "models.lock")  # a real re-pin

    code, doc = gate(run_cli, ws, run, "--base", "main")
    assert code == 0 and doc["passed"] is True
    base = doc["base"]
    assert base["changes"] == 0 and base["blocking"] is False
    [verdict] = doc["variants"]
    assert verdict["has_baseline"] and verdict["baseline_variant_id"] != verdict["variant_id"]


def test_lowered_bounds_and_changed_expectations_are_listed(tmp_path: Path) -> None:
    # The workspace in a subdirectory of the repository: paths at the ref are found under it.
    ws = tmp_path / "repo" / "ws"
    _workspace_files(ws)
    repo = git.Repo.init(tmp_path / "repo", initial_branch="main")
    _identity(repo)
    commit_all(repo, "workspace")

    suite = ws / "evals" / "triage.toml"
    text = suite.read_text(encoding="utf-8")
    text = text.replace("threshold = { free = 0.5, schema = 0.75 }", "threshold = { free = 0.9 }")
    text = text.replace('modes = ["free", "schema"]', 'modes = ["free"]')
    text = text.replace(
        '[match.confidence]\nmatcher = "range"\nmin = 0.0\nmax = 1.0',
        '[match.confidence]\nmatcher = "ignore"',
    )
    suite.write_text(text, encoding="utf-8")
    config = ws / "lifecycle.toml"
    config.write_text(
        config.read_text(encoding="utf-8")
        .replace("max_pass_rate_drop = 0.0", "max_pass_rate_drop = 0.1")
        .replace("fail_on_regression = true", "fail_on_regression = false")
        .replace("max_coverage_drop = 0.05\n", "")
        .replace("max_tokens_per_s_drop = 0.3", "max_tokens_per_s_drop = 0.1")  # stricter
        .replace("max_foreign_cpu_share = 0.15", "max_foreign_cpu_share = 0.05"),
        encoding="utf-8",
    )
    golden = ws / "golden" / "triage.jsonl"
    cases = [json.loads(line) for line in golden.read_text(encoding="utf-8").splitlines()]
    cases[0]["expected"]["category"] = "sales"
    cases[1]["match"] = {"category": {"matcher": "one_of", "values": ["billing", "sales"]}}
    del cases[2]
    cases.append({**cases[-1], "id": "new"})  # an added case lowers nothing
    golden.write_text("".join(json.dumps(c) + "\n" for c in cases), encoding="utf-8")

    base, commit = read_bar_at(ws, "main")
    assert commit == repo.head.commit.hexsha
    head = read_bar(ws)
    assert base.suites["triage"].thresholds == {"free": 0.5, "schema": 0.75}
    rebaselined, lowered, expectations = review_changes(base, head)
    assert rebaselined == []
    assert {(b.where, b.key, b.base, b.now) for b in lowered} == {
        ("evals/triage.toml", "threshold.schema", 0.75, None),  # the mode is gone
        ("lifecycle.toml [gate]", "max_pass_rate_drop", 0.0, 0.1),
        ("lifecycle.toml [gate]", "fail_on_regression", True, False),
        ("lifecycle.toml [gate]", "max_coverage_drop", 0.05, None),
        ("lifecycle.toml [gate]", "max_foreign_cpu_share", 0.15, 0.05),
    }  # free 0.5 -> 0.9 and max_tokens_per_s_drop 0.3 -> 0.1 are stricter: not listed
    assert {(e.suite, e.case, e.change) for e in expectations} == {
        ("triage", "*", "match rules changed"),
        ("triage", "case-0", "expected changed"),
        ("triage", "case-1", "matchers changed"),
        ("triage", "case-2", "removed"),
    }


def test_the_base_threshold_and_switches_judge_unless_acknowledged(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    _workspace_files(ws)
    repo = git.Repo.init(ws, initial_branch="main")
    _identity(repo)
    commit_all(repo, "workspace")
    suite = ws / "evals" / "triage.toml"
    text = suite.read_text(encoding="utf-8").replace("schema = 0.75", "schema = 0.25")
    suite.write_text(text, encoding="utf-8")
    config = ws / "lifecycle.toml"
    text = config.read_text(encoding="utf-8").replace("= true", "= false")
    config.write_text(text, encoding="utf-8")

    base, commit = read_bar_at(ws, "main")
    head = read_bar(ws)
    rebaselined, lowered, expectations = review_changes(base, head)
    assert {b.key for b in lowered} == {"threshold.schema", "fail_on_regression"}
    # Two of four schema cases pass: over the PR's 25 %, under the base's 75 %.
    record = make_record({"a": True, "b": True, "c": False, "d": False}, threshold=0.25)
    review = BaseReview("main", commit, rebaselined, lowered, expectations)
    judged = judged_inputs(record, base, head, review)
    [summary] = judged.record.summaries
    assert (summary.threshold, summary.met_threshold) == (0.75, False)
    assert judged.settings.fail_on_regression is True
    assert not run_gate(judged.record, {}, judged.settings, pinned={"tiny"}).passed

    acked = BaseReview(
        "main", commit, rebaselined, lowered, expectations, [Acknowledgement("c0ffee", "why")]
    )
    judged = judged_inputs(record, base, head, acked)
    [summary] = judged.record.summaries
    assert (summary.threshold, summary.met_threshold) == (0.25, True)
    assert judged.settings.fail_on_regression is False
    assert run_gate(judged.record, {}, judged.settings, pinned={"tiny"}).passed


def test_trailers_are_read_from_the_commits_since_the_base_only(tmp_path: Path) -> None:
    repo = git.Repo.init(tmp_path, initial_branch="main")
    _identity(repo)
    repo.git.commit("--allow-empty", "-m", f"old\n\n{TRAILER}: before the base")
    base = repo.head.commit.hexsha
    repo.git.commit("--allow-empty", "-m", f"mentions {TRAILER}: in the subject only")
    repo.git.commit(
        "--allow-empty", "-m", f"body\n\n{TRAILER}: in the body\n\nthen more text, no trailers"
    )
    repo.git.commit("--allow-empty", "-m", "empty\n\nLifecycle-Rebaseline:\n")
    repo.git.commit(
        "--allow-empty",
        "-m",
        "re-pin\n\nSome words.\n\nlifecycle-rebaseline: two tickets\n"
        "Signed-off-by: Test <test@example.com>\n",
    )
    assert acknowledgements(tmp_path, base) == [
        Acknowledgement(repo.head.commit.hexsha, "two tickets")
    ]
    assert acknowledgements(tmp_path, repo.head.commit.hexsha) == []


def test_bad_refs_and_bad_files_at_the_ref_are_usage_errors(
    tiny_workspace: Path, run_cli: Run
) -> None:
    from lifecycle.runner import save_run

    ws = tiny_workspace
    save_run(make_record({"a": True}), ws / ".lifecycle" / "runs")
    code, _, err = run_cli("gate", "-C", str(ws), "--base", "main")
    assert code == 2 and "--base needs a git repository" in err

    repo = init_repo(ws)
    code, _, err = run_cli("gate", "-C", str(ws), "--base", "origin/nope")
    assert code == 2 and "'origin/nope' names no commit" in err and "fetch-depth: 0" in err

    config = ws / "lifecycle.toml"
    good = config.read_text(encoding="utf-8")
    config.write_text(good + "\n[gate]\nmax_pass_rate_drop = 2\n", encoding="utf-8")
    commit_all(repo, "a bad bound")
    config.write_text(good, encoding="utf-8")  # fixed in the working tree only
    with pytest.raises(ConfigError) as info:
        read_bar_at(ws, "HEAD")
    assert str(info.value).startswith("HEAD:lifecycle.toml → gate.max_pass_rate_drop:")
    code, _, err = run_cli("gate", "-C", str(ws), "--base", "HEAD")
    assert code == 2 and "HEAD:lifecycle.toml → gate.max_pass_rate_drop" in err
    assert issubclass(ConfigError, UsageError)


def test_the_refs_evals_dir_comes_from_its_lifecycle_toml_parsed_once(tmp_path: Path) -> None:
    # [workspace] evals_dir at the ref, read by the workspace's own parser (no second one):
    # the suites are found where the ref's lifecycle.toml says, whatever the working tree says.
    ws = tmp_path / "ws"
    _workspace_files(ws)
    (ws / "evals").rename(ws / "suites")
    config = ws / "lifecycle.toml"
    text = config.read_text(encoding="utf-8")
    config.write_text('[workspace]\nevals_dir = "suites"\n\n' + text, encoding="utf-8")
    repo = git.Repo.init(ws, initial_branch="main")
    _identity(repo)
    commit_all(repo, "workspace")
    config.write_text(text, encoding="utf-8")  # the working tree says evals/, which is gone
    base, _ = read_bar_at(ws, "main")
    assert base.suites["triage"].thresholds == {"free": 0.5, "schema": 0.75}
    assert base.settings.fail_on_regression is True

    config.write_text("[workspace\n", encoding="utf-8")
    commit_all(repo, "a config that does not parse")
    with pytest.raises(ConfigError) as info:
        read_bar_at(ws, "HEAD")
    assert str(info.value).startswith("HEAD:lifecycle.toml") and "invalid TOML" in str(info.value)


# --- helpers ----------------------------------------------------------------------------------


def _identity(repo: git.Repo) -> None:
    with repo.config_writer() as config:
        config.set_value("user", "name", "Test")
        config.set_value("user", "email", "test@example.com")
        config.set_value("commit", "gpgsign", "false")


def _workspace_files(ws: Path) -> None:
    """A workspace's bar without a model: config with [gate], one suite, its golden set."""
    (ws / "evals").mkdir(parents=True)
    (ws / "golden").mkdir()
    (ws / "golden" / "triage.schema.json").write_text(
        json.dumps({"type": "object", "properties": {"category": {"type": "string"}}}),
        encoding="utf-8",
    )
    cases = [
        {
            "id": f"case-{i}",
            "messages": [{"role": "user", "content": f"ticket {i}"}],
            "expected": {"category": "billing", "confidence": 0.5},
        }
        for i in range(4)
    ]
    (ws / "golden" / "triage.jsonl").write_text(
        "".join(json.dumps(c) + "\n" for c in cases), encoding="utf-8"
    )
    (ws / "evals" / "triage.toml").write_text(
        'golden = "../golden/triage.jsonl"\n'
        'schema = "../golden/triage.schema.json"\n'
        'modes = ["free", "schema"]\n'
        "threshold = { free = 0.5, schema = 0.75 }\n"
        '[match.category]\nmatcher = "exact"\n'
        '[match.confidence]\nmatcher = "range"\nmin = 0.0\nmax = 1.0\n',
        encoding="utf-8",
    )
    (ws / "lifecycle.toml").write_text(
        '[models.tiny]\nmodelfile = "modelfiles/tiny.Modelfile"\nsuites = ["triage"]\n\n'
        "[gate]\n"
        "fail_on_regression = true\n"
        "max_pass_rate_drop = 0.0\n"
        "max_coverage_drop = 0.05\n"
        "max_tokens_per_s_drop = 0.3\n"
        "max_foreign_cpu_share = 0.15\n",
        encoding="utf-8",
    )
