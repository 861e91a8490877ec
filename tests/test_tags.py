"""The one tag grammar: schemes, bare FROM names, and the store/sources split."""

from __future__ import annotations

from pathlib import Path

import pytest

from lifecycle import modelfile as mf
from lifecycle.errors import ModelfileError, TagError
from lifecycle.tags import SCHEMES, Tag, from_tag, has_scheme, parse_tag


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("hf:owner/repo:Q4_K_M", True),
        ("oci://localhost:5000/ns/name:tag", True),
        ("OCI://localhost:5000/ns/name:tag", True),
        ("HF:owner/repo:Q4_K_M", True),  # refused by parse_tag, never read as a name
        ("pypi:pkg", True),
        ("file:/m.gguf", True),
        ("qwen2.5:7b", False),
        ("qwen2.5", False),
        ("pypi", False),  # no colon: an Ollama library name, not a scheme
        ("./model.gguf", False),
    ],
)
def test_has_scheme(text: str, expected: bool) -> None:
    assert has_scheme(text) is expected


def test_from_tag_bare_name_is_an_ollama_library_model() -> None:
    assert from_tag("qwen2.5") == Tag("ollama", "qwen2.5:latest")
    assert from_tag("qwen2.5:7b") == Tag("ollama", "qwen2.5:7b")
    assert from_tag("hf:o/r:Q8_0") == parse_tag("hf:o/r:Q8_0")


def test_from_tag_names_the_modelfile_on_bad_input(tmp_path: Path) -> None:
    where = tmp_path / "x.Modelfile"
    with pytest.raises(ModelfileError) as info:
        from_tag("hf:not a repo", where)
    assert str(where) == info.value.path
    assert "FROM hf:not a repo" in info.value.message
    with pytest.raises(TagError):
        parse_tag("gopher:x")


def test_modelfile_path_rule_uses_the_same_schemes(tmp_path: Path) -> None:
    # Every scheme is a tag for the Modelfile's FROM, even when a file of that name exists.
    for scheme in SCHEMES:
        value = "oci://h/n:t" if scheme == "oci" else f"{scheme}:x.gguf"
        assert mf.resolve_local_path(value, tmp_path, tmp_path) is None
    (tmp_path / "m.gguf").write_bytes(b"")
    assert mf.resolve_local_path("m.gguf", tmp_path, tmp_path) == (tmp_path / "m.gguf").resolve()


def test_store_does_not_import_sources() -> None:
    # The store keeps blobs; where they come from is the sources' business (one layer up).
    import subprocess
    import sys

    code = "import sys, lifecycle.store; print('lifecycle.sources' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_bare_from_name_resolves_to_the_tag_pull_stores(tiny_workspace: Path) -> None:
    # `pull --all` stores FROM qwen-tiny as ollama:qwen-tiny:latest; build must find that
    # same manifest offline (it once looked for ollama:qwen-tiny and went to the network).
    import os

    from lifecycle.config import load_workspace
    from lifecycle.sources import tracked_tags
    from lifecycle.store import Manifest, Store
    from lifecycle.variants import resolve_variants

    modelfile = tiny_workspace / "modelfiles" / "tiny.Modelfile"
    modelfile.write_text(
        modelfile.read_text().replace("FROM ./tiny.gguf", "FROM qwen-tiny"), encoding="utf-8"
    )
    workspace = load_workspace(tiny_workspace)
    store = Store(Path(os.environ["LIFECYCLE_HOME"]))
    digest, size = store.import_file(tiny_workspace / "modelfiles" / "tiny.gguf")
    [tag] = tracked_tags(workspace)
    assert str(tag) == "ollama:qwen-tiny:latest"
    store.write_manifest(
        Manifest(str(tag), "ollama", "sha256:" + "0" * 64, "model", size, digest, "t")
    )
    [variant] = resolve_variants(workspace, store)
    assert variant.blob_digest == digest
