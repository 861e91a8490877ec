"""Go template values and functions: truth, fmt-style printing, comparisons, builtins,
and Ollama's extra functions (``json``, ``currentDate``, ``toTypeScriptType``, ...)."""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

# An argument not passed (Go's missing arguments print as %!v(MISSING)).
MISSING: Any = object()


class FuncError(Exception):
    """A template function rejected its arguments (reported with the calling line)."""


def truth(value: Any) -> bool:
    """Go's truth: false, 0, nil and empty strings/slices/maps are false; the rest is true."""
    if value is None or value is MISSING:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value != 0
    if isinstance(value, str | list | tuple | Mapping):
        return len(value) > 0
    return True


def go_type(value: Any) -> str:
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


def sprint_one(value: Any) -> str:
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
        raise FuncError(f"json: {exc}") from exc
    for raw, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(raw, esc)
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def _sprint(*args: Any) -> str:
    """fmt.Sprint: a space between operands when neither is a string."""
    out: list[str] = []
    for i, arg in enumerate(args):
        if i > 0 and not isinstance(arg, str) and not isinstance(args[i - 1], str):
            out.append(" ")
        out.append(sprint_one(arg))
    return "".join(out)


def _sprintln(*args: Any) -> str:
    return " ".join(sprint_one(a) for a in args) + "\n"


_VERB = re.compile(r"%([-+# 0]*)(\d+|\*)?(?:\.(\d+|\*)?)?([a-zA-Z%])")


def _sprintf(fmt: Any = MISSING, *args: Any) -> str:
    """fmt.Sprintf for the common verbs: %s %v %d %q %t %f %e %g %x %X %c %%."""
    if not isinstance(fmt, str):
        raise FuncError("printf needs a format string")
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
        extra = ", ".join(f"{go_type(a)}={sprint_one(a)}" for a in rest)
        out.append(f"%!(EXTRA {extra})")
    return "".join(out)


def _format_verb(arg: Any, flags: str, width: str | None, prec: str | None, verb: str) -> str:
    is_int = isinstance(arg, int) and not isinstance(arg, bool)
    spec_prec = f".{prec}" if prec is not None else ""
    if verb in "sv":
        text = sprint_one(arg)
        if prec is not None and verb == "s":
            text = text[: int(prec)]
    elif verb == "q":
        text = json.dumps(arg if isinstance(arg, str) else sprint_one(arg), ensure_ascii=False)
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
        return f"%!{verb}({go_type(arg)}={sprint_one(arg)})"
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


def _eq(arg1: Any = MISSING, *others: Any) -> bool:
    """Go's eq: arg1 equal to any of the others; mixed basic kinds are an error."""
    if arg1 is MISSING or not others:
        raise FuncError("missing argument for comparison")
    k1 = _kind(arg1)
    for other in others:
        k2 = _kind(other)
        if k1 != k2:
            if k1 != "invalid" and k2 != "invalid":
                raise FuncError("incompatible types for comparison")
            continue
        containers = list | tuple | Mapping
        if k1 == "other" and (isinstance(arg1, containers) or isinstance(other, containers)):
            raise FuncError(f"non-comparable type {go_type(arg1)}")
        if arg1 == other:
            return True
    return False


def _ne(arg1: Any, arg2: Any) -> bool:
    return not _eq(arg1, arg2)


def _ordered(arg1: Any, arg2: Any) -> tuple[Any, Any]:
    k1, k2 = _kind(arg1), _kind(arg2)
    if k1 not in ("int", "float", "string") or k2 not in ("int", "float", "string"):
        raise FuncError("invalid type for comparison")
    if k1 != k2:
        raise FuncError("incompatible types for comparison")
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
    return not truth(value)


def _len(value: Any) -> int:
    if isinstance(value, str):
        return len(value.encode())  # Go's len counts bytes
    if isinstance(value, list | tuple | Mapping):
        return len(value)
    raise FuncError(f"len of type {go_type(value)}")


def _index(item: Any, *indices: Any) -> Any:
    for idx in indices:
        if isinstance(item, Mapping):
            item = item.get(idx)
        elif isinstance(item, list | tuple | str):
            seq: Sequence[Any] = item.encode() if isinstance(item, str) else item
            if not isinstance(idx, int) or isinstance(idx, bool):
                raise FuncError(f"cannot index slice/array with type {go_type(idx)}")
            if not 0 <= idx < len(seq):
                raise FuncError(f"index out of range: {idx}")
            item = seq[idx]
        elif item is None:
            raise FuncError("index of untyped nil")
        else:
            raise FuncError(f"can't index item of type {go_type(item)}")
    return item


def _slice(item: Any, *indices: Any) -> Any:
    if len(indices) > 3:
        raise FuncError(f"too many slice indexes: {len(indices)}")
    if isinstance(item, str) and len(indices) == 3:
        raise FuncError("cannot 3-index slice a string")
    if not isinstance(item, list | tuple | str):
        raise FuncError(f"can't slice item of type {go_type(item)}")
    seq: Sequence[Any] = item.encode() if isinstance(item, str) else item
    if any(not isinstance(i, int) or isinstance(i, bool) for i in indices):
        raise FuncError("slice indexes must be integers")
    bounds = list(indices)
    if len(bounds) < 1:
        bounds.append(0)
    if len(bounds) < 2:
        bounds.append(len(seq))
    lo, hi = bounds[0], bounds[1]
    if not 0 <= lo <= hi <= len(seq):
        raise FuncError(f"index out of range: {lo}:{hi}")
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
        raise FuncError(f"{name} is not supported by this renderer")

    return call


FUNCS: dict[str, Callable[..., Any]] = {
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
