"""Commands take the same targets from anywhere: Modelfile paths and variant names (#15)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

Run = Callable[..., tuple[int, str, str]]

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_prompt_for_a_modelfile_path_works_from_any_directory(
    tiny_workspace: Path, run_cli: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No TEMPLATE: the prompt comes from the GGUF's chat template, so FROM ./tiny.gguf is
    # resolved; the workspace is the Modelfile's, not the current directory.
    from tinymodel import write_tiny_llama

    write_tiny_llama(tiny_workspace / "modelfiles/tiny.gguf", chat_template=CHATML)
    modelfile = tiny_workspace / "modelfiles/tiny.Modelfile"
    modelfile.write_text("FROM ./tiny.gguf\nSYSTEM Be brief.\n")
    messages = tmp_path / "messages.json"
    messages.write_text(json.dumps([{"role": "user", "content": "Hi"}]))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.delenv("LIFECYCLE_WORKSPACE", raising=False)
    code, out, err = run_cli("prompt", str(modelfile), "--messages", str(messages))
    assert (code, err) == (0, "")
    assert out == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_prompt_for_a_modelfile_outside_any_workspace_stays_in_its_folder(
    tiny_model: Path, run_cli: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loose = tmp_path / "loose"
    loose.mkdir()
    modelfile = loose / "m.Modelfile"
    modelfile.write_text("FROM ../outside.gguf\n")
    (tmp_path / "outside.gguf").write_bytes(tiny_model.read_bytes())
    messages = tmp_path / "messages.json"
    messages.write_text(json.dumps([{"role": "user", "content": "Hi"}]))
    monkeypatch.chdir(tmp_path)  # the current directory would contain the file: not the rule
    monkeypatch.delenv("LIFECYCLE_WORKSPACE", raising=False)
    code, _, err = run_cli("prompt", str(modelfile), "--messages", str(messages))
    assert code == 2
    assert "outside the workspace" in err and str(loose) in err


def test_estimate_accepts_a_variant_name(tiny_workspace: Path, run_cli: Run) -> None:
    config = tiny_workspace / "lifecycle.toml"
    config.write_text(config.read_text() + "\n[models.tiny.variants]\nnum_ctx = [512, 1024]\n")
    code, out, err = run_cli(
        "estimate", "tiny:ctx1024", "--ctx", "512", "--json", "-C", str(tiny_workspace)
    )
    assert code == 0, err
    document = json.loads(out)
    assert document["target"] == "tiny:ctx1024"
    assert document["estimates"][0]["weights_bytes"] > 0
    # An unknown name with a colon is still read as a tag, and refused as one.
    code, _, err = run_cli("estimate", "tiny:nope", "-C", str(tiny_workspace))
    assert code == 2 and "tag" in err


def test_estimate_reads_paths_file_tags_and_stored_digests_without_pulling(
    tiny_model: Path, run_cli: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One resolver (lifecycle.targets) for compare, estimate and quantize: the same forms.
    from lifecycle.config import lifecycle_home
    from lifecycle.sources import pull_file
    from lifecycle.store import Store

    monkeypatch.chdir(tmp_path)  # no workspace here
    digest = pull_file(Store(lifecycle_home()), tiny_model).digest
    for target in (str(tiny_model), f"file:{tiny_model}", digest):
        code, out, err = run_cli("estimate", target, "--ctx", "512", "--json")
        assert code == 0, err
        assert json.loads(out)["estimates"][0]["weights_bytes"] > 0
    # estimate reads headers only: a tag never pulled is refused, not pulled.
    code, _, err = run_cli("estimate", "hf:owner/repo:Q4_K_M")
    assert code == 2 and "not in the local store; run `lifecycle pull hf:owner/repo:Q4_K_M`" in err
    code, _, err = run_cli("estimate", "sha256:" + "0" * 64)
    assert code == 2 and "is not in the store" in err
