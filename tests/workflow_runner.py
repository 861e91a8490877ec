"""A small local executor for this repository's GitHub Actions workflows.

It reads a workflow file with PyYAML and runs its jobs' ``run:`` steps in order, the way a
GitHub-hosted runner would, so a test can prove what the workflows do without retyping their
commands:

- each step runs as ``bash --noprofile --norc -eo pipefail <script>`` (GitHub's default shell
  for ``run:`` on Linux) in the job's workspace, with the workflow's, the job's and the step's
  ``env:`` over a base environment, and ``GITHUB_OUTPUT``, ``GITHUB_ENV``,
  ``GITHUB_STEP_SUMMARY``, ``GITHUB_REF_NAME``, ``GITHUB_WORKSPACE`` (and friends) provided;
- ``if:`` is honoured for ``success()``, ``failure()``, ``always()``, ``cancelled()`` and
  ``!cancelled()``; no ``if:`` means ``success()``;
- the ``${{ ... }}`` expressions the workflows use are substituted (``github.run_id``,
  ``github.workspace``, ``github.token``, ``github.ref_name``, ``github.base_ref`` (from
  ``GITHUB_BASE_REF`` in the runner's extra environment; empty otherwise), ``runner.temp``,
  ``steps.<id>.outputs.<name>``, ``matrix.<key>``, ``strategy.job-total``,
  ``strategy.job-index``); any other expression fails loudly with :class:`WorkflowError`, so a
  workflow edit that this executor does not understand breaks the test instead of being
  silently mis-run;
- ``uses:`` steps are not run, except three whose effect the later steps depend on and which
  are emulated on disk: ``actions/checkout`` (a clone of the ``origin`` repository at the
  job's ref: its last commit only, unless ``fetch-depth: 0``), ``actions/upload-artifact``
  and ``actions/download-artifact`` (a folder per
  artifact). ``actions/setup-python`` and ``actions/cache`` are skipped: the interpreter is the
  test environment's, and every job starts with an empty model store (a cache miss);
- the install step (``.ci/install-engine PYTHON``: the one installer the README, ``.ci/run``
  and the workflows share, which sets the engine's build flags) is skipped: the test
  environment already has the package installed, with the ``lifecycle`` console script on
  ``PATH``. A step that runs ``pip install`` itself fails loudly with :class:`WorkflowError`:
  it would build llama.cpp for the runner's own CPU (``-march=native``). Other calls of the
  script (``--cache-key``) run;
- ``strategy.matrix`` is expanded (lists of scalars only) and ``needs:`` orders the jobs; the
  matrix jobs run one after another, each in a fresh checkout.

Nothing here knows what the steps do: the commands are the workflow's, the tool is the real
``lifecycle`` CLI, git is real git.
"""

from __future__ import annotations

import fnmatch
import glob
import itertools
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

EXPRESSION = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")
# GitHub's default for `run:` steps on Linux runners when no shell is named.
BASH = ["bash", "--noprofile", "--norc", "-eo", "pipefail"]
# Step keys this executor understands; anything else fails loudly.
STEP_KEYS = {"name", "id", "if", "run", "uses", "with", "env", "working-directory", "shell"}
SKIPPED_ACTIONS = ("actions/setup-python@", "actions/cache@")
STATUS_FUNCTIONS = {"success()", "failure()", "always()", "cancelled()", "!cancelled()"}
# The project's installer (pip install with the engine's build flags).
INSTALLER = ".ci/install-engine"


class WorkflowError(Exception):
    """The workflow uses something this executor does not know how to run faithfully."""


@dataclass
class StepResult:
    name: str
    id: str | None
    outcome: str  # success | failure | skipped
    exit_code: int | None = None
    log: str = ""
    outputs: dict[str, str] = field(default_factory=dict)
    summary: str = ""


