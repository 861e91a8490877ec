"""The GitHub workflows, end to end: their ``run:`` steps, read from the YAML, executed in order.

The repository under test is a tiny workspace in a real git repository whose ``origin`` is a
bare repository on disk. Its Modelfile says ``FROM file:<upstream>/tiny.gguf``: that file,
outside the repository, is the "upstream" the weekly job checks, and replacing its bytes is a
re-publish under the same tag. A ``gh`` stand-in first on ``PATH`` records the pull request it
is asked to open. Everything else is real: the ``lifecycle`` CLI, llama.cpp, git.

The variant matrix is F32 x Q4_0 x num_ctx {1024, 2048}. The golden set expects the F32
model's schema-mode answers, so the two F32 variants pass every case and are pinned (the
production variants); the Q4_0 quantizations answer some cases differently, fall under the
suite's 100 % threshold and stay *candidates*, refused every week, as in the example
workspace. Bench speed and memory checks are switched off in this workspace's ``[gate]``:
timings on a loaded test machine are not what these tests are about.

Weights that *pass* are the same tensors written with other metadata (a new ``general.name``):
new bytes and digest, identical answers. Weights that *regress* come from another seed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import TINY_TEMPLATE
from tinymodel import write_tiny_llama
from workflow_runner import JobResult, Runner, Workflow

REPO = Path(__file__).resolve().parent.parent
WORKFLOWS = REPO / ".github" / "workflows"
INSTALL_ENGINE = REPO / ".ci" / "install-engine"
MODEL = "tiny"
PINNED = ["tiny:f32-ctx1024", "tiny:f32-ctx2048"]
CANDIDATES = ["tiny:q4_0-ctx1024", "tiny:q4_0-ctx2048"]
TEXTS = [
    ("I was charged twice this month.", "billing"),
    ("The API returns HTTP 500 on every call.", "technical"),
    ("How much for 200 seats?", "sales"),
    ("Please send a receipt for INV-2231.", "billing"),
    ("Our SSO login loops back to the sign-in page.", "technical"),
    ("Can we get a discount for a three-year contract?", "sales"),
    ("Cancel the renewal and refund the difference.", "billing"),
    ("Exports time out for files over 2 GB.", "technical"),
]
ALL_CATEGORIES = ["billing", "technical", "sales"]
# Confidence in tenths: the grammar keeps it in range (it does not enforce a number's bounds),
# and it is the part of the tiny model's answer that varies from ticket to ticket.
SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "properties": {
        "category": {"enum": ALL_CATEGORIES},
        "confidence": {"enum": [round(0.1 * i, 1) for i in range(1, 10)]},
    },
    "required": ["category", "confidence"],
    "additionalProperties": False,
}


@dataclass
class Setup:
    """What the module builds once: the pinned repository and the upstream model files."""

    base: Path
    origin: Path  # bare repository, main holds the pins
    upstream: Path  # the file the `file:` tag names
    pristine: Path  # its original bytes (and mtime)
    republished: Path  # same weights, other metadata: new digest, same answers
    regressed: Path  # other weights: other answers
    env: dict[str, str]
    main_sha: str
    lock: bytes


def _base_env(base: Path) -> dict[str, str]:
    """The environment every step starts from: the test's, cleaned, with our tools first."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("GITHUB_", "RUNNER_", "LIFECYCLE_", "GH_", "GIT_", "VIRTUAL_ENV"))
    }
    stand_ins = base / "bin"
    stand_ins.mkdir(exist_ok=True)
    gh = stand_ins / "gh"
    gh.write_text(GH_STAND_IN.replace("@PYTHON@", sys.executable), encoding="utf-8")
    gh.chmod(0o755)
    gitconfig = base / "gitconfig"
    gitconfig.write_text(
        "[user]\n\tname = Test\n\temail = test@example.com\n"
        "[commit]\n\tgpgsign = false\n[init]\n\tdefaultBranch = main\n",
        encoding="utf-8",
    )
    venv_bin = str(Path(sys.executable).parent)  # where the `lifecycle` console script is
    env.update(
        {
            "PATH": os.pathsep.join([str(stand_ins), venv_bin, env.get("PATH", "")]),
            "GIT_CONFIG_GLOBAL": str(gitconfig),
            "GIT_CONFIG_NOSYSTEM": "1",
            "LIFECYCLE_HOME": str(base / "home"),  # the workflows point it into the workspace
            "LIFECYCLE_NO_PROGRESS": "1",
            "NO_COLOR": "1",
        }
    )
    return env


