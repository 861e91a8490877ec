"""Retries for registry and hub requests: exponential backoff with full jitter, ``Retry-After``.

What is retried: connection errors (refused, reset, timed out, cut mid-body) and the answers
that say "try again" — 408, 425, 429, 500, 502, 503 and 504. Anything else (401, 403, 404, a
digest mismatch) is final at once. A failure streak ends after ``attempts`` tries or ``max_time``
seconds of failing, whichever comes first; a transfer that made progress starts a new streak,
so a large download cut twice an hour apart is still resumed.

The settings come from the environment, so CI can tune them and tests can make them tiny:

- ``LIFECYCLE_RETRY_ATTEMPTS`` (default 5): tries per streak, 1 turns retries off;
- ``LIFECYCLE_RETRY_BASE`` (default 1.0 s): the first backoff's upper bound, doubled per try,
  capped at 30 s;
- ``LIFECYCLE_RETRY_MAX_TIME`` (default 300 s): how long one streak may last.

A ``Retry-After`` answer (seconds or an HTTP date) is waited exactly, unless it would end past
the streak's deadline: then the request fails now with a message saying so.
"""

from __future__ import annotations

import os
import random
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import TypeVar
from urllib.parse import urlsplit

from lifecycle.envnames import ENV_RETRY_ATTEMPTS, ENV_RETRY_BASE, ENV_RETRY_MAX_TIME
from lifecycle.errors import ConfigError
from lifecycle.store import TransferError

RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
_CAP = 30.0

T = TypeVar("T")


class Transient(TransferError):
    """A failure worth another try; ``retry_after`` is the server's own wait, if it gave one."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    base: float = 1.0
    max_time: float = 300.0

    @classmethod
    def from_env(cls) -> RetryPolicy:
        """The policy the environment asks for (a bad value is a config error, exit 2)."""
        return cls(
            attempts=int(_number(ENV_RETRY_ATTEMPTS, 5, minimum=1)),
            base=_number(ENV_RETRY_BASE, 1.0, minimum=0.0),
            max_time=_number(ENV_RETRY_MAX_TIME, 300.0, minimum=0.0),
        )

    def streak(self) -> Streak:
        return Streak(self)


class Streak:
    """One run of consecutive failures: decides whether to try again and sleeps if so."""

    def __init__(self, policy: RetryPolicy, *, sleep: Callable[[float], None] = time.sleep) -> None:
        self.policy = policy
        self.failures = 0
        self.started = time.monotonic()
        self._sleep = sleep

    def reset(self) -> None:
        """Progress was made: the next failure starts a fresh streak."""
        self.failures = 0
        self.started = time.monotonic()

    def wait_or_raise(self, error: Transient) -> None:
        """Sleep before the next try, or re-raise ``error`` when the streak is spent."""
        if self.failures == 0:
            self.started = time.monotonic()
        self.failures += 1
        policy = self.policy
        if self.failures >= policy.attempts:
            raise _final(error, f"gave up after {self.failures} tries")
        if error.retry_after is not None:
            delay = error.retry_after
        else:
            # Full jitter: many clients cut by one outage do not come back in lockstep.
            delay = random.uniform(0.0, min(_CAP, policy.base * 2 ** (self.failures - 1)))
        left = policy.max_time - (time.monotonic() - self.started)
        if delay > left:
            if error.retry_after is not None:
                raise _final(
                    error,
                    f"the server asked to retry after {error.retry_after:g} s, past the "
                    f"{policy.max_time:g} s retry budget ({ENV_RETRY_MAX_TIME})",
                )
            raise _final(error, f"gave up after {policy.max_time:g} s of retries")
        self._sleep(delay)


def retrying(call: Callable[[], T], policy: RetryPolicy | None = None) -> T:
    """``call()`` until it returns or raises something other than :class:`Transient`."""
    streak = (policy or RetryPolicy.from_env()).streak()
    while True:
        try:
            return call()
        except Transient as exc:
            streak.wait_or_raise(exc)


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date; None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def through_proxy(url: str, *, all_proxy: bool = False) -> str:
    """`` through the proxy http://host:3128 (HTTPS_PROXY)`` when the environment sends
    ``url`` through a proxy, else ``""``: a dead proxy then reads as one, not as a dead host.

    The variables are read as urllib reads them (``<scheme>_proxy``, lower case first, and
    ``no_proxy``); ``all_proxy`` also counts for clients that honour it (httpx). A user name or
    password in the proxy's URL is not shown.
    """
    parts = urlsplit(url)
    proxies = urllib.request.getproxies()
    keys = [parts.scheme, "all"] if all_proxy else [parts.scheme]
    key = next((k for k in keys if proxies.get(k)), None)
    if key is None or (parts.hostname and urllib.request.proxy_bypass(parts.hostname)):
        return ""
    proxy = urlsplit(proxies[key])
    shown = proxy._replace(netloc=proxy.netloc.rpartition("@")[2]).geturl()
    names = [f"{key}_proxy", f"{key.upper()}_PROXY"]
    name = next((n for n in names if os.environ.get(n)), names[1])
    return f" through the proxy {shown} ({name})"


def _final(error: Transient, why: str) -> TransferError:
    return TransferError(f"{error} ({why})")


def _number(name: str, default: float, *, minimum: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if value < minimum or value != value:  # NaN compares unequal to itself
        raise ConfigError(f"{name}={raw!r} must be at least {minimum:g}")
    return value
