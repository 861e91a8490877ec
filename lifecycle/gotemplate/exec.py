"""Executing a parsed Go template against data, with Go's field, variable and loop rules."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

from lifecycle.gotemplate.funcs import FUNCS, MISSING, FuncError, go_type, sprint_one, truth
from lifecycle.gotemplate.nodes import (
    Action,
    Break,
    Chain,
    Command,
    Continue,
    Dot,
    Field,
    Ident,
    If,
    Literal,
    Nil,
    Node,
    Pipe,
    Range,
    Text,
    Variable,
    With,
    fail,
)


class _BreakLoop(Exception):
    pass


class _ContinueLoop(Exception):
    pass


def render_nodes(nodes: list[Node], data: Mapping[str, Any]) -> str:
    state = _State(data)
    state.walk(nodes, data)
    return "".join(state.out)


class _State:
    def __init__(self, data: Mapping[str, Any]) -> None:
        self.root = data
        self.vars: list[list[Any]] = [["$", data]]
        self.out: list[str] = []

    def walk(self, nodes: list[Node], dot: Any) -> None:
        for node in nodes:
            if isinstance(node, Text):
                self.out.append(node.text)
            elif isinstance(node, Action):
                value = self.pipe(node.pipe, dot)
                if not node.pipe.decl:
                    self.out.append("<no value>" if value is None else sprint_one(value))
            elif isinstance(node, If | With):
                self.if_or_with(node, dot)
            elif isinstance(node, Range):
                self.range(node, dot)
            elif isinstance(node, Break):
                raise _BreakLoop
            elif isinstance(node, Continue):
                raise _ContinueLoop
            else:  # pragma: no cover - the parser only produces the nodes above
                fail(f"unexpected node {type(node).__name__}", node.line)

    def if_or_with(self, node: If | With, dot: Any) -> None:
        mark = len(self.vars)
        value = self.pipe(node.pipe, dot)
        if truth(value):
            self.walk(node.body, value if isinstance(node, With) else dot)
        elif node.other is not None:
            self.walk(node.other, dot)
        del self.vars[mark:]

    def range(self, node: Range, dot: Any) -> None:
        mark = len(self.vars)
        value = self.pipe(Pipe(node.line, [], False, node.pipe.cmds), dot)
        pairs: Iterator[tuple[Any, Any]]
        if isinstance(value, Mapping):
            pairs = ((k, value[k]) for k in sorted(value))
        elif isinstance(value, list | tuple):
            pairs = enumerate(value)
        elif isinstance(value, int) and not isinstance(value, bool):
            if len(node.pipe.decl) > 1:
                fail("can't use two iteration variables when ranging over an int", node.line)
            pairs = ((n, n) for n in range(value))
        elif value is None:
            pairs = iter(())
        else:
            fail(f"range can't iterate over {go_type(value)}", node.line)
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

    def pipe(self, pipe: Pipe, dot: Any) -> Any:
        value: Any = MISSING
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
        fail(f"undefined variable {name!r}", line)

    def command(self, cmd: Command, dot: Any, final: Any) -> Any:
        first = cmd.args[0]
        if isinstance(first, Ident):
            return self.call(first, cmd.args[1:], dot, final)
        if len(cmd.args) > 1 or final is not MISSING:
            fail(f"can't give argument to non-function {_describe(first)}", first.line)
        if isinstance(first, Nil):
            fail("nil is not a command", first.line)
        return self.arg(first, dot)

    def arg(self, node: Node, dot: Any) -> Any:
        if isinstance(node, Literal):
            return node.value
        if isinstance(node, Dot):
            return dot
        if isinstance(node, Nil):
            return None
        if isinstance(node, Field):
            return self.fields(dot, node.names, node.line)
        if isinstance(node, Variable):
            return self.fields(self.lookup_var(node.name, node.line)[1], node.names, node.line)
        if isinstance(node, Chain):
            return self.fields(self.arg(node.node, dot), node.names, node.line)
        if isinstance(node, Pipe):
            mark = len(self.vars)
            value = self.pipe(node, dot)
            del self.vars[mark:]
            return value
        if isinstance(node, Ident):
            return self.call(node, [], dot, MISSING)
        fail(f"can't evaluate {type(node).__name__}", node.line)

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
                fail(f"unknown field .{name} (the data has {', '.join(map(str, value))})", line)
            if isinstance(value, GoStruct):
                fail(f"can't evaluate field {name} in type *api.Message", line)
            return None  # a missing map key is Go's nil: "<no value>" when printed
        if value is None:
            fail(f"nil pointer evaluating interface {{}}.{name}", line)
        fail(f"can't evaluate field {name} in type {go_type(value)}", line)

    def call(self, ident: Ident, args: list[Node], dot: Any, final: Any) -> Any:
        name = ident.name
        if name in ("and", "or"):
            # Go 1.18+: short-circuit, returning the deciding argument itself
            if not args and final is MISSING:
                fail(f"wrong number of args for {name}: want at least 1 got 0", ident.line)
            value: Any = None
            for node in [*args, None]:
                if node is None:
                    if final is MISSING:
                        break
                    value = final
                else:
                    value = self.arg(node, dot)
                if truth(value) != (name == "and"):
                    return value
            return value
        values = [self.arg(a, dot) for a in args]
        if final is not MISSING:
            values.append(final)
        try:
            return FUNCS[name](*values)
        except FuncError as exc:
            fail(f"error calling {name}: {exc}", ident.line)
        except TypeError:
            fail(f"wrong number of args for {name}: got {len(values)}", ident.line)


def _describe(node: Node) -> str:
    if isinstance(node, Field):
        return "." + ".".join(node.names)
    if isinstance(node, Variable):
        return node.name + "".join("." + n for n in node.names)
    if isinstance(node, Literal):
        return repr(node.value)
    return type(node).__name__.lstrip("_").lower()


def _snake(name: str) -> str:
    """``ToolCalls`` → ``tool_calls``, ``ToolCallID`` → ``tool_call_id`` (request JSON keys)."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


class GoStruct(dict[str, Any]):
    """A dict standing for a Go struct (api.Message): a missing field is an error, not nil."""
