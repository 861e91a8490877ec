"""Embeddings from a server: Ollama's ``/api/embed`` and OpenAI-compatible ``/v1/embeddings``.

Both take a list of texts per request, so a corpus goes in a few requests of
:data:`BATCH` texts. The server decides the pooling (the model's own); Ollama's
``/api/embed`` returns unit vectors (the legacy ``/api/embeddings`` did not, and its vectors
differed: it is not used). The caller L2-normalises either way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from lifecycle.engines.http import HttpClient
from lifecycle.errors import EngineError

BATCH = 64  # texts per request
TIMEOUT_S = 300.0


class HttpEmbedder:
    """A served model that embeds; ``extract`` turns an answer into its vectors, in order."""

    pooling = "server"

    def __init__(
        self,
        client: HttpClient,
        path: str,
        body: Callable[[list[str]], dict[str, Any]],
        extract: Callable[[Any], list[list[float]]],
        *,
        normalised: bool,
        load_ms: float = 0.0,
    ) -> None:
        self.client = client
        self.path = path
        self.body = body
        self.extract = extract
        self.normalised = normalised
        self.load_ms = load_ms

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        out: list[list[float]] = []
        for start in range(0, len(texts), BATCH):
            chunk = list(texts[start : start + BATCH])
            answer = self.client.post_json(self.path, self.body(chunk), timeout_s=TIMEOUT_S)
            try:
                vectors = self.extract(answer)
            except (KeyError, TypeError, ValueError) as exc:
                raise EngineError(
                    f"{self.client.url(self.path)} answered no embeddings ({exc!r:.120})"
                ) from None
            if len(vectors) != len(chunk):
                raise EngineError(
                    f"{self.client.url(self.path)} returned {len(vectors)} vectors for "
                    f"{len(chunk)} texts"
                )
            out += vectors
        return out

    def close(self) -> None:
        pass


def ollama_vectors(answer: Any) -> list[list[float]]:
    return [[float(x) for x in v] for v in answer["embeddings"]]


def openai_vectors(answer: Any) -> list[list[float]]:
    data = sorted(answer["data"], key=lambda item: int(item.get("index", 0)))
    return [[float(x) for x in item["embedding"]] for item in data]