@dataclass
class JobResult:
    job: str
    matrix: dict[str, Any]
    workspace: Path
    steps: list[StepResult]
    run_id: str = ""

    @property
    def conclusion(self) -> str:
        return "failure" if any(s.outcome == "failure" for s in self.steps) else "success"

    def step(self, name: str) -> StepResult:
        """The step named ``name`` (or with that id)."""
        for s in self.steps:
            if name in (s.name, s.id):
                return s
        raise KeyError(f"no step {name!r} in job {self.job}: {[s.name for s in self.steps]}")

    def describe(self) -> str:
        """Every step's outcome and log, for assertion messages."""
        parts = [f"job {self.job} {self.matrix or ''}: {self.conclusion}"]
        for s in self.steps:
            parts.append(f"--- {s.name}: {s.outcome} (exit {s.exit_code})")
            if s.log:
                parts.append(s.log[-4000:])
        return "\n".join(parts)


@dataclass
class Workflow:
    path: Path
    doc: dict[str, Any]

    @classmethod
    def load(cls, path: Path) -> Workflow:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        if not isinstance(doc, dict) or not isinstance(doc.get("jobs"), dict):
            raise WorkflowError(f"{path}: not a workflow (no jobs)")
        return cls(path, doc)

    @property
    def triggers(self) -> Any:
        # PyYAML (YAML 1.1) reads the bare key `on` as the boolean True.
        return self.doc.get("on", self.doc.get(True))

    def job_order(self) -> list[str]:
        """Job ids in an order that respects ``needs:``."""
        jobs = self.doc["jobs"]
        done: list[str] = []
        while len(done) < len(jobs):
            ready = [
                j
                for j in jobs
                if j not in done and all(n in done for n in _as_list(jobs[j].get("needs")))
            ]
            if not ready:
                raise WorkflowError(f"{self.path}: jobs' needs form a cycle or name no job")
            done.extend(ready)
        return done

    def matrix(self, job_id: str) -> list[dict[str, Any]]:
        """The job's matrix combinations (``[{}]`` without a matrix)."""
        strategy = self.doc["jobs"][job_id].get("strategy") or {}
        matrix = strategy.get("matrix")
        if not matrix:
            return [{}]
        if not isinstance(matrix, dict) or any(k in matrix for k in ("include", "exclude")):
            raise WorkflowError(f"{job_id}: only a matrix of plain lists is supported")
        for key, values in matrix.items():
            if not isinstance(values, list) or any(isinstance(v, dict | list) for v in values):
                raise WorkflowError(f"{job_id}: matrix.{key} is not a list of scalars")
        keys = list(matrix)
        return [
            dict(zip(keys, combo, strict=True))
            for combo in itertools.product(*(matrix[k] for k in keys))
        ]


