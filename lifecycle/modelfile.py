"""Ollama Modelfile: parse, validate, serialise canonically, digest.

A Modelfile is the prompt contract of a model (template, system prompt, sampling parameters,
few-shot messages), so the tool pins it by content. Parsing follows Ollama's own reader
(``parser/parser.go`` and ``api.FormatParams``) rule for rule, so a Modelfile means here what
it means to ``ollama create``; every error names the file and the 1-based line.

Syntax, as Ollama reads it:

* One instruction per line: a name of ASCII letters (any case), one space or tab, a value.
  ``PARAMETER`` and ``MESSAGE`` take a word (parameter name / role) and one space first.
* ``#`` starts a comment only as the first non-blank character of a line; elsewhere it is
  text (``FROM llama3 # x`` names the model ``llama3 # x``).
* A value ends at the first line break at which it is complete: a value starting with
  ``\"\"\"`` is complete once it ends with ``\"\"\"``, one starting with ``"`` once it ends with
  ``"``, any other value at once. The quotes are then removed. There are no escapes;
  backslashes are literal. Surrounding spaces and tabs are stripped.
* Characters that are neither printable (Unicode L, M, N, P, S or the ASCII space) nor tab or
  line breaks are dropped from values, as Ollama does; :attr:`Modelfile.warnings` notes it.

The canonical text written by :func:`serialise` has one instruction per line in this order:
FROM (in order), ADAPTER, TEMPLATE, SYSTEM, PARAMETER (sorted by name, ``stop`` one line per
value in order), LICENSE, MESSAGE (in order), REQUIRES. It is the order of
``ollama show --modelfile`` (which leaves parameters unsorted), so the two diff cleanly.
Values are quoted as Ollama quotes them; ``parse(serialise(m)) == m`` holds for every
Modelfile :func:`parse` can return, and :func:`serialise` raises :class:`ModelfileError` for
the few values the syntax cannot express (non-printable characters; ``\"\"\"`` right before
a line break inside a value that also contains ``"``).
"""

from __future__ import annotations

import hashlib
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lifecycle.errors import ModelfileError
from lifecycle.fsutil import OutsideRoot, confine
from lifecycle.tags import has_scheme

ParameterValue = int | float | bool | str | list[str]

INT_PARAMETERS = frozenset(
    {
        "num_keep",
        "seed",
        "num_predict",
        "top_k",
        "repeat_last_n",
        "num_ctx",
        "num_batch",
        "num_gpu",
        "main_gpu",
        "num_thread",
    }
)
FLOAT_PARAMETERS = frozenset(
    {
        "top_p",
        "min_p",
        "typical_p",
        "temperature",
        "repeat_penalty",
        "presence_penalty",
        "frequency_penalty",
    }
)
BOOL_PARAMETERS = frozenset({"use_mmap"})
LIST_PARAMETERS = frozenset({"stop"})
# Not Ollama's: how an embedding model pools token states (llama.cpp's --pooling), for a GGUF
# whose metadata names none (lifecycle.engines.embedding).
CHOICE_PARAMETERS = {"pooling": ("mean", "cls", "last")}
PARAMETERS = (
    INT_PARAMETERS | FLOAT_PARAMETERS | BOOL_PARAMETERS | LIST_PARAMETERS | set(CHOICE_PARAMETERS)
)
# Ollama prints a warning for these and drops them (parser.deprecatedParameters).
DEPRECATED_PARAMETERS = frozenset(
    {
        "penalize_newline",
        "low_vram",
        "f16_kv",
        "logits_all",
        "vocab_only",
        "use_mlock",
        "mirostat",
        "mirostat_tau",
        "mirostat_eta",
    }
)
ROLES = ("system", "user", "assistant")
INSTRUCTIONS = (
    "from",
    "adapter",
    "template",
    "system",
    "parameter",
    "message",
    "license",
    "requires",
)
# Ollama accepts these too; this tool does not model them yet, so they are refused clearly.
UNSUPPORTED_INSTRUCTIONS = ("draft", "renderer", "parser")
MODEL_FILE_SUFFIXES = (".gguf", ".safetensors", ".bin")


