"""The ``ollama`` engine: a running Ollama daemon over its HTTP API.

``load`` creates the variant in the daemon with ``POST /api/create`` from the variant's
Modelfile (TEMPLATE, SYSTEM, PARAMETERs, MESSAGEs) and its GGUF blob, uploading the blob with
``POST /api/blobs/sha256:<hex>`` only when ``HEAD`` says the daemon lacks it. Cases then go to
``POST /api/chat`` with the case's messages: the daemon prepends SYSTEM and the MESSAGE history
and renders the TEMPLATE itself, so the golden suite runs on exactly what Ollama serves.

Schemas go in ``format``; sampling in ``options`` (the request's values, which the runner took
from the PARAMETERs, plus ``num_ctx`` and ``num_predict``); ``keep_alive`` keeps the model
loaded for the whole run and ``close`` unloads it. Timings are the daemon's own duration
fields (nanoseconds); memory comes from ``GET /api/ps``; ``GET /api/version`` identifies the
build. A runner crash (``llama runner process has terminated: signal: aborted``) is reported
as :class:`~lifecycle.engines.base.EngineCrashed` with the signal named.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lifecycle import modelfile as mf
from lifecycle.engines.base import (
    DEFAULT_CASE_TIMEOUT_S,
    EngineCrashed,
    EngineInfo,
    Generation,
    GenerationRequest,
    LoadOptions,
)
from lifecycle.engines.embed_http import HttpEmbedder, ollama_vectors
from lifecycle.engines.http import HttpClient, HttpStatusError, normalise_base_url, schema_enforced
from lifecycle.engines.margins import server_margins
from lifecycle.envnames import ENV_OLLAMA_HOST
from lifecycle.errors import EngineError, GoldenSetError

DEFAULT_HOST = "http://127.0.0.1:11434"
KEEP_ALIVE = "30m"  # long enough that the model is not unloaded between cases of a run
UPLOAD_TIMEOUT_S = 3600.0
CREATE_TIMEOUT_S = 600.0

_BLOB_NAME = re.compile(r"^sha256[-:]([0-9a-f]{64})$")
_SIGNAL = re.compile(r"signal: ([a-z ]+?)(?: \(core dumped\))?(?:$|[;,.)])")
# Go's os.ProcessState strings for the signals a llama runner dies of.
_GO_SIGNALS = {
    "aborted": "SIGABRT",
    "segmentation fault": "SIGSEGV",
    "killed": "SIGKILL",
    "bus error": "SIGBUS",
    "illegal instruction": "SIGILL",
    "floating point exception": "SIGFPE",
    "terminated": "SIGTERM",
}


class OllamaEngine:
    """Factory for variants created in an Ollama daemon at ``host``."""

    name = "ollama"

    def __init__(
        self, host: str | None = None, *, timeout_s: float = DEFAULT_CASE_TIMEOUT_S
    ) -> None:
        self.host = _ollama_url(host or os.environ.get(ENV_OLLAMA_HOST) or DEFAULT_HOST)
        self.client = HttpClient(self.host, timeout_s=timeout_s)

    def info(self) -> EngineInfo:
        answer = self.client.get_json("api/version", timeout_s=30.0)
        version = str(answer.get("version", "unknown")) if isinstance(answer, dict) else "unknown"
        return EngineInfo(
            name=self.name,
            version=f"ollama {version}",
            details={"host": self.host, "ollama_version": version},
        )

    def load(self, model_path: Path, options: LoadOptions) -> OllamaModel:
        """Create the variant in the daemon (blob uploaded if missing) and load it."""
        if not options.modelfile:
            raise EngineError(
                "the ollama engine creates models from a Modelfile: LoadOptions.modelfile is empty",
                path=model_path,
            )
        recipe = mf.parse(options.modelfile)
        if recipe.adapters:
            raise EngineError("ADAPTER is not supported by the ollama engine", path=model_path)
        digest = self.ensure_blob(model_path)
        name = ollama_model_name(options.model_name or model_path.stem, options.modelfile)
        self.client.post_json(
            "api/create",
            create_request(name, digest, recipe, model_path.name),
            timeout_s=CREATE_TIMEOUT_S,
        )
        model = OllamaModel(self, name, options)
        model.warm_up()
        return model

    def load_embedding(
        self, model_path: Path, options: LoadOptions, pooling: str | None
    ) -> HttpEmbedder:
        """Create the variant in the daemon as :meth:`load` does; embed through /api/embed.

        The daemon pools as the GGUF says; PARAMETER pooling is lifecycle's, not Ollama's,
        so it is not sent (a pooling it names that the GGUF lacks is llama-cpp only)."""
        if not options.modelfile:
            raise EngineError("the ollama engine creates models from a Modelfile", path=model_path)
        start = time.perf_counter()
        recipe = mf.parse(options.modelfile)
        recipe.parameters.pop("pooling", None)
        name = ollama_model_name(options.model_name or model_path.stem, options.modelfile)
        self.client.post_json(
            "api/create",
            create_request(name, self.ensure_blob(model_path), recipe, model_path.name),
            timeout_s=CREATE_TIMEOUT_S,
        )
        return HttpEmbedder(
            self.client,
            "api/embed",
            lambda texts: {"model": name, "input": texts, "truncate": False},
            ollama_vectors,
            normalised=True,
            load_ms=(time.perf_counter() - start) * 1000.0,
        )

    def ensure_blob(self, model_path: Path) -> str:
        """``sha256:<hex>`` of the GGUF, uploaded to the daemon unless it already has it."""
        digest = blob_digest(model_path)
        path = f"api/blobs/{digest}"
        try:
            self.client.send("HEAD", path, None, timeout_s=30.0)
            return digest
        except HttpStatusError as exc:
            if exc.status != 404:
                raise
        size = model_path.stat().st_size
        with model_path.open("rb") as body:
            self.client.send(
                "POST",
                path,
                body,
                headers={"Content-Length": str(size), "Content-Type": "application/octet-stream"},
                timeout_s=UPLOAD_TIMEOUT_S,
            )
        return digest


class OllamaModel:
    """A variant created in the daemon; requests may run concurrently (``OLLAMA_NUM_PARALLEL``)."""

    concurrent = True

    def __init__(self, engine: OllamaEngine, name: str, options: LoadOptions) -> None:
        self.engine = engine
        self.name = name
        self.options = options
        self.load_ms = 0.0
        self.n_threads = options.n_threads

    def warm_up(self) -> None:
        """Load the model now (a chat without messages), so load time is not a case's latency."""
        start = time.perf_counter()
        body = {"model": self.name, "messages": [], "keep_alive": KEEP_ALIVE, "stream": False}
        body["options"] = self._load_settings()
        answer = self._post("api/chat", body, CREATE_TIMEOUT_S)
        wall_ms = (time.perf_counter() - start) * 1000.0
        load_ns = answer.get("load_duration")
        self.load_ms = load_ns / 1e6 if isinstance(load_ns, int | float) and load_ns else wall_ms

    def generate(self, request: GenerationRequest) -> Generation:
        if request.messages is None:
            raise EngineError("the ollama engine needs the case's messages (request.messages)")
        body: dict[str, Any] = {
            "model": self.name,
            "messages": [{"role": m["role"], "content": m["content"]} for m in request.messages],
            "stream": False,
            "keep_alive": KEEP_ALIVE,
            "options": {**self._load_settings(), **_sampling(request)},
        }
        if request.json_schema is not None:
            body["format"] = dict(request.json_schema)
        # Ollama 0.12.11+ returns per-token log-probabilities with alternatives: each token's
        # decision margin (older daemons ignore the fields; margins are then unknown).
        body.update(logprobs=True, top_logprobs=2)
        start = time.perf_counter()
        answer = self._post("api/chat", body, request.timeout_s or self.engine.client.timeout_s)
        latency_ms = (time.perf_counter() - start) * 1000.0
        message = answer.get("message") or {}
        text = str(message.get("content") or "")
        finish = "length" if answer.get("done_reason") == "length" else "stop"
        prompt_tokens = int(answer.get("prompt_eval_count") or 0)
        eval_count = int(answer.get("eval_count") or 0)
        margins = server_margins(answer.get("logprobs"), text, request.margin_field)
        margin, margin_step, field_margin = margins.summary() if margins else (None, None, None)
        return Generation(
            text=text,
            # Ollama reports only the prompt tokens it evaluated (a cached prefix is left out).
            prompt_tokens=prompt_tokens,
            completion_tokens=eval_count,
            prompt_eval_tokens=prompt_tokens,
            prompt_ms=_ms(answer.get("prompt_eval_duration")),
            eval_tokens=eval_count,
            generation_ms=_ms(answer.get("eval_duration")),
            latency_ms=latency_ms,
            finish_reason=finish,
            schema_enforced=schema_enforced(text, request.json_schema, finish),
            margin=margin,
            margin_step=margin_step,
            field_margin=field_margin,
        )

    def tokenize(self, text: str) -> list[int]:
        raise EngineError("Ollama's API has no tokenize endpoint")

    def check_schema(self, schema: Mapping[str, Any]) -> None:
        """Have the daemon compile ``schema`` now (one token), so a bad schema fails up front."""
        body = {
            "model": self.name,
            "messages": [{"role": "user", "content": "{}"}],
            "format": dict(schema),
            "stream": False,
            "keep_alive": KEEP_ALIVE,
            "options": {**self._load_settings(), "num_predict": 1},
        }
        try:
            self._post("api/chat", body, 120.0)
        except HttpStatusError as exc:
            if exc.status in (400, 500) and "schema" in exc.detail.lower():
                raise GoldenSetError(f"Ollama rejected the JSON Schema: {exc.detail}") from None
            raise

    def memory(self) -> dict[str, int]:
        """``size`` (total bytes) and ``size_vram`` (bytes on the GPU) from ``/api/ps``."""
        answer = self.engine.client.get_json("api/ps", timeout_s=30.0)
        for entry in answer.get("models", []) if isinstance(answer, dict) else []:
            if entry.get("name") == self.name or entry.get("model") == self.name:
                return {
                    "size": int(entry.get("size", 0)),
                    "size_vram": int(entry.get("size_vram", 0)),
                }
        raise EngineError(f"{self.name} is not loaded in the Ollama daemon (/api/ps)")

    def close(self) -> None:
        """Unload the model (``keep_alive: 0``) so the next variant has the memory."""
        body = {"model": self.name, "messages": [], "keep_alive": 0, "stream": False}
        # Best effort: the daemon unloads it after keep_alive anyway.
        with contextlib.suppress(EngineError):
            self._post("api/chat", body, 60.0)

    def _post(self, path: str, body: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        try:
            answer = self.engine.client.post_json(path, body, timeout_s=timeout_s)
        except HttpStatusError as exc:
            crashed = _crash_signal(exc.detail)
            if crashed is not None:
                raise EngineCrashed(
                    f"Ollama's runner for {self.name} died ({crashed}): {exc.detail}",
                    signal=crashed,
                ) from None
            raise
        if not isinstance(answer, dict):
            raise EngineError(f"Ollama answered {answer!r:.200} instead of a JSON object")
        return answer

    def _load_settings(self) -> dict[str, Any]:
        settings: dict[str, Any] = {
            "num_ctx": self.options.n_ctx,
            "num_batch": self.options.n_batch,
        }
        if self.options.n_threads > 0:
            settings["num_thread"] = self.options.n_threads
        return settings


def create_request(name: str, digest: str, recipe: mf.Modelfile, filename: str) -> dict[str, Any]:
    """The ``/api/create`` body for a Modelfile whose FROM is the blob ``digest``."""
    body: dict[str, Any] = {
        "model": name,
        "files": {_gguf_name(filename): digest},
        "stream": False,
    }
    if recipe.template is not None:
        body["template"] = recipe.template
    if recipe.system is not None:
        body["system"] = recipe.system
    if recipe.parameters:
        body["parameters"] = recipe.to_dict()["parameters"]
    if recipe.messages:
        body["messages"] = [{"role": m.role, "content": m.content} for m in recipe.messages]
    if recipe.license:
        body["license"] = list(recipe.license)
    return body


def ollama_model_name(base: str, modelfile_text: str) -> str:
    """A valid Ollama name for a variant, tagged by its Modelfile so edits never collide."""
    stem = re.sub(r"[^a-z0-9._-]+", "-", base.lower()).strip("-._") or "variant"
    tag = hashlib.sha256(modelfile_text.encode()).hexdigest()[:12]
    return f"lifecycle-{stem[:60]}:{tag}"


def blob_digest(path: Path) -> str:
    """``sha256:<hex>``: from the store's file name (``sha256-<hex>``), else by hashing."""
    found = _BLOB_NAME.match(path.name)
    if found:
        return f"sha256:{found[1]}"
    sha = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            sha.update(chunk)
    return f"sha256:{sha.hexdigest()}"


def _sampling(request: GenerationRequest) -> dict[str, Any]:
    options: dict[str, Any] = {"num_predict": request.max_tokens, **request.sampling()}
    if request.stop:
        options["stop"] = list(request.stop)
    return options


def _crash_signal(detail: str) -> str | None:
    if "runner process" not in detail and "signal:" not in detail:
        return None
    found = _SIGNAL.search(detail)
    if found is None:
        return "unknown signal" if "terminated" in detail else None
    word = found[1].strip()
    return _GO_SIGNALS.get(word, word)


def _ms(nanoseconds: Any) -> float:
    return float(nanoseconds) / 1e6 if isinstance(nanoseconds, int | float) else 0.0


def _gguf_name(filename: str) -> str:
    return filename if filename.endswith(".gguf") else f"{filename}.gguf"


def _ollama_url(host: str) -> str:
    """``OLLAMA_HOST`` as Ollama reads it: scheme and port 11434 default, ``0.0.0.0`` local."""
    url = normalise_base_url(host)
    scheme, _, rest = url.partition("://")
    hostport = rest.split("/", 1)[0]
    if hostport.startswith("0.0.0.0"):
        hostport = "127.0.0.1" + hostport[len("0.0.0.0") :]
    if ":" not in hostport.rsplit("]", 1)[-1]:
        hostport += ":11434"
    return f"{scheme}://{hostport}"