@dataclass
class Runner:
    """Runs a workflow's jobs against a git ``origin`` on disk.

    ``root`` holds the per-job workspaces, the artifacts and the step files; ``base_env`` is
    the environment every step starts from (``PATH`` with the ``lifecycle`` script and any
    stand-ins first); ``ref`` is the branch a job checks out and ``ref_name`` what
    ``GITHUB_REF_NAME`` says (``main`` for a scheduled run, ``<n>/merge`` for a pull request).
    """

    root: Path
    origin: Path
    base_env: Mapping[str, str]
    ref: str = "main"
    ref_name: str = "main"
    event: str = "workflow_dispatch"
    extra_github_env: Mapping[str, str] = field(default_factory=dict)
    run_id: str = field(default_factory=lambda: str(1000 + uuid.uuid4().int % 9000))
    step_timeout_s: float = 600.0

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.artifacts = self.root / "artifacts"
        self.artifacts.mkdir(exist_ok=True)
        self.token = "ghs_" + uuid.uuid4().hex  # a stand-in: nothing here talks to GitHub

    # --- workflows and jobs -------------------------------------------------------------------

    def run_workflow(self, workflow: Workflow) -> list[JobResult]:
        """Every job (every matrix combination) in ``needs`` order; a job whose needs failed
        is not run, as on GitHub."""
        results: list[JobResult] = []
        failed: set[str] = set()
        for job_id in workflow.job_order():
            needs = _as_list(workflow.doc["jobs"][job_id].get("needs"))
            if any(n in failed for n in needs):
                failed.add(job_id)
                continue
            combos = workflow.matrix(job_id)
            for index, combo in enumerate(combos):
                result = self.run_job(
                    workflow, job_id, matrix=combo, job_index=index, job_total=len(combos)
                )
                results.append(result)
                if result.conclusion == "failure":
                    failed.add(job_id)
        return results

    def run_job(
        self,
        workflow: Workflow,
        job_id: str,
        *,
        matrix: dict[str, Any] | None = None,
        job_index: int = 0,
        job_total: int = 1,
    ) -> JobResult:
        job = workflow.doc["jobs"].get(job_id)
        if job is None:
            raise WorkflowError(f"{workflow.path}: no job {job_id!r}")
        if "container" in job or "services" in job or "defaults" in job:
            raise WorkflowError(f"{job_id}: container/services/defaults are not supported")
        matrix = dict(matrix or {})
        label = "-".join(str(v) for v in matrix.values())
        workspace = self.root / "jobs" / (f"{job_id}-{label}" if label else job_id) / "repo"
        if workspace.exists():
            raise WorkflowError(f"{workspace} exists: one runner per job")
        workspace.mkdir(parents=True)  # the runner's empty workspace; checkout fills it
        context = _Context(
            workspace=workspace,
            run_id=self.run_id,
            token=self.token,
            ref_name=self.ref_name,
            base_ref=self.extra_github_env.get("GITHUB_BASE_REF", ""),
            temp=workspace.parent / "runner-temp",
            matrix=matrix,
            job_index=job_index,
            job_total=job_total,
        )
        context.temp.mkdir()
        env = dict(self.base_env)
        env.update(
            {
                "CI": "true",
                "GITHUB_ACTIONS": "true",
                "GITHUB_WORKSPACE": str(workspace),
                "GITHUB_REF_NAME": self.ref_name,
                "GITHUB_REF": f"refs/heads/{self.ref_name}",
                "GITHUB_RUN_ID": self.run_id,
                "GITHUB_EVENT_NAME": self.event,
                "GITHUB_JOB": job_id,
                "RUNNER_TEMP": str(context.temp),
                "RUNNER_OS": "Linux",
            }
        )
        env.update(self.extra_github_env)
        for scope in (workflow.doc.get("env") or {}, job.get("env") or {}):
            env.update({k: context.substitute(_yaml_str(v)) for k, v in scope.items()})

        results: list[StepResult] = []
        for number, step in enumerate(job.get("steps") or [], start=1):
            unknown = set(step) - STEP_KEYS
            if unknown:
                raise WorkflowError(f"{job_id} step {number}: unsupported keys {sorted(unknown)}")
            name = str(step.get("name") or step.get("uses") or f"step {number}")
            result = StepResult(name=name, id=step.get("id"), outcome="skipped")
            results.append(result)
            if not context.should_run(step.get("if")):
                continue
            if "uses" in step:
                self._uses(step, context, result)
            elif _is_install(step):
                # The test environment is already installed (the package in editable mode,
                # with its console script): reinstalling would only cost minutes.
                result.log = "skipped: the test environment is already installed"
            else:
                self._run(step, context, env, result, number)
            if result.outcome == "failure":
                context.failed = True
            if result.id:
                context.outputs[result.id] = result.outputs
        return JobResult(job_id, matrix, workspace, results, self.run_id)

    # --- steps --------------------------------------------------------------------------------

    def _run(
        self,
        step: dict[str, Any],
        context: _Context,
        job_env: dict[str, str],
        result: StepResult,
        number: int,
    ) -> None:
        shell = step.get("shell")
        if shell not in (None, "bash"):
            raise WorkflowError(f"step {result.name!r}: shell {shell!r} is not supported")
        files = context.workspace.parent / "step-files" / str(number)
        files.mkdir(parents=True)
        output, github_env, summary, github_path = (
            files / n for n in ("output", "env", "summary", "path")
        )
        for f in (output, github_env, summary, github_path):
            f.touch()
        env = dict(job_env)
        env.update(context.extra_env)
        env.update(
            {k: context.substitute(_yaml_str(v)) for k, v in (step.get("env") or {}).items()}
        )
        if context.extra_path:
            env["PATH"] = os.pathsep.join([*context.extra_path, env.get("PATH", "")])
        env.update(
            {
                "GITHUB_OUTPUT": str(output),
                "GITHUB_ENV": str(github_env),
                "GITHUB_STEP_SUMMARY": str(summary),
                "GITHUB_PATH": str(github_path),
            }
        )
        script = files / "script.sh"
        script.write_text(context.substitute(str(step["run"])) + "\n", encoding="utf-8")
        cwd = context.workspace
        if step.get("working-directory"):
            cwd = cwd / context.substitute(str(step["working-directory"]))
        proc = subprocess.run(
            [*BASH, str(script)],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=self.step_timeout_s,
            check=False,
        )
        result.exit_code = proc.returncode
        result.log = proc.stdout
        (files / "log.txt").write_text(f"{proc.stdout}\n(exit {proc.returncode})\n", "utf-8")
        result.outcome = "success" if proc.returncode == 0 else "failure"
        result.outputs = _read_key_values(output)
        result.summary = summary.read_text(encoding="utf-8")
        context.extra_env.update(_read_key_values(github_env))
        context.extra_path[:0] = [
            p for p in github_path.read_text(encoding="utf-8").splitlines()[::-1] if p
        ]

    def _uses(self, step: dict[str, Any], context: _Context, result: StepResult) -> None:
        action = str(step["uses"])
        if action.startswith(SKIPPED_ACTIONS):
            result.log = "skipped: the test environment stands in for it"
            return
        inputs = {k: context.substitute(_yaml_str(v)) for k, v in (step.get("with") or {}).items()}
        if action.startswith("actions/checkout@"):
            self._checkout(context.workspace, inputs, result)
        elif action.startswith("actions/upload-artifact@"):
            self._upload(context.workspace, inputs, result)
        elif action.startswith("actions/download-artifact@"):
            self._download(context.workspace, inputs, result)
        else:
            raise WorkflowError(f"action {action!r} is neither emulated nor known to be skippable")

    def _checkout(self, workspace: Path, inputs: dict[str, str], result: StepResult) -> None:
        # A clone of the job's ref; `origin` is the bare repository. As on GitHub, only the
        # ref's last commit unless `fetch-depth: 0` asks for every branch and all history.
        depth = inputs.get("fetch-depth", "1")
        shallow = [] if depth == "0" else ["--depth", depth, "--single-branch"]
        proc = subprocess.run(
            [
                "git",
                "clone",
                "--quiet",
                *shallow,
                "--branch",
                self.ref,
                f"file://{self.origin}",
                str(workspace),
            ],
            env=dict(self.base_env),
            capture_output=True,
            text=True,
            check=False,
        )
        result.exit_code = proc.returncode
        result.log = proc.stdout + proc.stderr
        result.outcome = "success" if proc.returncode == 0 else "failure"

    def _upload(self, workspace: Path, inputs: dict[str, str], result: StepResult) -> None:
        name = inputs.get("name", "artifact")
        target = self.artifacts / name
        if target.exists():
            raise WorkflowError(f"artifact {name!r} uploaded twice in one run")
        found = []
        for pattern in (p.strip() for p in inputs.get("path", "").splitlines()):
            if not pattern:
                continue
            found += [Path(p) for p in glob.glob(str(workspace / pattern))]
        if not found:
            missing = inputs.get("if-no-files-found", "warn")
            result.log = f"no files found for artifact {name!r}"
            result.outcome = "failure" if missing == "error" else "success"
            return
        # Like upload-artifact: one folder uploads its contents, one file itself, several
        # paths keep their places below their common folder.
        if len(found) > 1:
            base = Path(os.path.commonpath([str(p) for p in found]))
        else:
            base = found[0] if found[0].is_dir() else found[0].parent
        for path in found:
            dest = target / path.relative_to(base) if path != base else target
            if path.is_dir():
                shutil.copytree(path, dest, dirs_exist_ok=True)
            else:
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, dest)
        result.outcome = "success"
        result.log = f"uploaded {len(found)} path(s) as {name!r}"

    def _download(self, workspace: Path, inputs: dict[str, str], result: StepResult) -> None:
        dest = workspace / inputs.get("path", ".")
        if "name" in inputs:
            names = [inputs["name"]]
        else:
            pattern = inputs.get("pattern", "*")
            names = sorted(
                p.name for p in self.artifacts.iterdir() if fnmatch.fnmatch(p.name, pattern)
            )
        merge = inputs.get("merge-multiple", "false") == "true" or "name" in inputs
        for name in names:
            source = self.artifacts / name
            if not source.is_dir():
                result.outcome = "failure"
                result.log = f"artifact {name!r} not found"
                return
            shutil.copytree(source, dest if merge else dest / name, dirs_exist_ok=True)
        result.outcome = "success"
        result.log = f"downloaded {names} to {dest}"


