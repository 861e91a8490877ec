"""One module of environment variable names (lifecycle/envnames.py), documented.

A module that reads the environment names the variable through a constant of
``lifecycle.envnames``; a name spelled by hand (``os.environ.get("LIFECYCLE_DEBUG")``, an
``ENV_X = "..."`` of its own, any ``"LIFECYCLE_..."`` literal) is found here. Modules not
moved yet sit on ALLOWED_LITERALS with the reason; the list only shrinks, and even their
names must be declared in envnames, so its list stays complete.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from lifecycle import envnames

PACKAGE = Path(__file__).resolve().parent.parent / "lifecycle"
DOCS = Path(__file__).resolve().parent.parent / "docs" / "workspace.md"
ENV_NAME = re.compile(r"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+")

# Modules that still spell their variables by hand -> why they are not moved yet (none now).
ALLOWED_LITERALS: dict[str, str] = {}


def declared() -> set[str]:
    names: set[str] = set()
    for key, value in vars(envnames).items():
        if key.startswith("ENV_"):
            names.update([value] if isinstance(value, str) else value)
    return names


def _reads_environ(node: ast.AST) -> bool:
    """``os.environ`` / ``environ`` / ``os.getenv`` / ``os.environ.get`` as written."""
    text = ast.unparse(node)
    return text.endswith(("environ", "environ.get", "getenv", "environ.pop"))


def hand_spelled(path: Path) -> list[tuple[int, str]]:
    """Variable names written as string literals where the environment is read or named."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        literal: ast.AST | None = None
        if isinstance(node, ast.Call) and _reads_environ(node.func) and node.args:
            literal = node.args[0]
        elif isinstance(node, ast.Subscript) and _reads_environ(node.value):
            literal = node.slice
        elif isinstance(node, ast.Compare) and any(_reads_environ(c) for c in node.comparators):
            literal = node.left
        elif isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id.startswith("ENV_") for t in node.targets
        ):
            literal = node.value
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            literal = node if node.value.startswith("LIFECYCLE_") else None
        value = literal.value if isinstance(literal, ast.Constant) else None
        if isinstance(value, str) and ENV_NAME.fullmatch(value):
            found.append((literal.lineno, value))  # type: ignore[union-attr]
    return sorted(set(found))


def test_no_module_spells_an_environment_variable_by_hand() -> None:
    spelled = {
        str(path.relative_to(PACKAGE)): hand_spelled(path)
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "envnames.py"
    }
    spelled = {name: found for name, found in spelled.items() if found}
    unexpected = {name: found for name, found in spelled.items() if name not in ALLOWED_LITERALS}
    assert not unexpected, f"use a lifecycle.envnames constant: {unexpected}"
    undeclared = {
        name: [value for _, value in found if value not in declared()]
        for name, found in spelled.items()
    }
    assert not any(undeclared.values()), f"declare these in lifecycle/envnames.py: {undeclared}"
    stale = sorted(set(ALLOWED_LITERALS) - set(spelled))
    assert not stale, f"moved to envnames, remove from ALLOWED_LITERALS: {stale}"


def test_the_check_sees_a_hand_spelled_name(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text(
        "import os\n"
        'a = os.environ.get("LIFECYCLE_X")\n'
        'b = "HF_TOKEN" in os.environ\n'
        'ENV_Y = "OLLAMA_HOST"\n'
        "c = os.environ.get(ENV_Y)\n"
        'd = f"set LIFECYCLE_HOME to a folder"\n',
        encoding="utf-8",
    )
    assert hand_spelled(module) == [(2, "LIFECYCLE_X"), (3, "HF_TOKEN"), (4, "OLLAMA_HOST")]


def test_every_variable_is_documented() -> None:
    text = DOCS.read_text(encoding="utf-8")
    missing = sorted(name for name in declared() if f"`{name}`" not in text)
    assert not missing, f"document in docs/workspace.md (Environment variables): {missing}"
