"""The parse tree of a Go template: one dataclass per node, and walks over it.

Also :func:`fail`, the one way every stage reports a template error with its line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NoReturn

from lifecycle.errors import TemplateError


@dataclass
class Text:
    line: int
    text: str


@dataclass
class Field:
    line: int
    names: tuple[str, ...]


@dataclass
class Variable:
    line: int
    name: str
    names: tuple[str, ...] = ()


@dataclass
class Dot:
    line: int


@dataclass
class Nil:
    line: int


@dataclass
class Ident:
    line: int
    name: str


@dataclass
class Literal:
    line: int
    value: str | int | float | bool


@dataclass
class Chain:
    line: int
    node: Node
    names: tuple[str, ...]


@dataclass
class Command:
    line: int
    args: list[Node]


@dataclass
class Pipe:
    line: int
    decl: list[str]
    assign: bool
    cmds: list[Command]


@dataclass
class Action:
    line: int
    pipe: Pipe


@dataclass
class If:
    line: int
    pipe: Pipe
    body: list[Node]
    other: list[Node] | None


@dataclass
class Range:
    line: int
    pipe: Pipe
    body: list[Node]
    other: list[Node] | None


@dataclass
class With:
    line: int
    pipe: Pipe
    body: list[Node]
    other: list[Node] | None


@dataclass
class Break:
    line: int


@dataclass
class Continue:
    line: int


Node = (
    Text
    | Field
    | Variable
    | Dot
    | Nil
    | Ident
    | Literal
    | Chain
    | Command
    | Pipe
    | Action
    | If
    | Range
    | With
    | Break
    | Continue
)


def ollama_vars(nodes: list[Node]) -> set[str]:
    """template.go Identifiers, lower-cased: field and variable idents in actions, branch
    pipelines and nested parenthesised pipelines (not chains, not declarations)."""
    found: set[str] = set()

    def visit(node: object) -> None:
        if isinstance(node, list):
            for n in node:
                visit(n)
        elif isinstance(node, Action):
            visit(node.pipe)
        elif isinstance(node, If | Range | With):
            visit(node.pipe)
            visit(node.body)
            if node.other is not None:
                visit(node.other)
        elif isinstance(node, Pipe):
            for cmd in node.cmds:
                visit(cmd.args)
        elif isinstance(node, Field):
            found.update(n.lower() for n in node.names)
        elif isinstance(node, Variable):
            found.update(n.lower() for n in (node.name, *node.names))

    visit(nodes)
    return found


def top_level_fields(nodes: list[Node]) -> dict[str, int]:
    """Fields read from the data itself, each with its first line: ``.X`` while dot is still
    the data (outside range/with bodies) and ``$.X`` anywhere."""
    found: dict[str, int] = {}

    def visit(node: object, root: bool) -> None:
        if isinstance(node, list):
            for n in node:
                visit(n, root)
        elif isinstance(node, Action):
            visit(node.pipe, root)
        elif isinstance(node, If):
            visit([node.pipe, node.body, node.other or []], root)
        elif isinstance(node, Range | With):
            visit(node.pipe, root)
            visit(node.body, False)
            visit(node.other or [], root)
        elif isinstance(node, Pipe):
            for cmd in node.cmds:
                visit(cmd.args, root)
        elif isinstance(node, Chain):
            visit(node.node, root)
        elif isinstance(node, Field) and root:
            found.setdefault(node.names[0], node.line)
        elif isinstance(node, Variable) and node.name == "$" and node.names:
            found.setdefault(node.names[0], node.line)  # `$.X` is the data wherever it is

    visit(nodes, True)
    return found


def fail(message: str, line: int | None) -> NoReturn:
    raise TemplateError(message, line=line or None)
