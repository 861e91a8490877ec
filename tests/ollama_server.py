"""A loopback HTTP server speaking the Ollama API endpoints the ``ollama`` engine uses.

A real Ollama daemon cannot be installed on CI machines, so this server implements the
documented endpoints (docs/api.md: ``GET /api/version``, ``HEAD``/``POST /api/blobs/:digest``,
``POST /api/create``, ``POST /api/chat``, ``GET /api/ps``) with the documented request and
response shapes. It is written apart from lifecycle's own prompt and decoding code, so that
the tests comparing the ``ollama`` engine with the embedded one can fail when lifecycle
renders a Modelfile or maps its PARAMETERs differently from what Ollama does:

- ``/api/chat`` builds the conversation the way Ollama's chat handler does (SYSTEM first
  unless the request brings its own, then the MESSAGE history, then the request's
  messages) and renders the TEMPLATE with its own code (:data:`RENDERERS`: the Gemma turn
  template the tests use; any other TEMPLATE is refused rather than rendered wrongly);
- it tokenizes that raw prompt itself and generates with llama-cpp-python's ``Llama``
  directly, with the sampler settings Ollama documents for each option and its defaults
  (docs/modelfile.md: temperature 0.8, top_k 40, top_p 0.9, min_p 0, repeat_penalty 1.1,
  repeat_last_n 64, seed 0, num_predict -1);
- ``format`` becomes a grammar through llama-cpp-python's JSON Schema converter; the
  answer ends at an end-of-generation token, a stop sequence or num_predict, and its
  bytes are decoded as Go's JSON encoder writes them (invalid UTF-8 as U+FFFD).

What it cannot show is Ollama's own behaviour: its Go template engine, its scheduler, its
grammar compiler (llama.cpp's C++ converter, where lifecycle and this server share
llama-cpp-python's Python one), its exact token accounting.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import llama_cpp
from conftest import TINY_TEMPLATE
from llama_cpp import Llama, LlamaGrammar
from loopback import serve_in_thread

VERSION = "0.0.0-lifecycle-test"
_BLOB_PATH = re.compile(r"^/api/blobs/(sha256:[0-9a-f]{64})$")

# Ollama's documented option defaults (docs/modelfile.md, "Valid Parameters and Values").
DEFAULTS: dict[str, Any] = {
    "temperature": 0.8,
    "top_k": 40,
    "top_p": 0.9,
    "min_p": 0.0,
    "typical_p": 1.0,
    "repeat_penalty": 1.1,
    "repeat_last_n": 64,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "seed": 0,
    "num_predict": -1,
    "num_ctx": 2048,
    "num_batch": 512,
    "stop": [],
}


def gemma_turns(messages: list[dict[str, str]]) -> str:
    """TINY_TEMPLATE by hand: system and user messages as user turns, the assistant as model
    turns, the last assistant turn left open, a model turn opened after a final user turn."""
    out = []
    for i, message in enumerate(messages):
        last = i == len(messages) - 1
        if message["role"] in ("user", "system"):
            out.append(f"<start_of_turn>user\n{message['content']}<end_of_turn>\n")
            if last:
                out.append("<start_of_turn>model\n")
        elif message["role"] == "assistant":
            out.append(f"<start_of_turn>model\n{message['content']}")
            if not last:
                out.append("<end_of_turn>\n")
    return "".join(out)


# The TEMPLATEs this server can render, by their exact text.
RENDERERS: dict[str, Callable[[list[dict[str, str]]], str]] = {TINY_TEMPLATE: gemma_turns}


def conversation(recipe: dict[str, Any], messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """What Ollama's chat handler renders: the Modelfile's MESSAGEs then the request's, with
    SYSTEM in front unless the request starts with a system message of its own."""
    history = [{"role": m["role"], "content": m["content"]} for m in recipe.get("messages", [])]
    turns = history + [{"role": m["role"], "content": m["content"]} for m in messages]
    if recipe.get("system") and messages[0]["role"] != "system":
        turns.insert(0, {"role": "system", "content": recipe["system"]})
    return turns


class OllamaState:
    """Blobs, created models (their /api/create bodies) and the models loaded in llama.cpp."""

    def __init__(self, root: Path) -> None:
        self.blobs = root / "blobs"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.models: dict[str, tuple[dict[str, Any], Path]] = {}
        self.loaded: dict[str, tuple[Llama, tuple[int, ...], threading.Lock]] = {}
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str, Any]] = []  # (method, path, JSON body) for tests
        self.uploads = 0

    def blob(self, digest: str) -> Path:
        return self.blobs / digest.replace(":", "-")

    def load(self, name: str, options: dict[str, Any]) -> tuple[Llama, threading.Lock, float]:
        """The model resident for ``name`` (reloaded when a load option changes), and load ms."""
        settings = (
            int(options["num_ctx"]),
            int(options["num_batch"]),
            int(options.get("num_thread") or 2),
            int(options["repeat_last_n"]),
        )
        with self.lock:
            current = self.loaded.get(name)
            if current is not None and current[1] == settings:
                return current[0], current[2], 0.0
            if current is not None:
                current[0].close()
            _recipe, blob = self.models[name]
            started = time.perf_counter()
            n_ctx, n_batch, threads, last_n = settings
            llm = Llama(
                model_path=str(blob),
                n_ctx=n_ctx,
                n_batch=n_batch,
                n_threads=threads,
                n_threads_batch=threads,
                last_n_tokens_size=last_n,
                verbose=False,
            )
            self.loaded[name] = (llm, settings, threading.Lock())
            return llm, self.loaded[name][2], (time.perf_counter() - started) * 1000.0

    def unload(self, name: str) -> None:
        with self.lock:
            current = self.loaded.pop(name, None)
        if current is not None:
            current[0].close()


def start_ollama_server(root: Path) -> tuple[ThreadingHTTPServer, OllamaState]:
    """Serve on a free loopback port in a daemon thread; ``server.shutdown()`` stops it."""
    state = OllamaState(root)
    return serve_in_thread(_Handler, state=state), state


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
        template = body.get("template")
        if template is not None and template not in RENDERERS:
            self._reply(400, {"error": "this stand-in renders only the templates in RENDERERS"})
            return
        self.state.unload(body["model"])
        self.state.models[body["model"]] = (body, blob)
        self._reply(200, {"status": "success"})

    def _chat(self, body: dict[str, Any]) -> None:
        name = body.get("model", "")
        if name not in self.state.models:
            self._reply(404, {"error": f"model '{name}' not found"})
            return
        recipe, _blob = self.state.models[name]
        options = {**DEFAULTS, **(recipe.get("parameters") or {}), **(body.get("options") or {})}
        started = time.perf_counter_ns()
        if body.get("keep_alive") == 0 and not body.get("messages"):
            self.state.unload(name)
            self._reply(200, self._done(name, "", "unload"))
            return
        llm, lock, load_ms = self.state.load(name, options)
        if not body.get("messages"):
            answer = self._done(name, "", "load")
            answer["load_duration"] = int(load_ms * 1e6)
            self._reply(200, answer)
            return
        render = RENDERERS.get(recipe.get("template") or "")
        if render is None:
            self._reply(500, {"error": "no TEMPLATE this stand-in can render"})
            return
        prompt = render(conversation(recipe, body["messages"]))
        grammar = None
        fmt = body.get("format")
        if fmt is not None:
            schema = {"type": "object"} if fmt == "json" else fmt
            try:
                grammar = LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
            except Exception as exc:  # the converter raises bare Exceptions
                self._reply(500, {"error": f"invalid JSON schema in format: {exc}"})
                return
        try:
            with lock:
                text, reason, timings = generate(llm, prompt, options, grammar)
        except Exception as exc:
            self._reply(500, {"error": str(exc)})
            return
        answer = self._done(name, text, reason)
        answer.update(
            total_duration=time.perf_counter_ns() - started,
            load_duration=int(load_ms * 1e6),
            **timings,
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


def generate(
    llm: Llama, prompt: str, options: dict[str, Any], grammar: LlamaGrammar | None
) -> tuple[str, str, dict[str, int]]:
    """Generate from the raw ``prompt`` with Ollama's options: (content, done_reason, counts
    and durations in nanoseconds)."""
    tokens = llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
    limit = int(options["num_predict"])
    room = llm.n_ctx() - len(tokens)
    if room <= 0:
        raise ValueError(f"the prompt ({len(tokens)} tokens) does not fit num_ctx")
    limit = min(limit, room) if limit > 0 else room
    stops = [str(s).encode("utf-8") for s in options["stop"] if s]
    llm.set_seed(int(options["seed"]))
    out: list[int] = []
    reason = "length"
    started = time.perf_counter_ns()
    first_at = started
    cut: int | None = None
    for token in llm.generate(
        tokens,
        temp=float(options["temperature"]),
        top_k=int(options["top_k"]),
        top_p=float(options["top_p"]),
        min_p=float(options["min_p"]),
        typical_p=float(options["typical_p"]),
        repeat_penalty=float(options["repeat_penalty"]),
        presence_penalty=float(options["presence_penalty"]),
        frequency_penalty=float(options["frequency_penalty"]),
        grammar=grammar,
    ):
        if not out:
            first_at = time.perf_counter_ns()
        if llama_cpp.llama_vocab_is_eog(llm._model.vocab, token):
            reason = "stop"
            break
        out.append(token)
        data = llm.detokenize(out, prev_tokens=tokens)
        hits = [i for i in (data.find(s) for s in stops) if i >= 0]
        if hits:
            reason, cut = "stop", min(hits)
            break
        if len(out) >= limit:
            break
    data = llm.detokenize(out, prev_tokens=tokens)[:cut]
    done = time.perf_counter_ns()
    timings = {
        "prompt_eval_count": len(tokens),
        "prompt_eval_duration": max(first_at - started, 1),
        "eval_count": len(out),
        "eval_duration": max(done - first_at, 1),
    }
    return data.decode("utf-8", errors="replace"), reason, timings