@dataclass
class _Context:
    workspace: Path
    run_id: str
    token: str
    ref_name: str
    temp: Path
    matrix: dict[str, Any]
    job_index: int
    job_total: int
    failed: bool = False
    outputs: dict[str, dict[str, str]] = field(default_factory=dict)
    extra_env: dict[str, str] = field(default_factory=dict)
    extra_path: list[str] = field(default_factory=list)
    base_ref: str = ""  # github.base_ref: the PR's target branch (empty for other events)

    def should_run(self, condition: Any) -> bool:
        if condition is None:
            return not self.failed
        text = str(condition).strip()
        match = EXPRESSION.fullmatch(text)
        if match:
            text = match.group(1).strip()
        if text not in STATUS_FUNCTIONS:
            raise WorkflowError(f"if: {condition!r} is not a status function this executor knows")
        return {
            "success()": not self.failed,
            "failure()": self.failed,
            "always()": True,
            "cancelled()": False,
            "!cancelled()": True,
        }[text]

    def substitute(self, text: str) -> str:
        return EXPRESSION.sub(lambda m: self.evaluate(m.group(1)), text)

    def evaluate(self, expression: str) -> str:
        expr = expression.strip()
        simple = {
            "github.run_id": self.run_id,
            "github.workspace": str(self.workspace),
            "github.token": self.token,
            "github.ref_name": self.ref_name,
            "github.base_ref": self.base_ref,
            "runner.temp": str(self.temp),
            "runner.os": "Linux",
            "strategy.job-total": str(self.job_total),
            "strategy.job-index": str(self.job_index),
        }
        if expr in simple:
            return simple[expr]
        match = re.fullmatch(r"steps\.([A-Za-z_][\w-]*)\.outputs\.([A-Za-z_][\w-]*)", expr)
        if match:
            step_id, name = match.groups()
            if step_id not in self.outputs:
                raise WorkflowError(f"${{{{ {expr} }}}}: step {step_id!r} has not run")
            return self.outputs[step_id].get(name, "")
        match = re.fullmatch(r"matrix\.([A-Za-z_][\w-]*)", expr)
        if match:
            if match.group(1) not in self.matrix:
                raise WorkflowError(f"${{{{ {expr} }}}}: not in the matrix {self.matrix}")
            value = self.matrix[match.group(1)]
            return str(value).lower() if isinstance(value, bool) else str(value)
        raise WorkflowError(f"unknown expression ${{{{ {expr} }}}}")


