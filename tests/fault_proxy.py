"""A loopback HTTP relay that can misbehave on purpose: a flaky front and a forward proxy.

As a *front* (requests in origin form, ``GET /v2/...``) it relays to one upstream, the real
registry; as a *forward proxy* (requests in absolute form, ``GET http://host:port/v2/...``,
which is what clients send when ``HTTP_PROXY`` points here) it relays to the host the request
names. Either way every request is logged, so a test can prove its traffic went through.

Faults, consumed in order by the requests whose path contains their ``match``:

- :meth:`Relay.fail` — answer ``status`` (with ``Retry-After`` if given) instead of relaying;
- :meth:`Relay.cut` — relay, but send only ``after`` bytes of the body (with the full
  ``Content-Length`` announced), optionally stall ``stall`` seconds, then drop the connection.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-authenticate",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
}


@dataclass
class Fault:
    match: str
    status: int | None = None
    retry_after: str | None = None
    cut_after: int | None = None
    stall: float = 0.0


@dataclass
class Seen:
    method: str
    target: str  # the request target as sent: a path (front) or an absolute URL (proxy)
    path: str
    range: str | None
    authorization: str | None
    at: float


@dataclass
class Relay:
    upstream: str  # host:port the front relays origin-form requests to
    url: str = ""
    faults: list[Fault] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    answered: list[tuple[str, int]] = field(default_factory=list)  # (path, status) sent back
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def host(self) -> str:
        return self.url.removeprefix("http://")

    def fail(
        self, status: int, *, match: str = "/v2/", times: int = 1, retry_after: str | None = None
    ) -> None:
        self.faults += [Fault(match, status=status, retry_after=retry_after) for _ in range(times)]

    def cut(self, after: int, *, match: str = "/blobs/", stall: float = 0.0) -> None:
        self.faults.append(Fault(match, cut_after=after, stall=stall))

    def take(self, path: str) -> Fault | None:
        with self.lock:
            for i, fault in enumerate(self.faults):
                if fault.match in path:
                    return self.faults.pop(i)
        return None


@contextmanager
def serve_relay(upstream: str) -> Iterator[Relay]:
    """Run a relay on a free loopback port in front of ``upstream`` (``host:port``)."""
    relay = Relay(upstream)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(relay))
    server.daemon_threads = True
    relay.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield relay
    finally:
        server.shutdown()
        server.server_close()


def _handler(relay: Relay) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self._relay()

        def do_HEAD(self) -> None:
            self._relay()

        def do_POST(self) -> None:
            self._relay()

        def do_PUT(self) -> None:
            self._relay()

        def do_PATCH(self) -> None:
            self._relay()

        def _relay(self) -> None:
            target = urlsplit(self.path)
            upstream = target.netloc or relay.upstream
            path = target.path + (f"?{target.query}" if target.query else "")
            relay.seen.append(
                Seen(
                    self.command,
                    self.path,
                    target.path,
                    self.headers.get("Range"),
                    self.headers.get("Authorization"),
                    time.monotonic(),
                )
            )
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            fault = relay.take(target.path)
            if fault is not None and fault.status is not None:
                headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
                self._answer(target.path, fault.status, headers, b"relay says no\n")
                return
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            connection = http.client.HTTPConnection(upstream, timeout=30)
            try:
                connection.request(self.command, path, body=body, headers=headers)
                response = connection.getresponse()
                data = response.read()
                answer = {
                    k: v
                    for k, v in response.getheaders()
                    if k.lower() not in _HOP_BY_HOP and k.lower() != "content-length"
                }
            finally:
                connection.close()
            if fault is not None and fault.cut_after is not None and self.command == "GET":
                self._cut(target.path, response.status, answer, data, fault)
                return
            self._answer(target.path, response.status, answer, data)

        def _answer(self, path: str, status: int, headers: dict[str, str], data: bytes) -> None:
            relay.answered.append((path, status))
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def _cut(
            self, path: str, status: int, headers: dict[str, str], data: bytes, fault: Fault
        ) -> None:
            relay.answered.append((path, status))
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: fault.cut_after])
            self.wfile.flush()
            if fault.stall:
                time.sleep(fault.stall)
            self.close_connection = True
            self.connection.shutdown(2)

    return Handler
