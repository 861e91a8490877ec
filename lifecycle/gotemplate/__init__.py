"""Go ``text/template``, the subset Modelfile TEMPLATEs use: lexer -> parser -> evaluator.

:func:`parse_go_template` / :func:`render_go` are the entry points; the stages live in
:mod:`.lexer`, :mod:`.parser` (node tree in :mod:`.nodes`), :mod:`.exec` and :mod:`.funcs`
(builtins and Ollama's extra functions). Ollama's prompt assembly on top of it is
:mod:`lifecycle.templates`. Every failure is a :class:`~lifecycle.errors.TemplateError`
naming the template line.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lifecycle.gotemplate.exec import render_nodes
from lifecycle.gotemplate.lexer import lex
from lifecycle.gotemplate.nodes import Node, ollama_vars, top_level_fields
from lifecycle.gotemplate.parser import Parser


def parse_go_template(text: str) -> GoTemplate:
    """Parse a Go ``text/template``; syntax errors raise :class:`TemplateError` with the line."""
    items = lex(text)
    parser = Parser(items)
    return GoTemplate(text, parser.parse())


def render_go(text: str, data: Mapping[str, Any]) -> str:
    """Parse and execute ``text`` with ``data`` as dot (and ``$``)."""
    return parse_go_template(text).render(data)


class GoTemplate:
    """A parsed Go template: ``render(data)``, plus what it references."""

    def __init__(self, source: str, nodes: list[Node]) -> None:
        self.source = source
        self.nodes = nodes
        self._name_lines = top_level_fields(nodes)

    @property
    def names(self) -> set[str]:
        """Top-level fields the template reads (``.X`` where dot is the data, and ``$.X``)."""
        return set(self._name_lines)

    @property
    def uses_messages(self) -> bool:
        """Ollama's test for the ``.Messages`` path (template.go Execute: ``Vars()`` contains
        "messages" or "document", case-insensitively, anywhere in the tree)."""
        ids = ollama_vars(self.nodes)
        return "messages" in ids or "document" in ids

    def name_line(self, name: str) -> int:
        """Line of the first reference to top-level field ``name``."""
        return self._name_lines[name]

    def render(self, data: Mapping[str, Any]) -> str:
        return render_nodes(self.nodes, data)
