"""Prompt-template rendering: Ollama's Go templates and GGUF Jinja chat templates.

A model update is only comparable if the prompt text the engine receives is known exactly, so
this module reproduces it without running Ollama:

* :func:`parse_go_template` / :func:`render_go` implement the subset of Go ``text/template``
  that Modelfile TEMPLATEs use (lexer → AST → evaluator), including Ollama's extra functions
  (``json``, ``currentDate``, ``yesterdayDate``, ``toTypeScriptType``).
* :func:`build_prompt` follows Ollama's ``/api/chat`` assembly (``server/routes.go``
  ChatHandler, ``server/prompt.go`` and ``template/template.go``): SYSTEM and MESSAGE
  handling, collation, the ``.Messages`` path, and the per-turn legacy path that cuts the
  template after ``{{ .Response }}``.
* :func:`render_chat_template` renders a GGUF ``tokenizer.chat_template`` (Jinja) in an
  immutable sandbox where any reach for Python internals is an error (CVE-2024-34359 was a
  chat template executing code through an unsandboxed Jinja environment).

Every failure is a :class:`~lifecycle.errors.TemplateError` that names the template line.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, NoReturn

import jinja2
import jinja2.exceptions
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from lifecycle.errors import TemplateError

# Every key Ollama puts in the map a TEMPLATE is executed with (template.go Execute, all
# paths). A top-level field outside this set is a typo; Go would print "<no value>", we fail.
OLLAMA_FIELDS = frozenset(
    {
        "System",
        "Messages",
        "Tools",
        "Prompt",
        "Suffix",
        "Response",
        "Think",
        "ThinkLevel",
        "IsThinkSet",
        "Query",
        "Document",
        "Instruction",
    }
)

# api.Message fields as a template sees them, with the JSON key a request uses for each.
_MESSAGE_FIELDS = {
    "Role": "role",
    "Content": "content",
    "Thinking": "thinking",
    "Images": "images",
    "ToolCalls": "tool_calls",
    "ToolName": "tool_name",
    "ToolCallID": "tool_call_id",
}


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def parse_go_template(text: str) -> GoTemplate:
    """Parse a Go ``text/template``; syntax errors raise :class:`TemplateError` with the line."""
    items = _lex(text)
    parser = _Parser(items)
    return GoTemplate(text, parser.parse())


def render_go(text: str, data: Mapping[str, Any]) -> str:
    """Parse and execute ``text`` with ``data`` as dot (and ``$``)."""
    return parse_go_template(text).render(data)


class GoTemplate:
    """A parsed Go template: ``render(data)``, plus what it references."""

    def __init__(self, source: str, nodes: list[_Node]) -> None:
        self.source = source
        self.nodes = nodes
        self._name_lines = _top_level_fields(nodes)

    @property
    def names(self) -> set[str]:
        """Top-level fields the template reads (``.X`` where dot is the data, and ``$.X``)."""
        return set(self._name_lines)

    @property
    def uses_messages(self) -> bool:
        """Ollama's test for the ``.Messages`` path (template.go Execute: ``Vars()`` contains
        "messages" or "document", case-insensitively, anywhere in the tree)."""
        ids = _ollama_vars(self.nodes)
        return "messages" in ids or "document" in ids

    def name_line(self, name: str) -> int:
        """Line of the first reference to top-level field ``name``."""
        return self._name_lines[name]

    def render(self, data: Mapping[str, Any]) -> str:
        return _render_nodes(self.nodes, data)


def build_prompt(
    template: str,
    *,
    system: str | None,
    modelfile_messages: list[dict[str, Any]],
    messages: list[dict[str, Any]],
) -> str:
    """The prompt Ollama's ``/api/chat`` sends to the runner, assistant turn open.

    ``system`` is the Modelfile SYSTEM, ``modelfile_messages`` its MESSAGE entries and
    ``messages`` the request's messages (dicts with "role", "content" and optionally the other
    api.Message keys such as "tool_calls").

    Not reproduced: context-window truncation (prompt.go drops the oldest non-system messages
    until the tokenized prompt fits ``num_ctx``; callers must keep conversations short enough),
    image tags, tools, ``think``, ``filterThinkTags`` (strips ``<think>`` from earlier
    assistant turns for some model families) and models with a built-in renderer.
    """
    if not messages:
        # routes.go: an empty messages list only loads the model; no prompt is rendered.
        raise TemplateError("a chat request needs at least one message; Ollama renders no prompt")
    # routes.go ChatHandler: msgs := append(m.Messages, req.Messages...)
    msgs = [*modelfile_messages, *messages]
    # routes.go: SYSTEM goes first, before MESSAGEs, only when the *request's* first message is
    # not a system message and SYSTEM is non-empty.
    if messages[0].get("role") != "system" and system:
        msgs.insert(0, {"role": "system", "content": system})
    tmpl = parse_go_template(template)
    for name in sorted(tmpl.names - OLLAMA_FIELDS):
        raise TemplateError(
            f"unknown field .{name}: Ollama provides {', '.join(sorted(OLLAMA_FIELDS))}",
            line=tmpl.name_line(name),
        )
    return _ollama_execute(tmpl, msgs)


def render_chat_template(
    template: str,
    messages: list[dict[str, Any]],
    *,
    bos_token: str = "",
    eos_token: str = "",
    add_generation_prompt: bool = True,
) -> str:
    """Render a GGUF Jinja chat template in an immutable sandbox.

    Settings follow Hugging Face transformers' ``apply_chat_template`` (trim_blocks,
    lstrip_blocks, ``loopcontrols``, ``raise_exception``, ``strftime_now``, a ``tojson`` that
    does not HTML-escape). Unlike the stock sandbox, touching an unsafe attribute fails at once
    instead of yielding an undefined value.
    """
    env = _StrictSandbox(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.filters["tojson"] = _tojson
    try:
        compiled = env.from_string(template)
        return compiled.render(
            messages=messages,
            bos_token=bos_token,
            eos_token=eos_token,
            add_generation_prompt=add_generation_prompt,
        )
    except TemplateError:
        raise
    except jinja2.exceptions.TemplateSyntaxError as exc:
        raise TemplateError(f"chat template syntax error: {exc.message}", line=exc.lineno) from exc
    except jinja2.exceptions.SecurityError as exc:
        raise TemplateError(f"chat template refused by the sandbox: {exc}") from exc
    except Exception as exc:  # a template can raise anything Python can (TypeError, ...)
        raise TemplateError(f"chat template failed: {type(exc).__name__}: {exc}") from exc


# --------------------------------------------------------------------------------------------
# Ollama prompt assembly (template/template.go)
# --------------------------------------------------------------------------------------------


class _GoStruct(dict[str, Any]):
    """A dict standing for a Go struct (api.Message): a missing field is an error, not nil."""


def _ollama_execute(tmpl: GoTemplate, msgs: list[dict[str, Any]]) -> str:
    system, collated = _collate(msgs)
    nodes = tmpl.nodes
    ids = _ollama_vars(nodes)
    # template.go Parse: a template mentioning neither messages nor response gets a trailing
    # {{ .Response }} so that legacy assistant turns are rendered at all.
    if "messages" not in ids and "response" not in ids:
        nodes = [*nodes, _Action(0, _Pipe(0, [], False, [_Command(0, [_Field(0, ("Response",))])]))]
    blank: dict[str, Any] = dict.fromkeys(OLLAMA_FIELDS)
    if "messages" in ids or "document" in ids:
        # template.go Execute: the whole (collated) conversation in one execution.
        data = {
            **blank,
            "System": system,
            "Messages": collated,
            "Tools": [],
            "Response": "",
            "Think": False,
            "ThinkLevel": "",
            "IsThinkSet": False,
            "Query": "",
            "Document": "",
            "Instruction": "",
        }
        return _render_nodes(nodes, data)

    # Legacy path (template.go Execute): one execution per turn with .System/.Prompt/.Response;
    # the system text is taken from system messages in order, not from the collated join.
    parts: list[str] = []
    turn = {"System": "", "Prompt": "", "Response": ""}

    def execute(body: list[_Node]) -> None:
        data = {**blank, **turn, "Think": False, "IsThinkSet": False}
        parts.append(_render_nodes(body, data))
        turn.update(System="", Prompt="", Response="")

    for m in collated:
        role, content = m["Role"], m["Content"]
        if role == "system":
            if turn["Prompt"] or turn["Response"]:
                execute(nodes)
            turn["System"] = content
        elif role == "user":
            if turn["Response"]:
                execute(nodes)
            turn["Prompt"] = content
        elif role == "assistant":
            turn["Response"] = content
        # other roles (tool) are ignored by the legacy path
    # The last turn stops right after the first {{ .Response }} (template.go deleteNode), so the
    # assistant's turn is left open for generation.
    execute(_cut_after_response(nodes))
    return "".join(parts)


def _collate(msgs: list[dict[str, Any]]) -> tuple[str, list[_GoStruct]]:
    """template.go collate: join system texts with a blank line and merge consecutive messages
    of the same role (except tool) into one, contents joined with a blank line."""
    system: list[str] = []
    collated: list[_GoStruct] = []
    for raw in msgs:
        m = _to_message(raw)
        if m["Role"] == "system":
            system.append(m["Content"])
        if collated and collated[-1]["Role"] == m["Role"] and m["Role"] != "tool":
            collated[-1]["Content"] += "\n\n" + m["Content"]
        else:
            collated.append(m)
    return "\n\n".join(system), collated


def _to_message(raw: Mapping[str, Any]) -> _GoStruct:
    msg = _GoStruct()
    for go_name, key in _MESSAGE_FIELDS.items():
        value = raw.get(key, raw.get(go_name))
        if go_name == "ToolCalls":
            value = [_to_tool_call(c) for c in value or []]
        elif go_name == "Images":
            value = list(value or [])
        else:
            value = "" if value is None else str(value)
        msg[go_name] = value
    return msg


def _to_tool_call(raw: Mapping[str, Any]) -> _GoStruct:
    fn = raw.get("function") or {}
    return _GoStruct(
        ID=str(raw.get("id", "")),
        Function=_GoStruct(
            Index=int(fn.get("index", 0)),
            Name=str(fn.get("name", "")),
            Arguments=fn.get("arguments") or {},
        ),
    )


class _Cutter:
    """template.go deleteNode with its predicate: keep everything up to and including the first
    field node naming Response (action pipelines only, not if/range/with conditions), drop all
    that follows, keeping the enclosing blocks."""

    def __init__(self) -> None:
        self.cut = False

    def pred(self, node: object) -> bool:
        if isinstance(node, _Field) and "Response" in node.names:
            self.cut = True
            return False
        return self.cut

    def walk_list(self, nodes: list[_Node], line: int) -> list[_Node]:
        if self.pred(nodes):
            # Go asserts the result is a list and panics; Ollama fails the request.
            raise TemplateError("Ollama cannot cut this template after {{ .Response }}", line=line)
        out = []
        for n in nodes:
            kept = self.walk(n)
            if kept is not None:
                out.append(kept)
        return out

    def walk(self, node: _Node) -> _Node | None:
        if self.pred(node):
            return None
        if isinstance(node, _If):
            return _If(node.line, node.pipe, *self.walk_branch(node))
        if isinstance(node, _Range):
            return _Range(node.line, node.pipe, *self.walk_branch(node))
        if isinstance(node, _With):
            return _With(node.line, node.pipe, *self.walk_branch(node))
        if isinstance(node, _Action):
            pipe = self.walk_pipe(node.pipe)
            return None if pipe is None else _Action(node.line, pipe)
        if isinstance(node, _Pipe):
            return self.walk_pipe(node)
        return node

    def walk_branch(self, node: _If | _Range | _With) -> tuple[list[_Node], list[_Node] | None]:
        body = self.walk_list(node.body, node.line)
        other = None if node.other is None else self.walk_list(node.other, node.line)
        return body, other

    def walk_pipe(self, pipe: _Pipe) -> _Pipe | None:
        if self.pred(pipe):
            return None
        cmds = []
        for cmd in pipe.cmds:
            args = [a for a in (self.walk(arg) for arg in cmd.args) if a is not None]
            if not args:
                return None
            cmds.append(_Command(cmd.line, args))
        return None if not cmds else _Pipe(pipe.line, pipe.decl, pipe.assign, cmds)


def _cut_after_response(nodes: list[_Node]) -> list[_Node]:
    return _Cutter().walk_list(nodes, 1)


# --------------------------------------------------------------------------------------------
# AST
# --------------------------------------------------------------------------------------------


@dataclass
class _Text:
    line: int
    text: str


@dataclass
class _Field:
    line: int
    names: tuple[str, ...]


@dataclass
class _Variable:
    line: int
    name: str
    names: tuple[str, ...] = ()


@dataclass
class _Dot:
    line: int


@dataclass
class _Nil:
    line: int


@dataclass
class _Ident:
    line: int
    name: str


@dataclass
class _Literal:
    line: int
    value: str | int | float | bool


@dataclass
class _Chain:
    line: int
    node: _Node
    names: tuple[str, ...]


@dataclass
class _Command:
    line: int
    args: list[_Node]


@dataclass
class _Pipe:
    line: int
    decl: list[str]
    assign: bool
    cmds: list[_Command]


@dataclass
class _Action:
    line: int
    pipe: _Pipe


@dataclass
class _If:
    line: int
    pipe: _Pipe
    body: list[_Node]
    other: list[_Node] | None


@dataclass
class _Range:
    line: int
    pipe: _Pipe
    body: list[_Node]
    other: list[_Node] | None


@dataclass
class _With:
    line: int
    pipe: _Pipe
    body: list[_Node]
    other: list[_Node] | None


@dataclass
class _Break:
    line: int


@dataclass
class _Continue:
    line: int


_Node = (
    _Text
    | _Field
    | _Variable
    | _Dot
    | _Nil
    | _Ident
    | _Literal
    | _Chain
    | _Command
    | _Pipe
    | _Action
    | _If
    | _Range
    | _With
    | _Break
    | _Continue
)


def _ollama_vars(nodes: list[_Node]) -> set[str]:
    """template.go Identifiers, lower-cased: field and variable idents in actions, branch
    pipelines and nested parenthesised pipelines (not chains, not declarations)."""
    found: set[str] = set()

    def visit(node: object) -> None:
        if isinstance(node, list):
            for n in node:
                visit(n)
        elif isinstance(node, _Action):
            visit(node.pipe)
        elif isinstance(node, _If | _Range | _With):
            visit(node.pipe)
            visit(node.body)
            if node.other is not None:
                visit(node.other)
        elif isinstance(node, _Pipe):
            for cmd in node.cmds:
                visit(cmd.args)
        elif isinstance(node, _Field):
            found.update(n.lower() for n in node.names)
        elif isinstance(node, _Variable):
            found.update(n.lower() for n in (node.name, *node.names))

    visit(nodes)
    return found


def _top_level_fields(nodes: list[_Node]) -> dict[str, int]:
    """Fields read from the data itself, each with its first line: ``.X`` while dot is still
    the data (outside range/with bodies) and ``$.X`` anywhere."""
    found: dict[str, int] = {}

    def visit(node: object, root: bool) -> None:
        if isinstance(node, list):
            for n in node:
                visit(n, root)
        elif isinstance(node, _Action):
            visit(node.pipe, root)
        elif isinstance(node, _If):
            visit([node.pipe, node.body, node.other or []], root)
        elif isinstance(node, _Range | _With):
            visit(node.pipe, root)
            visit(node.body, False)
            visit(node.other or [], root)
        elif isinstance(node, _Pipe):
            for cmd in node.cmds:
                visit(cmd.args, root)
        elif isinstance(node, _Chain):
            visit(node.node, root)
        elif isinstance(node, _Field) and root:
            found.setdefault(node.names[0], node.line)
        elif isinstance(node, _Variable) and node.name == "$" and node.names:
            found.setdefault(node.names[0], node.line)  # `$.X` is the data wherever it is

    visit(nodes, True)
    return found


# --------------------------------------------------------------------------------------------
# Lexer: text and actions, trim markers, comments, action tokens
# --------------------------------------------------------------------------------------------

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
class _Tok:
    kind: str  # field var ident keyword string number bool nil ( ) | := = , dot
    value: str
    line: int
    spaced: bool  # whitespace before it: `$x.A` chains, `$x .A` is two operands
    literal: Any = None


@dataclass
class _ActionItem:
    line: int
    toks: list[_Tok] = field(default_factory=list)


_LexItem = _Text | _ActionItem


def _lex(text: str) -> list[_LexItem]:
    items: list[_LexItem] = []
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
            items.append(_Text(line, chunk))
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
            items.append(_ActionItem(action_line, toks))


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
) -> tuple[int, int, bool, list[_Tok] | None]:
    """Lex one action starting after ``{{``. Returns (pos, line, trims_right, tokens); tokens
    are None for a comment."""
    if comment:
        end = text.find("*/", text.index("/*", pos) + 2)
        if end < 0:
            _fail("unclosed comment", action_line)
        closed = _close_at(text, end + 2)
        if closed is None:
            _fail("comment ends before closing delimiter", action_line)
        new_pos, trim = closed
        return new_pos, line + text.count("\n", pos, new_pos), trim, None
    toks: list[_Tok] = []
    i = pos
    spaced = True
    while True:
        if i >= len(text):
            _fail("unclosed action", action_line)
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
            toks.append(_Tok(":=", ":=", line, spaced))
            i += 2
        elif c in "()|=,":
            toks.append(_Tok(c, c, line, spaced))
            i += 1
        elif c == '"':
            j = i + 1
            while j < len(text) and text[j] != '"':
                if text[j] == "\n":
                    _fail("unterminated quoted string", line)
                j += 2 if text[j] == "\\" else 1
            if j >= len(text):
                _fail("unterminated quoted string", line)
            toks.append(
                _Tok("string", text[i : j + 1], line, spaced, _unquote(text[i + 1 : j], line))
            )
            i = j + 1
        elif c == "`":
            j = text.find("`", i + 1)
            if j < 0:
                _fail("unterminated raw quoted string", line)
            raw = text[i + 1 : j]
            toks.append(_Tok("string", text[i : j + 1], line, spaced, raw))
            line += raw.count("\n")
            i = j + 1
        elif c == "'":
            m = re.compile(r"'(\\.[^']*|[^\\'])'").match(text, i)
            if m is None:
                _fail("malformed character constant", line)
            value = _unquote(m.group(1), line)
            toks.append(_Tok("number", m.group(0), line, spaced, ord(value)))
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
                toks.append(_Tok("dot", word, line, spaced))
            elif word.startswith("."):
                toks.append(_Tok("field", word[1:], line, spaced))
            elif word.startswith("$"):
                if "." in word:  # `$.X` — the variable, then a field
                    toks.append(_Tok("var", "$", line, spaced))
                    toks.append(_Tok("field", word[2:], line, False))
                else:
                    toks.append(_Tok("var", word, line, spaced))
            elif word in ("true", "false"):
                toks.append(_Tok("bool", word, line, spaced, word == "true"))
            elif word == "nil":
                toks.append(_Tok("nil", word, line, spaced))
            elif word in _KEYWORDS:
                toks.append(_Tok("keyword", word, line, spaced))
            else:
                toks.append(_Tok("ident", word, line, spaced))
        elif c.isdigit() or (c in "+-" and i + 1 < len(text) and text[i + 1].isdigit()):
            tok = _lex_number(text, i, line, spaced)
            toks.append(tok)
            i += len(tok.value)
        else:
            _fail(f"unexpected {c!r} in action", line)
        spaced = False


_NUMBER = re.compile(
    r"[+-]?(0[xX][0-9a-fA-F_]+|0[bB][01_]+|0[oO][0-7_]+|"
    r"(\d[\d_]*)?\.?\d[\d_]*([eE][+-]?\d+)?|\d[\d_]*\.)"
)


def _lex_number(text: str, i: int, line: int, spaced: bool) -> _Tok:
    m = _NUMBER.match(text, i)
    if m is None or not m.group(0):
        _fail("bad number syntax", line)
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
        _fail(f"bad number syntax: {word!r}", line)
    return _Tok("number", word, line, spaced, value)


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
            _fail(f"invalid escape in string: \\{nxt}", line)
    return "".join(out)


# --------------------------------------------------------------------------------------------
# Parser
# --------------------------------------------------------------------------------------------


class _Parser:
    def __init__(self, items: list[_LexItem]) -> None:
        self.items = items
        self.pos = 0
        self.vars: list[str] = ["$"]
        self.range_depth = 0

    def parse(self) -> list[_Node]:
        nodes, stop = self.parse_list()
        if stop is not None:
            _fail(f"unexpected {{{{{stop.toks[0].value}}}}}", stop.line)
        return nodes

    def parse_list(self) -> tuple[list[_Node], _ActionItem | None]:
        """Nodes up to an ``{{ end }}``/``{{ else }}`` (returned) or the end of input."""
        nodes: list[_Node] = []
        while self.pos < len(self.items):
            item = self.items[self.pos]
            self.pos += 1
            if isinstance(item, _Text):
                nodes.append(item)
                continue
            if not item.toks:
                _fail("missing value for command", item.line)
            head = item.toks[0]
            if head.kind == "keyword":
                if head.value in ("end", "else"):
                    return nodes, item
                nodes.append(self.keyword(item))
            else:
                nodes.append(_Action(item.line, self.pipeline(item, 0, decl_max=1)))
        return nodes, None

    def keyword(self, item: _ActionItem) -> _Node:
        word = item.toks[0].value
        if word in ("if", "with", "range"):
            return self.control(word, item, 1)
        if word in ("break", "continue"):
            if len(item.toks) > 1:
                _fail(f"unexpected {item.toks[1].value!r} in {word}", item.line)
            if self.range_depth == 0:
                _fail(f"{{{{{word}}}}} outside {{{{range}}}}", item.line)
            return _Break(item.line) if word == "break" else _Continue(item.line)
        _fail(
            f"{{{{{word}}}}} is not supported (named templates are not used by TEMPLATEs)",
            item.line,
        )

    def control(self, word: str, item: _ActionItem, start: int) -> _Node:
        mark = len(self.vars)
        pipe = self.pipeline(item, start, decl_max=2 if word == "range" else 1)
        if word == "range":
            self.range_depth += 1
        body, stop = self.parse_list()
        if word == "range":
            self.range_depth -= 1
        if stop is None:
            _fail(f"unexpected EOF: {{{{{word}}}}} has no {{{{end}}}}", item.line)
        other: list[_Node] | None = None
        if stop.toks[0].value == "else":
            if len(stop.toks) > 1:
                nested = stop.toks[1]
                # `{{ else if }}` / `{{ else with }}`: a nested block sharing the outer {{ end }}
                if nested.kind == "keyword" and nested.value == word and word != "range":
                    other = [self.control(word, stop, 2)]
                else:
                    _fail(f"unexpected {nested.value!r} after else", stop.line)
            else:
                other, stop = self.parse_list()
                if stop is None or stop.toks[0].value != "end":
                    line = stop.line if stop is not None else item.line
                    _fail(f"expected {{{{end}}}} for {{{{{word}}}}} on line {item.line}", line)
                if len(stop.toks) > 1:
                    _fail("unexpected tokens after end", stop.line)
        elif len(stop.toks) > 1:
            _fail("unexpected tokens after end", stop.line)
        del self.vars[mark:]
        if word == "if":
            return _If(item.line, pipe, body, other)
        if word == "range":
            return _Range(item.line, pipe, body, other)
        return _With(item.line, pipe, body, other)

    def pipeline(self, item: _ActionItem, start: int, decl_max: int) -> _Pipe:
        toks = item.toks
        i = start
        decl: list[str] = []
        assign = False
        # declarations: `$x :=`, `$x =`, `$i, $e :=`
        j = i
        names: list[str] = []
        while j < len(toks) and toks[j].kind == "var":
            names.append(toks[j].value)
            if j + 1 < len(toks) and toks[j + 1].kind == "," and len(names) < decl_max:
                j += 2
                continue
            j += 1
            break
        if names and j < len(toks) and toks[j].kind in (":=", "="):
            if len(names) > 1 and toks[j].kind == "=":
                _fail("too many declarations in assignment", item.line)
            assign = toks[j].kind == "="
            for name in names:
                if assign and name not in self.vars:
                    _fail(f"undefined variable {name!r}", item.line)
                if name == "$":
                    _fail("cannot declare $", item.line)
            decl = names
            i = j + 1
            if not assign:
                self.vars.extend(names)
        cmds, i = self.commands(toks, i, item.line)
        if i != len(toks):
            _fail(f"unexpected {toks[i].value!r} in command", toks[i].line)
        if not cmds:
            _fail("missing value for command", item.line)
        return _Pipe(item.line, decl, assign, cmds)

    def commands(self, toks: list[_Tok], i: int, line: int) -> tuple[list[_Command], int]:
        cmds: list[_Command] = []
        while i < len(toks) and toks[i].kind != ")":
            args: list[_Node] = []
            while i < len(toks) and toks[i].kind not in ("|", ")"):
                node, i = self.operand(toks, i)
                args.append(node)
            if not args:
                _fail("missing value for command", toks[i].line if i < len(toks) else line)
            if cmds and not isinstance(args[0], _Ident | _Field | _Variable | _Chain | _Pipe):
                _fail(f"non executable command in pipeline stage {len(cmds) + 1}", args[0].line)
            cmds.append(_Command(args[0].line, args))
            if i < len(toks) and toks[i].kind == "|":
                i += 1
                if i >= len(toks) or toks[i].kind in ("|", ")"):
                    _fail("missing command after |", line)
        return cmds, i

    def operand(self, toks: list[_Tok], i: int) -> tuple[_Node, int]:
        tok = toks[i]
        node: _Node
        if tok.kind == "field":
            node = _Field(tok.line, (tok.value,))
        elif tok.kind == "var":
            if tok.value not in self.vars:
                _fail(f"undefined variable {tok.value!r}", tok.line)
            node = _Variable(tok.line, tok.value)
        elif tok.kind == "dot":
            node = _Dot(tok.line)
        elif tok.kind == "nil":
            node = _Nil(tok.line)
        elif tok.kind in ("string", "number", "bool"):
            node = _Literal(tok.line, tok.literal)
        elif tok.kind == "ident":
            if tok.value not in _FUNCS and tok.value not in ("and", "or"):
                _fail(f"function {tok.value!r} not defined", tok.line)
            node = _Ident(tok.line, tok.value)
        elif tok.kind == "(":
            cmds, j = self.commands(toks, i + 1, tok.line)
            if j >= len(toks) or toks[j].kind != ")":
                _fail("unclosed left paren", tok.line)
            if not cmds:
                _fail("missing value for command", tok.line)
            node = _Pipe(tok.line, [], False, cmds)
            i = j
        else:
            _fail(f"unexpected {tok.value!r} in operand", tok.line)
        i += 1
        # fields glued on without a space extend the operand: .A.B, $x.A, (pipe).A
        chain: list[str] = []
        while i < len(toks) and toks[i].kind == "field" and not toks[i].spaced:
            chain.append(toks[i].value)
            i += 1
        if chain:
            if isinstance(node, _Field):
                node = _Field(node.line, (*node.names, *chain))
            elif isinstance(node, _Variable):
                node = _Variable(node.line, node.name, tuple(chain))
            elif isinstance(node, _Pipe | _Dot):
                node = _Chain(node.line, node, tuple(chain))
            else:
                _fail("unexpected . after term", node.line)
        return node, i


# --------------------------------------------------------------------------------------------
# Evaluator
# --------------------------------------------------------------------------------------------


class _BreakLoop(Exception):
    pass


class _ContinueLoop(Exception):
    pass


_MISSING: Any = object()


def _render_nodes(nodes: list[_Node], data: Mapping[str, Any]) -> str:
    state = _State(data)
    state.walk(nodes, data)
    return "".join(state.out)


class _State:
    def __init__(self, data: Mapping[str, Any]) -> None:
        self.root = data
        self.vars: list[list[Any]] = [["$", data]]
        self.out: list[str] = []

    def walk(self, nodes: list[_Node], dot: Any) -> None:
        for node in nodes:
            if isinstance(node, _Text):
                self.out.append(node.text)
            elif isinstance(node, _Action):
                value = self.pipe(node.pipe, dot)
                if not node.pipe.decl:
                    self.out.append("<no value>" if value is None else _sprint_one(value))
            elif isinstance(node, _If | _With):
                self.if_or_with(node, dot)
            elif isinstance(node, _Range):
                self.range(node, dot)
            elif isinstance(node, _Break):
                raise _BreakLoop
            elif isinstance(node, _Continue):
                raise _ContinueLoop
            else:  # pragma: no cover - the parser only produces the nodes above
                _fail(f"unexpected node {type(node).__name__}", node.line)

    def if_or_with(self, node: _If | _With, dot: Any) -> None:
        mark = len(self.vars)
        value = self.pipe(node.pipe, dot)
        if _truth(value):
            self.walk(node.body, value if isinstance(node, _With) else dot)
        elif node.other is not None:
            self.walk(node.other, dot)
        del self.vars[mark:]

    def range(self, node: _Range, dot: Any) -> None:
        mark = len(self.vars)
        value = self.pipe(_Pipe(node.line, [], False, node.pipe.cmds), dot)
        pairs: Iterator[tuple[Any, Any]]
        if isinstance(value, Mapping):
            pairs = ((k, value[k]) for k in sorted(value))
        elif isinstance(value, list | tuple):
            pairs = enumerate(value)
        elif isinstance(value, int) and not isinstance(value, bool):
            if len(node.pipe.decl) > 1:
                _fail("can't use two iteration variables when ranging over an int", node.line)
            pairs = ((n, n) for n in range(value))
        elif value is None:
            pairs = iter(())
        else:
            _fail(f"range can't iterate over {_go_type(value)}", node.line)
        ran = False
        for key, elem in pairs:
            ran = True
            if len(node.pipe.decl) == 1:
                self.vars.append([node.pipe.decl[0], elem])
            elif len(node.pipe.decl) == 2:
                self.vars.append([node.pipe.decl[0], key])
                self.vars.append([node.pipe.decl[1], elem])
            try:
                self.walk(node.body, elem)
            except _ContinueLoop:
                pass
            except _BreakLoop:
                break
            finally:
                del self.vars[mark:]
        if not ran and node.other is not None:
            self.walk(node.other, dot)

    def pipe(self, pipe: _Pipe, dot: Any) -> Any:
        value: Any = _MISSING
        for cmd in pipe.cmds:
            value = self.command(cmd, dot, value)
        if pipe.assign:
            for name in pipe.decl:
                self.lookup_var(name, pipe.line)[1] = value
        else:
            for name in pipe.decl:
                self.vars.append([name, value])
        return value

    def lookup_var(self, name: str, line: int) -> list[Any]:
        for entry in reversed(self.vars):
            if entry[0] == name:
                return entry
        _fail(f"undefined variable {name!r}", line)

    def command(self, cmd: _Command, dot: Any, final: Any) -> Any:
        first = cmd.args[0]
        if isinstance(first, _Ident):
            return self.call(first, cmd.args[1:], dot, final)
        if len(cmd.args) > 1 or final is not _MISSING:
            _fail(f"can't give argument to non-function {_describe(first)}", first.line)
        if isinstance(first, _Nil):
            _fail("nil is not a command", first.line)
        return self.arg(first, dot)

    def arg(self, node: _Node, dot: Any) -> Any:
        if isinstance(node, _Literal):
            return node.value
        if isinstance(node, _Dot):
            return dot
        if isinstance(node, _Nil):
            return None
        if isinstance(node, _Field):
            return self.fields(dot, node.names, node.line)
        if isinstance(node, _Variable):
            return self.fields(self.lookup_var(node.name, node.line)[1], node.names, node.line)
        if isinstance(node, _Chain):
            return self.fields(self.arg(node.node, dot), node.names, node.line)
        if isinstance(node, _Pipe):
            mark = len(self.vars)
            value = self.pipe(node, dot)
            del self.vars[mark:]
            return value
        if isinstance(node, _Ident):
            return self.call(node, [], dot, _MISSING)
        _fail(f"can't evaluate {type(node).__name__}", node.line)

    def fields(self, value: Any, names: tuple[str, ...], line: int) -> Any:
        for name in names:
            value = self.field(value, name, line)
        return value

    def field(self, value: Any, name: str, line: int) -> Any:
        if isinstance(value, Mapping):
            for key in (name, _snake(name), name.lower()):
                if key in value:
                    return value[key]
            if value is self.root:
                _fail(f"unknown field .{name} (the data has {', '.join(map(str, value))})", line)
            if isinstance(value, _GoStruct):
                _fail(f"can't evaluate field {name} in type *api.Message", line)
            return None  # a missing map key is Go's nil: "<no value>" when printed
        if value is None:
            _fail(f"nil pointer evaluating interface {{}}.{name}", line)
        _fail(f"can't evaluate field {name} in type {_go_type(value)}", line)

    def call(self, ident: _Ident, args: list[_Node], dot: Any, final: Any) -> Any:
        name = ident.name
        if name in ("and", "or"):
            # Go 1.18+: short-circuit, returning the deciding argument itself
            if not args and final is _MISSING:
                _fail(f"wrong number of args for {name}: want at least 1 got 0", ident.line)
            value: Any = None
            for node in [*args, None]:
                if node is None:
                    if final is _MISSING:
                        break
                    value = final
                else:
                    value = self.arg(node, dot)
                if _truth(value) != (name == "and"):
                    return value
            return value
        values = [self.arg(a, dot) for a in args]
        if final is not _MISSING:
            values.append(final)
        try:
            return _FUNCS[name](*values)
        except _FuncError as exc:
            _fail(f"error calling {name}: {exc}", ident.line)
        except TypeError:
            _fail(f"wrong number of args for {name}: got {len(values)}", ident.line)


def _describe(node: _Node) -> str:
    if isinstance(node, _Field):
        return "." + ".".join(node.names)
    if isinstance(node, _Variable):
        return node.name + "".join("." + n for n in node.names)
    if isinstance(node, _Literal):
        return repr(node.value)
    return type(node).__name__.lstrip("_").lower()


def _snake(name: str) -> str:
    """``ToolCalls`` → ``tool_calls``, ``ToolCallID`` → ``tool_call_id`` (request JSON keys)."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


def _fail(message: str, line: int | None) -> NoReturn:
    raise TemplateError(message, line=line or None)


# --------------------------------------------------------------------------------------------
# Values: truth, printing, comparison, functions
# --------------------------------------------------------------------------------------------


class _FuncError(Exception):
    """A template function rejected its arguments (reported with the calling line)."""


def _truth(value: Any) -> bool:
    """Go's truth: false, 0, nil and empty strings/slices/maps are false; the rest is true."""
    if value is None or value is _MISSING:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value != 0
    if isinstance(value, str | list | tuple | Mapping):
        return len(value) > 0
    return True


def _go_type(value: Any) -> str:
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float64"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "map[string]interface {}"
    if isinstance(value, list | tuple):
        return "[]interface {}"
    return type(value).__name__


def _sprint_one(value: Any) -> str:
    """fmt's %v for one value. Dicts and lists print as JSON, as Ollama's api types do through
    their String() methods (ToolFunction, Tools, ToolCallFunctionArguments)."""
    if value is None:
        return "<nil>"
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _go_float(value)
    if isinstance(value, Mapping | list | tuple):
        return _go_json(value)
    return str(value)


def _go_float(value: float) -> str:
    """strconv.FormatFloat(v, 'g', -1, 64) as fmt's %v uses it: shortest digits, exponent form
    when the decimal exponent is below -4 or at least 6."""
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    sign, digits, exp = Decimal(repr(value)).normalize().as_tuple()
    assert isinstance(exp, int)
    text = "".join(map(str, digits))
    point = len(text) + exp  # position of the decimal point relative to the digits
    sci = point - 1
    prefix = "-" if sign else ""
    if sci < -4 or sci >= 6:
        mantissa = text[0] + ("." + text[1:] if len(text) > 1 else "")
        return f"{prefix}{mantissa}e{'-' if sci < 0 else '+'}{abs(sci):02d}"
    if point <= 0:
        return f"{prefix}0.{'0' * -point}{text}"
    if point >= len(text):
        return f"{prefix}{text}{'0' * (point - len(text))}"
    return f"{prefix}{text[:point]}.{text[point:]}"


def _go_json(value: Any) -> str:
    """encoding/json.Marshal: compact, HTML-safe escapes, integral floats without ".0".
    Dict keys keep their order (Go would sort a map's keys but keep a struct's order)."""

    def norm(v: Any) -> Any:
        if isinstance(v, float) and v.is_integer() and abs(v) < 1e21:
            return int(v)
        if isinstance(v, Mapping):
            return {str(k): norm(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [norm(x) for x in v]
        return v

    try:
        text = json.dumps(norm(value), ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise _FuncError(f"json: {exc}") from exc
    for raw, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(raw, esc)
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def _sprint(*args: Any) -> str:
    """fmt.Sprint: a space between operands when neither is a string."""
    out: list[str] = []
    for i, arg in enumerate(args):
        if i > 0 and not isinstance(arg, str) and not isinstance(args[i - 1], str):
            out.append(" ")
        out.append(_sprint_one(arg))
    return "".join(out)


def _sprintln(*args: Any) -> str:
    return " ".join(_sprint_one(a) for a in args) + "\n"


_VERB = re.compile(r"%([-+# 0]*)(\d+|\*)?(?:\.(\d+|\*)?)?([a-zA-Z%])")


def _sprintf(fmt: Any = _MISSING, *args: Any) -> str:
    """fmt.Sprintf for the common verbs: %s %v %d %q %t %f %e %g %x %X %c %%."""
    if not isinstance(fmt, str):
        raise _FuncError("printf needs a format string")
    rest = list(args)
    out: list[str] = []
    pos = 0
    for m in _VERB.finditer(fmt):
        out.append(fmt[pos : m.start()])
        pos = m.end()
        flags, width, prec, verb = m.group(1), m.group(2), m.group(3), m.group(4)
        if verb == "%":
            out.append("%")
            continue
        if not rest:
            out.append(f"%!{verb}(MISSING)")
            continue
        out.append(_format_verb(rest.pop(0), flags, width, prec, verb))
    out.append(fmt[pos:])
    if rest:
        extra = ", ".join(f"{_go_type(a)}={_sprint_one(a)}" for a in rest)
        out.append(f"%!(EXTRA {extra})")
    return "".join(out)


def _format_verb(arg: Any, flags: str, width: str | None, prec: str | None, verb: str) -> str:
    is_int = isinstance(arg, int) and not isinstance(arg, bool)
    spec_prec = f".{prec}" if prec is not None else ""
    if verb in "sv":
        text = _sprint_one(arg)
        if prec is not None and verb == "s":
            text = text[: int(prec)]
    elif verb == "q":
        text = json.dumps(arg if isinstance(arg, str) else _sprint_one(arg), ensure_ascii=False)
    elif verb == "t" and isinstance(arg, bool):
        text = "true" if arg else "false"
    elif verb in "dxXobc" and is_int:
        text = chr(arg) if verb == "c" else format(arg, "d" if verb == "d" else verb)
    elif verb in "xX" and isinstance(arg, str):
        text = format(int.from_bytes(arg.encode(), "big"), verb) if arg else ""
    elif verb in "gv" and prec is None and isinstance(arg, float):
        text = _go_float(arg)
    elif verb in "feEgG" and isinstance(arg, int | float) and not isinstance(arg, bool):
        text = format(float(arg), (spec_prec or ".6") + verb if verb in "feE" else spec_prec + verb)
    else:
        return f"%!{verb}({_go_type(arg)}={_sprint_one(arg)})"
    if "+" in flags and (is_int or isinstance(arg, float)) and not text.startswith("-"):
        text = "+" + text
    if width is not None and width != "*" and len(text) < int(width):
        pad = int(width) - len(text)
        if "-" in flags:
            text += " " * pad
        elif "0" in flags and verb not in "sqvt":
            sign = text[0] if text[:1] in "+-" else ""
            text = sign + "0" * pad + text[len(sign) :]
        else:
            text = " " * pad + text
    return text


def _kind(value: Any) -> str:
    if value is None:
        return "invalid"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    return "other"


def _eq(arg1: Any = _MISSING, *others: Any) -> bool:
    """Go's eq: arg1 equal to any of the others; mixed basic kinds are an error."""
    if arg1 is _MISSING or not others:
        raise _FuncError("missing argument for comparison")
    k1 = _kind(arg1)
    for other in others:
        k2 = _kind(other)
        if k1 != k2:
            if k1 != "invalid" and k2 != "invalid":
                raise _FuncError("incompatible types for comparison")
            continue
        containers = list | tuple | Mapping
        if k1 == "other" and (isinstance(arg1, containers) or isinstance(other, containers)):
            raise _FuncError(f"non-comparable type {_go_type(arg1)}")
        if arg1 == other:
            return True
    return False


def _ne(arg1: Any, arg2: Any) -> bool:
    return not _eq(arg1, arg2)


def _ordered(arg1: Any, arg2: Any) -> tuple[Any, Any]:
    k1, k2 = _kind(arg1), _kind(arg2)
    if k1 not in ("int", "float", "string") or k2 not in ("int", "float", "string"):
        raise _FuncError("invalid type for comparison")
    if k1 != k2:
        raise _FuncError("incompatible types for comparison")
    return arg1, arg2


def _lt(a: Any, b: Any) -> bool:
    x, y = _ordered(a, b)
    return bool(x < y)


def _le(a: Any, b: Any) -> bool:
    x, y = _ordered(a, b)
    return bool(x <= y)


def _gt(a: Any, b: Any) -> bool:
    x, y = _ordered(a, b)
    return bool(x > y)


def _ge(a: Any, b: Any) -> bool:
    x, y = _ordered(a, b)
    return bool(x >= y)


def _not(value: Any) -> bool:
    return not _truth(value)


def _len(value: Any) -> int:
    if isinstance(value, str):
        return len(value.encode())  # Go's len counts bytes
    if isinstance(value, list | tuple | Mapping):
        return len(value)
    raise _FuncError(f"len of type {_go_type(value)}")


def _index(item: Any, *indices: Any) -> Any:
    for idx in indices:
        if isinstance(item, Mapping):
            item = item.get(idx)
        elif isinstance(item, list | tuple | str):
            seq: Sequence[Any] = item.encode() if isinstance(item, str) else item
            if not isinstance(idx, int) or isinstance(idx, bool):
                raise _FuncError(f"cannot index slice/array with type {_go_type(idx)}")
            if not 0 <= idx < len(seq):
                raise _FuncError(f"index out of range: {idx}")
            item = seq[idx]
        elif item is None:
            raise _FuncError("index of untyped nil")
        else:
            raise _FuncError(f"can't index item of type {_go_type(item)}")
    return item


def _slice(item: Any, *indices: Any) -> Any:
    if len(indices) > 3:
        raise _FuncError(f"too many slice indexes: {len(indices)}")
    if isinstance(item, str) and len(indices) == 3:
        raise _FuncError("cannot 3-index slice a string")
    if not isinstance(item, list | tuple | str):
        raise _FuncError(f"can't slice item of type {_go_type(item)}")
    seq: Sequence[Any] = item.encode() if isinstance(item, str) else item
    if any(not isinstance(i, int) or isinstance(i, bool) for i in indices):
        raise _FuncError("slice indexes must be integers")
    bounds = list(indices)
    if len(bounds) < 1:
        bounds.append(0)
    if len(bounds) < 2:
        bounds.append(len(seq))
    lo, hi = bounds[0], bounds[1]
    if not 0 <= lo <= hi <= len(seq):
        raise _FuncError(f"index out of range: {lo}:{hi}")
    part = seq[lo:hi]
    if isinstance(item, str):
        assert isinstance(part, bytes)
        return part.decode("utf-8", errors="replace")
    return list(part)


def _html(*args: Any) -> str:
    text = _sprint(*args)
    for raw, esc in (("&", "&amp;"), ("'", "&#39;"), ("<", "&lt;"), (">", "&gt;"), ('"', "&#34;")):
        text = text.replace(raw, esc)
    return text.replace("\0", "\ufffd")


def _urlquery(*args: Any) -> str:
    return urllib.parse.quote_plus(_sprint(*args), safe="")


def _current_date(*_format: Any) -> str:
    # Ollama ignores the format argument and always uses 2006-01-02 (local time).
    return datetime.now().strftime("%Y-%m-%d")


def _yesterday_date(*_format: Any) -> str:
    return (datetime.now() - timedelta(days=1)).strftime("%Y-%m-%d")


_TS_TYPES = {
    "string": "string",
    "number": "number",
    "integer": "number",
    "boolean": "boolean",
    "array": "any[]",
    "object": "Record<string, any>",
    "null": "null",
}


def _to_typescript_type(prop: Any) -> str:
    """Ollama's api.ToolProperty.ToTypeScriptType on a JSON-schema property dict; anything
    else is "any" as in Ollama."""
    if not isinstance(prop, Mapping):
        return "any"
    any_of = prop.get("anyOf") or prop.get("AnyOf")
    if any_of:
        return " | ".join(_to_typescript_type(p) for p in any_of)
    types = prop.get("type", prop.get("Type"))
    if isinstance(types, str):
        types = [types]
    if not types:
        return "any"
    return " | ".join(_TS_TYPES.get(t, "any") for t in types)


def _unsupported(name: str) -> Callable[..., Any]:
    def call(*_args: Any) -> Any:
        raise _FuncError(f"{name} is not supported by this renderer")

    return call


_FUNCS: dict[str, Callable[..., Any]] = {
    # Go text/template builtins
    "eq": _eq,
    "ne": _ne,
    "lt": _lt,
    "le": _le,
    "gt": _gt,
    "ge": _ge,
    "not": _not,
    "len": _len,
    "index": _index,
    "slice": _slice,
    "print": _sprint,
    "printf": _sprintf,
    "println": _sprintln,
    "html": _html,
    "urlquery": _urlquery,
    "js": _unsupported("js"),
    "call": _unsupported("call"),
    # Ollama's template.go funcs
    "json": _go_json,
    "currentDate": _current_date,
    "yesterdayDate": _yesterday_date,
    "toTypeScriptType": _to_typescript_type,
}


# --------------------------------------------------------------------------------------------
# Jinja sandbox helpers
# --------------------------------------------------------------------------------------------


class _StrictSandbox(ImmutableSandboxedEnvironment):
    """The stock sandbox turns an unsafe attribute into an undefined value that only fails
    when used further; a chat template has no business asking, so fail at the first touch."""

    def unsafe_undefined(self, obj: Any, attribute: str) -> jinja2.Undefined:
        raise jinja2.exceptions.SecurityError(
            f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe"
        )


def _raise_exception(message: str) -> NoReturn:
    raise TemplateError(f"chat template raised: {message}")


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _tojson(
    value: Any, indent: int | None = None, separators: Any = None, sort_keys: bool = False
) -> str:
    # transformers' chat-template tojson: plain json.dumps, no HTML escaping.
    return json.dumps(
        value, ensure_ascii=False, indent=indent, separators=separators, sort_keys=sort_keys
    )
