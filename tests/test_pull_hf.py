"""hf: pulls through the real huggingface_hub client against a local hub stand-in."""

from __future__ import annotations

import hashlib
import json
import secrets
import time
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

from lifecycle import sources
from lifecycle.errors import ModelError, StoreError
from lifecycle.sources.hf import HFRef, select_files
from lifecycle.store import Store, Tag, parse_tag

REPO = "acme/tiny-GGUF"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def publish_quants(hub: Hub, tiny: bytes, other: bytes) -> str:  # noqa: F811
    return hub.publish(
        REPO,
        {
            "README.md": b"# tiny",
            "tiny-q4_k_m.gguf": tiny,
            "tiny-Q4_K_S.gguf": other,
            "tiny-Q8_0.gguf": other + b"8",
        },
    )


def test_pull_picks_the_quant_case_insensitively(
    hub: Hub,  # noqa: F811
    store: Store,  # noqa: F811
    tiny_bytes: bytes,  # noqa: F811
    other_tiny_bytes: bytes,  # noqa: F811
) -> None:
    commit = publish_quants(hub, tiny_bytes, other_tiny_bytes)
    manifest = sources.pull(store, parse_tag(f"hf:{REPO}:Q4_K_M"))
    assert manifest.revision == commit
    assert (manifest.filename, manifest.size) == ("tiny-q4_k_m.gguf", len(tiny_bytes))
    assert manifest.digest == sha(tiny_bytes)
    assert manifest.upstream == f"{hub.url}/{REPO}"
    assert store.blob_path(manifest.digest).read_bytes() == tiny_bytes
    # The file was fetched at the resolved commit, not at the moving branch name.
    resolves = [p for m, p, _ in hub.requests if "/resolve/" in p]
    assert resolves == [f"/{REPO}/resolve/{commit}/tiny-q4_k_m.gguf"]


def test_a_pull_on_the_way_reports_to_the_commands_progress_bars(
    hub: Hub,  # noqa: F811
    store: Store,  # noqa: F811
    tiny_bytes: bytes,  # noqa: F811
    other_tiny_bytes: bytes,  # noqa: F811
) -> None:
    from lifecycle import progress

    publish_quants(hub, tiny_bytes, other_tiny_bytes)
    seen: list[tuple[str, int, int | None]] = []
    with progress.reporting(lambda label, done, total: seen.append((label, done, total))):
        # resolve_tag pulls a FROM that is not in the store yet, as eval and smoke do.
        sources.resolve_tag(store, parse_tag(f"hf:{REPO}:Q4_K_M"))
    assert seen and seen[-1][1] == len(tiny_bytes) == seen[-1][2]


def test_quant_selection_rules() -> None:
    names = [
        "a/model-Q4_K_M.gguf",
        "a/model-Q4_K.gguf",
        "mmproj-model-Q4_K_M.gguf",
        "b/big-Q8_0-00002-of-00002.gguf",
        "b/big-Q8_0-00001-of-00002.gguf",
        "model-IQ4_XS.gguf",
    ]
    tag = Tag("hf", "o/r:x")

    def pick(ref: str) -> list[str]:
        return select_files(HFRef.parse(ref), names, tag)

    assert pick("o/r:q4_k_m") == ["a/model-Q4_K_M.gguf"]
    assert pick("o/r:Q4_K") == ["a/model-Q4_K.gguf"]
    assert pick("o/r:q8_0") == ["b/big-Q8_0-00001-of-00002.gguf", "b/big-Q8_0-00002-of-00002.gguf"]
    assert pick("o/r/b/big-Q8_0-00001-of-00002.gguf") == pick("o/r:Q8_0")
    assert pick("o/r:IQ4_XS") == ["model-IQ4_XS.gguf"]
    with pytest.raises(StoreError, match="no GGUF file for quant Q2_K"):
        pick("o/r:Q2_K")
    with pytest.raises(StoreError, match=r"no file a/missing\.gguf"):
        pick("o/r/a/missing.gguf")
    with pytest.raises(StoreError, match="matches several models"):
        select_files(HFRef.parse("o/r:Q4_K_M"), [*names, "c/other-Q4_K_M.gguf"], tag)
    with pytest.raises(StoreError, match="incomplete shard set"):
        select_files(HFRef.parse("o/r:Q8_0"), names[3:4], tag)


