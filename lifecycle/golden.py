"""Golden sets and eval suites: loading, validation and scoring of one model output.

A *golden set* is a JSONL file of cases (input messages + the expected JSON) and a JSON Schema
for the output. An *eval suite* (``evals/NAME.toml``) says which golden set to run, in which
output modes, how each field is matched and the pass-rate threshold. Scoring is strict by
design: a case passes only when the raw output parses as JSON, validates against the schema
and every matched field agrees — the production contract, not "the model was close".
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema

from lifecycle import plugins
from lifecycle.config import TableReader, find_workspace_root, read_toml
from lifecycle.corpus import KIND as EMBEDDING_KIND
from lifecycle.corpus import MODE as RETRIEVAL_MODE
from lifecycle.corpus import EmbeddingSpec, read_spec
from lifecycle.errors import ConfigError, GoldenSetError

# "free": the model must write the JSON by itself (what production sees).
# "schema": decoding constrained by a grammar compiled from the JSON Schema (Ollama's `format`).
MODES = ("free", "schema")
MATCHERS = ("exact", "one_of", "range", "tolerance", "regex", "ignore")
ROLES = ("system", "user", "assistant")
# Input bounds per case. llama.cpp's tokenizer takes time quadratic in the length of a text on
# a byte-level vocabulary (160,000 characters: 2.2 s; a 5 MB line: hours), so a golden case
# longer than this is refused when the suite loads, not found hung in an eval.
MAX_MESSAGE_CHARS = 100_000  # one message's content
MAX_CASE_CHARS = 200_000  # all the messages of one case together
# Arrays and objects nested deeper than this in a case or a schema are refused: no real case
# needs it, and deeper values overflow the stack of the JSON, schema and diff code.
MAX_JSON_DEPTH = 64


@dataclass(frozen=True)
class Matcher:
    """How one output field is compared with the expected value."""

    kind: str = "exact"
    values: tuple[Any, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    tolerance: float | None = None
    pattern: str | None = None
    # A matcher another package declares (lifecycle.plugins): its options as given.
    options: tuple[tuple[str, Any], ...] = ()

    def check(self, actual: Any, expected: Any) -> str | None:
        """None when ``actual`` is acceptable, else a short reason."""
        if self.kind == "ignore":
            return None
        if self.kind not in MATCHERS:
            plugin = plugins.load_matcher(self.kind)
            if plugin is None:
                return f"matcher {self.kind!r} is no longer installed"
            reason = plugin(actual, expected, dict(self.options))
            return None if reason is None else str(reason)
        if self.kind == "exact":
            return None if _same_json(actual, expected) else f"expected {_show(expected)}"
        if self.kind == "one_of":
            if any(_same_json(actual, v) for v in self.values):
                return None
            return "expected one of " + ", ".join(_show(v) for v in self.values)
        if self.kind == "regex":
            if isinstance(actual, str) and re.fullmatch(self.pattern or "", actual):
                return None
            return f"expected a string matching /{self.pattern}/"
        if not _is_number(actual):
            return "expected a number"
        if self.kind == "range":
            low = -float("inf") if self.minimum is None else self.minimum
            high = float("inf") if self.maximum is None else self.maximum
            return None if low <= actual <= high else f"expected a number in [{low}, {high}]"
        # tolerance: |actual - expected| <= tolerance
        if not _is_number(expected):
            return "expected value is not a number"
        tol = self.tolerance or 0.0
        if abs(actual - expected) <= tol:
            return None
        return f"expected {_show(expected)} ± {tol}"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"matcher": self.kind, **dict(self.options)}
        if self.values:
            out["values"] = list(self.values)
        for key in ("minimum", "maximum", "tolerance", "pattern"):
            value = getattr(self, key)
            if value is not None:
                out[{"minimum": "min", "maximum": "max"}.get(key, key)] = value
        return out


@dataclass(frozen=True)
class GoldenCase:
    """One golden case: the conversation to send and the JSON expected back."""

    id: str
    messages: tuple[Mapping[str, str], ...]
    expected: Mapping[str, Any]
    match: Mapping[str, Matcher] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    line: int = 0


@dataclass(frozen=True)
class Escalation:
    """``[calibration.escalate]``: the larger tier a cascade hands its unsure cases to.

    Either ``variant``, a variant (or model) of this workspace run on the workspace's engine,
    or ``base_url`` (+ ``model``), an OpenAI-compatible endpoint that gets each case's
    conversation after the local variant's SYSTEM and MESSAGE history.
    """

    variant: str | None = None
    base_url: str | None = None
    model: str | None = None  # the served model's id (default: the first the server lists)

    @property
    def label(self) -> str:
        if self.variant:
            return self.variant
        return f"openai {self.base_url}" + (f" ({self.model})" if self.model else "")

    def to_dict(self) -> dict[str, Any]:
        return {"variant": self.variant, "base_url": self.base_url, "model": self.model}


@dataclass(frozen=True)
class Calibration:
    """A suite's ``[calibration]`` table: which confidence to trust and how accurate to be.

    ``confidence_field``: the output field where the model states its confidence (0..1).
    ``routed_field``: the field whose value is the decision a cascade escalates (e.g. the
    category); the engine's probability of that value is recorded, and a case counts as
    correct when that field matches. Without it, correct means the whole case passed.
    ``target``: the accuracy the cases kept local must reach. ``bins``: reliability bins.
    """

    confidence_field: str | None = None
    routed_field: str | None = None
    target: float = 0.95
    bins: int = 10
    escalate: Escalation | None = None  # the tier escalated cases go to (None: not named)

    def to_dict(self) -> dict[str, Any]:
        return {
            "confidence_field": self.confidence_field,
            "routed_field": self.routed_field,
            "target": self.target,
            "bins": self.bins,
            "escalate": self.escalate.to_dict() if self.escalate else None,
        }


@dataclass(frozen=True)
class Suite:
    """An eval suite with its golden set and schema loaded and validated."""

    name: str
    path: Path
    golden_path: Path
    schema_path: Path
    schema: Mapping[str, Any]
    modes: tuple[str, ...]
    thresholds: Mapping[str, float]
    max_tokens: int
    match: Mapping[str, Matcher]
    cases: tuple[GoldenCase, ...]
    golden_digest: str
    schema_digest: str
    description: str = ""
    calibration: Calibration | None = None  # None: the suite has no [calibration] table
    # kind = "embedding" (lifecycle.corpus): the cases are the queries, in mode "retrieval";
    # golden_path/golden_digest are the queries', schema_path/schema_digest the corpus's.
    embedding: EmbeddingSpec | None = None

    def matcher_for(self, case: GoldenCase, field_name: str) -> Matcher:
        return case.match.get(field_name) or self.match.get(field_name) or Matcher()

    def fields(self, case: GoldenCase) -> list[str]:
        """Fields checked for ``case``: the expected ones plus any the suite or case names."""
        names = list(case.expected)
        for name in (*self.match, *case.match):
            if name not in names:
                names.append(name)
        return names


@dataclass(frozen=True)
class Score:
    """The verdict on one output, with the first reason it failed (or ``"ok"``)."""

    passed: bool
    reason: str
    json_valid: bool
    schema_valid: bool
    fields_matched: bool
    parsed: Any = None
    schema_error: str | None = None
    mismatches: tuple[str, ...] = ()
    diff: str | None = None


def score_output(suite: Suite, case: GoldenCase, text: str) -> Score:
    """Score one raw model output against a case: JSON, then schema, then field matchers."""
    try:
        parsed = json.loads(text.strip())
    except json.JSONDecodeError as exc:
        preview = text.strip().replace("\n", "\\n")[:60]
        return Score(
            passed=False,
            reason=f"not JSON ({exc.msg} at char {exc.pos}): {preview!r}",
            json_valid=False,
            schema_valid=False,
            fields_matched=False,
        )

    schema_error = _first_schema_error(suite.schema, parsed)
    mismatches: list[str] = []
    if isinstance(parsed, dict):
        for name in suite.fields(case):
            matcher = suite.matcher_for(case, name)
            if matcher.kind == "ignore":
                continue
            if name not in parsed:
                mismatches.append(f"{name}: missing")
                continue
            problem = matcher.check(parsed[name], case.expected.get(name))
            if problem:
                mismatches.append(f"{name}: {problem}, got {_show(parsed[name])}")
    else:
        mismatches.append(f"output is a JSON {type(parsed).__name__}, not an object")

    diff = None
    if mismatches:
        compared = {k: parsed.get(k) for k in case.expected} if isinstance(parsed, dict) else parsed
        # Imported here: deepdiff (and the pydantic it loads) is a third of a second of every
        # eval's start, and only a mismatch needs it.
        from deepdiff import DeepDiff

        diff = DeepDiff(dict(case.expected), compared, ignore_order=True).pretty() or None

    if schema_error:
        reason = f"schema: {schema_error}"
    elif mismatches:
        reason = mismatches[0]
    else:
        reason = "ok"
    return Score(
        passed=schema_error is None and not mismatches,
        reason=reason,
        json_valid=True,
        schema_valid=schema_error is None,
        fields_matched=not mismatches,
        parsed=parsed,
        schema_error=schema_error,
        mismatches=tuple(mismatches),
        diff=diff,
    )


def load_suites(evals_dir: Path, names: Sequence[str]) -> list[Suite]:
    """Load the named suites from ``evals_dir/NAME.toml``; an unknown name is a ConfigError."""
    available = sorted(p.stem for p in evals_dir.glob("*.toml")) if evals_dir.is_dir() else []
    suites = []
    for name in names:
        if name not in available:
            close = difflib.get_close_matches(name, available, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            known = ", ".join(available) or "none"
            raise ConfigError(f"unknown suite {name!r}{hint}; suites in {evals_dir}: {known}")
        suites.append(load_suite(evals_dir / f"{name}.toml"))
    return suites


_SUITE_KEYS = {
    "kind",
    "description",
    "golden",
    "schema",
    "modes",
    "threshold",
    "max_tokens",
    "match",
    "calibration",
}


def load_suite(path: Path, *, workspace_root: Path | None = None) -> Suite:
    """Read an eval suite file and the golden set and schema it points at.

    ``golden`` and ``schema`` must stay inside the workspace (``workspace_root``, else the
    nearest directory at or above the suite with a lifecycle.toml); a suite outside any
    workspace is read as it is.
    """
    data = read_toml(path)
    reader = TableReader(path, data)
    root = workspace_root if workspace_root is not None else _enclosing_workspace(path)
    if data.get("kind", "generation") != "generation":
        return _embedding_suite(path, data, reader, root)
    reader.reject_unknown(_SUITE_KEYS)
    found = _suite_paths(path, data, reader, root, ("golden", "schema"))
    golden_path, schema_path = found["golden"], found["schema"]

    modes = reader.string_list("modes", ["free"])
    if not modes or any(m not in MODES for m in modes):
        raise reader.fail("modes", f"must be a non-empty list of {list(MODES)}")
    thresholds = _parse_thresholds(path, data.get("threshold", 1.0), modes)
    max_tokens = reader.integer("max_tokens", 128, minimum=1)

    match = {
        name: parse_matcher(spec, path=path, where=f"match.{name}")
        for name, spec in reader.table("match").data.items()
    }

    calibration = parse_calibration(path, data["calibration"]) if "calibration" in data else None

    schema, schema_bytes = _load_schema(schema_path)
    cases, golden_bytes = _load_cases(golden_path, schema)
    return Suite(
        name=path.stem,
        path=path,
        golden_path=golden_path,
        schema_path=schema_path,
        schema=schema,
        modes=tuple(modes),
        thresholds=thresholds,
        max_tokens=max_tokens,
        match=match,
        cases=tuple(cases),
        golden_digest="sha256:" + hashlib.sha256(golden_bytes).hexdigest(),
        schema_digest="sha256:" + hashlib.sha256(schema_bytes).hexdigest(),
        description=str(data.get("description", "")),
        calibration=calibration,
    )


def _suite_paths(
    path: Path, data: dict[str, Any], reader: TableReader, root: Path | None, keys: tuple[str, ...]
) -> dict[str, Path]:
    """The files a suite names under ``keys``, relative to it and confined to the workspace
    (the nearest directory with a lifecycle.toml) when there is one."""
    found: dict[str, Path] = {}
    for key in keys:
        if not isinstance(data.get(key), str):
            raise reader.fail(key, "is required and must be a path string")
        joined = (
            reader.confined_path(key, data[key], root=root, base=path.parent)
            if root is not None
            else path.parent / data[key]
        )
        found[key] = joined.resolve()
    return found


def _embedding_suite(
    path: Path, data: dict[str, Any], reader: TableReader, root: Path | None
) -> Suite:
    """A ``kind = "embedding"`` suite (lifecycle.corpus): its queries become the cases."""
    if data.get("kind") != EMBEDDING_KIND:
        raise reader.fail("kind", f'must be "generation" (the default) or "{EMBEDDING_KIND}"')
    found = _suite_paths(path, data, reader, root, ("corpus", "queries"))
    spec = read_spec(path, reader, found["corpus"], found["queries"])
    hit = spec.thresholds.get("hit_rate")
    return Suite(
        name=path.stem,
        path=path,
        golden_path=spec.queries_path,
        schema_path=spec.corpus_path,
        schema={},
        modes=(RETRIEVAL_MODE,),
        thresholds={RETRIEVAL_MODE: hit} if hit is not None else {},
        max_tokens=0,
        match={},
        cases=tuple(
            GoldenCase(
                id=q.id,
                messages=({"role": "user", "content": q.text},),
                expected={"relevant": dict(q.relevance)},
                line=q.line,
            )
            for q in spec.queries
        ),
        golden_digest=spec.queries_digest,
        schema_digest=spec.corpus_digest,
        description=str(data.get("description", "")),
        embedding=spec,
    )


def _enclosing_workspace(path: Path) -> Path | None:
    """The workspace a suite file belongs to, or None when no lifecycle.toml is above it."""
    try:
        return find_workspace_root(path.parent)
    except ConfigError:
        return None


def parse_calibration(path: Path, table: Any) -> Calibration:
    """Validate ``[calibration]``; errors name the file and the ``calibration.KEY`` field."""
    reader = TableReader(path, {"calibration": table}).table("calibration")
    reader.reject_unknown({"confidence_field", "routed_field", "target", "bins", "escalate"})
    confidence_field, routed_field = reader.text("confidence_field"), reader.text("routed_field")
    if confidence_field is None and routed_field is None:
        raise reader.fail_table(
            "names no confidence_field and no routed_field: nothing to calibrate"
        )
    target = table.get("target", 0.95)
    if not _is_number(target) or not 0.0 < target <= 1.0:
        raise reader.fail("target", "must be a number in (0, 1]")
    bins = table.get("bins", 10)
    if isinstance(bins, bool) or not isinstance(bins, int) or not 1 <= bins <= 100:
        raise reader.fail("bins", "must be an integer in [1, 100]")
    escalate = _parse_escalation(reader.table("escalate")) if "escalate" in table else None
    return Calibration(
        confidence_field=confidence_field,
        routed_field=routed_field,
        target=float(target),
        bins=bins,
        escalate=escalate,
    )


def _parse_escalation(reader: TableReader) -> Escalation:
    """``[calibration.escalate]``: exactly one of ``variant`` or ``base_url`` (+ ``model``)."""
    reader.reject_unknown({"variant", "base_url", "model"})
    variant, base_url, model = (reader.text(k) for k in ("variant", "base_url", "model"))
    if (variant is None) == (base_url is None):
        raise reader.fail_table(
            "needs exactly one of variant (a variant of this workspace) or base_url "
            "(an OpenAI-compatible endpoint)"
        )
    if model is not None and base_url is None:
        raise reader.fail_table("goes with base_url (the served model's id)")
    if base_url is not None and not re.match(r"^https?://[^/\s]+", base_url):
        raise reader.fail("base_url", f"must be an http(s) URL, not {base_url!r}")
    return Escalation(variant=variant, base_url=base_url, model=model)


def parse_matcher(spec: Any, *, path: Path, where: str, line: int | None = None) -> Matcher:
    """Build a Matcher from ``{"matcher": KIND, ...}``; unknown kinds and bad options fail."""
    err_cls = GoldenSetError if line is not None else ConfigError
    if isinstance(spec, str):
        spec = {"matcher": spec}
    if not isinstance(spec, dict):
        raise err_cls("must be a table with a 'matcher' key", path=path, line=line, field=where)
    kind = spec.get("matcher", "exact")
    options = {k: v for k, v in spec.items() if k != "matcher"}
    if kind not in MATCHERS:
        try:
            plugin = plugins.load_matcher(str(kind))
        except Exception as exc:  # a plugin that fails to import: name it, not a traceback
            raise err_cls(
                f"matcher plugin {kind!r} failed to load: {exc}", path=path, line=line, field=where
            ) from None
        if plugin is not None:
            return Matcher(kind=str(kind), options=tuple(options.items()))
        known = [*MATCHERS, *plugins.matcher_names()]
        close = difflib.get_close_matches(str(kind), known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise err_cls(
            f"unknown matcher {kind!r}{hint}; known: {', '.join(known)}",
            path=path,
            line=line,
            field=where,
        )
    allowed = {
        "exact": set(),
        "ignore": set(),
        "one_of": {"values"},
        "range": {"min", "max"},
        "tolerance": {"tolerance"},
        "regex": {"pattern"},
    }[kind]
    for key in options:
        if key not in allowed:
            raise err_cls(
                f"option {key!r} does not apply to matcher {kind!r}",
                path=path,
                line=line,
                field=where,
            )
    for key in allowed:
        if key not in options and kind not in ("range",):
            raise err_cls(f"matcher {kind!r} needs {key!r}", path=path, line=line, field=where)
    if kind == "one_of" and (not isinstance(options["values"], list) or not options["values"]):
        raise err_cls("'values' must be a non-empty list", path=path, line=line, field=where)
    for key in ("min", "max", "tolerance"):
        if key in options and not _is_number(options[key]):
            raise err_cls(f"{key!r} must be a number", path=path, line=line, field=where)
    if kind == "regex":
        try:
            re.compile(options["pattern"])
        except (re.error, TypeError) as exc:
            raise err_cls(f"invalid regex: {exc}", path=path, line=line, field=where) from None
    return Matcher(
        kind=kind,
        values=tuple(options.get("values", ())),
        minimum=options.get("min"),
        maximum=options.get("max"),
        tolerance=options.get("tolerance"),
        pattern=options.get("pattern"),
    )


def _parse_thresholds(path: Path, value: Any, modes: list[str]) -> dict[str, float]:
    if _is_number(value):
        value = dict.fromkeys(modes, value)
    if not isinstance(value, dict):
        raise ConfigError(
            "must be a number or a table of mode → number", path=path, field="threshold"
        )
    thresholds = {}
    for mode in modes:
        t = value.get(mode, 1.0)
        if not _is_number(t) or not 0.0 <= t <= 1.0:
            raise ConfigError("must be a number in [0, 1]", path=path, field=f"threshold.{mode}")
        thresholds[mode] = float(t)
    for mode in value:
        if mode not in modes:
            raise ConfigError("not one of this suite's modes", path=path, field=f"threshold.{mode}")
    return thresholds


def _load_schema(path: Path) -> tuple[dict[str, Any], bytes]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise GoldenSetError(f"cannot read JSON Schema: {exc.strerror}", path=path) from None
    text = _decode_utf8(raw, path)
    try:
        schema = strict_json(text)
    except JsonValueError as exc:
        raise GoldenSetError(
            f"JSON Schema is not valid JSON: {exc}", path=path, line=exc.line
        ) from None
    if not isinstance(schema, dict):
        raise GoldenSetError("JSON Schema must be an object", path=path)
    validator_cls = jsonschema.validators.validator_for(schema, jsonschema.Draft202012Validator)
    try:
        validator_cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = exc.json_path if hasattr(exc, "json_path") else ""
        raise GoldenSetError(f"invalid JSON Schema at {where}: {exc.message}", path=path) from None
    return schema, raw


def _load_cases(path: Path, schema: Mapping[str, Any]) -> tuple[list[GoldenCase], bytes]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise GoldenSetError(f"cannot read golden set: {exc.strerror}", path=path) from None
    text = _decode_utf8(raw, path)

    cases: list[GoldenCase] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = strict_json(line)
        except JsonValueError as exc:
            raise GoldenSetError(str(exc), path=path, line=number) from None
        case = _parse_case(item, path, number, schema)
        if case.id in seen:
            raise GoldenSetError(
                f"duplicate case id {case.id!r} (first on line {seen[case.id]})",
                path=path,
                line=number,
            )
        seen[case.id] = number
        cases.append(case)
    if not cases:
        raise GoldenSetError("golden set has no cases", path=path)
    return cases, raw


def _parse_case(item: Any, path: Path, line: int, schema: Mapping[str, Any]) -> GoldenCase:
    def fail(message: str, where: str | None = None) -> GoldenSetError:
        return GoldenSetError(message, path=path, line=line, field=where)

    if not isinstance(item, dict):
        raise fail("a case must be a JSON object")
    allowed = {"id", "messages", "expected", "match", "tags"}
    for key in item:
        if key not in allowed:
            raise fail(f"unknown key (expected one of: {', '.join(sorted(allowed))})", key)
    case_id = item.get("id")
    if case_id is None:
        raise fail("missing 'id' (a non-empty string)", "id")
    if not isinstance(case_id, str) or not case_id:
        raise fail(f"'id' must be a non-empty string, not {_show(case_id)[:40]}", "id")
    messages = item.get("messages")
    if not isinstance(messages, list) or not messages:
        raise fail(f"case {case_id!r}: 'messages' must be a non-empty list", "messages")
    for i, message in enumerate(messages):
        if (
            not isinstance(message, dict)
            or message.get("role") not in ROLES
            or not isinstance(message.get("content"), str)
        ):
            raise fail(
                f"case {case_id!r}: each message needs a role ({'/'.join(ROLES)}) and a "
                "string content",
                f"messages[{i}]",
            )
    total = 0
    for i, message in enumerate(messages):
        size = len(message["content"])
        total += size
        if size > MAX_MESSAGE_CHARS:
            raise fail(
                f"case {case_id!r}: the message has {size:,} characters, over the limit of "
                f"{MAX_MESSAGE_CHARS:,} per message",
                f"messages[{i}].content",
            )
    if total > MAX_CASE_CHARS:
        raise fail(
            f"case {case_id!r}: its messages have {total:,} characters together, over the "
            f"limit of {MAX_CASE_CHARS:,} per case",
            "messages",
        )
    if messages[-1]["role"] != "user":
        raise fail(f"case {case_id!r}: the last message must be from the user", "messages")
    if "expected" not in item:
        raise fail(f"case {case_id!r} has no expected output", "expected")
    expected = item["expected"]
    if not isinstance(expected, dict):
        raise fail(f"case {case_id!r}: 'expected' must be a JSON object", "expected")
    error = _first_schema_error(schema, expected)
    if error:
        raise fail(f"case {case_id!r}: expected output violates the schema: {error}", "expected")
    match_spec = item.get("match", {})
    if not isinstance(match_spec, dict):
        raise fail(f"case {case_id!r}: 'match' must be an object", "match")
    match = {
        name: parse_matcher(spec, path=path, where=f"match.{name}", line=line)
        for name, spec in match_spec.items()
    }
    tags = item.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise fail(f"case {case_id!r}: 'tags' must be a list of strings", "tags")
    return GoldenCase(
        id=case_id,
        messages=tuple({"role": m["role"], "content": m["content"]} for m in messages),
        expected=expected,
        match=match,
        tags=tuple(tags),
        line=line,
    )


class JsonValueError(ValueError):
    """Text that is not strict JSON; ``line`` is 1-based within the text parsed, when known."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.line = line


