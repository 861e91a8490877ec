"""One way to run a stand-in HTTP server for a test: a free loopback port, a daemon thread."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def serve_in_thread(handler: type[BaseHTTPRequestHandler], **attrs: Any) -> ThreadingHTTPServer:
    """Serve ``handler`` (a subclass of it carrying ``attrs`` as class attributes, e.g. the
    stand-in's state) on 127.0.0.1 at a free port; ``server.shutdown()`` stops it."""
    bound = type(handler.__name__, (handler,), attrs)
    server = ThreadingHTTPServer(("127.0.0.1", 0), bound)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
