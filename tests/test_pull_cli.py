"""The store commands through the real CLI: pull, list, show, rm, verify, exit codes, --json."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from _pull_fixtures import (  # noqa: F401  (fixtures)
    blobs_and_partials,
    hub,
    other_tiny_bytes,
    store,
    tiny_bytes,
)
from hub_server import Hub

from lifecycle.store import Store

Run = Callable[..., tuple[int, str, str]]


def test_pull_list_show_rm_verify_on_a_file(
    run_cli: Run,
    store: Store,  # noqa: F811
    tiny_model: Path,
) -> None:
    code, out, err = run_cli("pull", f"file:{tiny_model}", "--json")
    assert code == 0, err
    pulled = json.loads(out)["pulled"][0]
    assert pulled["tag"] == f"file:{tiny_model}" and pulled["source"] == "file"
    assert set(pulled) >= {"revision", "filename", "size", "digest", "pulled_at"}

    code, out, _ = run_cli("list", "--json")
    assert [m["digest"] for m in json.loads(out)["models"]] == [pulled["digest"]]
    code, out, _ = run_cli("list")
    assert f"file:{tiny_model}" in out and pulled["digest"][7:19] in out

    code, out, _ = run_cli("show", f"file:{tiny_model}", "--json")
    doc = json.loads(out)
    assert doc["in_store"] is True and doc["manifest"]["digest"] == pulled["digest"]
    assert doc["gguf"]["architecture"] == "llama" and doc["gguf"]["tensors"] is None
    code, out, _ = run_cli("show", f"file:{tiny_model}")
    assert code == 0 and "architecture" in out and "llama" in out and pulled["revision"] in out

    code, out, _ = run_cli("verify", "--json")
    assert (code, json.loads(out)["ok"]) == (0, True)
    store.blob_path(pulled["digest"]).write_bytes(b"GGUF broken")
    code, out, _ = run_cli("verify", "--json")
    assert code == 1 and json.loads(out)["blobs"][0]["status"] == "corrupt"
    assert "PROBLEMS FOUND" in run_cli("verify")[1]

    code, out, _ = run_cli("rm", f"file:{tiny_model}", "--json")
    assert code == 0 and json.loads(out)["removed"][0]["deleted_blobs"] == [pulled["digest"]]
    assert blobs_and_partials(store) == ([], [])
    code, _, err = run_cli("rm", f"file:{tiny_model}")
    assert code == 1 and "not in the store" in err


@pytest.mark.parametrize(
    "args",
    [
        ("pull", "qwen2.5"),
        ("pull", "hf:only-owner"),
        ("pull", "--check", "oci://host/no-tag"),
        ("show", "s3:bucket/model"),
        ("rm", "ollama:Bad Name"),
        ("pull",),
        ("pull", "--all", "pypi:x"),
    ],
)
def test_usage_errors_exit_2(run_cli: Run, args: tuple[str, ...]) -> None:
    code, out, err = run_cli(*args)
    assert (code, out) == (2, "")
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1


def test_json_output_is_one_document_and_progress_is_on_stderr(
    run_cli: Run,
    tiny_model: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("LIFECYCLE_NO_PROGRESS", raising=False)
    code, out, err = run_cli("pull", f"file:{tiny_model}", "--json")
    assert code == 0
    json.loads(out)  # exactly one document
    assert err == f"pulling file:{tiny_model}\n"  # stderr is not a TTY here: no bar


def test_progress_bars_draw_on_stderr_only(capsys: pytest.CaptureFixture[str]) -> None:
    from lifecycle.cli._output import ProgressBars

    bars = ProgressBars(enabled=True)
    bars("model.gguf", 50, 100)
    bars("model.gguf", 100, 100)
    bars.close()
    quiet = ProgressBars(enabled=False)
    quiet("other.gguf", 1, 2)
    quiet.close()
    out, err = capsys.readouterr()
    assert out == "" and "model.gguf" in err and "other.gguf" not in err


def write_workspace(root: Path, froms: list[str]) -> Path:
    (root / "modelfiles").mkdir(parents=True)
    config = ""
    for i, source in enumerate(froms):
        (root / "modelfiles" / f"m{i}.Modelfile").write_text(f"FROM {source}\n", encoding="utf-8")
        config += f'[models.m{i}]\nmodelfile = "modelfiles/m{i}.Modelfile"\n'
    (root / "lifecycle.toml").write_text(config, encoding="utf-8")
    return root


def test_pull_all_and_check_use_the_workspace_tags(
    run_cli: Run,
    hub: Hub,  # noqa: F811
    tiny_bytes: bytes,  # noqa: F811
    other_tiny_bytes: bytes,  # noqa: F811
    tmp_path: Path,
) -> None:
    commit = hub.publish("acme/m", {"m-Q4_K_M.gguf": tiny_bytes})
    ws = write_workspace(tmp_path / "ws", ["hf:acme/m:Q4_K_M", "./local.gguf"])
    (ws / "modelfiles" / "local.gguf").write_bytes(tiny_bytes)

    code, out, err = run_cli("pull", "--all", "-C", str(ws), "--json")
    assert code == 0, err
    assert [(m["tag"], m["revision"]) for m in json.loads(out)["pulled"]] == [
        ("hf:acme/m:Q4_K_M", commit)
    ]
    assert run_cli("pull", "--check", "-C", str(ws))[0] == 0
    hub.publish("acme/m", {"m-Q4_K_M.gguf": other_tiny_bytes})
    code, out, _ = run_cli("pull", "--check", "-C", str(ws))
    assert code == 4 and out.startswith("changed    hf:acme/m:Q4_K_M")


def test_pull_check_of_an_unchanged_file_and_a_new_one(
    run_cli: Run,
    tmp_path: Path,
    tiny_bytes: bytes,  # noqa: F811
    other_tiny_bytes: bytes,  # noqa: F811
) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(tiny_bytes)
    code, out, _ = run_cli("pull", "--check", f"file:{model}", "--json")
    assert code == 4 and json.loads(out)["tags"][0]["status"] == "new"
    run_cli("pull", f"file:{model}")
    assert run_cli("pull", "--check", f"file:{model}")[0] == 0
    model.write_bytes(other_tiny_bytes)
    code, out, _ = run_cli("pull", "--check", f"file:{model}")
    assert code == 4 and "changed" in out