def _yaml_str(value: Any) -> str:
    """A YAML scalar as the runner sees it: ``true`` stays ``true``, not Python's ``True``."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def _is_install(step: dict[str, Any]) -> bool:
    if "run" not in step:
        return False
    script = str(step["run"])
    if re.search(r"\bpip3? install\b", script):
        raise WorkflowError(
            f"step {step.get('name')!r} runs pip install itself: install through "
            f"{INSTALLER}, which builds the engine with the project's flags"
        )
    return re.search(rf"(^|\s){re.escape(INSTALLER)}\s+[^-\s]", script) is not None


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def _read_key_values(path: Path) -> dict[str, str]:
    """``name=value`` lines and ``name<<DELIM`` … ``DELIM`` blocks (GITHUB_OUTPUT / GITHUB_ENV)."""
    values: dict[str, str] = {}
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line:
            continue
        if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
            name, delimiter = line.split("<<", 1)
            block = []
            while i < len(lines) and lines[i] != delimiter:
                block.append(lines[i])
                i += 1
            if i == len(lines):
                raise WorkflowError(f"{path}: {name} block is not closed by {delimiter!r}")
            i += 1
            values[name] = "\n".join(block)
        elif "=" in line:
            name, value = line.split("=", 1)
            values[name] = value
        else:
            raise WorkflowError(f"{path}: malformed line {line!r}")
    return values
