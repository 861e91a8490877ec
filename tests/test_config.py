"""lifecycle.toml: typed settings, and errors that name the file and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from lifecycle.config import load_workspace
from lifecycle.errors import ConfigError

GOOD = """
[engine]
threads = 4
seed = 1

[models.triage]
modelfile = "modelfiles/triage.Modelfile"
suites = ["triage"]
"""


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "lifecycle.toml").write_text(text, encoding="utf-8")
    return tmp_path


def test_workspace_loads_and_resolves_paths(tmp_path: Path) -> None:
    ws = load_workspace(write(tmp_path, GOOD))
    assert ws.engine.threads == 4 and ws.engine.seed == 1 and ws.engine.name == "llama-cpp"
    assert ws.models["triage"].modelfile == tmp_path / "modelfiles/triage.Modelfile"
    assert ws.models["triage"].suites == ("triage",)
    assert ws.evals_dir == tmp_path / "evals"


def test_workspace_is_found_from_a_subdirectory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, GOOD)
    (tmp_path / "golden").mkdir()
    monkeypatch.chdir(tmp_path / "golden")
    assert load_workspace().root == tmp_path.resolve()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            GOOD.replace("threads = 4", "threads = 4.5"),
            "lifecycle.toml → engine.threads: must be an integer",
        ),
        (GOOD.replace("seed = 1", "sed = 1"), "lifecycle.toml → engine.sed: unknown key"),
        (
            GOOD.replace('suites = ["triage"]', 'suites = "triage"'),
            "models.triage.suites: must be a list of strings",
        ),
        (
            GOOD.replace('modelfile = "modelfiles/triage.Modelfile"', ""),
            "models.triage.modelfile: is required",
        ),
        ("[engine]\nthreads = 1\n", "lifecycle.toml → models: at least one model is required"),
        (GOOD + "\n[engine\n", "lifecycle.toml:10: invalid TOML"),
        # [bench] was accepted and never read: a typo there passed silently.
        (GOOD + "\n[bench]\nn_promt = 32\n", "lifecycle.toml → bench.n_promt: unknown key"),
        (GOOD + "\n[bench]\nn_gen = 0\n", "lifecycle.toml → bench.n_gen: must be >= 1"),
        ("bench = 3\n" + GOOD, "lifecycle.toml → bench: must be a table"),
    ],
)
def test_config_errors_name_the_field(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_workspace(write(tmp_path, text))
    assert message in str(info.value)
    assert info.value.exit_code == 2


def test_bench_table_sets_the_smoke_short_bench(tmp_path: Path) -> None:
    ws = load_workspace(write(tmp_path, GOOD + "\n[bench]\nn_prompt = 32\nrepetitions = 3\n"))
    assert (ws.bench.n_prompt, ws.bench.n_gen, ws.bench.repetitions) == (32, 16, 3)
    assert load_workspace(write(tmp_path, GOOD)).bench.n_prompt == 64


def test_the_tables_are_read_from_the_workspace_parsed_once(tiny_workspace: Path) -> None:
    from lifecycle.compare import read_compare_settings
    from lifecycle.retention import load_settings
    from lifecycle.serve import load_serve_settings

    config = tiny_workspace / "lifecycle.toml"
    config.write_text(
        config.read_text(encoding="utf-8")
        + "[compare]\nmax_pass_rate_drop = 0.07\n[store]\nkeep_runs = 3\n"
        + '[serve]\nmemory = "2GiB"\n[serve.models.tiny]\nconcurrency = 2\n',
        encoding="utf-8",
    )
    workspace = load_workspace(tiny_workspace)
    config.write_text("this is [not toml", encoding="utf-8")  # edited after the load
    assert read_compare_settings(workspace).thresholds.max_pass_rate_drop == 0.07
    assert load_settings(workspace).keep_runs == 3
    serve = load_serve_settings(workspace)
    assert serve is not None and serve.resident("tiny") is not None
