"""The ``openai`` engine: any OpenAI-compatible server (llama-server, vLLM, llama-cpp-python).

By default (``template="server"``) the golden suite runs on what the server serves:
``/v1/chat/completions`` with the case's messages, after the variant's SYSTEM and MESSAGE
history (Ollama's rule: SYSTEM only when the conversation has no system message). The server
applies its own chat template, exactly as it does for production clients; the Modelfile
TEMPLATE is not used, and :meth:`OpenAIModel.served_template` says before the run whether the
two render the first case alike. With ``template="modelfile"`` every case is rendered by the
Modelfile's TEMPLATE (as the embedded engine does) and sent to ``/v1/completions``, so a team
tests its own template on the server's weights and kernels. A request without messages (a
caller that only has a rendered prompt) also goes to ``/v1/completions``.

JSON Schemas go in ``response_format``. Servers speak two dialects: OpenAI's
``{"type": "json_schema", "json_schema": {"schema": ...}}`` (vLLM, llama-server) and
llama.cpp's ``{"type": "json_object", "schema": ...}`` (llama-cpp-python, llama-server); the
engine starts with OpenAI's and switches once when the server rejects it. Because some servers
accept a schema and ignore it (llama-cpp-python falls back to plain JSON when a schema does not
compile), :meth:`OpenAIModel.check_schema` sends a probe whose schema no model would satisfy by
chance, and every schema-constrained output is validated (``Generation.schema_enforced``).

Tokens come from the response's ``usage``; timings are wall-clock unless the server adds
llama-server's ``timings`` object. The model is not loaded by this tool: ``load`` checks the
server and picks the served model.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lifecycle import modelfile as mf
from lifecycle.confidence import server_token_logprobs
from lifecycle.engines.base import (
    DEFAULT_CASE_TIMEOUT_S,
    EngineInfo,
    Generation,
    GenerationRequest,
    LoadOptions,
)
from lifecycle.engines.embed_http import HttpEmbedder, openai_vectors
from lifecycle.engines.http import HttpClient, HttpStatusError, normalise_base_url, schema_enforced
from lifecycle.engines.margins import server_margins
from lifecycle.engines.served_template import (
    TEMPLATE_SOURCES,
    ServedTemplate,
    TemplateSource,
    first_difference,
    same_rendering,
)
from lifecycle.envnames import (
    ENV_OPENAI_API_KEY,
    ENV_OPENAI_BASE_URL,
    ENV_OPENAI_BASE_URL_FALLBACK,
    ENV_OPENAI_MODEL,
)
from lifecycle.errors import EngineError, UsageError

DEFAULT_BASE_URL = "http://127.0.0.1:8080/v1"  # llama-server's default port

# A schema no model satisfies by chance: only a server that enforces it produces this output.
PROBE_VALUE = "lifecycle-schema-probe"
PROBE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"probe": {"const": PROBE_VALUE}},
    "required": ["probe"],
    "additionalProperties": False,
}


class SchemaNotEnforced(EngineError):
    """The server accepted a JSON Schema in ``response_format`` but did not constrain output."""


class OpenAIEngine:
    """Factory for models served by an OpenAI-compatible server at ``base_url``."""

    name = "openai"

    def __init__(
        self,
        base_url: str | None = None,
        *,
        model: str | None = None,
        api_key: str | None = None,
        timeout_s: float = DEFAULT_CASE_TIMEOUT_S,
        llama_sampling: bool = True,
        template: str = "server",
    ) -> None:
        if template not in TEMPLATE_SOURCES:
            raise UsageError(
                f"template must be one of {', '.join(TEMPLATE_SOURCES)}, not {template!r}"
            )
        self.template: TemplateSource = "modelfile" if template == "modelfile" else "server"
        url = (
            base_url
            or os.environ.get(ENV_OPENAI_BASE_URL)
            or os.environ.get(ENV_OPENAI_BASE_URL_FALLBACK)
        )
        self.base_url = _with_v1(normalise_base_url(url or DEFAULT_BASE_URL))
        self.model = model or os.environ.get(ENV_OPENAI_MODEL) or None
        key = api_key or os.environ.get(ENV_OPENAI_API_KEY)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.client = HttpClient(self.base_url, timeout_s=timeout_s, headers=headers)
        # top_k, min_p and repeat_penalty are llama.cpp/vLLM extensions OpenAI itself rejects.
        self.llama_sampling = llama_sampling

    def info(self) -> EngineInfo:
        models = self._served_models(timeout_s=30.0)
        return EngineInfo(
            name=self.name,
            version=f"openai-compatible ({', '.join(models) or 'no models listed'})",
            details={"base_url": self.base_url, "served_models": models},
        )

    def load(self, model_path: Path, options: LoadOptions) -> OpenAIModel:
        """Check the server answers and pick the served model; nothing is uploaded."""
        start = time.perf_counter()
        served = self._served_models(timeout_s=60.0)
        model = self.model or (served[0] if served else None)
        if model is None:
            raise EngineError(
                f"{self.client.url('models')} lists no models; set {ENV_OPENAI_MODEL}",
                path=model_path,
            )
        load_ms = (time.perf_counter() - start) * 1000.0
        recipe = mf.parse(options.modelfile) if options.modelfile else None
        return OpenAIModel(self, model, recipe, load_ms)

    def load_embedding(
        self, model_path: Path, options: LoadOptions, pooling: str | None
    ) -> HttpEmbedder:
        """The served model, embedding through /v1/embeddings (the server pools)."""
        start = time.perf_counter()
        served = self._served_models(timeout_s=60.0)
        model = self.model or (served[0] if served else None)
        if model is None:
            raise EngineError(
                f"{self.client.url('models')} lists no models; set {ENV_OPENAI_MODEL}",
                path=model_path,
            )
        return HttpEmbedder(
            self.client,
            "embeddings",
            lambda texts: {"model": model, "input": texts, "encoding_format": "float"},
            openai_vectors,
            normalised=False,  # servers differ; the caller normalises
            load_ms=(time.perf_counter() - start) * 1000.0,
        )

    def _served_models(self, *, timeout_s: float) -> list[str]:
        body = self.client.get_json("models", timeout_s=timeout_s)
        data = body.get("data") if isinstance(body, dict) else None
        return [str(m["id"]) for m in data or [] if isinstance(m, dict) and "id" in m]


class OpenAIModel:
    """One served model; thread-safe, so :func:`generate_many` may run cases concurrently."""

    concurrent = True

    def __init__(
        self, engine: OpenAIEngine, model: str, recipe: mf.Modelfile | None, load_ms: float
    ) -> None:
        self.engine = engine
        self.model = model
        self.load_ms = load_ms
        self._recipe = recipe
        self._schema_dialect = "json_schema"
        self._dialect_lock = threading.Lock()
        self._probed: bool | None = None  # None: not probed; else whether the probe passed
        # False once the server refused logprobs for margins alone (some gateways answer 400):
        # then margins stay unknown rather than every case failing.
        self._margin_logprobs = True

    def generate(self, request: GenerationRequest) -> Generation:
        body: dict[str, Any]
        chat = request.messages is not None and self.engine.template == "server"
        if request.messages is not None and chat:
            path, body = "chat/completions", {"messages": self.conversation(request.messages)}
        else:
            path, body = "completions", {"prompt": request.prompt}
        body.update(self._sampling(request))
        for_margins = self._margin_logprobs
        if request.logprobs or for_margins:
            # Two alternatives per token give its decision margin (the gate's noise evidence).
            # Chat completions return log-probabilities only with top_logprobs set (llama-cpp-
            # python's server); legacy completions take the number of alternatives as
            # `logprobs`. Servers that ignore either leave the signal unrecorded.
            alternatives = 2 if for_margins else 1
            if chat:
                body.update(logprobs=True, top_logprobs=alternatives)
            else:
                body["logprobs"] = alternatives
        start = time.perf_counter()
        try:
            answer = self._post_with_schema(path, body, request)
        except HttpStatusError as exc:
            refused = exc.status in (400, 422) and "logprob" in exc.detail.lower()
            if not (refused and for_margins and not request.logprobs):
                raise
            self._margin_logprobs = False
            body.pop("logprobs", None)
            body.pop("top_logprobs", None)
            answer = self._post_with_schema(path, body, request)
        latency_ms = (time.perf_counter() - start) * 1000.0
        return self._generation(answer, request, latency_ms)

    def conversation(self, messages: tuple[Mapping[str, str], ...]) -> list[dict[str, str]]:
        """The Modelfile's SYSTEM and MESSAGE history, then the case's messages."""
        case = [{"role": m["role"], "content": m["content"]} for m in messages]
        if self._recipe is None:
            return case
        history = [{"role": m.role, "content": m.content} for m in self._recipe.messages]
        full = [*history, *case]
        if self._recipe.system is not None and not any(m["role"] == "system" for m in full):
            full.insert(0, {"role": "system", "content": self._recipe.system})
        return full

    def served_template(self, request: GenerationRequest) -> ServedTemplate:
        """Whether the server renders ``request``'s conversation as ``request.prompt`` (the
        Modelfile's rendering) is: by the server's own rendering where it shows one
        (llama-server's ``/apply-template``), else by the prompt's length in tokens (a probe
        of one token, whose ``usage`` counts what the server's template made)."""
        if self.engine.template == "modelfile":
            return ServedTemplate("modelfile", True, "the Modelfile's rendering is sent")
        if request.messages is None:
            return ServedTemplate("server", None, "the case has no messages")
        conversation = self.conversation(request.messages)
        root = HttpClient(
            self.engine.base_url.removesuffix("/v1"),
            timeout_s=60.0,
            headers=self.engine.client.headers,
        )
        try:
            shown = root.post_json("apply-template", {"messages": conversation})
        except EngineError:
            shown = None
        text = shown.get("prompt") if isinstance(shown, dict) else None
        if isinstance(text, str):
            if same_rendering(text, request.prompt):
                return ServedTemplate("server", True, "the server's /apply-template agrees")
            difference = first_difference(text, request.prompt)
            return ServedTemplate("server", False, f"/apply-template differs {difference}")
        try:
            ours = len(self.tokenize(request.prompt))
        except EngineError as exc:
            return ServedTemplate("server", None, str(exc))
        probe = {**self._sampling(request), "messages": conversation, "max_tokens": 1}
        answer = _object(self.engine.client.post_json("chat/completions", probe))
        theirs = int((answer.get("usage") or {}).get("prompt_tokens") or 0)
        if not theirs:
            return ServedTemplate("server", None, "the server reports no prompt token count")
        counts = f"first case: {theirs} prompt tokens as served, {ours} as the Modelfile renders it"
        return ServedTemplate("server", theirs == ours, counts)

    def tokenize(self, text: str) -> list[int]:
        """Tokens from the server's tokenize extension (llama-server, llama-cpp-python, vLLM)."""
        root = self.engine.base_url.removesuffix("/v1")
        client = HttpClient(root, timeout_s=30.0, headers=self.engine.client.headers)
        attempts = [
            ("tokenize", {"content": text, "add_special": True}),  # llama-server
            ("extras/tokenize", {"input": text, "model": self.model}),  # llama-cpp-python
            ("tokenize", {"prompt": text, "model": self.model}),  # vLLM
        ]
        for path, body in attempts:
            try:
                answer = client.post_json(path, body)
            except HttpStatusError:
                continue
            tokens = answer.get("tokens") if isinstance(answer, dict) else None
            if isinstance(tokens, list):
                return [int(t["id"]) if isinstance(t, dict) else int(t) for t in tokens]
        raise EngineError(f"{self.engine.base_url}: the server offers no tokenize endpoint")

    def check_schema(self, schema: Mapping[str, Any]) -> None:
        """Raise :class:`SchemaNotEnforced` when the server ignores ``response_format`` schemas.

        Probed once per model with :data:`PROBE_SCHEMA`; ``schema`` itself is validated against
        every output instead (a server compiles it, or ignores it, only when it is used).
        """
        if self._probed is None:
            request = GenerationRequest(
                prompt="",
                messages=({"role": "user", "content": "Answer with a JSON object."},),
                max_tokens=256,
                json_schema=PROBE_SCHEMA,
                timeout_s=120.0,
            )
            generation = self.generate(request)
            self._probed = generation.schema_enforced is not False
            if not self._probed:
                raise SchemaNotEnforced(
                    f"{self.engine.base_url} ignores JSON Schemas in response_format "
                    f"(model {self.model!r} answered {generation.text[:80]!r} to a probe whose "
                    "schema allows only one object)"
                )
        elif not self._probed:
            raise SchemaNotEnforced(f"{self.engine.base_url} ignores JSON Schemas")

    def close(self) -> None:
        """Nothing to release: the server owns the model."""

    @property
    def schema_dialect(self) -> str:
        """``json_schema`` (OpenAI) or ``json_object`` (llama.cpp), whichever the server took."""
        return self._schema_dialect

    def _sampling(self, request: GenerationRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "seed": request.seed,
            "stream": False,
        }
        if request.stop:
            body["stop"] = list(request.stop)
        if self.engine.llama_sampling:
            body.update(
                top_k=request.top_k, min_p=request.min_p, repeat_penalty=request.repeat_penalty
            )
        return body

    def _post_with_schema(
        self, path: str, body: dict[str, Any], request: GenerationRequest
    ) -> dict[str, Any]:
        timeout = request.timeout_s or self.engine.client.timeout_s
        if request.json_schema is None:
            return _object(self.engine.client.post_json(path, body, timeout_s=timeout))
        dialect = self._schema_dialect
        try:
            body["response_format"] = _response_format(dialect, request.json_schema)
            return _object(self.engine.client.post_json(path, body, timeout_s=timeout))
        except HttpStatusError as exc:
            # A server that does not know this dialect rejects the request as invalid
            # (llama-cpp-python answers its validation errors with HTTP 500).
            rejected = exc.status in (400, 422) or "response_format" in exc.detail
            if not rejected or dialect != "json_schema":
                raise
            with self._dialect_lock:
                self._schema_dialect = "json_object"
            body["response_format"] = _response_format("json_object", request.json_schema)
            return _object(self.engine.client.post_json(path, body, timeout_s=timeout))

    def _generation(
        self, answer: dict[str, Any], request: GenerationRequest, latency_ms: float
    ) -> Generation:
        choices = answer.get("choices") or []
        if not choices:
            raise EngineError(f"{self.engine.base_url}: answer without choices: {answer!r:.200}")
        choice = choices[0]
        message = choice.get("message")
        text = message.get("content") if isinstance(message, dict) else choice.get("text")
        text = text or ""
        finish = "length" if choice.get("finish_reason") == "length" else "stop"
        usage = answer.get("usage") or {}
        prompt_tokens = int(usage.get("prompt_tokens") or 0)
        completion_tokens = int(usage.get("completion_tokens") or 0)
        timings = answer.get("timings") or {}  # llama-server's own counters, when present
        scored = None
        entries = _token_entries(choice.get("logprobs"))
        if request.logprobs:
            scored = server_token_logprobs(entries, text)
        margins = server_margins(entries, text, request.margin_field)
        margin, margin_step, field_margin = margins.summary() if margins else (None, None, None)
        return Generation(
            text=text,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            prompt_eval_tokens=int(timings.get("prompt_n", prompt_tokens)),
            prompt_ms=float(timings.get("prompt_ms", 0.0)),
            eval_tokens=int(timings.get("predicted_n", completion_tokens)),
            # Without server timings the whole wall time is charged to generation.
            generation_ms=float(timings.get("predicted_ms", latency_ms)),
            latency_ms=latency_ms,
            finish_reason=finish,
            schema_enforced=schema_enforced(text, request.json_schema, finish),
            token_logprobs=scored[0] if scored else None,
            token_offsets=scored[1] if scored else None,
            margin=margin,
            margin_step=margin_step,
            field_margin=field_margin,
        )


def _response_format(dialect: str, schema: Mapping[str, Any]) -> dict[str, Any]:
    if dialect == "json_schema":
        return {
            "type": "json_schema",
            "json_schema": {"name": "golden", "schema": dict(schema), "strict": True},
        }
    return {"type": "json_object", "schema": dict(schema)}


def _token_entries(logprobs: Any) -> list[dict[str, Any]] | None:
    """Per-token entries in the chat shape (``{"token", "logprob", "top_logprobs": [...]}``)
    from a choice's ``logprobs``: chat's ``content`` list as it is, or legacy completions'
    parallel lists (``tokens``, ``token_logprobs``, ``top_logprobs`` as token -> logprob)."""
    if not isinstance(logprobs, dict):
        return None
    if isinstance(logprobs.get("content"), list):
        return list(logprobs["content"])
    tokens, chosen = logprobs.get("tokens"), logprobs.get("token_logprobs")
    if not isinstance(tokens, list) or not isinstance(chosen, list):
        return None
    tops = logprobs.get("top_logprobs")
    tops = tops if isinstance(tops, list) else [None] * len(tokens)
    return [
        {
            "token": token,
            "logprob": logprob,
            "top_logprobs": [{"token": t, "logprob": lp} for t, lp in (top or {}).items()],
        }
        for token, logprob, top in zip(tokens, chosen, tops, strict=False)
    ]


def _object(answer: Any) -> dict[str, Any]:
    if not isinstance(answer, dict):
        raise EngineError(f"the server answered {answer!r:.200} instead of a JSON object")
    return answer


def _with_v1(url: str) -> str:
    """OpenAI clients put ``/v1`` in the base URL; accept a bare ``http://host:port`` too."""
    rest = url.partition("://")[2]
    return url if "/" in rest else f"{url}/v1"
