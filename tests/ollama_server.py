"""A loopback HTTP server speaking the Ollama API endpoints the ``ollama`` engine uses.

A real Ollama daemon cannot be installed on CI machines, so this server implements the
documented endpoints (docs/api.md: ``GET /api/version``, ``HEAD``/``POST /api/blobs/:digest``,
``POST /api/create``, ``POST /api/chat``, ``GET /api/ps``) with the documented request and
response shapes, on top of the real llama-cpp engine: blobs are checked against their digest,
``/api/create`` builds a Modelfile from the request fields, and ``/api/chat`` prepends SYSTEM and
the MESSAGE history and renders the TEMPLATE the way Ollama does (``lifecycle.prompt``), then
generates for real. What it cannot show is Ollama's own behaviour: its Go template engine, its
scheduler, its grammar compiler, its exact token accounting.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from lifecycle import gguf
from lifecycle import modelfile as mf
from lifecycle.engines.base import GenerationRequest, LoadOptions
from lifecycle.engines.llama_cpp import LlamaCppEngine, LlamaCppModel
from lifecycle.prompt import render_prompt

VERSION = "0.0.0-lifecycle-test"
_BLOB_PATH = re.compile(r"^/api/blobs/(sha256:[0-9a-f]{64})$")


class OllamaState:
    """Blobs, created models and the models loaded in llama.cpp."""

    def __init__(self, root: Path) -> None:
        self.blobs = root / "blobs"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.models: dict[str, tuple[mf.Modelfile, Path]] = {}
        self.loaded: dict[str, tuple[LlamaCppModel, int, threading.Lock]] = {}
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str, Any]] = []  # (method, path, JSON body) for tests
        self.uploads = 0

    def blob(self, digest: str) -> Path:
        return self.blobs / digest.replace(":", "-")

    def load(self, name: str, num_ctx: int) -> tuple[LlamaCppModel, threading.Lock, float]:
        """The model resident for ``name`` (reloaded when num_ctx changes), and load ms."""
        with self.lock:
            current = self.loaded.get(name)
            if current is not None and current[1] == num_ctx:
                return current[0], current[2], 0.0
            if current is not None:
                current[0].close()
            _recipe, blob = self.models[name]
            model = LlamaCppEngine().load(blob, LoadOptions(n_ctx=num_ctx, n_threads=2))
            self.loaded[name] = (model, num_ctx, threading.Lock())
            return model, self.loaded[name][2], model.load_ms

    def unload(self, name: str) -> None:
        with self.lock:
            current = self.loaded.pop(name, None)
        if current is not None:
            current[0].close()


def start_ollama_server(root: Path) -> tuple[ThreadingHTTPServer, OllamaState]:
    """Serve on a free loopback port in a daemon thread; ``server.shutdown()`` stops it."""
    state = OllamaState(root)

    class Handler(_Handler):
        pass

    Handler.state = state
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, state


class _Handler(BaseHTTPRequestHandler):
    state: OllamaState
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    # --- routing --------------------------------------------------------------------------

    def do_HEAD(self) -> None:
        found = _BLOB_PATH.match(self.path)
        self.state.requests.append(("HEAD", self.path, None))
        if found and self.state.blob(found[1]).exists():
            self._reply(200, None)
        else:
            self._reply(404, None)

    def do_GET(self) -> None:
        self.state.requests.append(("GET", self.path, None))
        if self.path == "/api/version":
            self._reply(200, {"version": VERSION})
        elif self.path == "/api/ps":
            self._reply(200, {"models": [self._ps_entry(n) for n in list(self.state.loaded)]})
        else:
            self._reply(404, {"error": "not found"})

    def do_POST(self) -> None:
        found = _BLOB_PATH.match(self.path)
        if found:
            self.state.requests.append(("POST", self.path, None))
            self._push_blob(found[1])
            return
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        self.state.requests.append(("POST", self.path, body))
        if self.path == "/api/create":
            self._create(body)
        elif self.path == "/api/chat":
            self._chat(body)
        else:
            self._reply(404, {"error": "not found"})

    # --- endpoints ------------------------------------------------------------------------

    def _push_blob(self, digest: str) -> None:
        length = int(self.headers.get("Content-Length", 0))
        sha = hashlib.sha256()
        tmp = self.state.blob(digest).with_suffix(".partial")
        with tmp.open("wb") as out:
            remaining = length
            while remaining:
                chunk = self.rfile.read(min(remaining, 1 << 20))
                if not chunk:
                    break
                sha.update(chunk)
                out.write(chunk)
                remaining -= len(chunk)
        if f"sha256:{sha.hexdigest()}" != digest:
            tmp.unlink()
            self._reply(400, {"error": "digest mismatch"})
            return
        tmp.rename(self.state.blob(digest))
        self.state.uploads += 1
        self._reply(201, None)

    def _create(self, body: dict[str, Any]) -> None:
        files = body.get("files") or {}
        if len(files) != 1:
            self._reply(400, {"error": "this server supports exactly one GGUF in files"})
            return
        digest = next(iter(files.values()))
        blob = self.state.blob(digest)
        if not blob.exists():
            self._reply(400, {"error": f"blob {digest} not found"})
            return
        recipe = mf.Modelfile.from_dict(
            {
                "from": [str(blob)],
                "parameters": body.get("parameters") or {},
                "template": body.get("template"),
                "system": body.get("system"),
                "messages": body.get("messages") or [],
                "license": body.get("license") or [],
            }
        )
        self.state.unload(body["model"])
        self.state.models[body["model"]] = (recipe, blob)
        self._reply(200, {"status": "success"})

    def _chat(self, body: dict[str, Any]) -> None:
        name = body.get("model", "")
        if name not in self.state.models:
            self._reply(404, {"error": f"model '{name}' not found"})
            return
        recipe, blob = self.state.models[name]
        options = {**recipe.parameters, **(body.get("options") or {})}
        started = time.perf_counter_ns()
        if body.get("keep_alive") == 0 and not body.get("messages"):
            self.state.unload(name)
            self._reply(200, self._done(name, "", "unload"))
            return
        model, lock, load_ms = self.state.load(name, int(options.get("num_ctx", 2048)))
        if not body.get("messages"):
            answer = self._done(name, "", "load")
            answer["load_duration"] = int(load_ms * 1e6)
            self._reply(200, answer)
            return
        prompt = render_prompt(
            recipe,
            body["messages"],
            chat_template=gguf.read_gguf(blob).chat_template,
        )
        fmt = body.get("format")
        schema = fmt if isinstance(fmt, dict) else {"type": "object"} if fmt == "json" else None
        stop = options.get("stop", [])
        num_predict = int(options.get("num_predict", -1))
        request = GenerationRequest(
            prompt=prompt,
            max_tokens=num_predict if num_predict > 0 else 128,
            stop=tuple(stop) if isinstance(stop, list) else (str(stop),),
            temperature=float(options.get("temperature", 0.8)),
            seed=int(options.get("seed", 0)),
            top_k=int(options.get("top_k", 40)),
            top_p=float(options.get("top_p", 0.9)),
            min_p=float(options.get("min_p", 0.0)),
            repeat_penalty=float(options.get("repeat_penalty", 1.1)),
            json_schema=schema,
        )
        try:
            with lock:
                generation = model.generate(request)
        except Exception as exc:
            self._reply(500, {"error": str(exc)})
            return
        answer = self._done(name, generation.text, generation.finish_reason)
        answer.update(
            total_duration=time.perf_counter_ns() - started,
            load_duration=int(load_ms * 1e6),
            prompt_eval_count=generation.prompt_eval_tokens,
            prompt_eval_duration=int(generation.prompt_ms * 1e6),
            eval_count=generation.completion_tokens,
            eval_duration=int(generation.generation_ms * 1e6),
        )
        self._reply(200, answer)

    # --- helpers --------------------------------------------------------------------------

    def _done(self, name: str, content: str, reason: str) -> dict[str, Any]:
        return {
            "model": name,
            "created_at": datetime.now(UTC).isoformat(),
            "message": {"role": "assistant", "content": content},
            "done_reason": reason,
            "done": True,
        }

    def _ps_entry(self, name: str) -> dict[str, Any]:
        _recipe, blob = self.state.models[name]
        size = blob.stat().st_size
        return {
            "name": name,
            "model": name,
            "size": size,
            "digest": blob.name.replace("sha256-", ""),
            "details": {"format": "gguf", "family": "llama"},
            "expires_at": datetime.now(UTC).isoformat(),
            "size_vram": 0,  # CPU only
        }

    def _reply(self, status: int, body: dict[str, Any] | None) -> None:
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(status)
        if body is not None:
            self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
