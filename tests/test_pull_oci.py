"""OCI / Ollama pulls against a real registry (Debian's docker-registry on loopback)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from itertools import count

import pytest
from _pull_fixtures import (  # noqa: F401  (fixtures)
    blobs_and_partials,
    other_tiny_bytes,
    registry,
    store,
    tiny_bytes,
)
from registry import Registry

from lifecycle import sources
from lifecycle.errors import StoreError
from lifecycle.sources.oci import MAX_MANIFEST_BYTES, OCIRef
from lifecycle.store import Store, Tag, parse_tag

_names = count()

LAYERS = {
    "template": b"{{ if .System }}<|system|>{{ .System }}{{ end }}<|user|>{{ .Prompt }}",
    "system": b"Reply with JSON only.",
    "params": json.dumps({"stop": ["<|end|>", "<|user|>"], "temperature": 0.2}).encode(),
    "messages": json.dumps([{"role": "user", "content": "hi"}]).encode(),
    "license": b"MIT, for tests",
}


def fresh_repo() -> str:
    """A repository name no other test uses (the registry lives for the whole session)."""
    return f"test/model{next(_names)}"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_ollama_tags_map_to_the_ollama_registry() -> None:
    assert OCIRef.from_tag(parse_tag("ollama:qwen2.5")) == OCIRef(
        "https://registry.ollama.ai", "library/qwen2.5", "latest"
    )
    assert OCIRef.from_tag(parse_tag("ollama:me/model:q4")).repository == "me/model"
    assert OCIRef.from_tag(parse_tag("oci://localhost:5000/a/b:c")).registry.startswith("http:")
    assert OCIRef.from_tag(parse_tag("oci://ghcr.io/a/b:c")).registry == "https://ghcr.io"


def test_pull_stores_model_layer_and_writes_modelfile(
    registry: Registry,  # noqa: F811
    store: Store,  # noqa: F811
    tiny_bytes: bytes,  # noqa: F811
) -> None:
    repo = fresh_repo()
    revision = registry.push_model(repo, "v1", tiny_bytes, layers=LAYERS)
    tag = parse_tag(f"oci://{registry.host}/{repo}:v1")
    manifest = sources.pull(store, tag)
    assert manifest.revision == revision
    assert manifest.digest == sha(tiny_bytes) and manifest.size == len(tiny_bytes)
    assert manifest.source == "oci" and manifest.upstream == f"{registry.url}/{repo}"
    assert store.blob_path(manifest.digest).read_bytes() == tiny_bytes
    assert store.read_manifest(tag) == manifest
    modelfile = store.modelfile_path(tag).read_text(encoding="utf-8")
    from lifecycle import modelfile as mf

    parsed = mf.parse(modelfile)
    assert parsed.from_ == [str(tag)]
    assert parsed.template == LAYERS["template"].decode()
    assert parsed.system == "Reply with JSON only."
    assert parsed.parameters["stop"] == ["<|end|>", "<|user|>"]
    assert parsed.parameters["temperature"] == 0.2
    assert [(m.role, m.content) for m in parsed.messages] == [("user", "hi")]
    assert parsed.license == ["MIT, for tests"]


def test_retag_is_detected_by_check_without_download(
    registry: Registry,  # noqa: F811
    store: Store,  # noqa: F811
    tiny_bytes: bytes,  # noqa: F811
    other_tiny_bytes: bytes,  # noqa: F811
    run_cli: Callable[..., tuple[int, str, str]],
) -> None:
    repo = fresh_repo()
    old_rev = registry.push_model(repo, "latest", tiny_bytes)
    text = f"oci://{registry.host}/{repo}:latest"
    code, out, _ = run_cli("pull", "--check", text, "--json")
    assert code == 4 and json.loads(out)["tags"][0]["status"] == "new"
    assert run_cli("pull", text, "--json")[0] == 0
    code, out, _ = run_cli("pull", "--check", text, "--json")
    assert (code, json.loads(out)["changed"]) == (0, False)

    new_rev = registry.push_model(repo, "latest", other_tiny_bytes)  # silent re-publish
    code, out, err = run_cli("pull", "--check", text, "--json")
    change = json.loads(out)["tags"][0]
    assert code == 4, err
    assert change == {
        "tag": text,
        "status": "changed",
        "old_revision": old_rev,
        "old_digest": sha(tiny_bytes),
        "new_revision": new_rev,
        "new_digest": sha(other_tiny_bytes),
    }
    assert not store.has(sha(other_tiny_bytes))  # --check downloaded no weights
    code, out, _ = run_cli("pull", "--check", text)
    assert code == 4 and f"{old_rev} → {new_rev}" in out
    assert run_cli("pull", text)[0] == 0
    assert run_cli("pull", "--check", text)[0] == 0
    assert store.has(sha(other_tiny_bytes))


def test_manifest_without_model_layer(registry: Registry, store: Store) -> None:  # noqa: F811
    repo = fresh_repo()
    registry.push_model(repo, "v1", None, layers={"template": b"{{ .Prompt }}"})
    with pytest.raises(StoreError, match=r"has 0 application/vnd\.ollama\.image\.model layers"):
        sources.pull(store, parse_tag(f"oci://{registry.host}/{repo}:v1"))
    assert blobs_and_partials(store) == ([], [])


def test_oversized_manifest_is_refused(
    registry: Registry,  # noqa: F811
    store: Store,  # noqa: F811
    tiny_bytes: bytes,  # noqa: F811
) -> None:
    repo = fresh_repo()
    registry.push_model(repo, "big", tiny_bytes, padding=MAX_MANIFEST_BYTES + 10)
    with pytest.raises(StoreError, match=r"manifest is \d+ bytes"):
        sources.pull(store, parse_tag(f"oci://{registry.host}/{repo}:big"))
    assert blobs_and_partials(store) == ([], [])


def test_oversized_small_layer_is_refused(
    registry: Registry,  # noqa: F811
    store: Store,  # noqa: F811
    tiny_bytes: bytes,  # noqa: F811
) -> None:
    repo = fresh_repo()
    registry.push_model(repo, "v1", tiny_bytes, layers={"license": b"x" * (2 << 20)})
    with pytest.raises(StoreError, match="license layer is 2097152 bytes"):
        sources.pull(store, parse_tag(f"oci://{registry.host}/{repo}:v1"))


def test_missing_tag_is_a_clear_error(
    registry: Registry,  # noqa: F811
    run_cli: Callable[..., tuple[int, str, str]],
) -> None:
    text = f"oci://{registry.host}/nobody/nothing:v9"
    code, out, err = run_cli("pull", text)
    assert code == 1 and out == ""
    assert err.splitlines()[-1] == f"error: {text}: manifest not found in the registry (HTTP 404)"


def test_corrupt_blob_in_registry_is_rejected(
    registry: Registry,  # noqa: F811
    store: Store,  # noqa: F811
    other_tiny_bytes: bytes,  # noqa: F811
) -> None:
    repo = fresh_repo()
    data = other_tiny_bytes + b"corrupt-me"
    registry.push_model(repo, "v1", data)
    on_disk = registry.blob_file(sha(data))
    on_disk.write_bytes(data[:-1] + b"!")  # same size, wrong bytes
    with pytest.raises(StoreError, match="digest mismatch"):
        sources.pull(store, parse_tag(f"oci://{registry.host}/{repo}:v1"))
    assert blobs_and_partials(store) == ([], [])
    assert store.list_manifests() == []


def test_partial_download_resumes_with_range(
    registry: Registry,  # noqa: F811
    store: Store,  # noqa: F811
    tiny_bytes: bytes,  # noqa: F811
) -> None:
    repo = fresh_repo()
    registry.push_model(repo, "v1", tiny_bytes)
    tag = parse_tag(f"oci://{registry.host}/{repo}:v1")
    store.blobs.mkdir(parents=True)
    partial = store.blobs / f".{sha(tiny_bytes).replace(':', '-')}.partial"
    # A wrong prefix proves the registry was asked only for the rest (Range): the digest fails.
    partial.write_bytes(b"\x00" * 4096)
    with pytest.raises(StoreError, match="digest mismatch"):
        sources.pull(store, tag)
    assert not partial.exists()
    partial.write_bytes(tiny_bytes[: len(tiny_bytes) // 2])  # a genuine interrupted download
    manifest = sources.pull(store, tag)
    assert store.blob_path(manifest.digest).read_bytes() == tiny_bytes
    assert blobs_and_partials(store)[1] == []


def test_show_reads_the_header_by_range_before_pulling(
    registry: Registry,  # noqa: F811
    store: Store,  # noqa: F811
    tiny_bytes: bytes,  # noqa: F811
    run_cli: Callable[..., tuple[int, str, str]],
) -> None:
    repo = fresh_repo()
    registry.push_model(repo, "v1", tiny_bytes)
    code, out, err = run_cli("show", f"oci://{registry.host}/{repo}:v1", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["in_store"] is False and doc["gguf"]["architecture"] == "llama"
    assert doc["gguf"]["file_size"] == len(tiny_bytes)
    assert blobs_and_partials(store) == ([], [])


PULL = "from lifecycle.cli import main; main(['pull', '--json', {tag!r}])"


def test_two_concurrent_pulls_end_with_one_blob(
    registry: Registry,  # noqa: F811
    store: Store,  # noqa: F811
    tiny_bytes: bytes,  # noqa: F811
) -> None:
    repo = fresh_repo()
    registry.push_model(repo, "v1", tiny_bytes)
    tag = f"oci://{registry.host}/{repo}:v1"
    env = {**os.environ, "LIFECYCLE_HOME": str(store.home)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", PULL.format(tag=tag)], env=env, stdout=subprocess.PIPE
        )
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=60)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0]
    digests = {json.loads(o)["pulled"][0]["digest"] for o in outputs}
    assert digests == {sha(tiny_bytes)}
    assert blobs_and_partials(store) == ([sha(tiny_bytes).replace(":", "-")], [])
    assert store.verify()[0].status == "ok"


def test_hostile_layer_digest_never_touches_a_path(store: Store) -> None:  # noqa: F811
    from lifecycle.sources.oci import _layers

    for digest in ("sha256:../../x", "sha256:" + "a" * 63):
        manifest = {"layers": [{"mediaType": "x", "digest": digest, "size": 1}]}
        with pytest.raises(StoreError, match="invalid digest"):
            _layers(manifest, Tag("oci", "h/n:t"))