def strict_json(text: str) -> Any:
    """Parse standard JSON only: no NaN or Infinity (Python's json accepts them, and writes
    them back into run records that other JSON readers refuse), no number that overflows to
    infinity, no nesting deeper than :data:`MAX_JSON_DEPTH`."""

    def constant(name: str) -> Any:
        message = f"{name} is not a JSON value (JSON has no NaN or Infinity)"
        raise JsonValueError(message, _line_of(text, name))

    def number(literal: str) -> float:
        value = float(literal)
        if math.isinf(value):
            raise JsonValueError(
                f"number {literal[:24]} is out of range (it overflows to infinity)",
                _line_of(text, literal),
            )
        return value

    try:
        value = json.loads(text, parse_constant=constant, parse_float=number)
    except json.JSONDecodeError as exc:
        raise JsonValueError(
            f"malformed JSON ({exc.msg} at column {exc.colno})", exc.lineno
        ) from None
    except RecursionError:
        raise JsonValueError(f"nested too deep (over {MAX_JSON_DEPTH} levels)") from None
    except JsonValueError:
        raise
    except ValueError as exc:  # an integer with too many digits for Python to convert
        raise JsonValueError(f"malformed JSON ({str(exc).split(':')[0]})") from None
    if _depth_over(value, MAX_JSON_DEPTH):
        raise JsonValueError(f"nested too deep (over {MAX_JSON_DEPTH} levels)")
    return value


