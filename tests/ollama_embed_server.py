"""A loopback stand-in for the Ollama endpoints the ``ollama`` engine embeds through.

Ollama's docs/api.md: ``GET /api/version``, ``HEAD``/``POST /api/blobs/:digest``,
``POST /api/create`` and ``POST /api/embed`` (``{"model", "input": [...], "truncate"}`` →
``{"model", "embeddings": [[...]], "total_duration", "load_duration",
"prompt_eval_count"}``). It is written apart from lifecycle's embedding code: it loads the
blob with llama-cpp-python's ``Llama`` directly, pools as the GGUF says (llama.cpp's own
default, as Ollama's runner does), embeds each input as its own sequence, and returns unit
vectors (``/api/embed`` normalises; the legacy ``/api/embeddings`` did not). With
``truncate: false`` an input longer than the context is an error, as in Ollama.

``state.fault`` makes the answer wrong on purpose, to test the engine's checks: ``"short"``
drops the last component of input ``state.fault_index``, ``"nan"`` makes one of its
components NaN (Python's JSON encoder writes the ``NaN`` literal), ``"count"`` returns one
vector too few.

Not shown here: Ollama's own runner (its batching, its context shift), its model store.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from llama_cpp import Llama
from loopback import serve_in_thread

VERSION = "0.0.0-lifecycle-embed-test"
_BLOB_PATH = re.compile(r"^/api/blobs/(sha256:[0-9a-f]{64})$")


class EmbedState:
    """Blobs, created models and loaded contexts of one stand-in daemon."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.models: dict[str, Path] = {}  # name -> blob
        self.loaded: dict[str, Llama] = {}
        self.lock = threading.Lock()
        self.embed_requests: list[int] = []  # inputs per /api/embed request
        self.fault: str | None = None
        self.fault_index = 0

    def blob(self, digest: str) -> Path:
        return self.root / digest.replace(":", "-")

    def close(self) -> None:
        for llm in self.loaded.values():
            llm.close()
        self.loaded.clear()


def start_embed_server(root: Path) -> tuple[ThreadingHTTPServer, EmbedState]:
    """Serve on a free loopback port in a daemon thread; ``server.shutdown()`` stops it."""
    state = EmbedState(root)
    return serve_in_thread(_Handler, state=state), state


class _Handler(BaseHTTPRequestHandler):
    state: EmbedState
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_HEAD(self) -> None:
        found = _BLOB_PATH.match(self.path)
        self._reply(200 if found and self.state.blob(found[1]).exists() else 404, None)

    def do_GET(self) -> None:
        if self.path == "/api/version":
            self._reply(200, {"version": VERSION})
        else:
            self._reply(404, {"error": "not found"})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        found = _BLOB_PATH.match(self.path)
        if found:
            data = self.rfile.read(length)
            if "sha256:" + hashlib.sha256(data).hexdigest() != found[1]:
                self._reply(400, {"error": "digest mismatch"})
                return
            self.state.blob(found[1]).write_bytes(data)
            self._reply(201, None)
            return
        body = json.loads(self.rfile.read(length) or b"{}")
        if self.path == "/api/create":
            blob = self.state.blob(next(iter((body.get("files") or {"": ""}).values())))
            if not blob.is_file():
                self._reply(400, {"error": "blob not found"})
                return
            self.state.models[body["model"]] = blob
            self._reply(200, {"status": "success"})
        elif self.path == "/api/embed":
            self._embed(body)
        else:
            self._reply(404, {"error": "not found"})

    def _embed(self, body: dict[str, Any]) -> None:
        name = body.get("model", "")
        blob = self.state.models.get(name)
        if blob is None:
            self._reply(404, {"error": f"model '{name}' not found"})
            return
        inputs = body.get("input")
        inputs = [inputs] if isinstance(inputs, str) else list(inputs or [])
        self.state.embed_requests.append(len(inputs))
        started = time.perf_counter_ns()
        with self.state.lock:
            load_ns = 0
            llm = self.state.loaded.get(name)
            if llm is None:
                # No pooling_type argument: llama.cpp pools as the GGUF's metadata says.
                llm = Llama(model_path=str(blob), embedding=True, n_ctx=512, verbose=False)
                self.state.loaded[name] = llm
                load_ns = time.perf_counter_ns() - started
            vectors, tokens = [], 0
            for text in inputs:
                ids = llm.tokenize(text.encode("utf-8"))
                if len(ids) > llm.n_ctx() and body.get("truncate") is False:
                    self._reply(400, {"error": "input length exceeds the context length"})
                    return
                tokens += len(ids)
                vector = [float(x) for x in llm.embed(text)]
                norm = math.sqrt(sum(x * x for x in vector)) or 1.0
                vectors.append([x / norm for x in vector])
        self._inject(vectors)
        self._reply(
            200,
            {
                "model": name,
                "embeddings": vectors,
                "total_duration": time.perf_counter_ns() - started,
                "load_duration": load_ns,
                "prompt_eval_count": tokens,
            },
        )

    def _inject(self, vectors: list[list[float]]) -> None:
        fault, index = self.state.fault, self.state.fault_index
        if fault == "count":
            vectors.pop()
        elif fault and index < len(vectors):
            if fault == "short":
                vectors[index] = vectors[index][:-1]
            elif fault == "nan":
                vectors[index][0] = math.nan

    def _reply(self, status: int, body: dict[str, Any] | None) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
