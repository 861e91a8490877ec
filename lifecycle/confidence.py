"""Confidence signals of one model output, for cascade calibration (``lifecycle calibrate``).

Two signals per case:

- the *stated* confidence: the number the model writes in its JSON, in the field a suite's
  ``[calibration] confidence_field`` names;
- the engine's *answer probability*: the probability the model gave the tokens that spell the
  value of ``[calibration] routed_field`` (e.g. ``"billing"``), the product of the per-token
  probabilities the engine recorded (``Generation.token_logprobs``).

Each function returns ``(value, None)`` or ``(None, reason)``: a case without a usable signal
is counted as "no confidence", never dropped silently.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lifecycle.engines.base import Generation
    from lifecycle.golden import GoldenCase, Suite

Signal = tuple[float | None, str | None]


def stated_confidence(parsed: Any, field: str) -> Signal:
    """The number in ``parsed[field]`` if it is one in [0, 1]."""
    if not isinstance(parsed, dict):
        return None, "output is not a JSON object"
    if field not in parsed:
        return None, f"no {field!r} in the output"
    value = parsed[field]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None, f"{field!r} is not a number: {json.dumps(value, ensure_ascii=False)[:40]}"
    if not 0.0 <= value <= 1.0:
        return None, f"{field!r} is {value}, outside [0, 1]"
    return float(value), None


def value_span(text: str, parsed: Any, field: str) -> tuple[int, int] | None:
    """Where ``parsed[field]``'s value is written in ``text`` (character offsets, end excluded).

    For a string value the span is its content between the quotes. The first ``"field":``
    whose JSON value decodes to the parsed value is taken (a nested key of the same name with
    another value is skipped).
    """
    if not isinstance(parsed, dict) or field not in parsed:
        return None
    decoder = json.JSONDecoder()
    key = re.compile(re.escape(json.dumps(field, ensure_ascii=False)) + r"\s*:\s*")
    for found in key.finditer(text):
        start = found.end()
        try:
            value, end = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            continue
        if value == parsed[field] and type(value) is type(parsed[field]):
            if isinstance(value, str):
                return start + 1, end - 1
            return start, end
    return None


def value_open(text: str, field: str) -> bool:
    """Whether the next token generated after ``text`` can be part of ``field``'s value.

    True from the end of the key ``"field"`` (or a prefix of it, since a token may complete
    the key and start the value at once) until the value is closed: a closing quote for a
    string, a ``,``/``}``/``]``/space for a scalar. :func:`answer_probability` only uses the
    log-probabilities of such tokens, so an engine may compute them at these steps alone:
    in schema mode each one costs a grammar pass over the whole vocabulary.
    """
    key = json.dumps(field, ensure_ascii=False)
    for k in range(1, len(key)):
        # Inside the key (where a key may start: after "{" or ","): the next token may
        # complete it and carry the value's start too.
        if text.endswith(key[:k]) and text[: len(text) - k].rstrip().endswith(("{", ",")):
            return True
    start = text.rfind(key)
    if start < 0:
        return False
    return _OPEN_VALUE.fullmatch(text, start + len(key)) is not None


# After the key: the colon and an unfinished value (a string not yet closed, or a scalar).
_OPEN_VALUE = re.compile(r'\s*(?::\s*(?:"(?:[^"\\]|\\.)*\\?|[^\s,}\]"]*)?)?', re.S)


def server_token_logprobs(
    entries: Any, text: str
) -> tuple[tuple[float, ...], tuple[int, ...]] | None:
    """Per-token log-probabilities and character offsets from a server's answer, if usable.

    ``entries`` is the list a server returns per generated token: OpenAI's chat
    ``choices[0].logprobs.content`` (llama-server, vLLM, llama-cpp-python's server) and
    Ollama's ``logprobs`` both hold ``{"token", "logprob", "bytes"?}``. None when the server
    sent none or its tokens do not spell ``text`` (then the offsets would lie; tokens past
    the end, such as a stop sequence the server cut from the text, are allowed). Offsets are
    counted on the UTF-8 bytes where given, so a character split over two tokens is placed
    at its first one.
    """
    if not isinstance(entries, list) or not entries:
        return None
    logprobs: list[float] = []
    offsets: list[int] = []
    spelled = b""
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("token"), str):
            return None
        value = entry.get("logprob")
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        raw = entry.get("bytes")
        piece = bytes(raw) if isinstance(raw, list) else entry["token"].encode("utf-8")
        offsets.append(len(spelled.decode("utf-8", errors="ignore")))
        logprobs.append(float(value))
        spelled += piece
    if not spelled.decode("utf-8", errors="replace").startswith(text):
        return None
    return tuple(logprobs), tuple(offsets)


def answer_probability(
    text: str,
    parsed: Any,
    field: str,
    logprobs: Sequence[float] | None,
    offsets: Sequence[int] | None,
) -> Signal:
    """exp(sum of the log-probabilities of the tokens that overlap ``field``'s value).

    A token that also carries neighbouring characters (``":"bill``) counts whole: its
    probability is the probability of writing that piece of the value.
    """
    if logprobs is None or offsets is None:
        return None, "the engine recorded no token probabilities"
    span = value_span(text, parsed, field)
    if span is None:
        return None, f"no {field!r} value found in the output"
    start, end = span
    total = 0.0
    used = 0
    for i, (logprob, begin) in enumerate(zip(logprobs, offsets, strict=True)):
        finish = offsets[i + 1] if i + 1 < len(offsets) else len(text)
        # A token that completes a multi-byte character may add no text of its own (width 0).
        if begin < end and max(finish, begin + 1) > start:
            total += logprob
            used += 1
    if used == 0:
        return None, f"no generated token spells the {field!r} value"
    if math.isnan(total):
        return None, "the engine recorded no probability for a token of the value"
    return math.exp(total), None


def confidence_signals(
    suite: Suite, case: GoldenCase, generation: Generation, parsed: Any
) -> dict[str, Any]:
    """The :class:`~lifecycle.results.CaseResult` confidence fields of one scored output."""
    calibration = suite.calibration
    if calibration is None:
        return {}
    out: dict[str, Any] = {}
    if calibration.confidence_field:
        value, note = stated_confidence(parsed, calibration.confidence_field)
        out.update(stated_confidence=value, stated_confidence_note=note)
    routed = calibration.routed_field
    if routed:
        value, note = answer_probability(
            generation.text, parsed, routed, generation.token_logprobs, generation.token_offsets
        )
        out.update(
            answer_probability=None if value is None else round(value, 6),
            answer_probability_note=note,
            routed_correct=routed_correct(suite, case, parsed, routed),
        )
    return out


def routed_correct(suite: Suite, case: GoldenCase, parsed: Any, field: str) -> bool:
    """Whether the output's ``field`` passes the suite's matcher for it (missing: False)."""
    if not isinstance(parsed, dict) or field not in parsed:
        return False
    matcher = suite.matcher_for(case, field)
    return matcher.check(parsed[field], case.expected.get(field)) is None
