"""Retries and proxies: a relay in front of the real registry fails, throttles and cuts on cue."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from email.utils import formatdate
from itertools import count

import pytest
from _pull_fixtures import registry, store, tiny_bytes  # noqa: F401  (fixtures)
from _registry_fixtures import (  # noqa: F401  (fixtures)
    _registry_env,
    relay,
    token_registry,
    tokens,
)
from fault_proxy import Relay, serve_relay
from registry import Registry
from token_server import TokenService

from lifecycle import sources
from lifecycle.errors import StoreError
from lifecycle.sources.retry import RetryPolicy, Streak, Transient, parse_retry_after
from lifecycle.store import Store, parse_tag

CliRun = Callable[..., tuple[int, str, str]]
_names = count()


def seed(registry: Registry, data: bytes) -> str:  # noqa: F811
    repo = f"retry/model{next(_names)}"
    registry.push_model(repo, "v1", data)
    return repo


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def manifest_answers(relay: Relay) -> list[int]:  # noqa: F811
    return [status for path, status in relay.answered if "/manifests/" in path]


def test_503_twice_then_served(
    registry: Registry,  # noqa: F811
    relay: Relay,  # noqa: F811
    store: Store,  # noqa: F811
    tiny_bytes: bytes,  # noqa: F811
) -> None:
    repo = seed(registry, tiny_bytes)
    relay.fail(503, times=2, match="/manifests/")
    relay.fail(503, times=2, match="/blobs/")
    manifest = sources.pull(store, parse_tag(f"oci://{relay.host}/{repo}:v1"))
    assert manifest.digest == sha(tiny_bytes)
    assert manifest_answers(relay) == [503, 503, 200]
    assert [s for p, s in relay.answered if "/blobs/" in p] == [503, 503, 200]


def test_retry_after_is_honoured(
    registry: Registry,  # noqa: F811
    relay: Relay,  # noqa: F811
    store: Store,  # noqa: F811
    tiny_bytes: bytes,  # noqa: F811
) -> None:
    repo = seed(registry, tiny_bytes)
    relay.fail(429, match="/manifests/", retry_after="1")
    sources.pull(store, parse_tag(f"oci://{relay.host}/{repo}:v1"))
    asked = [s.at for s in relay.seen if "/manifests/" in s.path]
    assert len(asked) == 2
    # The backoff base is 10 ms here: a gap of a second is the server's Retry-After.
    assert 0.95 <= asked[1] - asked[0] < 3


def test_retry_after_past_the_budget_fails_at_once(
    registry: Registry,  # noqa: F811
    relay: Relay,  # noqa: F811
    tiny_bytes: bytes,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    run_cli: CliRun,
) -> None:
    repo = seed(registry, tiny_bytes)
    monkeypatch.setenv("LIFECYCLE_RETRY_MAX_TIME", "5")
    relay.fail(503, match="/manifests/", retry_after="3600")
    started = time.monotonic()
    text = f"oci://{relay.host}/{repo}:v1"
    code, _, err = run_cli("pull", text)
    assert code == 1 and time.monotonic() - started < 3
    assert err.strip().splitlines()[1:] == [
        f"error: {text}: registry answered HTTP 503 for manifest (the server asked to retry "
        "after 3600 s, past the 5 s retry budget (LIFECYCLE_RETRY_MAX_TIME))"
    ]


def test_attempts_are_bounded(
    registry: Registry,  # noqa: F811
    relay: Relay,  # noqa: F811
    tiny_bytes: bytes,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    run_cli: CliRun,
) -> None:
    repo = seed(registry, tiny_bytes)
    monkeypatch.setenv("LIFECYCLE_RETRY_ATTEMPTS", "3")
    relay.fail(502, match="/manifests/", times=10)
    code, _, err = run_cli("pull", f"oci://{relay.host}/{repo}:v1")
    assert code == 1 and "(gave up after 3 tries)" in err
    assert manifest_answers(relay) == [502, 502, 502]


def test_not_found_is_not_retried(relay: Relay, run_cli: CliRun) -> None:  # noqa: F811
    code, _, err = run_cli("pull", f"oci://{relay.host}/retry/none:v1")
    assert code == 1 and "manifest not found in the registry (HTTP 404)" in err
    assert manifest_answers(relay) == [404]


def test_connection_cut_mid_blob_resumes_in_the_same_pull(
    registry: Registry,  # noqa: F811
    relay: Relay,  # noqa: F811
    store: Store,  # noqa: F811
    tiny_bytes: bytes,  # noqa: F811
) -> None:
    repo = seed(registry, tiny_bytes)
    relay.cut(100_000)
    relay.cut(300_000)
    manifest = sources.pull(store, parse_tag(f"oci://{relay.host}/{repo}:v1"))
    assert store.blob_path(manifest.digest).read_bytes() == tiny_bytes
    ranges = [s.range for s in relay.seen if "/blobs/" in s.path]
    assert ranges == [None, "bytes=100000-", "bytes=400000-"]


def test_a_dead_registry_fails_after_the_retries(
    store: Store,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("LIFECYCLE_RETRY_ATTEMPTS", "2")
    with pytest.raises(StoreError, match=r"cannot reach the registry: .*gave up after 2 tries"):
        sources.pull(store, parse_tag(f"oci://127.0.0.1:{port}/retry/x:v1"))


def test_http_proxy_variable_routes_every_request_through_the_proxy(
    registry: Registry,  # noqa: F811
    token_registry: Registry,  # noqa: F811
    tokens: TokenService,  # noqa: F811
    store: Store,  # noqa: F811
    tiny_bytes: bytes,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    repo = seed(registry, tiny_bytes)
    with serve_relay("unused:1") as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.setenv("http_proxy", proxy.url)
        sources.pull(store, parse_tag(f"oci://{token_registry.host}/{repo}:v1"))
        targets = [s.target for s in proxy.seen]
        # Absolute-form request targets: what a client sends to a forward proxy, never to
        # an origin. The registry's manifest and blob, and the token realm, all went through.
        assert f"http://{token_registry.host}/v2/{repo}/manifests/v1" in targets
        assert f"http://{token_registry.host}/v2/{repo}/blobs/{sha(tiny_bytes)}" in targets
        assert any(t.startswith(f"{tokens.url}/token?") for t in targets)

        # NO_PROXY is honoured: nothing more reaches the proxy.
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        monkeypatch.setenv("no_proxy", "127.0.0.1")
        seen = len(proxy.seen)
        store.remove(parse_tag(f"oci://{token_registry.host}/{repo}:v1"))
        sources.pull(store, parse_tag(f"oci://{token_registry.host}/{repo}:v1"))
        assert len(proxy.seen) == seen


def test_backoff_is_jittered_exponential_and_capped() -> None:
    waits: list[float] = []
    streak = Streak(RetryPolicy(attempts=8, base=0.5, max_time=1000), sleep=waits.append)
    for _ in range(7):
        streak.wait_or_raise(Transient("boom"))
    bounds = [min(30.0, 0.5 * 2**i) for i in range(7)]
    assert all(0 <= w <= b for w, b in zip(waits, bounds, strict=True))
    assert len(set(waits)) > 1  # jitter: not one fixed schedule
    with pytest.raises(StoreError, match=r"boom \(gave up after 8 tries\)"):
        streak.wait_or_raise(Transient("boom"))


def test_retry_after_forms() -> None:
    assert parse_retry_after("7") == 7.0
    soon = parse_retry_after(formatdate(time.time() + 30, usegmt=True))
    assert soon is not None and 25 <= soon <= 31
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("LIFECYCLE_RETRY_ATTEMPTS", "0"),
        ("LIFECYCLE_RETRY_BASE", "fast"),
        ("LIFECYCLE_RETRY_MAX_TIME", "-1"),
    ],
)
def test_bad_retry_settings_are_usage_errors(
    name: str, value: str, monkeypatch: pytest.MonkeyPatch, run_cli: CliRun
) -> None:
    monkeypatch.setenv(name, value)
    code, _, err = run_cli("pull", "oci://127.0.0.1:9/retry/x:v1")
    assert code == 2 and name in err
