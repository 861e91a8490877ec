"""What the HTTP engines (ollama, openai) share: JSON requests, error mapping, schema checks.

Only the standard library is used (``urllib``), so the HTTP engines add no dependency. Every
request has a timeout; a server answers a non-streaming generation only when it is done, so
the socket read timeout is the case's wall-clock limit (plus connection setup).
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import IO, Any

import jsonschema

from lifecycle.engines.base import CaseTimeout
from lifecycle.errors import EngineError


class HttpClient:
    """JSON over HTTP to one server, mapping transport failures to :class:`EngineError`."""

    def __init__(
        self, base_url: str, *, timeout_s: float, headers: Mapping[str, str] | None = None
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.headers = dict(headers or {})

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}"

    def get_json(self, path: str, *, timeout_s: float | None = None) -> Any:
        return self.request_json("GET", path, None, timeout_s=timeout_s)

    def post_json(self, path: str, body: Any, *, timeout_s: float | None = None) -> Any:
        return self.request_json("POST", path, body, timeout_s=timeout_s)

    def request_json(
        self, method: str, path: str, body: Any, *, timeout_s: float | None = None
    ) -> Any:
        """Send ``body`` as JSON and parse the JSON answer; errors name the server's message."""
        data = json.dumps(body).encode() if body is not None else None
        headers = {**self.headers, "Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        raw = self.send(method, path, data, headers=headers, timeout_s=timeout_s)
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise EngineError(
                f"{method} {self.url(path)}: the server's answer is not JSON: {raw[:200]!r}"
            ) from None

    def send(
        self,
        method: str,
        path: str,
        data: bytes | IO[bytes] | None,
        *,
        headers: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> bytes:
        """One request; returns the body. HTTP errors raise :class:`HttpStatusError`."""
        url = self.url(path)
        limit = timeout_s if timeout_s is not None else self.timeout_s
        request = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
        start = time.perf_counter()
        try:
            with urllib.request.urlopen(request, timeout=limit) as response:
                body: bytes = response.read()
                return body
        except urllib.error.HTTPError as exc:
            detail = _error_message(exc.read())
            raise HttpStatusError(
                f"{method} {url}: HTTP {exc.code}: {detail}", status=exc.code, detail=detail
            ) from None
        except TimeoutError as exc:
            raise _timeout(method, url, limit, start) from exc
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError):
                raise _timeout(method, url, limit, start) from exc
            raise EngineError(f"cannot reach {url}: {exc.reason}") from None
        except (ConnectionError, http.client.HTTPException) as exc:
            raise EngineError(f"{method} {url}: connection failed: {exc}") from None


class HttpStatusError(EngineError):
    """The server answered with an HTTP error status; ``detail`` is its error message."""

    def __init__(self, message: str, *, status: int, detail: str) -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail


def schema_enforced(text: str, schema: Mapping[str, Any] | None, finish_reason: str) -> bool | None:
    """Whether a server honoured ``schema``: None without a schema or a truncated output.

    An output cut at max_tokens cannot be judged (an enforcing server stops mid-object too);
    an output that stopped normally and does not have the schema's structure (types, required
    keys, enums, consts) means the server ignored the constraint — reported, never silently
    accepted. Value bounds that grammars cannot express (a number's minimum, ``format``) are
    left out of this check: llama.cpp's grammars do not enforce them, and the golden scorer
    judges the value anyway.
    """
    if schema is None or finish_reason != "stop":
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return False
    structure = structural_schema(schema)
    validator = jsonschema.validators.validator_for(structure)(structure)
    return bool(validator.is_valid(value))


def structural_schema(schema: Any) -> Any:
    """``schema`` without the value bounds that decoding grammars do not enforce."""
    if isinstance(schema, list):  # allOf/anyOf/oneOf/prefixItems, or draft-4 tuple items
        return [structural_schema(s) for s in schema]
    if not isinstance(schema, Mapping):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _VALUE_BOUNDS:
            continue
        if key in _NAMED_SUBSCHEMAS and isinstance(value, Mapping):
            # Keys here are property names, not keywords: a property may be called "format".
            out[key] = {name: structural_schema(sub) for name, sub in value.items()}
        elif key in _SUBSCHEMAS:
            out[key] = structural_schema(value)
        else:
            out[key] = value
    return out


_VALUE_BOUNDS = frozenset(
    {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "format"}
)
_NAMED_SUBSCHEMAS = frozenset(
    {"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"}
)
_SUBSCHEMAS = frozenset(
    {
        "items",
        "prefixItems",
        "additionalProperties",
        "allOf",
        "anyOf",
        "oneOf",
        "not",
        "if",
        "then",
        "else",
        "contains",
        "propertyNames",
        "unevaluatedProperties",
        "unevaluatedItems",
        "additionalItems",
    }
)


def normalise_base_url(url: str, *, default_scheme: str = "http") -> str:
    """``host:port`` or a full URL -> ``scheme://host:port[/path]`` without a trailing slash."""
    url = url.strip()
    if "://" not in url:
        url = f"{default_scheme}://{url}"
    return url.rstrip("/")


def _timeout(method: str, url: str, limit: float, start: float) -> CaseTimeout:
    waited = time.perf_counter() - start
    return CaseTimeout(
        f"{method} {url}: no answer within the {limit:g} s limit (waited {waited:.1f} s)",
        timeout_s=limit,
    )


def _error_message(raw: bytes) -> str:
    """The server's error text: ``{"error": "..."}`` (Ollama) or ``{"error": {"message"}}``."""
    try:
        body = json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace").strip()[:500] or "(empty body)"
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return str(error.get("message") or error)
    if error is not None:
        return str(error)
    if isinstance(body, dict) and "detail" in body:  # FastAPI validation errors
        return json.dumps(body["detail"])[:500]
    return json.dumps(body)[:500]
