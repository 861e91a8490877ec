"""The Python API (lifecycle.evaluate, ...) and plugins found through entry points.

The plugin is a real installed distribution as far as importlib.metadata can tell: a package
and its ``.dist-info`` (with ``entry_points.txt``) on ``sys.path``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lifecycle import plugins
from lifecycle.errors import ConfigError
from lifecycle.golden import load_suites, parse_matcher

Run = Callable[..., tuple[int, str, str]]

PLUGIN = '''
from lifecycle.engines.llama_cpp import LlamaCppEngine


class HouseEngine(LlamaCppEngine):
    """A team's own engine: here the embedded one under another name."""

    name = "house-llama"


def lowercase(actual, expected, options):
    if options.get("verdict") == "no":
        return f"the house rule says no ({actual!r})"
    same = str(actual).strip().lower() == str(expected).strip().lower()
    return None if same else f"expected {expected!r} in any case"
'''

ENTRY_POINTS = """[lifecycle.engines]
house-llama = lc_house_plugin:HouseEngine

[lifecycle.matchers]
lowercase = lc_house_plugin:lowercase
"""


@pytest.fixture
def installed_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    site = tmp_path / "site"
    (site / "lc_house_plugin").mkdir(parents=True)
    (site / "lc_house_plugin" / "__init__.py").write_text(PLUGIN, encoding="utf-8")
    info = site / "lc_house_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: lc-house-plugin\nVersion: 0.1\n", encoding="utf-8"
    )
    (info / "entry_points.txt").write_text(ENTRY_POINTS, encoding="utf-8")
    monkeypatch.syspath_prepend(str(site))
    plugins.forget()
    yield site
    plugins.forget()


def test_an_engine_plugin_runs_the_suite_under_its_name(
    tiny_workspace: Path, run_cli: Run, installed_plugin: Path
) -> None:
    ws = str(tiny_workspace)
    common = ("eval", "-C", ws, "--json", "-q", "--limit", "2", "--mode", "free", "--no-cache")
    code, out, err = run_cli(*common)
    assert code == 0, err
    embedded = json.loads(out)
    code, out, err = run_cli(*common, "--engine", "house-llama")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["environment"]["engine"] == "house-llama"
    assert [c["output"] for c in doc["cases"]] == [c["output"] for c in embedded["cases"]]


def test_unknown_names_list_the_plugins(
    tiny_workspace: Path, run_cli: Run, installed_plugin: Path
) -> None:
    code, _, err = run_cli("eval", "-C", str(tiny_workspace), "--engine", "house-lama")
    assert code == 2
    assert "did you mean 'house-llama'?" in err and "house-llama" in err.split("known:")[1]
    with pytest.raises(ConfigError, match=r"unknown matcher 'lowercse' \(did you mean 'lowercase'"):
        parse_matcher({"matcher": "lowercse"}, path=Path("evals/x.toml"), where="match.category")


def test_a_matcher_plugin_scores_cases_with_its_options(
    tiny_workspace: Path, run_cli: Run, installed_plugin: Path
) -> None:
    matcher = parse_matcher({"matcher": "lowercase"}, path=Path("x.toml"), where="match.category")
    assert matcher.check("  Billing ", "billing") is None
    assert matcher.check("sales", "billing") == "expected 'billing' in any case"
    assert matcher.to_dict() == {"matcher": "lowercase"}

    suite_file = tiny_workspace / "evals" / "triage.toml"
    text = suite_file.read_text(encoding="utf-8")
    suite_file.write_text(
        text.replace('[match.category]\nmatcher = "exact"\n', "")
        + '[match.category]\nmatcher = "lowercase"\nverdict = "no"\n',
        encoding="utf-8",
    )
    (suite,) = load_suites(tiny_workspace / "evals", ["triage"])
    assert suite.match["category"].options == (("verdict", "no"),)
    code, out, err = run_cli(
        "eval", "-C", str(tiny_workspace), "--json", "-q", "--mode", "schema", "--exit-zero"
    )
    assert code == 0, err
    schema_valid = [c for c in json.loads(out)["cases"] if c["schema_valid"]]
    # Every answer the grammar shaped reached the plugin, which refused it with its reason.
    assert schema_valid and all(not c["passed"] for c in schema_valid)
    assert all("the house rule says no" in c["reason"] for c in schema_valid)


def test_the_python_api_evaluates_and_gates_like_the_cli(tiny_workspace: Path) -> None:
    import lifecycle
    import lifecycle.gate  # as any caller may have: the API names must survive it

    workspace = lifecycle.load_workspace(tiny_workspace)
    assert isinstance(workspace, lifecycle.Workspace)
    lines: list[str] = []
    record = lifecycle.evaluate(
        workspace, modes=["free"], limit=2, cache=False, progress=lines.append
    )
    assert isinstance(record, lifecycle.RunRecord)
    assert len(record.cases) == 2 and any("case-0" in line for line in lines)
    verdict = lifecycle.judge(workspace, record)
    assert isinstance(verdict, lifecycle.GateResult)
    assert verdict.exit_code == 0  # no baseline yet: a first pin, nothing to regress from
    with pytest.raises(AttributeError, match="no attribute 'evaluat'"):
        lifecycle.evaluat  # noqa: B018


def test_no_api_name_is_a_submodule_name() -> None:
    import lifecycle

    package = Path(lifecycle.__file__).parent
    modules = {p.stem for p in package.glob("*.py")} | {
        p.name for p in package.iterdir() if p.is_dir()
    }
    assert not set(lifecycle.__all__) & modules


def test_import_lifecycle_is_cheap_and_python_m_lifecycle_runs() -> None:
    heavy = ("lifecycle.api", "lifecycle.gate", "llama_cpp")
    probe = f"import sys, lifecycle; print(sorted(m for m in {heavy} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
    done = subprocess.run(
        [sys.executable, "-m", "lifecycle", "--help"], capture_output=True, text=True, check=True
    )
    assert "Usage:" in done.stdout and "smoke" in done.stdout
