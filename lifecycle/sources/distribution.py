"""An HTTP client for OCI distribution registries: auth challenges, token cache, retries.

:meth:`RegistryClient.request` sends one request the way ``docker pull`` does: with a cached
token for the request's scope if one is still valid, else bare; a ``401`` with a ``Bearer``
challenge sends it to the token realm (with Basic credentials when there are any, anonymously
otherwise) and the request is repeated once with the token; a ``Basic`` challenge makes every
later request carry Basic credentials. A token the registry stops accepting (it expired) gets
the same treatment: one fresh token, one more try. Transient failures are retried as
:mod:`lifecycle.sources.retry` says.

Proxies come from the standard variables (``HTTPS_PROXY``, ``HTTP_PROXY``, ``NO_PROXY``) through
urllib's own handler. The ``Authorization`` header is never sent along a redirect (registries
redirect blob downloads to storage hosts), and credentials are never sent to a token realm over
plain HTTP unless it is on loopback.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlencode, urlsplit

from lifecycle.envnames import ENV_REGISTRY_HOST, ENV_REGISTRY_PASSWORD, ENV_REGISTRY_USERNAME
from lifecycle.errors import StoreError
from lifecycle.sources.auth import (
    Challenge,
    Credentials,
    RegistryAuthError,
    find_credentials,
    parse_challenge,
    registry_host,
)
from lifecycle.sources.retry import (
    RETRY_STATUSES,
    RetryPolicy,
    Transient,
    parse_retry_after,
    through_proxy,
)

TIMEOUT = 60.0
_TOKEN_DEFAULT_LIFETIME = 60  # seconds, what the token spec says to assume
_TOKEN_MARGIN = 5  # renew a little early: a token must not expire in flight
MAX_TOKEN_RESPONSE = 1 << 20


class Readable(Protocol):
    """A request body read in blocks (an upload's file), opened afresh for every try."""

    def read(self, n: int = -1) -> bytes: ...

    def close(self) -> None: ...


Body = bytes | Callable[[], Readable] | None


class RegistryNotFound(StoreError):
    """The registry answered 404 for a manifest or blob."""


@dataclass
class _Token:
    value: str
    expires: float  # time.monotonic() deadline


class RegistryClient:
    """Requests to one registry, sharing its credentials and cached tokens."""

    def __init__(self, registry: str, credentials: Credentials | None, hint: str = "") -> None:
        self.registry = registry.rstrip("/")
        self.host = registry_host(registry)
        self.credentials = credentials
        self.hint = hint
        self._tokens: dict[str, _Token] = {}
        self._challenge: Challenge | None = None

    @contextmanager
    def request(
        self,
        method: str,
        url: str,
        *,
        scope: str,
        label: str,
        what: str,
        headers: dict[str, str] | None = None,
        body: Body = None,
    ) -> Iterator[Any]:
        """Send one request (retried, authenticated) and yield the successful response.

        ``scope`` is the token scope the request needs (``repository:ns/name:pull``); ``label``
        (the tag) and ``what`` (``manifest``, ``blob sha256:...``) make the error messages.
        """
        streak = RetryPolicy.from_env().streak()
        renewed = False
        while True:
            request = urllib.request.Request(url, method=method, headers=dict(headers or {}))
            stream = body() if callable(body) else None
            if stream is not None:
                request.data = stream
            elif isinstance(body, bytes):
                request.data = body
            authorization = self._authorization(scope, label)
            if authorization:
                # Unredirected: a redirect to blob storage must not carry the registry's token.
                request.add_unredirected_header("Authorization", authorization)
            try:
                response = urllib.request.build_opener().open(request, timeout=TIMEOUT)
            except urllib.error.HTTPError as exc:
                status, answer = exc.code, exc.headers
                exc.close()
                if status == 401 and not renewed:
                    renewed = True
                    self._tokens.pop(scope, None)
                    self._authenticate(
                        parse_challenge(answer.get("WWW-Authenticate")), scope, label
                    )
                    continue
                if status in RETRY_STATUSES:
                    retry_after = parse_retry_after(answer.get("Retry-After"))
                    message = f"{label}: registry answered HTTP {status} for {what}"
                    streak.wait_or_raise(Transient(message, retry_after=retry_after))
                    continue
                raise self._http_error(status, label, what, scope) from None
            except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                message = f"{label}: cannot reach the registry{through_proxy(url)}: {reason}"
                streak.wait_or_raise(Transient(message))
                continue
            finally:
                if stream is not None:
                    stream.close()
            break
        with response:
            yield response

    def _authorization(self, scope: str, label: str) -> str | None:
        token = self._tokens.get(scope)
        if token is not None and token.expires > time.monotonic():
            return f"Bearer {token.value}"
        if self._challenge is not None and self._challenge.scheme == "bearer":
            # The realm is known and the token ran out: renew before asking, not after a 401.
            return f"Bearer {self._fetch_token(self._challenge, scope, label).value}"
        if self._challenge is not None and self._challenge.scheme == "basic" and self.credentials:
            return self.credentials.basic()
        return None

    def _authenticate(self, challenge: Challenge | None, scope: str, label: str) -> None:
        if challenge is None or challenge.scheme not in ("bearer", "basic"):
            raise RegistryAuthError(
                f"{label}: {self.host} answered HTTP 401 without a usable auth challenge"
            )
        self._challenge = challenge
        if challenge.scheme == "basic" and self.credentials is None:
            raise self._needs_credentials(label)
        if challenge.scheme == "bearer":
            self._fetch_token(challenge, scope, label)

    def _fetch_token(self, challenge: Challenge, scope: str, label: str) -> _Token:
        realm = challenge.params.get("realm", "")
        parts = urlsplit(realm)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise RegistryAuthError(f"{label}: {self.host} named no usable token realm")
        query = {"scope": scope or challenge.params.get("scope", "")}
        if "service" in challenge.params:
            query["service"] = challenge.params["service"]
        url = f"{realm}{'&' if '?' in realm else '?'}{urlencode(query)}"
        request = urllib.request.Request(url)
        if self.credentials is not None:
            if parts.scheme != "https" and not _loopback(parts.hostname or ""):
                raise RegistryAuthError(
                    f"{label}: {self.host}'s token realm {parts.netloc} is plain HTTP; "
                    "credentials are only sent over HTTPS"
                )
            request.add_unredirected_header("Authorization", self.credentials.basic())
        streak = RetryPolicy.from_env().streak()
        while True:
            try:
                with urllib.request.build_opener().open(request, timeout=TIMEOUT) as response:
                    raw = response.read(MAX_TOKEN_RESPONSE + 1)
                break
            except urllib.error.HTTPError as exc:
                status, answer = exc.code, exc.headers
                exc.close()
                if status in (401, 403):
                    raise self._refused(label, status) from None
                if status not in RETRY_STATUSES:
                    raise RegistryAuthError(
                        f"{label}: token service {parts.netloc} answered HTTP {status}"
                    ) from None
                retry_after = parse_retry_after(answer.get("Retry-After"))
                message = f"{label}: token service {parts.netloc} answered HTTP {status}"
                streak.wait_or_raise(Transient(message, retry_after=retry_after))
            except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                via = through_proxy(url)
                message = f"{label}: cannot reach the token service {parts.netloc}{via}: {reason}"
                streak.wait_or_raise(Transient(message))
        token = _parse_token(raw, label, parts.netloc)
        self._tokens[scope] = token
        return token

    def _http_error(self, status: int, label: str, what: str, scope: str) -> StoreError:
        if status == 401:
            return (
                self._refused(label, status) if self.credentials else self._needs_credentials(label)
            )
        if status == 403:
            who = (
                f"the credentials from {self.credentials.source}"
                if self.credentials
                else "anonymous pulls"
            )
            return RegistryAuthError(
                f"{label}: {self.host} denied {what} to {who} (HTTP 403, scope {scope})"
            )
        if status == 404:
            return RegistryNotFound(f"{label}: {what} not found in the registry (HTTP 404)")
        return StoreError(f"{label}: registry answered HTTP {status} for {what}")

    def _refused(self, label: str, status: int) -> RegistryAuthError:
        if self.credentials is None:
            return self._needs_credentials(label)
        return RegistryAuthError(
            f"{label}: {self.host} refused the credentials from {self.credentials.source} "
            f"(HTTP {status}); check the username and the password or token"
        )

    def _needs_credentials(self, label: str) -> RegistryAuthError:
        todo = self.hint or (
            f"set {ENV_REGISTRY_HOST}={self.host}, {ENV_REGISTRY_USERNAME} and "
            f"{ENV_REGISTRY_PASSWORD}, or log in with docker login"
        )
        return RegistryAuthError(f"{label}: {self.host} requires credentials (HTTP 401); {todo}")


def client_for(registry: str) -> RegistryClient:
    """The process's client for ``registry``: tokens are reused while the credentials are."""
    lookup = find_credentials(registry_host(registry))
    creds = lookup.credentials
    key = (registry, creds.username if creds else None, creds.password if creds else None)
    client = _CLIENTS.get(key)
    if client is None:
        client = _CLIENTS[key] = RegistryClient(registry, creds, lookup.hint)
    return client


def forget_tokens() -> None:
    """Drop every cached client and token (credentials rotated in a long-lived process; tests)."""
    _CLIENTS.clear()


def repository_scope(repository: str, *actions: str) -> str:
    return f"repository:{repository}:{','.join(actions or ('pull',))}"


_CLIENTS: dict[tuple[str, str | None, str | None], RegistryClient] = {}


def _parse_token(raw: bytes, label: str, realm: str) -> _Token:
    if len(raw) > MAX_TOKEN_RESPONSE:
        raise RegistryAuthError(f"{label}: token service {realm} sent an oversized answer")
    try:
        data = json.loads(raw)
    except ValueError:
        raise RegistryAuthError(f"{label}: token service {realm} did not answer JSON") from None
    value = data.get("token") or data.get("access_token") if isinstance(data, dict) else None
    if not isinstance(value, str) or not value:
        raise RegistryAuthError(f"{label}: token service {realm} sent no token")
    lifetime = data.get("expires_in")
    if isinstance(lifetime, bool) or not isinstance(lifetime, int | float) or lifetime <= 0:
        lifetime = _TOKEN_DEFAULT_LIFETIME
    return _Token(value, time.monotonic() + max(0.0, float(lifetime) - _TOKEN_MARGIN))


def _loopback(hostname: str) -> bool:
    return hostname == "localhost" or hostname.startswith("127.") or hostname == "::1"
