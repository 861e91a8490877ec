"""Inputs that are not what they claim: paths that leave the workspace, golden lines that are
not standard JSON or too large to tokenize, bad matrix values, a dead proxy.

Each goes through the real CLI on the tiny workspace and must end in one line that names the
file (and line or key), with exit 2 for the user's input and 1 for the network, before any
model is loaded.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from lifecycle.golden import MAX_CASE_CHARS, MAX_JSON_DEPTH, MAX_MESSAGE_CHARS

Run = Callable[..., tuple[int, str, str]]
SECRET = "AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG"


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def rewrite(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, (old, text)
    path.write_text(text.replace(old, new), encoding="utf-8")


def set_workspace_key(ws: Path, key: str, value: str) -> None:
    config = ws / "lifecycle.toml"
    config.write_text(f'[workspace]\n{key} = "{value}"\n\n' + config.read_text(), "utf-8")


# --- paths in lifecycle.toml and eval suites stay inside the workspace ----------------------


def test_a_modelfile_outside_the_workspace_is_refused_unread(
    tiny_workspace: Path, run_cli: Run
) -> None:
    outside = tiny_workspace.parent / "outside"
    outside.mkdir()
    (outside / "secret.env").write_text(SECRET + "\n", encoding="utf-8")
    rewrite(
        tiny_workspace / "lifecycle.toml",
        '"modelfiles/tiny.Modelfile"',
        '"../outside/secret.env"',
    )
    code, out, err = run_cli("eval", "-C", str(tiny_workspace), "-q")
    line = one_error_line(err)
    assert code == 2 and out == ""
    assert "lifecycle.toml → models.tiny.modelfile:" in line
    assert "outside the workspace" in line
    assert "AWS_SECRET" not in line and "wJalr" not in line


def test_a_file_that_is_not_a_modelfile_is_not_quoted(tiny_workspace: Path, run_cli: Run) -> None:
    # Inside the workspace, so it is read: the parser must not repeat its first line.
    (tiny_workspace / "modelfiles" / "prod.env").write_text(SECRET + "\n", encoding="utf-8")
    rewrite(tiny_workspace / "lifecycle.toml", "tiny.Modelfile", "prod.env")
    code, _, err = run_cli("eval", "-C", str(tiny_workspace), "-q")
    line = one_error_line(err)
    assert code == 2
    assert "prod.env:1: not a Modelfile instruction" in line
    assert "AWS_SECRET" not in line and "wJalr" not in line


def test_runs_dir_outside_the_workspace_is_refused_and_nothing_is_written(
    tiny_workspace: Path, tmp_path: Path, run_cli: Run
) -> None:
    elsewhere = tmp_path / "elsewhere" / "runs"
    set_workspace_key(tiny_workspace, "runs_dir", str(elsewhere))
    code, _, err = run_cli("eval", "-C", str(tiny_workspace), "-q")
    line = one_error_line(err)
    assert code == 2
    assert "lifecycle.toml → workspace.runs_dir:" in line and "outside the workspace" in line
    assert not (tmp_path / "elsewhere").exists()


def test_a_symlink_cannot_carry_evals_dir_out(
    tiny_workspace: Path, tmp_path: Path, run_cli: Run
) -> None:
    target = tmp_path / "elsewhere-evals"
    target.mkdir()
    (tiny_workspace / "linked-evals").symlink_to(target, target_is_directory=True)
    set_workspace_key(tiny_workspace, "evals_dir", "linked-evals")
    code, _, err = run_cli("eval", "-C", str(tiny_workspace), "-q")
    line = one_error_line(err)
    assert code == 2 and "workspace.evals_dir:" in line and "outside the workspace" in line


@pytest.mark.parametrize("key", ["golden", "schema"])
def test_a_suite_cannot_name_a_golden_set_or_schema_outside_the_workspace(
    tiny_workspace: Path, run_cli: Run, key: str
) -> None:
    suite = tiny_workspace / "evals" / "triage.toml"
    name = {"golden": "triage.jsonl", "schema": "triage.schema.json"}[key]
    (tiny_workspace.parent / name).write_bytes((tiny_workspace / "golden" / name).read_bytes())
    rewrite(suite, f'{key} = "../golden/{name}"', f'{key} = "../../{name}"')
    code, _, err = run_cli("eval", "-C", str(tiny_workspace), "-q")
    line = one_error_line(err)
    assert code == 2
    assert f"evals/triage.toml → {key}:" in line and "outside the workspace" in line


def test_compare_text_outside_the_workspace_is_refused(tiny_workspace: Path, run_cli: Run) -> None:
    (tiny_workspace.parent / "corpus.txt").write_text("some text\n", encoding="utf-8")
    config = tiny_workspace / "lifecycle.toml"
    config.write_text(config.read_text() + '\n[compare]\ntext = "../corpus.txt"\n', "utf-8")
    code, _, err = run_cli("compare", "-C", str(tiny_workspace), "tiny", "tiny")
    line = one_error_line(err)
    assert code == 2 and "lifecycle.toml → compare.text:" in line


# --- golden cases: standard JSON, bounded size, errors with file:line -----------------------


def case_line(**changes: object) -> str:
    case: dict[str, object] = {
        "id": "extra",
        "messages": [{"role": "user", "content": "Where is my refund?"}],
        "expected": {"category": "billing", "confidence": 0.9},
    }
    case.update(changes)
    return json.dumps(case)


def too_long(n: int) -> str:
    return case_line(messages=[{"role": "user", "content": "a" * n}])


def spread_over_turns(n: int) -> str:
    turns = [("user", n), ("assistant", n), ("user", n)]
    return case_line(messages=[{"role": r, "content": "b" * size} for r, size in turns])


@pytest.mark.parametrize(
    ("line", "message"),
    [
        pytest.param(
            case_line().replace("0.9", "NaN"),
            "NaN is not a JSON value",
            id="nan",
        ),
        pytest.param(
            case_line().replace("0.9", "-Infinity"),
            "-Infinity is not a JSON value",
            id="infinity",
        ),
        pytest.param(
            case_line().replace("0.9", "1e999"),
            "number 1e999 is out of range",
            id="overflow",
        ),
        pytest.param(
            case_line(tags="X").replace('"X"', "[" * 100_000 + "]" * 100_000),
            f"nested too deep \\(over {MAX_JSON_DEPTH} levels\\)",
            id="deep-100000",
        ),
        pytest.param(
            case_line(tags="X").replace('"X"', "[" * 100 + "]" * 100),
            "nested too deep",
            id="deep-100",
        ),
        pytest.param(
            case_line(id=7),
            "→ id: 'id' must be a non-empty string, not 7",
            id="id-number",
        ),
        pytest.param(
            too_long(MAX_MESSAGE_CHARS + 1),
            f"→ messages\\[0\\].content: case 'extra': the message has "
            f"{MAX_MESSAGE_CHARS + 1:,} characters, over the limit",
            id="message-too-long",
        ),
        pytest.param(
            too_long(5_000_000),
            "over the limit of 100,000 per message",
            id="five-megabytes",
        ),
        pytest.param(
            spread_over_turns(MAX_CASE_CHARS // 3 + 1),
            f"→ messages: case 'extra': its messages have {3 * (MAX_CASE_CHARS // 3 + 1):,} "
            "characters together",
            id="case-too-long",
        ),
    ],
)
def test_a_bad_golden_line_is_named_by_file_and_line(
    tiny_workspace: Path, run_cli: Run, line: str, message: str
) -> None:
    import re

    golden = tiny_workspace / "golden" / "triage.jsonl"
    golden.write_text(golden.read_text(encoding="utf-8") + line + "\n", encoding="utf-8")
    code, out, err = run_cli("eval", "-C", str(tiny_workspace), "-q", "--json")
    got = one_error_line(err)
    assert code == 2 and out == ""
    assert got.startswith(f"error: {golden}:5"), got
    assert re.search(message, got), got
    assert len(got) < 400  # the 5 MB of text are not in the message


def test_invalid_utf8_is_named_by_line_not_byte_offset(tiny_workspace: Path, run_cli: Run) -> None:
    golden = tiny_workspace / "golden" / "triage.jsonl"
    golden.write_bytes(golden.read_bytes() + b'{"id": "caf\xe9"}\n')
    code, _, err = run_cli("eval", "-C", str(tiny_workspace), "-q")
    line = one_error_line(err)
    assert code == 2
    assert line == f"error: {golden}:5: not UTF-8: invalid byte 0xe9 at byte 12 of the line"


def test_a_case_at_the_size_limits_loads(tiny_workspace: Path) -> None:
    from lifecycle.golden import load_suite

    golden = tiny_workspace / "golden" / "triage.jsonl"
    extra = too_long(MAX_MESSAGE_CHARS)
    golden.write_text(golden.read_text(encoding="utf-8") + extra + "\n", encoding="utf-8")
    suite = load_suite(tiny_workspace / "evals" / "triage.toml")
    assert len(suite.cases[-1].messages[0]["content"]) == MAX_MESSAGE_CHARS


def test_a_schema_with_nan_is_refused(tiny_workspace: Path, run_cli: Run) -> None:
    schema = tiny_workspace / "golden" / "triage.schema.json"
    rewrite(schema, '"maximum": 1', '"maximum": NaN')
    code, _, err = run_cli("eval", "-C", str(tiny_workspace), "-q")
    line = one_error_line(err)
    assert code == 2 and f"{schema}:1: JSON Schema is not valid JSON: NaN" in line


# --- the variant matrix and selection ---------------------------------------------------------


def test_a_negative_num_ctx_in_the_matrix_names_file_and_field(
    tiny_workspace: Path, run_cli: Run
) -> None:
    config = tiny_workspace / "lifecycle.toml"
    config.write_text(config.read_text() + "\n[models.tiny.variants]\nnum_ctx = [-5]\n", "utf-8")
    code, _, err = run_cli("eval", "-C", str(tiny_workspace), "-q")
    line = one_error_line(err)
    assert code == 2
    assert line == (
        f"error: {config} → models.tiny.variants.num_ctx: -5 is not a valid num_ctx (must be >= 1)"
    )


def test_a_negative_num_ctx_in_the_modelfile_names_it(tiny_workspace: Path, run_cli: Run) -> None:
    modelfile = tiny_workspace / "modelfiles" / "tiny.Modelfile"
    rewrite(modelfile, "PARAMETER num_ctx 1024", "PARAMETER num_ctx -5")
    code, _, err = run_cli("eval", "-C", str(tiny_workspace), "-q")
    line = one_error_line(err)
    assert code == 2 and line == f"error: {modelfile} → PARAMETER num_ctx: must be >= 1, not -5"


def test_an_unknown_model_lists_each_known_name_once(tiny_workspace: Path, run_cli: Run) -> None:
    code, _, err = run_cli("eval", "-C", str(tiny_workspace), "-q", "-m", "tinyy")
    line = one_error_line(err)
    assert code == 2 and line.endswith("known: tiny"), line


# --- the network ------------------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_dead_proxy_is_named_not_the_registry(
    tmp_path: Path, run_cli: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy_port, registry_port = closed_port(), closed_port()
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://bot:hunter2@127.0.0.1:{proxy_port}")
    monkeypatch.setenv("LIFECYCLE_RETRY_ATTEMPTS", "1")
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli("pull", f"oci://127.0.0.1:{registry_port}/team/tiny:v1")
    line = one_error_line(
        err.replace(f"pulling oci://127.0.0.1:{registry_port}/team/tiny:v1\n", "")
    )
    assert code == 1
    assert f"through the proxy http://127.0.0.1:{proxy_port} (HTTP_PROXY)" in line, line
    assert "hunter2" not in line

    monkeypatch.setenv("NO_PROXY", "127.0.0.1")  # bypassed: the registry itself is named
    code, _, err = run_cli("pull", f"oci://127.0.0.1:{registry_port}/team/tiny:v1")
    assert code == 1 and "cannot reach the registry: " in err and "proxy" not in err
