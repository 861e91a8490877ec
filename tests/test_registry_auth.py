"""Registry auth against real docker-registry instances on loopback: token and htpasswd.

The token registry trusts the test token service (JWTs signed with a self-signed key in its
``rootcertbundle``); the htpasswd one answers Basic challenges. Both share the open registry's
storage, so models are pushed through the open one and pulled through the protected ones.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from itertools import count
from pathlib import Path

import pytest
from _pull_fixtures import registry, store, tiny_bytes  # noqa: F401  (fixtures)
from _registry_fixtures import (  # noqa: F401  (fixtures)
    PASSWORD,
    SECRETS,
    USER,
    WRONG_PASSWORD,
    _registry_env,
    basic_registry,
    docker_config,
    env_credentials,
    token_registry,
    tokens,
)
from fault_proxy import serve_relay
from registry import Registry
from token_server import TokenService

from lifecycle import sources
from lifecycle.sources.auth import find_credentials, parse_challenge
from lifecycle.store import Store, parse_tag

CliRun = Callable[..., tuple[int, str, str]]
_names = count()
LEEWAY = 60  # docker-registry accepts a token up to 60 s past its exp (measured: 59 ok, 61 not)


def seed(registry: Registry, data: bytes) -> str:  # noqa: F811
    repo = f"auth/model{next(_names)}"
    registry.push_model(repo, "v1", data, layers={"system": b"JSON only."})
    return repo


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text


def test_anonymous_pull_gets_a_token_from_the_realm(
    registry: Registry,  # noqa: F811
    token_registry: Registry,  # noqa: F811
    tokens: TokenService,  # noqa: F811
    store: Store,  # noqa: F811
    tiny_bytes: bytes,  # noqa: F811
) -> None:
    repo = seed(registry, tiny_bytes)
    before = len(tokens.issued)
    manifest = sources.pull(store, parse_tag(f"oci://{token_registry.host}/{repo}:v1"))
    assert manifest.digest == sha(tiny_bytes)
    # One token for the whole pull (manifest, model blob, system layer): cached per scope.
    assert tokens.issued[before:] == [("", [f"repository:{repo}:pull"])]


@pytest.mark.parametrize("form", ["auth", "username-password"])
def test_credentials_from_the_docker_config(
    form: str,
    registry: Registry,  # noqa: F811
    token_registry: Registry,  # noqa: F811
    tokens: TokenService,  # noqa: F811
    tiny_bytes: bytes,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    run_cli: CliRun,
) -> None:
    tokens.anonymous = False
    repo = seed(registry, tiny_bytes)
    if form == "auth":
        entry: dict[str, object] = {
            "auth": base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        }
        key = token_registry.host
    else:
        entry = {"username": USER, "password": PASSWORD}
        key = f"http://{token_registry.host}"  # docker login writes scheme-prefixed keys too
    monkeypatch.setenv("DOCKER_CONFIG", str(docker_config(tmp_path / "dc", key, entry)))
    before = len(tokens.issued)
    code, out, err = run_cli("pull", f"oci://{token_registry.host}/{repo}:v1", "--json")
    assert code == 0, err
    assert [user for user, _ in tokens.issued[before:]] == [USER]
    assert_no_secret(out, err)


def test_env_credentials_for_ci_against_htpasswd(
    registry: Registry,  # noqa: F811
    basic_registry: Registry,  # noqa: F811
    store: Store,  # noqa: F811
    tiny_bytes: bytes,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    run_cli: CliRun,
) -> None:
    repo = seed(registry, tiny_bytes)
    text = f"oci://{basic_registry.host}/{repo}:v1"
    code, _, err = run_cli("pull", text)
    assert code == 1
    assert err.strip().splitlines()[1:] == [
        f"error: {text}: {basic_registry.host} requires credentials (HTTP 401); set "
        f"LIFECYCLE_REGISTRY_HOST={basic_registry.host}, LIFECYCLE_REGISTRY_USERNAME and "
        "LIFECYCLE_REGISTRY_PASSWORD, or log in with docker login"
    ]
    env_credentials(monkeypatch, basic_registry.host)
    code, out, err = run_cli("pull", text, "--json")
    assert code == 0, err
    assert store.blob_path(sha(tiny_bytes)).is_file()
    assert_no_secret(out, err)


def test_env_credentials_are_only_sent_to_their_host(
    token_registry: Registry,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env_credentials(monkeypatch, token_registry.host)
    assert find_credentials(token_registry.host).credentials is not None
    assert find_credentials("ghcr.io").credentials is None
    assert PASSWORD not in repr(find_credentials(token_registry.host))
    assert PASSWORD not in str(find_credentials(token_registry.host))


@pytest.mark.parametrize("kind", ["token", "htpasswd"])
def test_wrong_password_is_one_line_exit_1_and_no_secret(
    kind: str,
    registry: Registry,  # noqa: F811
    token_registry: Registry,  # noqa: F811
    basic_registry: Registry,  # noqa: F811
    tiny_bytes: bytes,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    run_cli: CliRun,
) -> None:
    target = token_registry if kind == "token" else basic_registry
    repo = seed(registry, tiny_bytes)
    env_credentials(monkeypatch, target.host, WRONG_PASSWORD)
    text = f"oci://{target.host}/{repo}:v1"
    code, out, err = run_cli("pull", text)
    assert (code, out) == (1, "")
    assert err.strip().splitlines()[1:] == [
        f"error: {text}: {target.host} refused the credentials from "
        "LIFECYCLE_REGISTRY_USERNAME/LIFECYCLE_REGISTRY_PASSWORD (HTTP 401); check the "
        "username and the password or token"
    ]
    assert_no_secret(out, err)


def test_credential_helper_is_named_as_unsupported(
    registry: Registry,  # noqa: F811
    token_registry: Registry,  # noqa: F811
    tokens: TokenService,  # noqa: F811
    tiny_bytes: bytes,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    run_cli: CliRun,
) -> None:
    tokens.anonymous = False
    repo = seed(registry, tiny_bytes)
    folder = docker_config(tmp_path / "dc", token_registry.host, {}, credsStore="desktop")
    monkeypatch.setenv("DOCKER_CONFIG", str(folder))
    code, _, err = run_cli("pull", f"oci://{token_registry.host}/{repo}:v1")
    assert code == 1
    assert "keeps credentials in docker-credential-desktop, which lifecycle does not run" in err
    assert len(err.strip().splitlines()) == 2  # 'pulling ...' and the error


def test_credential_settings_errors_are_usage_errors(
    token_registry: Registry,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    run_cli: CliRun,
) -> None:
    text = f"oci://{token_registry.host}/auth/none:v1"
    monkeypatch.setenv("LIFECYCLE_REGISTRY_USERNAME", USER)
    monkeypatch.setenv("LIFECYCLE_REGISTRY_PASSWORD", PASSWORD)
    code, _, err = run_cli("pull", text)
    assert code == 2 and "LIFECYCLE_REGISTRY_HOST is not" in err
    assert_no_secret(err)
    monkeypatch.delenv("LIFECYCLE_REGISTRY_USERNAME")
    monkeypatch.delenv("LIFECYCLE_REGISTRY_PASSWORD")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{not json", encoding="utf-8")
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "bad"))
    code, _, err = run_cli("pull", text)
    assert code == 2 and "cannot read the Docker config" in err


def test_expired_token_mid_pull_reauthenticates_and_resumes(
    registry: Registry,  # noqa: F811
    token_registry: Registry,  # noqa: F811
    tokens: TokenService,  # noqa: F811
    store: Store,  # noqa: F811
    tiny_bytes: bytes,  # noqa: F811
) -> None:
    repo = seed(registry, tiny_bytes)
    # The first token expires (for the registry) ~1.5 s from now; the client is told 300 s.
    tokens.expire_next = -(LEEWAY - 1.5)
    before = len(tokens.issued)
    with serve_relay(token_registry.host) as front:
        # The model blob is cut after 64 KiB and the connection held until the token is dead.
        front.cut(65536, match=f"/blobs/{sha(tiny_bytes)}", stall=3.0)
        manifest = sources.pull(store, parse_tag(f"oci://{front.host}/{repo}:v1"))
    assert store.blob_path(manifest.digest).read_bytes() == tiny_bytes
    assert len(tokens.issued) - before == 2  # the first, then one after the registry's 401
    blob = [s for s in front.seen if s.path.endswith(sha(tiny_bytes))]
    assert [s.range for s in blob] == [None, "bytes=65536-", "bytes=65536-"]
    statuses = [status for path, status in front.answered if path.endswith(sha(tiny_bytes))]
    assert statuses == [200, 401, 206]
    # The whole exchange, in order, and nothing more: one anonymous challenge, one resume
    # after the registry's 401, no retries and no second token round trip.
    kinds = [(path.split("/")[-2], status) for path, status in front.answered]
    assert kinds == [
        ("manifests", 401),
        ("manifests", 200),
        ("blobs", 200),
        ("blobs", 401),
        ("blobs", 206),
        ("blobs", 200),
    ]
    assert len(front.seen) == len(front.answered)


def test_challenge_parsing() -> None:
    challenge = parse_challenge(
        'Bearer realm="https://auth.example/token",service="reg",scope="repository:a/b:pull",'
        'error="invalid_token"'
    )
    assert challenge is not None and challenge.scheme == "bearer"
    assert challenge.params == {
        "realm": "https://auth.example/token",
        "service": "reg",
        "scope": "repository:a/b:pull",
        "error": "invalid_token",
    }
    assert parse_challenge('Basic realm="x"') == parse_challenge('basic realm="x"')
    assert parse_challenge(None) is None
