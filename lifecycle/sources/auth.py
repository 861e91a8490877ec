"""Registry credentials, found the way the container ecosystem keeps them, and auth challenges.

Where credentials for a registry host come from, first match wins:

1. ``LIFECYCLE_REGISTRY_USERNAME`` + ``LIFECYCLE_REGISTRY_PASSWORD`` (a password or an access
   token), sent only to the host(s) in ``LIFECYCLE_REGISTRY_HOST`` (comma-separated
   ``host[:port]``) — the form CI secrets take;
2. the Docker config, ``$DOCKER_CONFIG/config.json`` or ``~/.docker/config.json``: its
   ``auths`` entry for the host, with a base64 ``auth`` (``user:password``) or ``username`` and
   ``password``. Credential helpers (``credsStore``, ``credHelpers``) and ``identitytoken`` are
   not run; an auth failure then says so and names the variables to use instead;
3. none: anonymous, which most registries still answer with a token for public pulls.

A :class:`Credentials` never shows its password in ``repr`` or messages; it names where it came
from (``source``) so an error can say which credentials were refused.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from lifecycle.envnames import (
    ENV_DOCKER_CONFIG,
    ENV_REGISTRY_HOST,
    ENV_REGISTRY_PASSWORD,
    ENV_REGISTRY_USERNAME,
)
from lifecycle.errors import ConfigError, StoreError

# Docker Hub's credentials live under its v1 index URL, whatever name the tag uses.
_DOCKER_HUB = "https://index.docker.io/v1/"
_DOCKER_HUB_NAMES = {"docker.io", "index.docker.io", "registry-1.docker.io"}


class RegistryAuthError(StoreError):
    """The registry (or its token service) refused the request's credentials (exit code 1)."""


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)
    source: str  # where they came from, for messages: never the secret itself

    def basic(self) -> str:
        """The value of a Basic ``Authorization`` header."""
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")


@dataclass(frozen=True)
class Lookup:
    """The outcome of a credentials lookup: what was found, and why nothing was if so."""

    credentials: Credentials | None
    hint: str = ""  # e.g. "credentials for HOST are kept by docker-credential-desktop ..."


def find_credentials(host: str) -> Lookup:
    """Credentials for registry ``host`` (``name[:port]``) from the environment or Docker config."""
    from_env = _from_env(host)
    if from_env is not None:
        return Lookup(from_env)
    return _from_docker_config(host)


def docker_config_path() -> Path:
    """``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json``."""
    folder = os.environ.get(ENV_DOCKER_CONFIG)
    return (Path(folder) if folder else Path.home() / ".docker") / "config.json"


@dataclass(frozen=True)
class Challenge:
    """A parsed ``WWW-Authenticate`` header: ``Bearer`` or ``Basic`` and its parameters."""

    scheme: str  # lower-case
    params: dict[str, str]


_PARAM = re.compile(r'([A-Za-z_]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))')


def parse_challenge(header: str | None) -> Challenge | None:
    """``Bearer realm="...",service="...",scope="..."`` → Challenge; None when absent/unknown."""
    if not header:
        return None
    scheme, _, rest = header.strip().partition(" ")
    params = {
        m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3))
        for m in _PARAM.finditer(rest)
    }
    return Challenge(scheme.lower(), params)


def registry_host(url: str) -> str:
    """``https://host:port/path`` → ``host:port`` (lower-case), the key credentials are kept by."""
    return (urlsplit(url).netloc or url).lower()


def _from_env(host: str) -> Credentials | None:
    username = os.environ.get(ENV_REGISTRY_USERNAME, "")
    password = os.environ.get(ENV_REGISTRY_PASSWORD, "")
    hosts = os.environ.get(ENV_REGISTRY_HOST, "")
    if not username and not password:
        return None
    if not username or not password:
        missing = ENV_REGISTRY_PASSWORD if username else ENV_REGISTRY_USERNAME
        raise ConfigError(f"{missing} is not set (registry credentials need both)")
    if not hosts.strip():
        raise ConfigError(
            f"{ENV_REGISTRY_USERNAME} is set but {ENV_REGISTRY_HOST} is not: "
            "name the registry host the credentials are for"
        )
    wanted = {h.strip().lower() for h in hosts.split(",") if h.strip()}
    if _hub_key(host) not in {_hub_key(h) for h in wanted}:
        return None
    return Credentials(username, password, f"{ENV_REGISTRY_USERNAME}/{ENV_REGISTRY_PASSWORD}")


def _from_docker_config(host: str) -> Lookup:
    path = docker_config_path()
    if not path.is_file():
        return Lookup(None)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"cannot read the Docker config: {exc}", path=path) from None
    if not isinstance(config, dict):
        raise ConfigError("the Docker config is not a JSON object", path=path)
    source = f"Docker config {path}"
    auths: dict[str, object] = _table(config, "auths")
    entry = next(
        (v for k, v in auths.items() if _hub_key(_config_key_host(k)) == _hub_key(host)), None
    )
    if isinstance(entry, dict):
        credentials = _entry_credentials(entry, source, path, host)
        if credentials is not None:
            return Lookup(credentials)
    helpers = _table(config, "credHelpers")
    helper = helpers.get(host) or config.get("credsStore")
    if isinstance(helper, str) and helper:
        return Lookup(
            None,
            f"{path} keeps credentials in docker-credential-{helper}, which lifecycle does not "
            f"run; set {ENV_REGISTRY_HOST}, {ENV_REGISTRY_USERNAME} and {ENV_REGISTRY_PASSWORD}",
        )
    if isinstance(entry, dict) and entry.get("identitytoken"):
        return Lookup(
            None,
            f"{path} holds an identity token for {host}, which lifecycle does not use; set "
            f"{ENV_REGISTRY_HOST}, {ENV_REGISTRY_USERNAME} and {ENV_REGISTRY_PASSWORD}",
        )
    return Lookup(None)


def _entry_credentials(
    entry: dict[str, object], source: str, path: Path, host: str
) -> Credentials | None:
    auth = entry.get("auth")
    if isinstance(auth, str) and auth:
        try:
            decoded = base64.b64decode(auth, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise ConfigError(
                f"auths → {host} → auth is not base64 of user:password", path=path
            ) from None
        username, sep, password = decoded.partition(":")
        if not sep or not username:
            raise ConfigError(f"auths → {host} → auth is not base64 of user:password", path=path)
        return Credentials(username, password, source)
    name, secret = entry.get("username"), entry.get("password")
    if isinstance(name, str) and isinstance(secret, str) and name:
        return Credentials(name, secret, source)
    return None


def _table(config: dict[str, object], key: str) -> dict[str, object]:
    value = config.get(key)
    return value if isinstance(value, dict) else {}


def _config_key_host(key: str) -> str:
    """An ``auths`` key (``host``, ``https://host``, ``https://host/v1/``) → ``host``."""
    if key == _DOCKER_HUB:
        return "index.docker.io"
    return registry_host(key if "://" in key else f"//{key}")


def _hub_key(host: str) -> str:
    host = host.lower()
    return "docker.io" if host in _DOCKER_HUB_NAMES else host
