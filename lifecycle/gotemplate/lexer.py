"""Go ``text/template`` lexing: text and ``{{ }}`` actions, trim markers, comments, tokens."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from lifecycle.gotemplate.nodes import Text, fail

_SPACE = " \t\r\n"
_KEYWORDS = {
    "if",
    "else",
    "end",
    "range",
    "with",
    "break",
    "continue",
    "define",
    "template",
    "block",
}


@dataclass
class Tok:
    kind: str  # field var ident keyword string number bool nil ( ) | := = , dot
    value: str
    line: int
    spaced: bool  # whitespace before it: `$x.A` chains, `$x .A` is two operands
    literal: Any = None


@dataclass
class ActionItem:
    line: int
    toks: list[Tok] = field(default_factory=list)


LexItem = Text | ActionItem


def lex(text: str) -> list[LexItem]:
    items: list[LexItem] = []
    pos, line = 0, 1
    trim_next = False
    while True:
        start = text.find("{{", pos)
        chunk = text[pos:] if start < 0 else text[pos:start]
        trim_prev = start >= 0 and text.startswith("{{-", start) and _is_space_at(text, start + 3)
        if trim_next:
            chunk = chunk.lstrip(_SPACE)
        if trim_prev:
            chunk = chunk.rstrip(_SPACE)
        if chunk:
            items.append(Text(line, chunk))
        line += text.count("\n", pos, len(text) if start < 0 else start)
        if start < 0:
            return items
        # leave the space after "{{-" to the action lexer, which counts its newlines
        pos = start + (3 if trim_prev else 2)
        action_line = line
        # Go only takes a comment right after "{{" or "{{- "
        comment = text.startswith("/*", start + (4 if trim_prev else 2))
        pos, line, trim_next, toks = _lex_action(text, pos, line, action_line, comment)
        if toks is not None:
            items.append(ActionItem(action_line, toks))


def _is_space_at(text: str, i: int) -> bool:
    return i < len(text) and text[i] in _SPACE


def _close_at(text: str, i: int) -> tuple[int, bool] | None:
    """If a right delimiter starts at ``i`` (after optional spaces for `` -}}``), return the
    position after it and whether it trims."""
    if text.startswith("}}", i):
        return i + 2, False
    if i < len(text) and text[i] in _SPACE:
        j = i
        while j < len(text) and text[j] in _SPACE:
            j += 1
        if text.startswith("-}}", j):
            return j + 3, True
    return None


def _lex_action(
    text: str, pos: int, line: int, action_line: int, comment: bool
) -> tuple[int, int, bool, list[Tok] | None]:
    """Lex one action starting after ``{{``. Returns (pos, line, trims_right, tokens); tokens
    are None for a comment."""
    if comment:
        end = text.find("*/", text.index("/*", pos) + 2)
        if end < 0:
            fail("unclosed comment", action_line)
        closed = _close_at(text, end + 2)
        if closed is None:
            fail("comment ends before closing delimiter", action_line)
        new_pos, trim = closed
        return new_pos, line + text.count("\n", pos, new_pos), trim, None
    toks: list[Tok] = []
    i = pos
    spaced = True
    while True:
        if i >= len(text):
            fail("unclosed action", action_line)
        closed = _close_at(text, i)
        if closed is not None:
            new_pos, trim = closed
            return new_pos, line + text.count("\n", i, new_pos), trim, toks
        c = text[i]
        if c in _SPACE:
            if c == "\n":
                line += 1
            i += 1
            spaced = True
            continue
        if text.startswith(":=", i):
            toks.append(Tok(":=", ":=", line, spaced))
            i += 2
        elif c in "()|=,":
            toks.append(Tok(c, c, line, spaced))
            i += 1
        elif c == '"':
            j = i + 1
            while j < len(text) and text[j] != '"':
                if text[j] == "\n":
                    fail("unterminated quoted string", line)
                j += 2 if text[j] == "\\" else 1
            if j >= len(text):
                fail("unterminated quoted string", line)
            toks.append(
                Tok("string", text[i : j + 1], line, spaced, _unquote(text[i + 1 : j], line))
            )
            i = j + 1
        elif c == "`":
            j = text.find("`", i + 1)
            if j < 0:
                fail("unterminated raw quoted string", line)
            raw = text[i + 1 : j]
            toks.append(Tok("string", text[i : j + 1], line, spaced, raw))
            line += raw.count("\n")
            i = j + 1
        elif c == "'":
            m = re.compile(r"'(\\.[^']*|[^\\'])'").match(text, i)
            if m is None:
                fail("malformed character constant", line)
            value = _unquote(m.group(1), line)
            toks.append(Tok("number", m.group(0), line, spaced, ord(value)))
            i = m.end()
        elif c == "$" or c == "." or c.isalpha() or c == "_":
            m = re.compile(r"\$?\.?[A-Za-z0-9_]*").match(text, i)
            assert m is not None  # the pattern accepts the empty string
            word = m.group(0)
            if c == "." and len(word) > 1 and word[1].isdigit():
                tok = _lex_number(text, i, line, spaced)
                toks.append(tok)
                i += len(tok.value)
                spaced = False
                continue
            i = m.end()
            if word == ".":
                toks.append(Tok("dot", word, line, spaced))
            elif word.startswith("."):
                toks.append(Tok("field", word[1:], line, spaced))
            elif word.startswith("$"):
                if "." in word:  # `$.X` — the variable, then a field
                    toks.append(Tok("var", "$", line, spaced))
                    toks.append(Tok("field", word[2:], line, False))
                else:
                    toks.append(Tok("var", word, line, spaced))
            elif word in ("true", "false"):
                toks.append(Tok("bool", word, line, spaced, word == "true"))
            elif word == "nil":
                toks.append(Tok("nil", word, line, spaced))
            elif word in _KEYWORDS:
                toks.append(Tok("keyword", word, line, spaced))
            else:
                toks.append(Tok("ident", word, line, spaced))
        elif c.isdigit() or (c in "+-" and i + 1 < len(text) and text[i + 1].isdigit()):
            tok = _lex_number(text, i, line, spaced)
            toks.append(tok)
            i += len(tok.value)
        else:
            fail(f"unexpected {c!r} in action", line)
        spaced = False


_NUMBER = re.compile(
    r"[+-]?(0[xX][0-9a-fA-F_]+|0[bB][01_]+|0[oO][0-7_]+|"
    r"(\d[\d_]*)?\.?\d[\d_]*([eE][+-]?\d+)?|\d[\d_]*\.)"
)


def _lex_number(text: str, i: int, line: int, spaced: bool) -> Tok:
    m = _NUMBER.match(text, i)
    if m is None or not m.group(0):
        fail("bad number syntax", line)
    word = m.group(0)
    digits = word.replace("_", "")
    value: int | float
    try:
        if re.fullmatch(r"[+-]?0[xXbBoO].*", digits):
            value = int(digits, 0)
        elif re.fullmatch(r"[+-]?\d+", digits):
            value = int(digits, 10)
        else:
            value = float(digits)
    except ValueError:
        fail(f"bad number syntax: {word!r}", line)
    return Tok("number", word, line, spaced, value)


_ESCAPES = {
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
    "\\": "\\",
    '"': '"',
    "'": "'",
}


def _unquote(body: str, line: int) -> str:
    """Go string-literal escapes."""
    out: list[str] = []
    i = 0
    while i < len(body):
        c = body[i]
        if c != "\\":
            out.append(c)
            i += 1
            continue
        nxt = body[i + 1 : i + 2]
        if nxt in _ESCAPES:
            out.append(_ESCAPES[nxt])
            i += 2
            continue
        size = {"x": 2, "u": 4, "U": 8}.get(nxt)
        if size is not None and re.fullmatch(r"[0-9a-fA-F]+", body[i + 2 : i + 2 + size] or "-"):
            out.append(chr(int(body[i + 2 : i + 2 + size], 16)))
            i += 2 + size
        elif re.fullmatch(r"[0-7]{3}", body[i + 1 : i + 4]):
            out.append(chr(int(body[i + 1 : i + 4], 8)))
            i += 4
        else:
            fail(f"invalid escape in string: \\{nxt}", line)
    return "".join(out)