def test_sharded_model_is_one_model(hub: Hub, store: Store) -> None:  # noqa: F811
    shards = {f"big-Q8_0-0000{i}-of-00003.gguf": bytes([i]) * (1000 + i) for i in (1, 2, 3)}
    hub.publish(REPO, shards)
    manifest = sources.pull(store, parse_tag(f"hf:{REPO}:q8_0"))
    assert [p.filename for p in manifest.parts] == sorted(shards)
    assert manifest.total_size == sum(len(d) for d in shards.values())
    first = store.model_path(manifest)
    assert first.name == "big-Q8_0-00001-of-00003.gguf"
    for name, data in shards.items():
        assert (first.parent / name).read_bytes() == data


def test_path_tag_at_a_revision(
    hub: Hub,  # noqa: F811
    store: Store,  # noqa: F811
    tiny_bytes: bytes,  # noqa: F811
    other_tiny_bytes: bytes,  # noqa: F811
) -> None:
    old = hub.publish(REPO, {"sub/m.gguf": tiny_bytes})
    hub.publish(REPO, {"sub/m.gguf": other_tiny_bytes})
    manifest = sources.pull(store, parse_tag(f"hf:{REPO}/sub/m.gguf@{old}"))
    assert (manifest.revision, manifest.digest) == (old, sha(tiny_bytes))
    assert sources.pull(store, parse_tag(f"hf:{REPO}/sub/m.gguf")).digest == sha(other_tiny_bytes)


def test_bytes_not_matching_the_lfs_sha256_are_rejected(
    hub: Hub,  # noqa: F811
    store: Store,  # noqa: F811
    tiny_bytes: bytes,  # noqa: F811
    other_tiny_bytes: bytes,  # noqa: F811
) -> None:
    publish_quants(hub, tiny_bytes, other_tiny_bytes)
    good = hashlib.sha256(tiny_bytes).hexdigest()
    hub.corrupt[good] = tiny_bytes[:-1] + b"\x00"
    with pytest.raises(StoreError, match=f"digest mismatch: expected sha256:{good}"):
        sources.pull(store, parse_tag(f"hf:{REPO}:Q4_K_M"))
    assert blobs_and_partials(store) == ([], [])
    assert store.list_manifests() == []