# A `gh` that records what it was asked (argv, the --body-file's text) and opens nothing.
GH_STAND_IN = """#!@PYTHON@
import json, os, sys
from pathlib import Path

args = sys.argv[1:]
if args[:2] != ["pr", "create"]:
    sys.exit(f"gh stand-in: only `gh pr create` is recorded, not {args}")
call = {"argv": args, "cwd": os.getcwd(), "token": bool(os.environ.get("GH_TOKEN"))}
if "--body-file" in args:
    call["body"] = Path(args[args.index("--body-file") + 1]).read_text(encoding="utf-8")
log = Path(os.environ["GH_STAND_IN_LOG"])
calls = json.loads(log.read_text(encoding="utf-8")) if log.exists() else []
calls.append(call)
log.write_text(json.dumps(calls, indent=2), encoding="utf-8")
print("https://github.com/example/workspace/pull/2")
"""


def git(cwd: Path, *args: str, env: dict[str, str]) -> str:
    proc = subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, f"git {' '.join(args)}: {proc.stderr}"
    return proc.stdout.strip()


def lifecycle(cwd: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["lifecycle", *args], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )


def write_workspace(root: Path, upstream: Path) -> None:
    (root / "modelfiles").mkdir(parents=True)
    (root / "golden").mkdir()
    (root / "evals").mkdir()
    (root / "modelfiles" / "tiny.Modelfile").write_text(
        f'FROM file:{upstream}\nTEMPLATE """{TINY_TEMPLATE}"""\n'
        "SYSTEM Reply with JSON only.\n"
        "PARAMETER temperature 0\nPARAMETER seed 7\nPARAMETER stop <end_of_turn>\n",
        encoding="utf-8",
    )
    (root / "golden" / "triage.schema.json").write_text(json.dumps(SCHEMA), encoding="utf-8")
    cases = [
        {
            "id": f"case-{i}",
            "messages": [{"role": "user", "content": text}],
            "expected": {"category": category, "confidence": 0.5},
        }
        for i, (text, category) in enumerate(TEXTS)
    ]
    write_cases(root, cases)
    (root / "evals" / "triage.toml").write_text(
        'golden = "../golden/triage.jsonl"\n'
        'schema = "../golden/triage.schema.json"\n'
        'modes = ["schema"]\n'
        "threshold = 1.0\n"
        "max_tokens = 48\n"
        '[match.category]\nmatcher = "exact"\n'
        '[match.confidence]\nmatcher = "exact"\n',
        encoding="utf-8",
    )
    (root / "lifecycle.toml").write_text(
        textwrap.dedent(
            """\
            [engine]
            threads = 1   # two spinning threads on a busy 2-core machine run 30x slower
            seed = 7

            [models.tiny]
            modelfile = "modelfiles/tiny.Modelfile"
            suites = ["triage"]

            [models.tiny.variants]
            quant = ["F32", "Q4_0"]
            num_ctx = [1024, 2048]

            [gate]
            fail_on_regression = true
            max_pass_rate_drop = 0.0
            max_tokens_per_s_drop = 1.0   # speed is not under test here
            max_memory_growth = 100.0
            """
        ),
        encoding="utf-8",
    )
    (root / ".gitignore").write_text(
        ".lifecycle/\n.lifecycle-home/\nreports/\nshards/\n", encoding="utf-8"
    )


