"""A local stand-in for the Hugging Face Hub: the endpoints huggingface_hub actually calls.

- ``GET /api/models/{repo}[/revision/{rev}]?blobs=True`` (``HfApi.model_info(...,
  files_metadata=True)``): the commit sha and ``siblings`` with size, ``blobId`` and the LFS
  ``sha256``; 404 with ``X-Error-Code: RepoNotFound`` / ``RevisionNotFound`` like the hub.
- ``GET|HEAD /{repo}/resolve/{rev}/{path}``: like the hub, a 302 (with ``X-Repo-Commit``,
  ``X-Linked-Etag``, ``X-Linked-Size``) to a CDN URL, here ``/cdn/{sha256}``.
- ``GET /cdn/{sha256}``: the bytes, honouring ``Range: bytes=a-[b]`` with 206.

Knobs for bad-server tests: ``ignore_range``, ``truncate_next`` (cut the next body after N
bytes, with the full Content-Length announced), ``corrupt`` (serve other bytes for a sha) and
``fail`` (answer the next API/resolve requests with these statuses, e.g. ``(503, "1")`` with a
``Retry-After``). Every request is logged as ``(method, path, Range header)``, and its
``Authorization`` header in ``authorizations``.

Access control like the hub's: ``tokens`` are the valid tokens; a repo in ``private`` is read
only with its token (401 ``RepoNotFound`` without one, 404 with another); a repo in ``gated``
only with a granted token (401 ``GatedRepo`` without a token, 403 with an ungranted one); an
unknown token is a 401 "Invalid credentials in Authorization header".
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit


@dataclass
class Repo:
    branches: dict[str, str] = field(default_factory=dict)  # branch -> commit
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # commit -> files


@dataclass
class Hub:
    url: str = ""
    repos: dict[str, Repo] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)  # sha256 hex -> bytes
    ignore_range: bool = False
    truncate_next: int | None = None
    corrupt: dict[str, bytes] = field(default_factory=dict)
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)
    authorizations: list[str | None] = field(default_factory=list)
    tokens: set[str] = field(default_factory=set)
    private: dict[str, str] = field(default_factory=dict)  # repo -> the token that can read it
    gated: dict[str, set[str]] = field(default_factory=dict)  # repo -> tokens granted access
    fail: list[tuple[int, str | None]] = field(default_factory=list)  # (status, Retry-After)

    def publish(self, repo_id: str, files: dict[str, bytes], branch: str = "main") -> str:
        """Commit ``files`` (the whole tree) to ``branch``; return the new commit sha."""
        repo = self.repos.setdefault(repo_id, Repo())
        commit = hashlib.sha1(
            repr((repo_id, branch, len(repo.commits), sorted(files))).encode()
        ).hexdigest()
        repo.commits[commit] = dict(files)
        repo.branches[branch] = commit
        for data in files.values():
            self.blobs[hashlib.sha256(data).hexdigest()] = data
        return commit

    def cdn_requests(self) -> list[str | None]:
        """The Range headers of every byte download, in order."""
        return [r for m, p, r in self.requests if m == "GET" and p.startswith("/cdn/")]


@contextmanager
def serve_hub() -> Iterator[Hub]:
    """Run a hub stand-in on a free loopback port for the duration of the block."""
    hub = Hub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
    server.daemon_threads = True
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()


_API = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)(?:/revision/(?P<rev>[^/]+))?$")
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")
_CDN = re.compile(r"^/cdn/(?P<sha>[0-9a-f]{64})$")
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


def _handler(hub: Hub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_HEAD(self) -> None:
            self._route(body=False)

        def do_GET(self) -> None:
            self._route(body=True)

        def _route(self, body: bool) -> None:
            path = unquote(urlsplit(self.path).path)
            hub.requests.append((self.command, path, self.headers.get("Range")))
            hub.authorizations.append(self.headers.get("Authorization"))
            repo = (m := _API.match(path) or _RESOLVE.match(path)) and m["repo"]
            if repo and hub.fail:
                status, retry_after = hub.fail.pop(0)
                self._send(status, b"busy", {"Retry-After": retry_after} if retry_after else {})
            elif repo and not self._allowed(repo):
                return
            elif m := _API.match(path):
                self._model_info(m["repo"], m["rev"] or "main")
            elif m := _RESOLVE.match(path):
                self._resolve(m["repo"], m["rev"], m["path"])
            elif (m := _CDN.match(path)) and m["sha"] in hub.blobs:
                self._bytes(hub.corrupt.get(m["sha"], hub.blobs[m["sha"]]), body)
            else:
                self._error(404, "EntryNotFound", "not found")

        def _allowed(self, repo_id: str) -> bool:
            """Answer the hub's auth errors for ``repo_id``; True when the request may go on."""
            header = self.headers.get("Authorization") or ""
            token = header.removeprefix("Bearer ") if header.startswith("Bearer ") else None
            if token is not None and hub.tokens and token not in hub.tokens:
                message = "Invalid credentials in Authorization header"
                self._send(401, b"{}", {"X-Error-Message": message})
                return False
            if repo_id in hub.private and token != hub.private[repo_id]:
                self._error(401 if token is None else 404, "RepoNotFound", "Repository not found")
                return False
            if repo_id in hub.gated and token not in hub.gated[repo_id]:
                message = "Access to this model is restricted: you must be authenticated"
                self._error(401 if token is None else 403, "GatedRepo", message)
                return False
            return True

        def _commit(self, repo_id: str, rev: str) -> tuple[str, dict[str, bytes]] | None:
            repo = hub.repos.get(repo_id)
            if repo is None:
                self._error(404, "RepoNotFound", "Repository not found")
                return None
            commit = repo.branches.get(rev, rev)
            if commit not in repo.commits:
                self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
                return None
            return commit, repo.commits[commit]

        def _model_info(self, repo_id: str, rev: str) -> None:
            found = self._commit(repo_id, rev)
            if found is None:
                return
            commit, files = found
            siblings = []
            for name, data in sorted(files.items()):
                sha = hashlib.sha256(data).hexdigest()
                siblings.append(
                    {
                        "rfilename": name,
                        "size": len(data),
                        "blobId": hashlib.sha1(data).hexdigest(),
                        "lfs": {"sha256": sha, "size": len(data), "pointerSize": 134},
                    }
                )
            info = {"id": repo_id, "modelId": repo_id, "sha": commit, "siblings": siblings}
            self._send(200, json.dumps(info).encode(), {"Content-Type": "application/json"})

        def _resolve(self, repo_id: str, rev: str, name: str) -> None:
            found = self._commit(repo_id, rev)
            if found is None:
                return
            commit, files = found
            if name not in files:
                self._error(404, "EntryNotFound", f"{name} does not exist")
                return
            sha = hashlib.sha256(files[name]).hexdigest()
            headers = {
                "Location": f"/cdn/{sha}",
                "X-Repo-Commit": commit,
                "X-Linked-Etag": f'"{sha}"',
                "X-Linked-Size": str(len(files[name])),
                "ETag": f'"{sha}"',
            }
            self._send(302, b"", headers)

        def _bytes(self, data: bytes, body: bool) -> None:
            status, start, end = 200, 0, len(data)
            wanted = _RANGE.match(self.headers.get("Range") or "")
            if wanted and not hub.ignore_range:
                start = int(wanted[1])
                end = min(len(data), int(wanted[2]) + 1) if wanted[2] else len(data)
                if start >= len(data):
                    self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"})
                    return
                status = 206
            headers = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}
            if status == 206:
                headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(data)}"
            chunk = data[start:end]
            cut, hub.truncate_next = hub.truncate_next, None
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(chunk)))
            self.end_headers()
            if not body:
                return
            if cut is not None:
                self.wfile.write(chunk[:cut])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)
                return
            self.wfile.write(chunk)

        def _error(self, status: int, code: str, message: str) -> None:
            body = json.dumps({"error": message}).encode()
            headers = {"X-Error-Code": code, "X-Error-Message": message}
            self._send(status, body, {"Content-Type": "application/json", **headers})

        def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

    return Handler
