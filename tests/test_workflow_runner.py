"""The workflow executor of test_workflows.py, on toy workflows (no model, no engine).

If the executor ran steps more leniently than GitHub does (a failing pipe, a skipped
``if: always()``, an expression it silently left empty), the end-to-end tests would prove
less than they claim; these pin its semantics down. The last test checks that every
expression in this repository's real workflows is one the executor knows.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from workflow_runner import EXPRESSION, Runner, Workflow, WorkflowError

WORKFLOWS = Path(__file__).resolve().parent.parent / ".github" / "workflows"


def _origin(tmp_path: Path) -> Path:
    """A bare origin whose main holds one file."""
    env = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1"}
    src = tmp_path / "src"
    src.mkdir()
    (src / "hello.txt").write_text("hello\n")
    for args in (
        ["init", "--quiet", "--initial-branch=main"],
        ["add", "hello.txt"],
        ["-c", "user.name=T", "-c", "user.email=t@e", "commit", "--quiet", "-m", "one"],
    ):
        subprocess.run(["git", *args], cwd=src, env=env, check=True)
    origin = tmp_path / "origin.git"
    subprocess.run(["git", "clone", "--quiet", "--bare", str(src), str(origin)], check=True)
    return origin


def _workflow(tmp_path: Path, text: str) -> Workflow:
    path = tmp_path / "wf.yml"
    path.write_text(text)
    return Workflow.load(path)


def _runner(tmp_path: Path) -> Runner:
    return Runner(root=tmp_path / "ci", origin=_origin(tmp_path), base_env=dict(os.environ))


TOY = """
name: toy
on: workflow_dispatch
env:
  WHERE: ${{ github.workspace }}/x
jobs:
  one:
    runs-on: ubuntu-latest
    env:
      JOB: job-level
    steps:
      - uses: actions/checkout@v4
      - uses: actions/setup-python@v5
        with: {python-version: "3.11"}
      - name: Install
        run: .ci/install-engine python
      - name: Outputs
        id: out
        env:
          STEP: step-level
        run: |
          echo "value=$JOB/$STEP/$WHERE" >> "$GITHUB_OUTPUT"
          { echo "multi<<EOF"; echo "a"; echo "b"; echo "EOF"; } >> "$GITHUB_OUTPUT"
          echo "# summary" >> "$GITHUB_STEP_SUMMARY"
          echo "LATER=from-env-file" >> "$GITHUB_ENV"
          cat hello.txt
      - name: Uses the outputs
        env:
          GOT: ${{ steps.out.outputs.value }}
        run: |
          test "$GOT" = "job-level/step-level/$GITHUB_WORKSPACE/x"
          test "$LATER" = from-env-file
          test "${{ steps.out.outputs.multi }}" = "$(printf 'a\\nb')"
          test "$GITHUB_REF_NAME" = main
      - name: Pipe fails
        run: false | cat
      - name: Skipped after a failure
        run: echo should not run
      - name: Always
        if: always()
        run: echo always ran
      - name: On failure
        if: ${{ failure() }}
        run: exit 7
"""


def test_steps_env_outputs_and_status_functions(tmp_path: Path) -> None:
    job = _runner(tmp_path).run_job(_workflow(tmp_path, TOY), "one")
    outcomes = {s.name: (s.outcome, s.exit_code) for s in job.steps}
    assert outcomes["actions/checkout@v4"] == ("success", 0)
    assert outcomes["actions/setup-python@v5"][0] == "skipped"
    assert outcomes["Install"][0] == "skipped"
    assert outcomes["Outputs"] == ("success", 0), job.describe()
    assert job.step("out").summary == "# summary\n"
    assert "hello" in job.step("out").log
    assert outcomes["Uses the outputs"] == ("success", 0), job.describe()
    assert outcomes["Pipe fails"] == ("failure", 1)  # -o pipefail
    assert outcomes["Skipped after a failure"] == ("skipped", None)
    assert outcomes["Always"] == ("success", 0)
    assert outcomes["On failure"] == ("failure", 7)
    assert job.conclusion == "failure"


@pytest.mark.parametrize(
    ("snippet", "message"),
    [
        ("run: echo ${{ github.event.pull_request.title }}", "unknown expression"),
        ("run: echo ${{ secrets.TOKEN }}", "unknown expression"),
        ("run: echo ${{ matrix.nope }}", "not in the matrix"),
        ("if: github.event_name == 'push'\n        run: true", "status function"),
        ("uses: some/action@v1", "neither emulated"),
        ("run: true\n        continue-on-error: true", "unsupported keys"),
        # The engine is built only through .ci/install-engine (the project's build flags).
        ("run: python -m pip install -e .", "runs pip install itself"),
        ("run: pip3 install llama-cpp-python", "runs pip install itself"),
    ],
)
def test_what_the_executor_does_not_know_fails_loudly(
    tmp_path: Path, snippet: str, message: str
) -> None:
    text = f"on: push\njobs:\n  j:\n    steps:\n      - {snippet}\n"
    with pytest.raises(WorkflowError, match=message):
        _runner(tmp_path).run_job(_workflow(tmp_path, text), "j")


def test_matrix_needs_and_artifacts(tmp_path: Path) -> None:
    text = """
on: push
jobs:
  build:
    strategy:
      matrix:
        n: [1, 2]
    steps:
      - env:
          OUT: part-${{ matrix.n }}-of-${{ strategy.job-total }}.txt
        run: mkdir -p parts && echo "${{ matrix.n }}" > "parts/$OUT"
      - uses: actions/upload-artifact@v4
        with:
          name: part-${{ matrix.n }}
          path: parts/part-${{ matrix.n }}-of-2.txt
          if-no-files-found: error
  join:
    needs: build
    steps:
      - uses: actions/download-artifact@v4
        with:
          pattern: part-*
          path: all
          merge-multiple: true
      - run: test "$(cat all/*.txt | tr -d '\\n')" = 12
"""
    jobs = _runner(tmp_path).run_workflow(_workflow(tmp_path, text))
    assert [(j.job, j.matrix, j.conclusion) for j in jobs] == [
        ("build", {"n": 1}, "success"),
        ("build", {"n": 2}, "success"),
        ("join", {}, "success"),
    ], "\n".join(j.describe() for j in jobs)


@pytest.mark.parametrize("path", sorted(WORKFLOWS.glob("*.yml")), ids=lambda p: p.name)
def test_every_expression_in_the_workflows_is_known(path: Path, tmp_path: Path) -> None:
    """Each ${{ }} the executor would evaluate (env, run, if, with of emulated actions)."""
    from workflow_runner import SKIPPED_ACTIONS, _Context

    workflow = Workflow.load(path)
    assert workflow.triggers
    for job_id, job in workflow.doc["jobs"].items():
        matrix = workflow.matrix(job_id)[0]
        context = _Context(tmp_path, "1", "t", "main", tmp_path, matrix, 0, 1)
        for scope in (workflow.doc.get("env") or {}, job.get("env") or {}):
            for value in scope.values():
                context.substitute(str(value))
        for step in job["steps"]:
            if str(step.get("uses", "")).startswith(SKIPPED_ACTIONS):
                continue
            if step.get("id"):
                context.outputs[step["id"]] = {}
            context.should_run(step.get("if"))
            texts = [str(step.get("run", "")), *map(str, (step.get("env") or {}).values())]
            texts += [str(v) for v in (step.get("with") or {}).values()]
            for text in texts:
                for match in EXPRESSION.finditer(text):
                    context.evaluate(match.group(1))
