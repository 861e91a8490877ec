"""Debian's ``docker-registry`` (CNCF distribution) on a free loopback port, for OCI pulls.

``start_registry(dir)`` writes a config with filesystem storage under ``dir``, starts the
binary and waits for ``/v2/``; :class:`Registry` pushes blobs and manifests with the plain
distribution API (``POST`` an upload, ``PUT`` it with its digest; ``PUT`` a manifest), the same
calls ``ollama push`` makes.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BINARY = "docker-registry"
# The skip reason of every test that needs it (conftest names those tests in the summary).
MISSING = f"{BINARY} is not installed (apt-get install docker-registry)"
MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_V1 = "application/vnd.docker.container.image.v1+json"
OLLAMA = "application/vnd.ollama.image."


def registry_binary() -> str | None:
    return shutil.which(BINARY)


@dataclass
class Registry:
    host: str  # 127.0.0.1:PORT
    storage: Path

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def push_blob(self, repo: str, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        start = urllib.request.Request(f"{self.url}/v2/{repo}/blobs/uploads/", method="POST")
        with urllib.request.urlopen(start) as response:
            location = response.headers["Location"]
        if location.startswith("/"):
            location = self.url + location
        joiner = "&" if "?" in location else "?"
        put = urllib.request.Request(
            f"{location}{joiner}digest={digest}",
            data=data,
            method="PUT",
            headers={"Content-Type": "application/octet-stream"},
        )
        with urllib.request.urlopen(put):
            pass
        return digest

    def push_manifest(self, repo: str, tag: str, body: bytes) -> str:
        request = urllib.request.Request(
            f"{self.url}/v2/{repo}/manifests/{tag}",
            data=body,
            method="PUT",
            headers={"Content-Type": MANIFEST_V2},
        )
        with urllib.request.urlopen(request):
            pass
        return "sha256:" + hashlib.sha256(body).hexdigest()

    def push_model(
        self,
        repo: str,
        tag: str,
        gguf: bytes | None,
        *,
        layers: dict[str, bytes] | None = None,
        padding: int = 0,
    ) -> str:
        """Push an Ollama-style model (GGUF layer + small layers); return the manifest digest.

        ``layers`` maps an Ollama layer kind (``template``, ``params``, ...) to its bytes;
        ``padding`` appends that much JSON whitespace to the manifest (to make it oversized).
        """
        config = json.dumps({"model_format": "gguf", "rootfs": {"type": "layers"}}).encode()
        entries: list[tuple[str, bytes]] = []
        if gguf is not None:
            entries.append((OLLAMA + "model", gguf))
        entries += [(OLLAMA + kind, data) for kind, data in (layers or {}).items()]
        manifest: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": MANIFEST_V2,
            "config": self._descriptor(repo, CONFIG_V1, config),
            "layers": [self._descriptor(repo, kind, data) for kind, data in entries],
        }
        body = json.dumps(manifest, indent=2).encode() + b" " * padding
        return self.push_manifest(repo, tag, body)

    def blob_file(self, digest: str) -> Path:
        """Where the registry keeps a blob's bytes on disk (to corrupt it in tests)."""
        hexdigest = digest.removeprefix("sha256:")
        return self.storage / "docker/registry/v2/blobs/sha256" / hexdigest[:2] / hexdigest / "data"

    def _descriptor(self, repo: str, media_type: str, data: bytes) -> dict[str, Any]:
        return {"mediaType": media_type, "digest": self.push_blob(repo, data), "size": len(data)}


@contextmanager
def start_registry(
    workdir: Path, *, auth: str = "", storage: Path | None = None
) -> Iterator[Registry]:
    """Run ``docker-registry serve`` on a free loopback port until the block ends.

    ``auth`` is the config's ``auth:`` section (YAML, indented under it), e.g. a ``token`` or
    ``htpasswd`` block; ``storage`` shares another registry's files, so an open registry can
    seed what a protected one serves.
    """
    binary = registry_binary()
    if binary is None:
        raise RuntimeError(MISSING)
    port = _free_port()
    storage = storage or workdir / "storage"
    storage.mkdir(parents=True, exist_ok=True)
    config = workdir / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: error\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n" + (f"auth:\n{auth}" if auth else ""),
        encoding="utf-8",
    )
    log = (workdir / "registry.log").open("wb")
    process = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=log)
    registry = Registry(f"127.0.0.1:{port}", storage)
    try:
        _wait_ready(registry, process, workdir / "registry.log")
        yield registry
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _wait_ready(registry: Registry, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{BINARY} exited: {log.read_text(errors='replace')[-2000:]}")
        try:
            with urllib.request.urlopen(f"{registry.url}/v2/", timeout=1):
                return
        except urllib.error.HTTPError as exc:  # 401: a protected registry, up and answering
            exc.close()
            if exc.code == 401:
                return
            time.sleep(0.05)
        except (urllib.error.URLError, OSError):
            time.sleep(0.05)
    raise RuntimeError(f"{BINARY} did not answer on {registry.url} within 20 s")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
