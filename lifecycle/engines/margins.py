"""Decision margins: how close each generated token came to being another one.

The evidence the gate uses to tell numeric noise from a regression when a case's verdict
flips (see :mod:`lifecycle.gate`). Shared by the in-process llama.cpp decoder and the HTTP
engines (from the servers' ``top_logprobs``), so it imports no engine library.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from lifecycle.confidence import value_open


@dataclass
class Margins:
    """The smallest decision margin over a generation's sampled steps.

    A step's margin is the chosen token's logit minus the best other token's logit the
    sampler could have taken (under a grammar: the best other *allowed* one). Logits share
    one normaliser per step, so this is also the gap in log-probability. A generation whose
    smallest margin is large would give the same text under a small numeric perturbation
    (another kernel, a quantized KV cache); a tiny one marks a near tie (see lifecycle.gate).
    ``field`` names a JSON field (a suite's routed field): the margin over the steps that can
    write its value is kept apart, since that value decides the verdict.

    A token a schema forces (llguidance's fast-forward: no sampling step) is a step with no
    rival, added with an infinite margin like any step whose grammar allows one token, so
    ``step`` stays the index of the output token it names.
    """

    field: str | None = None
    smallest: float = math.inf
    step: int | None = None
    field_smallest: float = math.inf
    steps: int = 0

    def floor(self, text: str) -> float:
        """Margins at or above this cannot change what is recorded for the step after ``text``.

        An engine may then report a lower bound instead of the exact gap (see
        ``Grammar.margin``)."""
        return self.field_smallest if self._field_open(text) else self.smallest

    def add(self, margin: float, text: str) -> None:
        """Record the margin of the step that generated the token after ``text``."""
        if margin < self.smallest:
            self.smallest, self.step = margin, self.steps
        if margin < self.field_smallest and self._field_open(text):
            self.field_smallest = margin
        self.steps += 1

    def _field_open(self, text: str) -> bool:
        return self.field is not None and value_open(text, self.field)

    def summary(self) -> tuple[float | None, int | None, float | None]:
        """(smallest margin, its step, smallest margin on the field's value); None where no
        step had an alternative (every token forced) or the field was never written."""
        return (
            _finite(self.smallest),
            self.step if math.isfinite(self.smallest) else None,
            _finite(self.field_smallest),
        )


def server_margins(entries: Any, text: str, field: str | None) -> Margins | None:
    """Decision margins from a server's per-token ``top_logprobs`` (OpenAI chat's
    ``choices[0].logprobs.content``, Ollama's ``logprobs``): each token's log-probability
    minus the best other alternative's. Servers report alternatives after their own
    grammar, if any, so under a schema these are the allowed tokens' gaps.

    None when the server sent no log-probabilities (the margin is unknown, never guessed).
    A step whose only listed alternative is the chosen token had no rival the server
    would name (forced). The field's margin needs the tokens' text: when the server's
    tokens do not spell the answer (byte tokens sent as ""), only the whole output's
    margin is kept.
    """
    if not isinstance(entries, list) or not entries:
        return None
    steps: list[tuple[float, str]] = []  # (margin, text before the token)
    spelled = b""
    for entry in entries:
        if not isinstance(entry, dict):
            return None
        chosen, alternatives = entry.get("logprob"), entry.get("top_logprobs")
        if not isinstance(chosen, int | float) or not isinstance(alternatives, list):
            return None
        rivals = [
            (alt.get("token"), float(alt["logprob"]))
            for alt in alternatives
            if isinstance(alt, dict) and isinstance(alt.get("logprob"), int | float)
        ]
        # The chosen token is listed among its alternatives: leave out that one entry
        # (other tokens may share its text, e.g. byte tokens sent as "").
        itself = (entry.get("token"), float(chosen))
        if itself in rivals:
            rivals.remove(itself)
        best = max((logprob for _token, logprob in rivals), default=-math.inf)
        steps.append((float(chosen) - best, spelled.decode("utf-8", errors="ignore")))
        raw = entry.get("bytes")
        token = entry.get("token")
        spelled += bytes(raw) if isinstance(raw, list) else str(token or "").encode()
    spells = spelled.decode("utf-8", errors="replace").startswith(text)
    margins = Margins(field if spells else None)
    for margin, before in steps:
        margins.add(margin, before)
    return margins


def _finite(value: float) -> float | None:
    return round(value, 4) if math.isfinite(value) else None