@dataclass(frozen=True)
class Message:
    """A MESSAGE instruction: one turn of the few-shot history."""

    role: str
    content: str


@dataclass
class Modelfile:
    """A parsed Modelfile: what Ollama's ``ollama create`` would build from it."""

    from_: list[str]
    parameters: dict[str, ParameterValue] = field(default_factory=dict)
    template: str | None = None
    system: str | None = None
    adapters: list[str] = field(default_factory=list)
    license: list[str] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    requires: str | None = None
    # Not content: notes for the user ("line 7: PARAMETER mirostat is deprecated ...").
    warnings: list[str] = field(default_factory=list, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form; ints stay ints, floats are floats, ``stop`` is a list."""
        return {
            "from": list(self.from_),
            "parameters": {
                name: _normalise_parameter(name, value, None)
                for name, value in sorted(self.parameters.items())
            },
            "template": self.template,
            "system": self.system,
            "adapters": list(self.adapters),
            "license": list(self.license),
            "messages": [{"role": m.role, "content": m.content} for m in self.messages],
            "requires": self.requires,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Modelfile:
        """Inverse of :meth:`to_dict`; raises :class:`ModelfileError` naming the bad field."""
        if not isinstance(d, dict):
            raise ModelfileError("a Modelfile must be a mapping")
        unknown = set(d) - {"from", "parameters", "template", "system", "adapters"}
        unknown -= {"license", "messages", "requires"}
        if unknown:
            raise ModelfileError("unknown key", field=sorted(unknown)[0])
        params = d.get("parameters", {})
        if not isinstance(params, dict):
            raise ModelfileError("must be a mapping", field="parameters")
        messages = d.get("messages", [])
        if not isinstance(messages, list):
            raise ModelfileError("must be a list", field="messages")
        parsed: list[Message] = []
        for i, msg in enumerate(messages):
            if not isinstance(msg, dict) or set(msg) != {"role", "content"}:
                raise ModelfileError("must be {role, content}", field=f"messages[{i}]")
            role, content = msg["role"], msg["content"]
            if role not in ROLES:
                raise ModelfileError(_role_error(role), field=f"messages[{i}].role")
            _require_str(content, f"messages[{i}].content")
            parsed.append(Message(role, content))
        requires = d.get("requires")
        if requires is not None:
            requires = _check_requires(_require_str(requires, "requires"), None, None)
        m = cls(
            from_=_str_list(d.get("from"), "from"),
            parameters={
                _require_str(k, "parameters"): _normalise_parameter(k, v, f"parameters.{k}")
                for k, v in params.items()
            },
            template=_optional_str(d.get("template"), "template"),
            system=_optional_str(d.get("system"), "system"),
            adapters=_str_list(d.get("adapters", []), "adapters"),
            license=_str_list(d.get("license", []), "license"),
            messages=parsed,
            requires=requires,
        )
        if not m.from_:
            raise ModelfileError("needs at least one model", field="from")
        return m


def parse(text: str, *, path: str | Path | None = None) -> Modelfile:
    """Parse Modelfile text. Errors are :class:`ModelfileError` naming ``path`` and the line."""
    m = Modelfile(from_=[])
    first_line: int | None = None
    seen: dict[str, int] = {}  # single-valued instruction/parameter -> line it was last set
    for ins in _scan(text, path):
        first_line = first_line or ins.line
        kw, value, line = ins.keyword, ins.value, ins.line
        if ins.dropped:
            m.warnings.append(
                f"line {line}: non-printable characters dropped from the value (as Ollama does)"
            )
        if kw in ("from", "adapter") and value == "":
            raise ModelfileError(f"{kw.upper()} needs a model name or path", path=path, line=line)
        if kw == "from":
            m.from_.append(value)
        elif kw == "adapter":
            if m.adapters:
                m.warnings.append(
                    f"line {line}: several ADAPTER lines; `ollama create` keeps only the last"
                )
            m.adapters.append(value)
        elif kw == "license":
            m.license.append(value)
        elif kw == "message":
            assert ins.word is not None  # the scanner always reads a role for MESSAGE
            m.messages.append(Message(ins.word, value))
        elif kw == "parameter":
            assert ins.word is not None
            _apply_parameter(m, ins.word, value, line, path, seen)
        else:  # template, system, requires: the last one wins, as in Ollama
            _note_override(m, kw.upper(), line, seen)
            if kw == "template":
                m.template = value
            elif kw == "system":
                m.system = value
            else:
                m.requires = _check_requires(value, path, line)
    if not m.from_:
        raise ModelfileError(
            "no FROM line: a Modelfile must name its model (FROM <model or path>)",
            path=path,
            line=first_line or 1,
        )
    return m


def parse_file(path: str | Path) -> Modelfile:
    """Read and parse a Modelfile: UTF-8 (BOM optional) or UTF-16 LE/BE with a BOM."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ModelfileError(f"cannot read Modelfile: {exc.strerror or exc}", path=path) from exc
    return parse(_decode(data, path), path=path)


def serialise(m: Modelfile) -> str:
    """The canonical Modelfile text (order and quoting in the module docstring)."""
    if not m.from_:
        raise ModelfileError("needs at least one model", field="from")
    lines = [f"FROM {_quote(_require_path(v, 'from'), 'from')}" for v in m.from_]
    lines += [f"ADAPTER {_quote(_require_path(v, 'adapters'), 'adapters')}" for v in m.adapters]
    if m.template is not None:
        lines.append(f"TEMPLATE {_quote(_require_str(m.template, 'template'), 'template')}")
    if m.system is not None:
        lines.append(f"SYSTEM {_quote(_require_str(m.system, 'system'), 'system')}")
    for name in sorted(m.parameters):
        value = _normalise_parameter(name, m.parameters[name], f"parameters.{name}")
        for item in value if isinstance(value, list) else [value]:
            lines.append(f"PARAMETER {name} {_quote(_render_scalar(item), f'parameters.{name}')}")
    lines += [f"LICENSE {_quote(_require_str(v, 'license'), 'license')}" for v in m.license]
    for i, msg in enumerate(m.messages):
        if msg.role not in ROLES:
            raise ModelfileError(_role_error(msg.role), field=f"messages[{i}].role")
        content = _quote(_require_str(msg.content, f"messages[{i}]"), f"messages[{i}]")
        lines.append(f"MESSAGE {msg.role} {content}")
    if m.requires is not None:
        requires = _check_requires(_require_str(m.requires, "requires"), None, None)
        lines.append(f"REQUIRES {_quote(requires, 'requires')}")
    return "".join(line + "\n" for line in lines)


def digest(m: Modelfile) -> str:
    """``sha256:<hex>`` of the canonical text: equal Modelfiles have equal digests."""
    return "sha256:" + hashlib.sha256(serialise(m).encode("utf-8")).hexdigest()


def resolve_local_path(value: str, modelfile_dir: Path, workspace_root: Path) -> Path | None:
    """The file a FROM/ADAPTER value names, or None when the value is a model tag.

    Ollama treats a FROM value as a path exactly when that path exists (after expanding ``~``
    and joining relative paths to the Modelfile's directory). A path that is missing should
    read as "file not found", not as a tag, so values that look like paths count too: an
    absolute path, ``./``, ``../``, ``~``, or a ``.gguf``/``.safetensors``/``.bin`` suffix.
    Values with one of the store's schemes (``pypi:``, ``hf:``, ``ollama:``, ``oci://``,
    ``file:``) are always tags. The path is resolved through symlinks and must stay inside
    ``workspace_root``; otherwise this raises :class:`ModelfileError`.
    """
    if has_scheme(value):
        return None
    try:
        candidate = Path(value).expanduser() if value.startswith("~") else Path(value)
    except RuntimeError as exc:  # unknown user in ~user, or no home directory
        raise ModelfileError(f"cannot expand {value!r}: {exc}") from exc
    if not candidate.is_absolute():
        candidate = Path(modelfile_dir) / candidate
    looks_like_path = value.startswith(("/", "./", "../", "~"))
    looks_like_path |= value.lower().endswith(MODEL_FILE_SUFFIXES)
    if not looks_like_path and not _exists(candidate):
        return None
    try:
        return confine(candidate, Path(workspace_root))
    except OutsideRoot as exc:
        raise ModelfileError(
            f"path {value!r} resolves to {exc.resolved}, outside the workspace {exc.root}"
        ) from None
    except (OSError, RuntimeError, ValueError) as exc:  # RuntimeError: a symlink loop
        raise ModelfileError(f"cannot resolve path {value!r}: {exc}") from exc


# --- scanning ---------------------------------------------------------------------------

_WS = " \t\r\n"  # what Go's strings.TrimSpace can meet in a value (other spaces are dropped)
_LINE_BREAK = re.compile(r"[\r\n]")
# What an instruction name looks like (a typo such as FORM is worth quoting back; a line of
# another kind of file, say ``AWS_SECRET_ACCESS_KEY=...``, is not).
_KEYWORD_LIKE = re.compile(r"[A-Za-z]{1,16}")
_PARAM_NAME = re.compile(r"[A-Za-z0-9_]+")
_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_NON_FINITE = re.compile(r"[+-]?(?:inf|infinity|nan)", re.IGNORECASE)
_BOOLS = {"1": True, "t": True, "T": True, "TRUE": True, "true": True, "True": True}
_BOOLS |= {"0": False, "f": False, "F": False, "FALSE": False, "false": False, "False": False}
_INT64 = (-(2**63), 2**63 - 1)
_SEMVER = re.compile(
    r"v(?:0|[1-9][0-9]*)"
    r"(?:\.(?:0|[1-9][0-9]*)"
    r"(?:\.(?:0|[1-9][0-9]*)"
    r"(?:-(?:0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*)"
    r"(?:\.(?:0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*))*)?"
    r"(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?)?)?"
)
# A value cannot be quoted if a closing quote would end it early at one of its line breaks.
_ENDS_LINE_AFTER_TRIPLE = re.compile(r'"""[ \t\r\n]*[\r\n]')


@dataclass(frozen=True)
class _Instruction:
    line: int
    keyword: str  # lower case
    word: str | None  # PARAMETER name or MESSAGE role
    value: str
    dropped: bool  # non-printable characters were removed from the value


def _scan(text: str, path: str | Path | None) -> list[_Instruction]:
    """Split text into instructions, tracking 1-based lines (CRLF counts once)."""
    out: list[_Instruction] = []
    i, line, n = 0, 1, len(text)
    while i < n:
        c = text[i]
        if c in "\r\n":
            i += 2 if text.startswith("\r\n", i) else 1
            line += 1
        elif c in " \t":
            i += 1
        elif c == "#":
            found = _LINE_BREAK.search(text, i)
            i = found.start() if found else n
        else:
            start = line
            word, i = _word(text, i)
            kw = word.lower()
            if not (word.isascii() and word.isalpha()) or kw not in INSTRUCTIONS:
                expected = ", ".join(s.upper() for s in INSTRUCTIONS)
                if kw in UNSUPPORTED_INSTRUCTIONS:
                    msg = f"{word} is an Ollama instruction this tool does not support"
                elif _KEYWORD_LIKE.fullmatch(word):
                    msg = f"unknown instruction {word!r}: expected one of {expected}"
                else:
                    # Not even shaped like an instruction: the file may not be a Modelfile
                    # at all (a .env named by mistake), so none of its text is repeated.
                    msg = f"not a Modelfile instruction (expected one of {expected})"
                raise ModelfileError(msg, path=path, line=start)
            what = {"parameter": "a parameter name and ", "message": "a role and "}.get(kw, "")
            i = _separator(text, i, f"{word.upper()} needs {what}a value", path, start)
            sub = None
            if kw in ("parameter", "message"):
                sub, i = _word(text, i)
                what = "a parameter name" if kw == "parameter" else "a role"
                if not sub and (i >= n or text[i] in "\r\n"):
                    msg = f"{kw.upper()} needs {what} and a value"
                    raise ModelfileError(msg, path=path, line=start)
                if not sub:
                    # Ollama would read an empty name here and reject it later.
                    msg = f"{kw.upper()} must be followed by one space and {what}"
                    raise ModelfileError(msg, path=path, line=start)
                if kw == "parameter" and not _PARAM_NAME.fullmatch(sub):
                    msg = f"invalid parameter name {sub!r}"
                    raise ModelfileError(msg, path=path, line=start)
                if kw == "message" and sub not in ROLES:
                    raise ModelfileError(_role_error(sub), path=path, line=start)
                i = _separator(text, i, f"{kw.upper()} {sub} needs a value", path, start)
            value, dropped, i, line = _read_value(text, i, line, path)
            out.append(_Instruction(start, kw, sub, value, dropped))
    return out


def _word(text: str, i: int) -> tuple[str, int]:
    """The run of non-blank characters at ``i`` and the index after it."""
    j = i
    while j < len(text) and text[j] not in _WS:
        j += 1
    return text[i:j], j


def _separator(text: str, i: int, missing: str, path: str | Path | None, line: int) -> int:
    """Skip the single space or tab after a word; a line break or EOF there is an error."""
    if i >= len(text) or text[i] in "\r\n":
        raise ModelfileError(missing, path=path, line=line)
    return i + 1


def _read_value(
    text: str, i: int, line: int, path: str | Path | None
) -> tuple[str, bool, int, int]:
    """Read a value starting at ``i``; returns (value, dropped, next index, current line)."""
    start, n = line, len(text)
    acc = ""  # the value so far, left-stripped, non-printables removed
    dropped = False
    while True:
        found = _LINE_BREAK.search(text, i)
        end = found.start() if found else n
        segment, lost = _printable(text[i:end])
        dropped |= lost
        acc = (acc + segment) if acc else segment.lstrip(" \t")
        if end == n:
            i = n
            break
        if _complete(acc):
            i = end  # the line break is left for the caller to count
            break
        # Still inside quotes: the line break belongs to the value (CR LF kept as written).
        brk = "\r\n" if text.startswith("\r\n", end) else text[end]
        acc += brk
        i = end + len(brk)
        line += 1
    acc = acc.rstrip(_WS)
    if not _complete(acc):
        quote = '"""' if acc.startswith('"""') else '"'
        raise ModelfileError(
            f"unterminated {quote} quote: no line ends with the closing {quote} "
            "(text after a closing quote keeps the value open)",
            path=path,
            line=start,
        )
    return _unquote(acc), dropped, i, line


def _printable(segment: str) -> tuple[str, bool]:
    """Drop what Go's strconv.IsPrint rejects, keeping tabs (Ollama keeps them too)."""
    if segment.isprintable():
        return segment, False
    kept = "".join(ch for ch in segment if ch == "\t" or ch.isprintable())
    return kept, len(kept) != len(segment)


def _complete(acc: str) -> bool:
    """Whether a left-stripped value would end at the next line break (Ollama's unquote ok)."""
    end = len(acc)
    while end and acc[end - 1] in _WS:
        end -= 1
    if acc.startswith('"""'):
        return end >= 6 and acc.endswith('"""', 0, end)
    if acc.startswith('"'):
        return end >= 2 and acc[end - 1] == '"'
    return True


def _unquote(s: str) -> str:
    if s.startswith('"""'):
        return s[3:-3]
    if s.startswith('"'):
        return s[1:-1]
    return s


# --- semantics --------------------------------------------------------------------------


def _apply_parameter(
    m: Modelfile,
    name: str,
    raw: str,
    line: int,
    path: str | Path | None,
    seen: dict[str, int],
) -> None:
    if name in DEPRECATED_PARAMETERS:  # checked first, as Ollama does: the value is not read
        m.warnings.append(f"line {line}: PARAMETER {name} is deprecated; Ollama ignores it")
        return
    if name not in PARAMETERS:
        raise ModelfileError(f"unknown parameter {name!r}", path=path, line=line)
    if raw == "":
        raise ModelfileError(f"PARAMETER {name} needs a value", path=path, line=line)
    if name in LIST_PARAMETERS:
        stops = m.parameters.setdefault(name, [])
        assert isinstance(stops, list)
        stops.append(raw)
        return
    try:
        value = _convert(name, raw)
    except ValueError as exc:
        raise ModelfileError(f"PARAMETER {name}: {exc}", path=path, line=line) from None
    _note_override(m, f"PARAMETER {name}", line, seen)
    m.parameters[name] = value


def _convert(name: str, raw: str) -> int | float | bool | str:
    """Type a scalar parameter like Go's ParseInt(…, 10, 64) / ParseFloat(…, 32) / ParseBool."""
    if name in CHOICE_PARAMETERS:
        if raw not in CHOICE_PARAMETERS[name]:
            raise ValueError(f"expected one of {', '.join(CHOICE_PARAMETERS[name])}, got {raw!r}")
        return raw
    if name in INT_PARAMETERS:
        if not _INT.fullmatch(raw):
            raise ValueError(f"expected an integer, got {raw!r}")
        number = int(raw)
        if not _INT64[0] <= number <= _INT64[1]:
            raise ValueError(f"{raw} is out of range for a 64-bit integer")
        return number
    if name in FLOAT_PARAMETERS:
        if _NON_FINITE.fullmatch(raw):
            raise ValueError(f"expected a finite number, got {raw!r}")
        if not _FLOAT.fullmatch(raw):
            raise ValueError(f"expected a number, got {raw!r}")
        return _check_float32(float(raw), raw)
    if raw not in _BOOLS:
        raise ValueError(f"expected true or false, got {raw!r}")
    return _BOOLS[raw]


def _check_float32(value: float, shown: str) -> float:
    """Ollama stores float parameters as float32; reject what would overflow it."""
    try:
        struct.pack("<f", value)
    except OverflowError:
        raise ValueError(f"{shown} is out of range for a 32-bit float") from None
    return value


def _note_override(m: Modelfile, what: str, line: int, seen: dict[str, int]) -> None:
    if what in seen:
        m.warnings.append(f"line {line}: {what} overrides the one on line {seen[what]}")
    seen[what] = line


def _check_requires(value: str, path: str | Path | None, line: int | None) -> str:
    """Ollama's REQUIRES rule: a semver, ``v`` optional; stored without the ``v``."""
    version = value if value.startswith("v") else "v" + value
    if not _SEMVER.fullmatch(version):
        msg = f"REQUIRES must be a valid semver (e.g. 0.14.0), got {value!r}"
        raise ModelfileError(msg, path=path, line=line, field=None if line else "requires")
    return version[1:]


def _role_error(role: object) -> str:
    return f"MESSAGE role must be one of system, user, assistant, got {role!r}"


# --- serialising ------------------------------------------------------------------------


def _quote(value: str, what: str) -> str:
    """Write a value so that the reader gives it back unchanged (Ollama's quoting rules)."""
    for ch in value:
        if not (ch.isprintable() or ch in "\t\r\n"):
            raise ModelfileError(
                f"cannot write U+{ord(ch):04X}: Ollama drops non-printable characters",
                field=what,
            )
    plain = (
        value != ""
        and value[0] not in ' \t"'
        and value[-1] not in " \t"
        and "\n" not in value
        and "\r" not in value
    )
    if plain:
        return value
    if '"' not in value:
        return f'"{value}"'
    # With a quote inside, only the triple form can work, unless a line inside the value
    # ends with """: no quoting can express that (the reader would stop there).
    if _ENDS_LINE_AFTER_TRIPLE.search(value):
        raise ModelfileError(
            'cannot write a value in which a line ends with """: the Modelfile syntax has '
            "no escape for it",
            field=what,
        )
    return f'"""{value}"""'


def _render_scalar(value: str | int | float | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)  # shortest text that reads back as the same float
    return str(value)


def _normalise_parameter(name: str, value: Any, where: str | None) -> ParameterValue:
    """Check a parameter's type; ints for float parameters become floats."""
    fld = where or f"parameters.{name}"
    if name not in PARAMETERS:
        raise ModelfileError(f"unknown parameter {name!r}", field=fld)
    if name in LIST_PARAMETERS:
        if not isinstance(value, list) or not value:
            raise ModelfileError("must be a non-empty list of strings", field=fld)
        for item in value:
            if not isinstance(item, str) or item == "":
                raise ModelfileError("must be a list of non-empty strings", field=fld)
        return list(value)
    if name in BOOL_PARAMETERS:
        if not isinstance(value, bool):
            raise ModelfileError("must be true or false", field=fld)
        return value
    if name in CHOICE_PARAMETERS:
        if value not in CHOICE_PARAMETERS[name]:
            raise ModelfileError(f"must be one of {', '.join(CHOICE_PARAMETERS[name])}", field=fld)
        return str(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ModelfileError("must be a number", field=fld)
    if name in INT_PARAMETERS:
        if not isinstance(value, int) or not _INT64[0] <= value <= _INT64[1]:
            raise ModelfileError("must be a 64-bit integer", field=fld)
        return value
    result = float(value)
    if result != result or result in (float("inf"), float("-inf")):
        raise ModelfileError("must be a finite number", field=fld)
    try:
        return _check_float32(result, repr(result))
    except ValueError as exc:
        raise ModelfileError(str(exc), field=fld) from None


# --- small helpers ----------------------------------------------------------------------


def _decode(data: bytes, path: str | Path) -> str:
    """Decode like Ollama's BOMOverride reader, but refuse invalid bytes instead of U+FFFD."""
    for bom, codec in (
        (b"\xef\xbb\xbf", "utf-8"),
        (b"\xff\xfe", "utf-16-le"),
        (b"\xfe\xff", "utf-16-be"),
    ):
        if data.startswith(bom):
            body, encoding = data[len(bom) :], codec
            break
    else:
        body, encoding = data, "utf-8"
    try:
        text = body.decode(encoding)
    except UnicodeDecodeError as exc:
        line = body[: exc.start].count(b"\n") + 1 if encoding == "utf-8" else None
        raise ModelfileError(
            f"not valid {encoding.upper()} (byte {exc.start}): a Modelfile must be UTF-8 "
            "or UTF-16 with a byte-order mark",
            path=path,
            line=line,
        ) from None
    if encoding == "utf-8" and "\x00" in text:
        raise ModelfileError(
            "contains NUL bytes: UTF-16 without a byte-order mark? Save it as UTF-8",
            path=path,
        )
    return text


def _exists(p: Path) -> bool:
    try:
        return p.exists()
    except (OSError, ValueError):  # e.g. a name too long or with a NUL byte
        return False


def _require_str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ModelfileError("must be a string", field=what)
    return value


def _require_path(value: Any, what: str) -> str:
    if _require_str(value, what) == "":
        raise ModelfileError("must not be empty", field=what)
    return value


def _optional_str(value: Any, what: str) -> str | None:
    return None if value is None else _require_str(value, what)


def _str_list(value: Any, what: str) -> list[str]:
    if not isinstance(value, list):
        raise ModelfileError("must be a list of strings", field=what)
    return [_require_str(v, what) for v in value]
