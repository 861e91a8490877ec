"""Prompt assembly: Ollama's chat prompt from a Go TEMPLATE, and GGUF Jinja chat templates.

A model update is only comparable if the prompt text the engine receives is known exactly, so
this module reproduces it without running Ollama:

* The Go ``text/template`` engine itself (lexer → parser → evaluator, Ollama's extra
  functions) is :mod:`lifecycle.gotemplate`; :func:`parse_go_template` / :func:`render_go`
  are re-exported here for callers of this module.
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
from collections.abc import Mapping
from datetime import datetime
from typing import Any, NoReturn

import jinja2
import jinja2.exceptions
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from lifecycle.errors import TemplateError
from lifecycle.gotemplate import GoTemplate as GoTemplate
from lifecycle.gotemplate import parse_go_template as parse_go_template
from lifecycle.gotemplate import render_go as render_go
from lifecycle.gotemplate.exec import GoStruct, render_nodes
from lifecycle.gotemplate.nodes import (
    Action,
    Command,
    Field,
    If,
    Node,
    Pipe,
    Range,
    With,
    ollama_vars,
)

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


def _ollama_execute(tmpl: GoTemplate, msgs: list[dict[str, Any]]) -> str:
    system, collated = _collate(msgs)
    nodes = tmpl.nodes
    ids = ollama_vars(nodes)
    # template.go Parse: a template mentioning neither messages nor response gets a trailing
    # {{ .Response }} so that legacy assistant turns are rendered at all.
    if "messages" not in ids and "response" not in ids:
        nodes = [*nodes, Action(0, Pipe(0, [], False, [Command(0, [Field(0, ("Response",))])]))]
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
        return render_nodes(nodes, data)

    # Legacy path (template.go Execute): one execution per turn with .System/.Prompt/.Response;
    # the system text is taken from system messages in order, not from the collated join.
    parts: list[str] = []
    turn = {"System": "", "Prompt": "", "Response": ""}

    def execute(body: list[Node]) -> None:
        data = {**blank, **turn, "Think": False, "IsThinkSet": False}
        parts.append(render_nodes(body, data))
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


def _collate(msgs: list[dict[str, Any]]) -> tuple[str, list[GoStruct]]:
    """template.go collate: join system texts with a blank line and merge consecutive messages
    of the same role (except tool) into one, contents joined with a blank line."""
    system: list[str] = []
    collated: list[GoStruct] = []
    for raw in msgs:
        m = _to_message(raw)
        if m["Role"] == "system":
            system.append(m["Content"])
        if collated and collated[-1]["Role"] == m["Role"] and m["Role"] != "tool":
            collated[-1]["Content"] += "\n\n" + m["Content"]
        else:
            collated.append(m)
    return "\n\n".join(system), collated


def _to_message(raw: Mapping[str, Any]) -> GoStruct:
    msg = GoStruct()
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


def _to_tool_call(raw: Mapping[str, Any]) -> GoStruct:
    fn = raw.get("function") or {}
    return GoStruct(
        ID=str(raw.get("id", "")),
        Function=GoStruct(
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
        if isinstance(node, Field) and "Response" in node.names:
            self.cut = True
            return False
        return self.cut

    def walk_list(self, nodes: list[Node], line: int) -> list[Node]:
        if self.pred(nodes):
            # Go asserts the result is a list and panics; Ollama fails the request.
            raise TemplateError("Ollama cannot cut this template after {{ .Response }}", line=line)
        out = []
        for n in nodes:
            kept = self.walk(n)
            if kept is not None:
                out.append(kept)
        return out

    def walk(self, node: Node) -> Node | None:
        if self.pred(node):
            return None
        if isinstance(node, If):
            return If(node.line, node.pipe, *self.walk_branch(node))
        if isinstance(node, Range):
            return Range(node.line, node.pipe, *self.walk_branch(node))
        if isinstance(node, With):
            return With(node.line, node.pipe, *self.walk_branch(node))
        if isinstance(node, Action):
            pipe = self.walk_pipe(node.pipe)
            return None if pipe is None else Action(node.line, pipe)
        if isinstance(node, Pipe):
            return self.walk_pipe(node)
        return node

    def walk_branch(self, node: If | Range | With) -> tuple[list[Node], list[Node] | None]:
        body = self.walk_list(node.body, node.line)
        other = None if node.other is None else self.walk_list(node.other, node.line)
        return body, other

    def walk_pipe(self, pipe: Pipe) -> Pipe | None:
        if self.pred(pipe):
            return None
        cmds = []
        for cmd in pipe.cmds:
            args = [a for a in (self.walk(arg) for arg in cmd.args) if a is not None]
            if not args:
                return None
            cmds.append(Command(cmd.line, args))
        return None if not cmds else Pipe(pipe.line, pipe.decl, pipe.assign, cmds)


def _cut_after_response(nodes: list[Node]) -> list[Node]:
    return _Cutter().walk_list(nodes, 1)


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