def read_cases(root: Path) -> list[dict[str, object]]:
    text = (root / "golden" / "triage.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines()]


def write_cases(root: Path, cases: list[dict[str, object]]) -> None:
    (root / "golden" / "triage.jsonl").write_text(
        "".join(json.dumps(c) + "\n" for c in cases), encoding="utf-8"
    )


def schema_answers(root: Path, env: dict[str, str]) -> dict[tuple[str, str], object]:
    """(variant, case id) -> the JSON the model answers in schema mode."""
    proc = lifecycle(root, "eval", "--json", "--quiet", env=env)
    assert proc.returncode in (0, 3), proc.stderr
    record = json.loads(proc.stdout)
    assert not [v for v in record["variants"] if v.get("error")], proc.stderr
    return {(c["variant"], c["id"]): c["parsed"] for c in record["cases"]}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    base = tmp_path_factory.mktemp("workflows")
    env = _base_env(base)
    models = base / "models"
    models.mkdir()
    pristine = write_tiny_llama(models / "pristine.gguf", seed=0)
    republished = write_tiny_llama(models / "republished.gguf", seed=0, name="tiny-llama-v2")
    regressed = write_tiny_llama(models / "regressed.gguf", seed=1)
    upstream = base / "upstream" / "tiny.gguf"
    upstream.parent.mkdir()
    shutil.copy2(pristine, upstream)

    seed = base / "seed"
    write_workspace(seed, upstream)
    # The workflows install through the project's installer; its --cache-key runs for real.
    (seed / ".ci").mkdir()
    shutil.copy2(INSTALL_ENGINE, seed / ".ci" / "install-engine")
    answers = schema_answers(seed, env)
    cases = read_cases(seed)
    for case in cases:
        by_variant = {v: answers[(v, str(case["id"]))] for v in PINNED}
        assert len({json.dumps(a) for a in by_variant.values()}) == 1, by_variant  # ctx: no matter
        case["expected"] = by_variant[PINNED[0]]
    write_cases(seed, cases)
    # The premises the scenarios rest on, checked rather than assumed:
    differ = [c["id"] for c in cases if answers[(CANDIDATES[0], str(c["id"]))] != c["expected"]]
    assert differ, "the Q4_0 candidates must answer some case differently (to be refused)"

    git(seed, "init", "--quiet", env=env)
    git(seed, "add", "--all", env=env)
    git(seed, "commit", "--quiet", "-m", "workspace", env=env)
    proc = lifecycle(seed, "smoke", "--offline", "--no-bench", "--commit", "--json", env=env)
    assert proc.returncode in (0, 3), proc.stderr  # 3 until refused candidates exit 0
    pins = json.loads(proc.stdout)["pins"]
    assert sorted(pins["pinned"]) == PINNED and sorted(pins["refused"]) == CANDIDATES
    lock = (seed / "models.lock").read_bytes()
    assert sorted(json.loads(lock)["variants"]) == PINNED

    origin = base / "origin.git"
    git(base, "init", "--quiet", "--bare", str(origin), env=env)
    git(seed, "remote", "add", "origin", str(origin), env=env)
    git(seed, "push", "--quiet", "origin", "main", env=env)
    return Setup(
        base=base,
        origin=origin,
        upstream=upstream,
        pristine=pristine,
        republished=republished,
        regressed=regressed,
        env=env,
        main_sha=git(origin, "rev-parse", "main", env=env),
        lock=lock,
    )


@dataclass
class World:
    """One test's copy of the origin, its runner folder and its `gh` log."""

    setup: Setup
    origin: Path
    root: Path
    env: dict[str, str]
    gh_log: Path

    def runner(
        self, *, ref: str = "main", pull_request: bool = False, root: Path | None = None
    ) -> Runner:
        """A runner for one run of a workflow; another ``root`` for a second run (its jobs
        and artifacts live there)."""
        root = root or self.root
        if pull_request:
            return Runner(
                root=root,
                origin=self.origin,
                base_env=self.env,
                ref=ref,
                ref_name="2/merge",
                event="pull_request",
                extra_github_env={"GITHUB_HEAD_REF": ref, "GITHUB_BASE_REF": "main"},
            )
        return Runner(root=root, origin=self.origin, base_env=self.env, ref=ref, event="schedule")

    def gh_calls(self) -> list[dict[str, object]]:
        if not self.gh_log.exists():
            return []
        calls: list[dict[str, object]] = json.loads(self.gh_log.read_text(encoding="utf-8"))
        return calls

    def refs(self) -> dict[str, str]:
        out = git(self.origin, "for-each-ref", "--format=%(refname) %(objectname)", env=self.env)
        return dict(line.split(" ", 1) for line in out.splitlines())

    def git(self, *args: str) -> str:
        return git(self.origin, *args, env=self.env)

    def pull_request(self, branch: str, change: str) -> str:
        """Clone the origin, apply ``change`` on ``branch``, push it; return the branch."""
        clone = self.root / f"author-{branch.replace('/', '-')}"
        git(self.root, "clone", "--quiet", str(self.origin), str(clone), env=self.env)
        git(clone, "checkout", "--quiet", "-b", branch, env=self.env)
        if change == "break-template":
            path = clone / "modelfiles" / "tiny.Modelfile"
            text = path.read_text(encoding="utf-8")
            # A template edit that loses the model turn's opening: a classic broken template.
            broken = text.replace("{{ if $last }}<start_of_turn>model\n{{ end }}", "")
            assert broken != text
            path.write_text(broken, encoding="utf-8")
        elif change == "add-cases":
            cases = read_cases(clone)
            cases += [
                {
                    "id": f"new-{i}",
                    "messages": [{"role": "user", "content": text}],
                    "expected": {"category": "billing", "confidence": 0.5},
                    # Ambiguous tickets: any category, any confidence is a right answer.
                    "match": {
                        "category": {"matcher": "one_of", "values": ALL_CATEGORIES},
                        "confidence": {"matcher": "ignore"},
                    },
                }
                for i, text in enumerate(["Hello?", "Question about my account and pricing."])
            ]
            write_cases(clone, cases)
        elif change == "rebaseline-itself":
            # The PR moves its own bar past a broken expectation: case-0 expects another
            # category, the pinned variants' baselines say it failed all along, and the suite
            # threshold drops to what is left (7 of 8).
            cases = read_cases(clone)
            expected = cases[0]["expected"]
            assert isinstance(expected, dict)
            expected["category"] = next(c for c in ALL_CATEGORIES if c != expected["category"])
            write_cases(clone, cases)
            suite = clone / "evals" / "triage.toml"
            text = suite.read_text(encoding="utf-8").replace("threshold = 1.0", "threshold = 0.8")
            suite.write_text(text, encoding="utf-8")
            path = clone / "baselines" / f"{MODEL}.json"
            doc = json.loads(path.read_text(encoding="utf-8"))
            for entry in doc["variants"].values():
                for case in entry["cases"]:
                    if case["id"] == "case-0":
                        case["passed"] = False
            path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        else:
            raise AssertionError(change)
        git(clone, "commit", "--quiet", "-am", change, env=self.env)
        git(clone, "push", "--quiet", "origin", branch, env=self.env)
        return branch


@pytest.fixture
def world(setup: Setup, tmp_path: Path) -> Iterator[World]:
    origin = tmp_path / "origin.git"
    shutil.copytree(setup.origin, origin)
    env = dict(setup.env)
    gh_log = tmp_path / "gh-calls.json"
    env["GH_STAND_IN_LOG"] = str(gh_log)
    (tmp_path / "ci").mkdir()
    yield World(setup, origin, tmp_path / "ci", env, gh_log)
    # Put the upstream file back as it was, mtime included (a file: tag's revision is its
    # size and mtime), for the next scenario.
    shutil.copy2(setup.pristine, setup.upstream)


def publish(setup: Setup, model: Path) -> None:
    """Re-publish the tracked tag: new bytes at the same `file:` path."""
    shutil.copyfile(model, setup.upstream)
    stat = setup.pristine.stat()
    os.utime(setup.upstream, ns=(stat.st_atime_ns, stat.st_mtime_ns + 60 * 10**9))


def sha256(path: Path) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def weekly(world: World) -> JobResult:
    return world.runner().run_job(Workflow.load(WORKFLOWS / "weekly.yml"), "smoke")


# --- how the workflows install the engine ------------------------------------------------------

QUICKSTART = (
    "python3 -m venv .venv && .ci/install-engine .venv/bin/python && .venv/bin/lifecycle smoke"
)
MODEL_COMMANDS = re.compile(r"\blifecycle (eval|smoke|gate|merge|compare|bench|calibrate)\b")


@pytest.mark.parametrize("name", ["weekly.yml", "pr-gate.yml", "eval-sharded.yml"])
def test_every_job_installs_the_engine_as_the_readme_does(name: str) -> None:
    """One installer; the engine wheel cached under its build key, pip's cache not at all;
    the engine checked on the runner before any step that loads a model."""
    workflow = Workflow.load(WORKFLOWS / name)
    for job_id, job in workflow.doc["jobs"].items():
        steps = job["steps"]
        runs = [str(step.get("run", "")).strip() for step in steps]
        assert not [r for r in runs if re.search(r"\bpip3? install\b", r)], job_id
        installs = [i for i, r in enumerate(runs) if r == ".ci/install-engine python"]
        assert len(installs) == 1, (job_id, runs)
        key_step = next(i for i, step in enumerate(steps) if step.get("id") == "engine")
        assert runs[key_step] == 'echo "key=$(.ci/install-engine --cache-key)" >> "$GITHUB_OUTPUT"'
        for i, step in enumerate(steps):
            uses, options = str(step.get("uses", "")), step.get("with") or {}
            if uses.startswith("actions/setup-python@"):
                assert "cache" not in options, f"{job_id}: setup-python's pip cache spans CPUs"
            assert "cache/pip" not in str(options.get("path")), f"{job_id}: pip's cache"
            if uses.startswith("actions/cache@") and "wheels" in str(options.get("path")):
                assert key_step < i < installs[0], job_id
                assert "${{ steps.engine.outputs.key }}" in str(options["key"]), job_id
        doctor = [i for i, r in enumerate(runs) if r == "lifecycle doctor --no-models"]
        loads = [i for i, r in enumerate(runs) if MODEL_COMMANDS.search(r)]
        assert doctor and loads and installs[0] < doctor[0] < min(loads), (job_id, runs)


def test_the_engine_build_flags_are_written_in_one_place() -> None:
    script = INSTALL_ENGINE.read_text(encoding="utf-8")
    builds = dict(re.findall(r'^ +([a-z-]+)\) CMAKE_ARGS="([^"]+)" ;;$', script, re.MULTILINE))
    assert set(builds) == {"all-cpus", "portable"}
    assert all("-DGGML_NATIVE=OFF" in flags for flags in builds.values())
    assert "-DGGML_CPU_ALL_VARIANTS=ON" in builds["all-cpus"]
    assert "-DGGML_AVX2=ON" in builds["portable"]
    documented = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    for path in [*documented, REPO / ".ci" / "run", *sorted(WORKFLOWS.glob("*.yml"))]:
        assert "-DGGML_" not in path.read_text(encoding="utf-8"), f"{path} has its own flags"
    readme = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert QUICKSTART in readme
    # .ci/run checks the README's commands verbatim, this one among them.
    assert QUICKSTART in (REPO / ".ci" / "run").read_text(encoding="utf-8")


def test_install_engine_builds_into_a_wheelhouse_named_by_its_flags(tmp_path: Path) -> None:
    """pip caches a built wheel whatever CMAKE_ARGS said: the installer builds the engine
    outside pip's cache, into a folder keyed by the flags and version, and installs from it."""
    # A stand-in interpreter that records each pip call, and "builds" a wheel when asked to.
    python = tmp_path / "python"
    python.write_text(
        "#!/bin/sh\n"
        'printf \'%s\\n\' "$CMAKE_ARGS" "$@" >> "$0.args"\n'
        'if [ "$3" = "wheel" ]; then\n'
        '  shift 3; while [ "$1" != "-w" ]; do shift; done\n'
        '  touch "$2/llama_cpp_python-0.3.36-py3-none-linux_x86_64.whl"\n'
        "fi\n",
        "utf-8",
    )
    python.chmod(0o755)
    calls = tmp_path / "python.args"

    def install(build: str, *args: str) -> list[list[str]]:
        env = {
            **os.environ,
            "CMAKE_ARGS": "-DGGML_NATIVE=ON",  # a caller's own flags are replaced
            "XDG_CACHE_HOME": str(tmp_path / "cache"),
            "LIFECYCLE_ENGINE_BUILD": build,
        }
        env.pop("LIFECYCLE_WHEELHOUSE", None)
        calls.unlink(missing_ok=True)
        subprocess.run([str(INSTALL_ENGINE), str(python), *args], env=env, cwd=REPO, check=True)
        lines = calls.read_text(encoding="utf-8").splitlines()
        starts = [i for i, line in enumerate(lines) if line.startswith("-D")]
        return [lines[i:j] for i, j in zip(starts, [*starts[1:], len(lines)], strict=True)]

    (wheel, pip_install) = install("all-cpus")
    assert "-DGGML_CPU_ALL_VARIANTS=ON" in wheel[0] and "-DGGML_NATIVE=ON" not in wheel[0]
    assert wheel[1:4] == ["-m", "pip", "wheel"] and "--no-cache-dir" in wheel
    assert wheel[-1] == "llama-cpp-python==0.3.36"
    wheelhouse = wheel[wheel.index("-w") + 1]
    assert Path(wheelhouse).parent == tmp_path / "cache" / "lifecycle" / "wheels"
    assert pip_install[1:] == ["-m", "pip", "install", "--find-links", wheelhouse, "-e", "."]
    # Built once: the next install takes the wheel from the wheelhouse.
    (again,) = install("all-cpus", "-q", "-e", ".[test]")
    assert again[1:] == ["-m", "pip", "install", "--find-links", wheelhouse, "-q", "-e", ".[test]"]
    # The portable build is another set of flags, so another wheelhouse.
    (portable_wheel, _) = install("portable")
    assert "-DGGML_AVX2=ON" in portable_wheel[0]
    assert portable_wheel[portable_wheel.index("-w") + 1] != wheelhouse

    def key(build: str) -> str:
        env = {**os.environ, "LIFECYCLE_ENGINE_BUILD": build}
        return subprocess.run(
            [str(INSTALL_ENGINE), "--cache-key"],
            capture_output=True,
            text=True,
            env=env,
            check=True,
            cwd=REPO,
        ).stdout

    assert re.fullmatch(r"[0-9a-f]{16}\n", key("all-cpus")) and key("all-cpus") != key("portable")
    assert Path(wheelhouse).name == key("all-cpus").strip()
    usage = subprocess.run([str(INSTALL_ENGINE)], capture_output=True, text=True, check=False)
    assert usage.returncode == 2 and "usage:" in usage.stderr
    wrong = subprocess.run(
        [str(INSTALL_ENGINE), str(python)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "LIFECYCLE_ENGINE_BUILD": "native"},
        cwd=REPO,
    )
    assert wrong.returncode == 2 and "all-cpus or portable" in wrong.stderr


def junit_failures(path: Path) -> set[tuple[str, str]]:
    """(classname, name) of every testcase with a <failure>."""
    tree = ET.parse(path)
    return {
        (tc.get("classname", ""), tc.get("name", ""))
        for tc in tree.iter("testcase")
        if tc.find("failure") is not None
    }


# --- the weekly job ---------------------------------------------------------------------------


def test_weekly_nothing_moved_is_green_without_a_pr(world: World) -> None:
    refs = world.refs()
    job = weekly(world)
    assert job.conclusion == "success", job.describe()
    assert job.step("Install").log.startswith("skipped")
    # The engine build was checked on the runner before the smoke; the pip cache key was made.
    check = job.step("Check the engine")
    assert check.outcome == "success" and "doctor: ok" in check.log, job.describe()
    assert re.fullmatch(r"[0-9a-f]{16}", job.step("engine").outputs["key"])
    assert job.step("Smoke").exit_code == 0
    pr_step = job.step("Open a pull request with the new pins")
    assert pr_step.outcome == "success" and "no pull request" in pr_step.log
    assert world.gh_calls() == []
    assert world.refs() == refs  # nothing pushed

    clone = job.workspace
    assert git(clone, "rev-parse", "HEAD", env=world.env) == world.setup.main_sha
    assert (
        git(clone, "status", "--porcelain", "--", "models.lock", "baselines", env=world.env) == ""
    )
    smoke = json.loads((clone / "reports" / "smoke.json").read_text(encoding="utf-8"))
    # The job checked the tag upstream. (Its status reads "new": the lock keeps no revision
    # for a `file:` tag, and this runner's store started empty. The digest is what counts.)
    assert [u["new_digest"] for u in smoke["upstream"]] == [sha256(world.setup.pristine)]
    assert sorted(smoke["pins"]["unchanged"]) == PINNED
    assert sorted(smoke["pins"]["refused"]) == CANDIDATES and smoke["pins"]["commit"] is None
    # The report was uploaded (always()), with the refused candidates in it.
    report = (world.root / "artifacts" / "lifecycle-report" / "report.md").read_text("utf-8")
    assert all(name in report for name in CANDIDATES)


def test_weekly_tag_moved_to_passing_weights_opens_a_pr_with_the_pins(world: World) -> None:
    setup = world.setup
    publish(setup, setup.republished)
    new_digest = sha256(setup.republished)
    job = weekly(world)
    assert job.conclusion == "success", job.describe()
    smoke = json.loads((job.workspace / "reports" / "smoke.json").read_text(encoding="utf-8"))
    assert [u["new_digest"] for u in smoke["upstream"]] == [new_digest]
    assert sorted(smoke["pins"]["pinned"]) == PINNED

    [call] = world.gh_calls()
    branch = job.step("Smoke").outputs["branch"]
    assert branch == f"lifecycle/weekly-{job.run_id}"
    argv = call["argv"]
    assert isinstance(argv, list)
    assert argv[:2] == ["pr", "create"] and call["token"]
    assert argv[argv.index("--base") + 1] == "main" and argv[argv.index("--head") + 1] == branch
    body = str(call["body"])
    assert new_digest in body and "models.lock" in body  # the pin commit and its files
    assert "Weekly model pins" in argv

    # The pushed branch differs from main by the lock and the baselines only.
    assert world.git("rev-parse", "main") == setup.main_sha
    changed = world.git("diff", "--name-only", "main", branch).splitlines()
    assert sorted(changed) == ["baselines/tiny.json", "models.lock"]
    lock = json.loads(world.git("show", f"{branch}:models.lock"))
    assert sorted(lock["variants"]) == PINNED
    assert {e["blob_sha256"] for e in lock["variants"].values()} == {new_digest}


def test_weekly_tag_moved_to_regressing_weights_is_red_without_a_pr(world: World) -> None:
    setup = world.setup
    publish(setup, setup.regressed)
    refs = world.refs()
    job = weekly(world)
    assert job.conclusion == "failure", job.describe()
    smoke_step = job.step("Smoke")
    assert smoke_step.outcome == "failure" and smoke_step.exit_code == 3, job.describe()
    assert job.step("Upload the report").outcome == "success"  # if: always()
    assert job.step("Open a pull request with the new pins").outcome == "skipped"
    assert world.gh_calls() == [] and world.refs() == refs

    clone = job.workspace
    assert git(clone, "rev-parse", "HEAD", env=world.env) == setup.main_sha
    assert (clone / "models.lock").read_bytes() == setup.lock
    assert (
        git(clone, "status", "--porcelain", "--", "models.lock", "baselines", env=world.env) == ""
    )
    smoke = json.loads((clone / "reports" / "smoke.json").read_text(encoding="utf-8"))
    regressed = {r["variant"] for r in smoke["gate"]["regressions"]}
    assert regressed & set(PINNED), smoke["gate"]["regressions"]


def test_weekly_prunes_variants_that_left_the_matrix(world: World) -> None:
    # main drops num_ctx 2048 from the matrix: the next weekly run proposes the pruned lock.
    author = world.root / "author"
    git(world.root, "clone", "--quiet", str(world.origin), str(author), env=world.env)
    config = author / "lifecycle.toml"
    config.write_text(
        config.read_text(encoding="utf-8").replace("num_ctx = [1024, 2048]", "num_ctx = [1024]"),
        encoding="utf-8",
    )
    git(author, "commit", "--quiet", "-am", "matrix: drop num_ctx 2048", env=world.env)
    git(author, "push", "--quiet", "origin", "main", env=world.env)

    job = weekly(world)
    assert job.conclusion == "success", job.describe()
    [call] = world.gh_calls()
    branch = job.step("Smoke").outputs["branch"]
    assert sorted(world.git("diff", "--name-only", "main", branch).splitlines()) == [
        "baselines/tiny.json",
        "models.lock",
    ]
    lock = json.loads(world.git("show", f"{branch}:models.lock"))
    assert sorted(lock["variants"]) == ["tiny:f32-ctx1024"]
    baseline = json.loads(world.git("show", f"{branch}:baselines/tiny.json"))
    assert sorted(baseline["variants"]) == ["tiny:f32-ctx1024"]
    body = str(call["body"])
    assert "tiny:f32-ctx2048" in body and "prune" in body.lower()  # the PR says what went


# --- the pull-request gate --------------------------------------------------------------------


def test_pr_that_breaks_the_template_is_red_with_the_regressions_in_junit(world: World) -> None:
    branch = world.pull_request("pr/break-template", "break-template")
    job = world.runner(ref=branch, pull_request=True).run_job(
        Workflow.load(WORKFLOWS / "pr-gate.yml"), "gate"
    )
    assert job.conclusion == "failure", job.describe()
    assert job.step("Eval").outcome == "success", job.describe()  # the gate decides
    gate_step = job.step("Gate")
    assert gate_step.outcome == "failure" and gate_step.exit_code == 3, job.describe()
    assert gate_step.summary.strip()  # the Markdown went to $GITHUB_STEP_SUMMARY
    assert job.step("Report").outcome == "success"  # if: always()
    report_dir = world.root / "artifacts" / "lifecycle-report"
    assert (report_dir / "report.html").is_file() and (report_dir / "junit.xml").is_file()

    failures = junit_failures(job.workspace / "reports" / "junit.xml")
    regressed = {(cls, name) for cls, name in failures if cls.endswith(".triage")}
    assert regressed, failures
    case_ids = {f"schema/case-{i}" for i in range(len(TEXTS))}
    assert {cls.removesuffix(".triage") for cls, _ in regressed} <= set(PINNED)
    assert {name for _, name in regressed} <= case_ids
    # The JUnit failures are exactly the gate's regressions of the pinned variants.
    proc = lifecycle(job.workspace, "gate", "--json", env=gate_env(world, job))
    doc = json.loads(proc.stdout)
    expected = {
        (f"{r['variant']}.{r['suite']}", f"{r['mode']}/{r['case']}")
        for r in doc["regressions"]
        if r["variant"] in PINNED
    }
    assert regressed == expected


def test_pr_that_only_adds_golden_cases_is_green(world: World) -> None:
    branch = world.pull_request("pr/add-cases", "add-cases")
    job = world.runner(ref=branch, pull_request=True).run_job(
        Workflow.load(WORKFLOWS / "pr-gate.yml"), "gate"
    )
    assert job.conclusion == "success", job.describe()
    assert [s.outcome for s in job.steps if s.name in ("Eval", "Gate", "Report")] == ["success"] * 3
    junit = ET.parse(job.workspace / "reports" / "junit.xml")
    names = {tc.get("name") for tc in junit.iter("testcase")}
    assert {"schema/new-0", "schema/new-1"} <= names
    failures = junit_failures(job.workspace / "reports" / "junit.xml")
    assert not {f for f in failures if f[0].removesuffix(".triage") in PINNED}


def test_pr_that_moves_its_own_bar_is_red_until_a_commit_says_why(world: World) -> None:
    branch = world.pull_request("pr/rebaseline-itself", "rebaseline-itself")
    workflow = Workflow.load(WORKFLOWS / "pr-gate.yml")
    job = world.runner(ref=branch, pull_request=True).run_job(workflow, "gate")
    assert job.conclusion == "failure", job.describe()
    gate_step = job.step("Gate")
    assert gate_step.exit_code == 3, job.describe()
    summary = gate_step.summary
    assert "### Bar of `origin/main`" in summary and "NOT acknowledged" in summary
    for pinned in PINNED:
        assert f"re-baselined pass → fail: {pinned} triage/schema case-0" in summary
    assert "evals/triage.toml threshold.schema: 1.0 → 0.8" in summary
    assert "expectation: triage case-0: expected changed" in summary
    # Judged on its own bar, the same PR passes: what the base ref closes.
    own = lifecycle(job.workspace, "gate", env=gate_env(world, job))
    assert own.returncode == 0, own.stdout + own.stderr

    clone = world.root / "author-pr-rebaseline-itself"
    reason = "case-0 is a quote request: sales owns it"
    git(clone, "commit", "--quiet", "--allow-empty", "-m",
        f"triage: re-baseline case-0\n\nLifecycle-Rebaseline: {reason}", env=world.env)  # fmt: skip
    git(clone, "push", "--quiet", "origin", branch, env=world.env)
    again = world.runner(ref=branch, pull_request=True, root=world.root / "second").run_job(
        workflow, "gate"
    )
    assert again.conclusion == "success", again.describe()
    summary = again.step("Gate").summary
    assert "acknowledged" in summary and reason in summary


def test_the_weekly_pr_with_passing_pins_is_green_in_the_pr_gate(world: World) -> None:
    publish(world.setup, world.setup.republished)
    job = weekly(world)
    assert job.conclusion == "success", job.describe()
    branch = job.step("Smoke").outputs["branch"]
    gate_job = world.runner(ref=branch, pull_request=True, root=world.root / "pr").run_job(
        Workflow.load(WORKFLOWS / "pr-gate.yml"), "gate"
    )
    assert gate_job.conclusion == "success", gate_job.describe()
    summary = gate_job.step("Gate").summary
    assert "### Bar of `origin/main`" in summary and "nothing lowered" in summary
    doc = json.loads(
        lifecycle(
            gate_job.workspace, "gate", "--base", "origin/main", "--json",
            env=gate_env(world, gate_job),
        ).stdout
    )  # fmt: skip
    judged = {v["variant"]: v for v in doc["variants"]}
    for pinned in PINNED:  # the new pins, judged against main's baselines of the old ones
        assert judged[pinned]["status"] == "holds"
        assert judged[pinned]["baseline_variant_id"] != judged[pinned]["variant_id"]


# --- the sharded gate -------------------------------------------------------------------------


def test_sharded_gate_merges_the_shards_and_catches_the_template_break(world: World) -> None:
    branch = world.pull_request("pr/break-template-sharded", "break-template")
    workflow = Workflow.load(WORKFLOWS / "eval-sharded.yml")
    shards = workflow.matrix("eval")
    assert len(shards) > 1
    jobs = world.runner(ref=branch, pull_request=True).run_workflow(workflow)
    evals = [j for j in jobs if j.job == "eval"]
    assert len(evals) == len(shards)
    assert all(j.conclusion == "success" for j in evals), "\n".join(j.describe() for j in evals)
    [gate] = [j for j in jobs if j.job == "gate"]
    assert gate.step("Merge").outcome == "success", gate.describe()
    gate_step = gate.step("Gate")
    assert gate_step.outcome == "failure" and gate_step.exit_code == 3, gate.describe()

    # Every (variant, case) was run exactly once, across the shards.
    records = [
        json.loads(p.read_text(encoding="utf-8"))
        for p in sorted((gate.workspace / "shards").glob("*.json"))
    ]
    assert [r["shard"] for r in records] == [
        f"{i}/{len(shards)}" for i in range(1, len(shards) + 1)
    ]
    keys = [(c["variant"], c["id"]) for r in records for c in r["cases"]]
    assert len(keys) == len(set(keys)) == len(PINNED + CANDIDATES) * len(TEXTS)
    assert junit_failures(gate.workspace / "reports" / "junit.xml")


def gate_env(world: World, job: JobResult) -> dict[str, str]:
    """The environment the job's steps had, to query its workspace afterwards."""
    env = dict(world.env)
    env["LIFECYCLE_HOME"] = str(job.workspace / ".lifecycle-home")
    return env
