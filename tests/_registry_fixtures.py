"""Fixtures for the registry tests: protected registries, a token service, a flaky relay.

The protected registries share the open ``registry`` fixture's storage: a test pushes a model
through the open one (as :mod:`registry` always has) and pulls it through a protected one.
Credentials are random per session and checked for in every output by the secrets test.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from _pull_fixtures import registry  # noqa: F401  (fixture used below)
from fault_proxy import Relay, serve_relay
from registry import Registry, start_registry
from token_server import TokenService, serve_tokens, write_htpasswd

from lifecycle.sources.distribution import forget_tokens

USER = "ci-bot"
PASSWORD = "pw-" + secrets.token_hex(12)
WRONG_PASSWORD = "wrong-" + secrets.token_hex(12)
SECRETS = [
    PASSWORD,
    WRONG_PASSWORD,
    base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode(),
    base64.b64encode(f"{USER}:{WRONG_PASSWORD}".encode()).decode(),
]


@pytest.fixture(scope="session")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenService]:
    with serve_tokens(tmp_path_factory.mktemp("tokens"), {USER: PASSWORD}) as service:
        yield service


@pytest.fixture(scope="session")
def token_registry(
    tmp_path_factory: pytest.TempPathFactory,
    registry: Registry,  # noqa: F811
    tokens: TokenService,
) -> Iterator[Registry]:
    """docker-registry with ``auth: token`` trusting the test token service."""
    workdir = tmp_path_factory.mktemp("token-registry")
    with start_registry(workdir, auth=tokens.registry_auth(), storage=registry.storage) as running:
        yield running


@pytest.fixture(scope="session")
def basic_registry(
    tmp_path_factory: pytest.TempPathFactory,
    registry: Registry,  # noqa: F811
) -> Iterator[Registry]:
    """docker-registry with ``auth: htpasswd`` (bcrypt), answering Basic challenges."""
    pytest.importorskip("bcrypt")
    workdir = tmp_path_factory.mktemp("basic-registry")
    write_htpasswd(workdir / "htpasswd", {USER: PASSWORD})
    section = f"  htpasswd:\n    realm: lifecycle-test\n    path: {workdir / 'htpasswd'}\n"
    with start_registry(workdir, auth=section, storage=registry.storage) as running:
        yield running


@pytest.fixture
def relay(registry: Registry) -> Iterator[Relay]:  # noqa: F811
    """A relay in front of the open registry (and a forward proxy for anything else)."""
    with serve_relay(registry.host) as running:
        yield running


@pytest.fixture(autouse=True)
def _registry_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tokens: TokenService
) -> Iterator[None]:
    """No ambient credentials or proxies, tiny backoff, fresh token caches, anonymous allowed."""
    for name in (
        "LIFECYCLE_REGISTRY_HOST",
        "LIFECYCLE_REGISTRY_USERNAME",
        "LIFECYCLE_REGISTRY_PASSWORD",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "NO_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "no_proxy",
        "LIFECYCLE_RETRY_ATTEMPTS",
        "LIFECYCLE_RETRY_MAX_TIME",
    ):
        monkeypatch.delenv(name, raising=False)
    empty = tmp_path / "docker-config"
    empty.mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(empty))
    monkeypatch.setenv("LIFECYCLE_RETRY_BASE", "0.01")
    forget_tokens()
    tokens.anonymous, tokens.expire_next = True, None
    yield
    forget_tokens()


def docker_config(folder: Path, host: str, entry: dict[str, object], **extra: object) -> Path:
    """Write ``folder/config.json`` with ``auths[host] = entry``; return the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {"auths": {host: entry}, **extra}
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


def env_credentials(monkeypatch: pytest.MonkeyPatch, host: str, password: str = PASSWORD) -> None:
    monkeypatch.setenv("LIFECYCLE_REGISTRY_HOST", host)
    monkeypatch.setenv("LIFECYCLE_REGISTRY_USERNAME", USER)
    monkeypatch.setenv("LIFECYCLE_REGISTRY_PASSWORD", password)