# A JSON string, or a bare token outside strings (a number or a NaN/Infinity constant).
_JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|(-?Infinity|NaN|-?[0-9][0-9.eE+-]*)')


def _line_of(text: str, literal: str) -> int | None:
    """The 1-based line of the first bare ``literal`` in JSON ``text`` (not inside a string)."""
    for found in _JSON_TOKEN.finditer(text):
        if found.group(1) == literal:
            return text.count("\n", 0, found.start()) + 1
    return None


def _depth_over(value: Any, limit: int) -> bool:
    """Whether arrays/objects in ``value`` nest more than ``limit`` levels (no recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = (
            item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        )
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _decode_utf8(raw: bytes, path: Path) -> str:
    """UTF-8 text (a BOM is dropped); an invalid byte is named by line and column."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        before = exc.object[: exc.start]
        line = before.count(b"\n") + 1
        column = len(before) - (before.rfind(b"\n") + 1) + 1
        bad = exc.object[exc.start]
        raise GoldenSetError(
            f"not UTF-8: invalid byte 0x{bad:02x} at byte {column} of the line",
            path=path,
            line=line,
        ) from None


def _first_schema_error(schema: Mapping[str, Any], instance: Any) -> str | None:
    """The most relevant validation error as ``$.json.path: message``, or None."""
    validator_cls = jsonschema.validators.validator_for(schema, jsonschema.Draft202012Validator)
    error = jsonschema.exceptions.best_match(validator_cls(schema).iter_errors(instance))
    if error is None:
        return None
    return f"{error.json_path}: {error.message}"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _same_json(a: Any, b: Any) -> bool:
    # JSON equality: 1 == 1.0, but True is not 1.
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return bool(a == b)


def _show(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)