def test_truncated_transfer_then_resume(
    hub: Hub,  # noqa: F811
    store: Store,  # noqa: F811
    tiny_bytes: bytes,  # noqa: F811
    other_tiny_bytes: bytes,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LIFECYCLE_RETRY_ATTEMPTS", "1")  # no retries: the next pull resumes
    publish_quants(hub, tiny_bytes, other_tiny_bytes)
    tag = parse_tag(f"hf:{REPO}:Q4_K_M")
    hub.truncate_next = 1_000_000
    with pytest.raises(StoreError, match=r"transfer ended after 1000000 of \d+ bytes"):
        sources.pull(store, tag)
    assert store.read_manifest(tag) is None
    assert len(blobs_and_partials(store)[1]) == 1
    manifest = sources.pull(store, tag)
    assert hub.cdn_requests() == [None, "bytes=1000000-"]
    assert store.blob_path(manifest.digest).read_bytes() == tiny_bytes
    assert blobs_and_partials(store)[1] == []


def test_server_that_ignores_range(
    hub: Hub,  # noqa: F811
    store: Store,  # noqa: F811
    tiny_bytes: bytes,  # noqa: F811
    other_tiny_bytes: bytes,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LIFECYCLE_RETRY_ATTEMPTS", "1")
    publish_quants(hub, tiny_bytes, other_tiny_bytes)
    tag = parse_tag(f"hf:{REPO}:Q4_K_M")
    hub.truncate_next = 700_000
    with pytest.raises(StoreError, match="pull again to resume"):
        sources.pull(store, tag)
    hub.ignore_range = True
    manifest = sources.pull(store, tag)
    assert hub.cdn_requests()[-1] == "bytes=700000-"  # asked, got a 200 with everything
    assert store.blob_path(manifest.digest).read_bytes() == tiny_bytes


def test_check_sees_a_new_commit_without_downloading(
    hub: Hub,  # noqa: F811
    store: Store,  # noqa: F811
    tiny_bytes: bytes,  # noqa: F811
    other_tiny_bytes: bytes,  # noqa: F811
    run_cli: Callable[..., tuple[int, str, str]],
) -> None:
    first = publish_quants(hub, tiny_bytes, other_tiny_bytes)
    text = f"hf:{REPO}:Q4_K_M"
    assert run_cli("pull", text)[0] == 0
    assert run_cli("pull", "--check", text)[0] == 0
    second = hub.publish(REPO, {"tiny-Q4_K_M.gguf": other_tiny_bytes})
    downloads = len(hub.cdn_requests())
    code, out, _ = run_cli("pull", "--check", text, "--json")
    assert code == 4
    change = json.loads(out)["tags"][0]
    assert (change["old_revision"], change["new_revision"]) == (first, second)
    assert change["new_digest"] == sha(other_tiny_bytes)
    assert len(hub.cdn_requests()) == downloads


def test_missing_repo_revision_and_quant(
    hub: Hub,  # noqa: F811
    store: Store,  # noqa: F811
    run_cli: Callable[..., tuple[int, str, str]],
) -> None:
    hub.publish(REPO, {"tiny-Q8_0.gguf": b"GGUF"})
    cases = {
        "hf:acme/nothing:Q4_K_M": f"repository acme/nothing not found on {hub.url}, or it is "
        "private: set HF_TOKEN (or run `hf auth login`) with a token that can read it",
        f"hf:{REPO}:Q4_K_M@v9": f"revision v9 not found in {REPO}",
        f"hf:{REPO}:Q4_K_M": "no GGUF file for quant Q4_K_M (GGUF files: tiny-Q8_0.gguf)",
    }
    for text, message in cases.items():
        code, out, err = run_cli("pull", text)
        assert code == 1 and out == ""
        assert err.splitlines()[-1] == f"error: {text}: {message}"


def test_show_reads_only_the_header_by_range(
    hub: Hub,  # noqa: F811
    store: Store,  # noqa: F811
    tiny_bytes: bytes,  # noqa: F811
    other_tiny_bytes: bytes,  # noqa: F811
    run_cli: Callable[..., tuple[int, str, str]],
) -> None:
    commit = publish_quants(hub, tiny_bytes, other_tiny_bytes)
    code, out, err = run_cli("show", f"hf:{REPO}:Q4_K_M", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["in_store"] is False and doc["upstream"]["revision"] == commit
    assert doc["gguf"]["architecture"] == "llama" and doc["gguf"]["file_size"] == len(tiny_bytes)
    assert hub.cdn_requests() == ["bytes=0-1048575"]  # the tiny header fits the first MiB
    assert blobs_and_partials(store) == ([], [])


def test_show_rejects_a_malformed_remote_header(
    hub: Hub,  # noqa: F811
    run_cli: Callable[..., tuple[int, str, str]],
) -> None:
    hub.publish(REPO, {"bad-Q4_0.gguf": b"GGUF" + b"\xff" * 100})
    code, out, err = run_cli("show", f"hf:{REPO}:Q4_0")
    assert (code, out) == (1, "")
    assert "unsupported GGUF version" in err and len(err.splitlines()) == 1
    from lifecycle.sources import hf

    with pytest.raises(ModelError, match="unsupported GGUF version"):
        hf.read_header(parse_tag(f"hf:{REPO}:Q4_0"))


@pytest.fixture
def no_hf_token(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No token from the environment or a saved login; returns where a login would save one."""
    from huggingface_hub import constants

    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    saved = tmp_path / "hf-home" / "token"
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(saved))
    monkeypatch.setenv("LIFECYCLE_RETRY_BASE", "0.01")
    return saved


def test_private_repo_with_hf_token_or_saved_login(
    hub: Hub,  # noqa: F811
    store: Store,  # noqa: F811
    tiny_bytes: bytes,  # noqa: F811
    other_tiny_bytes: bytes,  # noqa: F811
    no_hf_token: Path,
    monkeypatch: pytest.MonkeyPatch,
    run_cli: Callable[..., tuple[int, str, str]],
) -> None:
    token = "hf_" + secrets.token_hex(16)
    hub.tokens.add(token)
    hub.private[REPO] = token
    publish_quants(hub, tiny_bytes, other_tiny_bytes)
    text = f"hf:{REPO}:Q4_K_M"

    code, out, err = run_cli("pull", text)
    assert (code, out) == (1, "")
    assert err.strip().splitlines()[1:] == [
        f"error: {text}: repository {REPO} not found on {hub.url}, or it is private: set "
        "HF_TOKEN (or run `hf auth login`) with a token that can read it"
    ]

    monkeypatch.setenv("HF_TOKEN", token)
    code, out, err = run_cli("pull", text, "--json")
    assert code == 0, err
    assert f"Bearer {token}" in hub.authorizations  # huggingface_hub sent it, not our code
    assert token not in out + err

    # The token `hf auth login` saves is used the same way (huggingface_hub reads it).
    monkeypatch.delenv("HF_TOKEN")
    no_hf_token.parent.mkdir(parents=True)
    no_hf_token.write_text(token, encoding="utf-8")
    store.remove(parse_tag(text))
    code, _, err = run_cli("pull", text)
    assert code == 0, err


def test_gated_repo_and_bad_tokens_are_one_line_errors(
    hub: Hub,  # noqa: F811
    tiny_bytes: bytes,  # noqa: F811
    other_tiny_bytes: bytes,  # noqa: F811
    no_hf_token: Path,
    monkeypatch: pytest.MonkeyPatch,
    run_cli: Callable[..., tuple[int, str, str]],
) -> None:
    granted, ungranted = "hf_" + secrets.token_hex(16), "hf_" + secrets.token_hex(16)
    hub.tokens |= {granted, ungranted}
    hub.gated[REPO] = {granted}
    publish_quants(hub, tiny_bytes, other_tiny_bytes)
    text = f"hf:{REPO}:Q4_K_M"
    gated = (
        f"error: {text}: {REPO} is a gated repository: accept its conditions at "
        f"{hub.url}/{REPO}, then set HF_TOKEN (or run `hf auth login`) with a token of the "
        "account that was granted access"
    )
    outputs = []
    for token, expected in (
        (None, gated),
        (ungranted, gated),
        (
            "hf_" + secrets.token_hex(16),
            f"error: {text}: {hub.url} rejected the token from HF_TOKEN (HTTP 401: invalid or "
            "expired); set HF_TOKEN (or run `hf auth login`) with a token that is valid",
        ),
    ):
        if token:
            monkeypatch.setenv("HF_TOKEN", token)
        code, out, err = run_cli("pull", text)
        assert (code, err.strip().splitlines()[1:]) == (1, [expected])
        outputs += [out, err, token or ""]
    monkeypatch.setenv("HF_TOKEN", granted)
    assert run_cli("pull", text)[0] == 0
    for token in (granted, ungranted):
        assert not any(token in text for text in outputs[:2] + outputs[3:5])


def test_hub_503_and_429_are_retried_and_a_cut_resumes_in_one_pull(
    hub: Hub,  # noqa: F811
    store: Store,  # noqa: F811
    tiny_bytes: bytes,  # noqa: F811
    other_tiny_bytes: bytes,  # noqa: F811
    no_hf_token: Path,
) -> None:
    publish_quants(hub, tiny_bytes, other_tiny_bytes)
    hub.fail = [(503, None), (503, None), (429, "1")]
    hub.truncate_next = 1_000_000
    started = time.monotonic()
    manifest = sources.pull(store, parse_tag(f"hf:{REPO}:Q4_K_M"))
    assert time.monotonic() - started >= 0.95  # the Retry-After of the 429
    assert store.blob_path(manifest.digest).read_bytes() == tiny_bytes
    assert hub.cdn_requests() == [None, "bytes=1000000-"]
    assert hub.fail == []
