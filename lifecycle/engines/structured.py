"""Schema mode through llguidance: token masks, and the tokens a schema forces.

A JSON answer under a schema is mostly text the schema leaves no choice about: in
``{"category": "billing", "confidence": 0.9}`` only the category and the number are the
model's; ``{"category": "``, ``", "confidence": `` and ``}`` follow from the schema once the
separators are fixed. llguidance (the grammar engine behind llama.cpp's ``%llguidance``, vLLM
and SGLang) computes the mask of allowed tokens from the grammar's state and returns the
tokens it forces, tokenized canonically (``compute_ff_tokens``). The decoders put those
forced tokens into the same ``llama_decode`` as the sampled token before them, at
consecutive positions with logits only on the last, so a forced token costs no sampling step
of its own (see :mod:`lifecycle.engines.llama_cpp` and :mod:`lifecycle.engines.batched`).

Separators are the golden answers' (``", "`` between items, ``": "`` after keys, as
``json.dumps`` writes them) and no other whitespace is allowed: with free whitespace the
text after ``"category"`` would not be forced at all. So schema-mode outputs are written in
the golden format, and the answer ends at its closing brace.

The GBNF path (llama.cpp's grammar compiled from the schema) stays for processes without
llguidance, for a schema llguidance rejects (said once per process), and when
``LIFECYCLE_SCHEMA_DECODER=gbnf`` asks for it.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import json
import math
import os
import sys
from collections.abc import Mapping
from types import ModuleType
from typing import Any

import numpy as np

from lifecycle.engines.decoding import best_other
from lifecycle.envnames import ENV_SCHEMA_DECODER
from lifecycle.errors import EngineError

ENV_DECODER = ENV_SCHEMA_DECODER
# JSON compile options: the golden answers' separators, no free whitespace (it would defeat
# forcing), and nothing lenient: a keyword llguidance does not implement is a rejection.
JSON_OPTIONS: Any = {"item_separator": ", ", "key_separator": ": ", "whitespace_flexible": False}

_said: set[str] = set()  # schemas whose fallback to GBNF this process has reported


def schema_decoder() -> str:
    """The decoder schema mode uses in this process: ``"llguidance <version>"`` or
    ``"gbnf"`` (recorded in the engine details and in the answer cache's key)."""
    version = _llguidance_version()
    if version is None or os.environ.get(ENV_DECODER, "").strip().lower() == "gbnf":
        return "gbnf"
    return f"llguidance {version}"


@functools.cache
def _llguidance_version() -> str | None:
    """llguidance's version when it is installed (None: the GBNF path serves schema mode
    alone), found without importing it: a free-mode run never pays for the import (about
    30 ms). The version is the distribution's, which is what ``llguidance.__version__`` reads.
    """
    try:
        if importlib.util.find_spec("llguidance") is None:
            return None
        return importlib.metadata.version("llguidance")
    except (ImportError, ValueError):  # PackageNotFoundError is an ImportError
        return None


def _llguidance() -> ModuleType:
    """The llguidance module, imported on the first schema that uses it. Installed but
    unimportable (a broken wheel): one line that says so, not a traceback; the run record
    already names llguidance as the decoder, so silently taking the GBNF path would lie."""
    try:
        import llguidance
        import llguidance.llamacpp
    except ImportError as exc:
        raise EngineError(
            f"llguidance is installed but cannot be imported ({exc}): reinstall it, or set "
            f"{ENV_SCHEMA_DECODER}=gbnf to use llama.cpp's grammar for schema mode"
        ) from exc
    return llguidance


class SchemaGrammars:
    """llguidance grammars over one model's vocabulary, compiled once per schema.

    The tokenizer (every token's bytes, read from llama.cpp) is built on the first schema:
    it takes 1-2 s on a 262k-token vocabulary. It calls back into the model's
    vocabulary, so it lives no longer than the model.
    """

    def __init__(self, vocab: Any) -> None:
        self._vocab = vocab
        self._tokenizer: Any = None
        self._grammars: dict[str, str | None] = {}

    def grammar(self, schema: Mapping[str, Any]) -> str | None:
        """llguidance's grammar for ``schema``, or None when llguidance is not used for it
        (absent, switched off, or it rejects the schema: the caller takes the GBNF path)."""
        if schema_decoder() == "gbnf":
            return None
        key = json.dumps(schema, sort_keys=True)
        if key in self._grammars:
            return self._grammars[key]
        problem, grammar = self._compile(key)
        if problem is not None:
            _say_once(key, problem)
        self._grammars[key] = grammar
        return grammar

    def start(self, grammar: str) -> ForcingGrammar:
        """A matcher at the start of ``grammar`` for one generation."""
        return ForcingGrammar(self._tokenizer_for(), grammar)

    def _compile(self, key: str) -> tuple[str | None, str | None]:
        llguidance = _llguidance()
        try:
            grammar = llguidance.LLMatcher.grammar_from_json_schema(key, overrides=JSON_OPTIONS)
        except (ValueError, RuntimeError) as exc:
            return str(exc), None
        failed, messages = llguidance.LLMatcher.validate_grammar_with_warnings(
            grammar, self._tokenizer_for()
        )
        if failed:
            return messages[0] if messages else "rejected", None
        return None, grammar

    def _tokenizer_for(self) -> Any:
        if self._tokenizer is None:
            # No slicer: building it costs about 2 s more per load on Gemma's vocabulary, and
            # masks stay well under a millisecond without it (docs/performance.md).
            self._tokenizer = _llguidance().llamacpp.lltokenizer_from_vocab(self._vocab, slices=[])
        return self._tokenizer


def _say_once(key: str, problem: str) -> None:
    if key in _said:
        return
    _said.add(key)
    first = problem.strip().splitlines()[0] if problem.strip() else "rejected"
    print(
        f"note: llguidance cannot compile the JSON Schema ({first[:200]}); schema mode "
        "uses llama.cpp's GBNF grammar for it (no forced tokens)",
        file=sys.stderr,
        flush=True,
    )


class ForcingGrammar:
    """One generation's llguidance matcher, with the interface of the GBNF ``Grammar``
    (``allows``, ``masked``, ``greedy_among_top``, ``margin``, ``accept``) plus the tokens
    it forces next (``forced``) and whether it admits nothing more (``finished``).

    The mask of the current state is computed once per step, on first need (tens of
    microseconds on Gemma's vocabulary), so every question about the step is exact.
    """

    def __init__(self, tokenizer: Any, grammar: str) -> None:
        self.matcher = _llguidance().LLMatcher(tokenizer, grammar, log_level=0)
        if self.matcher.is_error():
            raise RuntimeError(f"llguidance: {self.matcher.get_error()}")
        self.n_vocab = int(tokenizer.vocab_size)
        self._mask: np.ndarray | None = None

    def _allowed(self) -> np.ndarray:
        if self._mask is None:
            words = np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8)
            self._mask = np.unpackbits(words, count=self.n_vocab, bitorder="little").view(bool)
        return self._mask

    def allows(self, logits: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Which of the tokens ``ids`` the grammar allows next."""
        return self._allowed()[ids]

    def masked(self, logits: np.ndarray) -> np.ndarray:
        """``logits`` with every token the grammar does not allow next set to -inf."""
        allowed = self._allowed()
        n = min(len(logits), len(allowed))
        out = np.full(len(logits), -np.inf, dtype=np.float32)
        out[:n] = np.where(allowed[:n], logits[:n], np.float32(-np.inf))
        return out

    def greedy_among_top(self, logits: np.ndarray) -> int | None:
        """The highest allowed logit (the lowest id among equals), from the exact mask."""
        masked = self.masked(logits)
        token = int(np.argmax(masked))
        return token if math.isfinite(float(masked[token])) else None

    def margin(
        self,
        logits: np.ndarray,
        token: int,
        floor: float = math.inf,
        masked: np.ndarray | None = None,
    ) -> float:
        """``logits[token]`` minus the best other token the grammar allows next (inf when
        none: a forced choice). A lower bound at or above ``floor`` is returned as is (see
        ``Grammar.margin``): the best other token overall is no better than the best
        allowed one."""
        chosen = float(logits[token])
        if masked is None:
            bound = chosen - best_other(logits, token)
            if bound >= floor:
                return bound
            masked = self.masked(logits)
        best = best_other(masked, token)
        return chosen - best if math.isfinite(best) else math.inf

    def accept(self, token: int) -> None:
        if not self.matcher.consume_token(token):
            raise RuntimeError(f"llguidance refused token {token}: {self.matcher.get_error()}")
        self._mask = None

    def forced(self, room: int) -> list[int]:
        """The tokens the grammar forces next (at most ``room``), accepted already."""
        if room <= 0 or self.matcher.is_stopped():
            return []
        tokens = list(self.matcher.compute_ff_tokens())[:room]
        if tokens and not self.matcher.consume_tokens(tokens):
            raise RuntimeError(f"llguidance refused its forced tokens: {self.matcher.get_error()}")
        if tokens:
            self._mask = None
        return tokens

    def finished(self) -> bool:
        """True when the grammar admits no further token (only the end of generation)."""
        return bool(self.matcher.is_stopped())

    def free(self) -> None:
        self._mask = None
