"""Go ``text/template`` parsing: lexed items to the node tree of :mod:`.nodes`."""

from __future__ import annotations

from lifecycle.gotemplate.funcs import FUNCS
from lifecycle.gotemplate.lexer import ActionItem, LexItem, Tok
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


class Parser:
    def __init__(self, items: list[LexItem]) -> None:
        self.items = items
        self.pos = 0
        self.vars: list[str] = ["$"]
        self.range_depth = 0

    def parse(self) -> list[Node]:
        nodes, stop = self.parse_list()
        if stop is not None:
            fail(f"unexpected {{{{{stop.toks[0].value}}}}}", stop.line)
        return nodes

    def parse_list(self) -> tuple[list[Node], ActionItem | None]:
        """Nodes up to an ``{{ end }}``/``{{ else }}`` (returned) or the end of input."""
        nodes: list[Node] = []
        while self.pos < len(self.items):
            item = self.items[self.pos]
            self.pos += 1
            if isinstance(item, Text):
                nodes.append(item)
                continue
            if not item.toks:
                fail("missing value for command", item.line)
            head = item.toks[0]
            if head.kind == "keyword":
                if head.value in ("end", "else"):
                    return nodes, item
                nodes.append(self.keyword(item))
            else:
                nodes.append(Action(item.line, self.pipeline(item, 0, decl_max=1)))
        return nodes, None

    def keyword(self, item: ActionItem) -> Node:
        word = item.toks[0].value
        if word in ("if", "with", "range"):
            return self.control(word, item, 1)
        if word in ("break", "continue"):
            if len(item.toks) > 1:
                fail(f"unexpected {item.toks[1].value!r} in {word}", item.line)
            if self.range_depth == 0:
                fail(f"{{{{{word}}}}} outside {{{{range}}}}", item.line)
            return Break(item.line) if word == "break" else Continue(item.line)
        fail(
            f"{{{{{word}}}}} is not supported (named templates are not used by TEMPLATEs)",
            item.line,
        )

    def control(self, word: str, item: ActionItem, start: int) -> Node:
        mark = len(self.vars)
        pipe = self.pipeline(item, start, decl_max=2 if word == "range" else 1)
        if word == "range":
            self.range_depth += 1
        body, stop = self.parse_list()
        if word == "range":
            self.range_depth -= 1
        if stop is None:
            fail(f"unexpected EOF: {{{{{word}}}}} has no {{{{end}}}}", item.line)
        other: list[Node] | None = None
        if stop.toks[0].value == "else":
            if len(stop.toks) > 1:
                nested = stop.toks[1]
                # `{{ else if }}` / `{{ else with }}`: a nested block sharing the outer {{ end }}
                if nested.kind == "keyword" and nested.value == word and word != "range":
                    other = [self.control(word, stop, 2)]
                else:
                    fail(f"unexpected {nested.value!r} after else", stop.line)
            else:
                other, stop = self.parse_list()
                if stop is None or stop.toks[0].value != "end":
                    line = stop.line if stop is not None else item.line
                    fail(f"expected {{{{end}}}} for {{{{{word}}}}} on line {item.line}", line)
                if len(stop.toks) > 1:
                    fail("unexpected tokens after end", stop.line)
        elif len(stop.toks) > 1:
            fail("unexpected tokens after end", stop.line)
        del self.vars[mark:]
        if word == "if":
            return If(item.line, pipe, body, other)
        if word == "range":
            return Range(item.line, pipe, body, other)
        return With(item.line, pipe, body, other)

    def pipeline(self, item: ActionItem, start: int, decl_max: int) -> Pipe:
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
                fail("too many declarations in assignment", item.line)
            assign = toks[j].kind == "="
            for name in names:
                if assign and name not in self.vars:
                    fail(f"undefined variable {name!r}", item.line)
                if name == "$":
                    fail("cannot declare $", item.line)
            decl = names
            i = j + 1
            if not assign:
                self.vars.extend(names)
        cmds, i = self.commands(toks, i, item.line)
        if i != len(toks):
            fail(f"unexpected {toks[i].value!r} in command", toks[i].line)
        if not cmds:
            fail("missing value for command", item.line)
        return Pipe(item.line, decl, assign, cmds)

    def commands(self, toks: list[Tok], i: int, line: int) -> tuple[list[Command], int]:
        cmds: list[Command] = []
        while i < len(toks) and toks[i].kind != ")":
            args: list[Node] = []
            while i < len(toks) and toks[i].kind not in ("|", ")"):
                node, i = self.operand(toks, i)
                args.append(node)
            if not args:
                fail("missing value for command", toks[i].line if i < len(toks) else line)
            if cmds and not isinstance(args[0], Ident | Field | Variable | Chain | Pipe):
                fail(f"non executable command in pipeline stage {len(cmds) + 1}", args[0].line)
            cmds.append(Command(args[0].line, args))
            if i < len(toks) and toks[i].kind == "|":
                i += 1
                if i >= len(toks) or toks[i].kind in ("|", ")"):
                    fail("missing command after |", line)
        return cmds, i

    def operand(self, toks: list[Tok], i: int) -> tuple[Node, int]:
        tok = toks[i]
        node: Node
        if tok.kind == "field":
            node = Field(tok.line, (tok.value,))
        elif tok.kind == "var":
            if tok.value not in self.vars:
                fail(f"undefined variable {tok.value!r}", tok.line)
            node = Variable(tok.line, tok.value)
        elif tok.kind == "dot":
            node = Dot(tok.line)
        elif tok.kind == "nil":
            node = Nil(tok.line)
        elif tok.kind in ("string", "number", "bool"):
            node = Literal(tok.line, tok.literal)
        elif tok.kind == "ident":
            if tok.value not in FUNCS and tok.value not in ("and", "or"):
                fail(f"function {tok.value!r} not defined", tok.line)
            node = Ident(tok.line, tok.value)
        elif tok.kind == "(":
            cmds, j = self.commands(toks, i + 1, tok.line)
            if j >= len(toks) or toks[j].kind != ")":
                fail("unclosed left paren", tok.line)
            if not cmds:
                fail("missing value for command", tok.line)
            node = Pipe(tok.line, [], False, cmds)
            i = j
        else:
            fail(f"unexpected {tok.value!r} in operand", tok.line)
        i += 1
        # fields glued on without a space extend the operand: .A.B, $x.A, (pipe).A
        chain: list[str] = []
        while i < len(toks) and toks[i].kind == "field" and not toks[i].spaced:
            chain.append(toks[i].value)
            i += 1
        if chain:
            if isinstance(node, Field):
                node = Field(node.line, (*node.names, *chain))
            elif isinstance(node, Variable):
                node = Variable(node.line, node.name, tuple(chain))
            elif isinstance(node, Pipe | Dot):
                node = Chain(node.line, node, tuple(chain))
            else:
                fail("unexpected . after term", node.line)
        return node, i
