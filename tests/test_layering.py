"""The package's import layering, checked over the source.

The design it checks is docs/architecture.md, "Where things live".

Every module of ``lifecycle`` is mapped to a layer; a module may import its own layer and
the ones below, never one above. Three more rules: no import cycle among lifecycle modules
(lazy imports inside functions count: they are cycles all the same), ``llama_cpp`` is
imported only by ``lifecycle/engines/`` and the lazily-imported exceptions listed below,
and every module outside the engines imports without llama_cpp installed.

Known violations that are not fixed yet sit on ALLOWED_* lists with the reason; the test
fails when an entry there no longer happens, so the lists only ever shrink.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "lifecycle"

# Lowest first. The chain (docs/architecture.md) is cli -> pipeline -> report/pin ->
# gate/compare -> golden/bench -> engines -> variants -> store ->
# gguf/modelfile/templates/config -> errors;
# "sources" sits on the store (they fill it), "eval" between the engines and the comparisons.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("errors", ("errors",)),
    (
        "foundation",
        (
            "envnames",  # every environment variable the package reads, by name
            "plugins",  # engines and matchers other packages declare (entry points)
            "fsutil",
            "progress",
            "clock",
            "runs",
            "texttable",
            "checks",
            "stats",
            "tags",
            "hostinfo",
            "config",
            "gguf",
            "modelfile",
            "templates",
            "gotemplate",
            "prompt",
            "results",
            "baselines",  # baselines/<model>.json: pin writes, the gate reads (from results)
            "journal",  # models.lock and baselines/ published together (pin; readers recover)
            "checkpoints",  # per-run eval checkpoints (the runner writes, a later run takes over)
            "tinymodel",
            "confidence",
            "tokenstats",  # numpy token statistics (KLD, PPL) over any ScoringModel
            "charts",  # PNG rendering from plain dicts: used by report, compare, bench
            "latency",  # percentiles, goodput, Poisson arrivals, the SLA checks the gate makes
            "corpus",  # embedding suites' corpus and queries files (golden builds the suite)
            "vectors",  # float16 vectors, the baseline sidecar, drift and re-index checks
        ),
    ),
    ("store", ("store", "lockfile")),
    ("sources", ("sources",)),
    ("variants", ("quantize", "variants", "targets", "estimate", "runtime", "retention")),
    ("engines", ("engines", "crashguard", "answers")),
    # serve: [serve] and the memory plan (loads models for --measure); loadtest: latency
    # retrieval: embedding suites run and scored (recall@k, MRR, nDCG@k), their gate checks
    (
        "golden/bench",
        ("golden", "retrieval", "bench", "bandwidth", "lint", "runner", "serve", "loadtest"),
    ),
    ("gate/compare", ("gate", "compare", "comparevectors", "calibrate")),
    # gitbase: the bar (pins, baselines, bounds, suites) as of a git ref, for `gate --base`
    ("report/pin", ("report", "gaterender", "comparerender", "pin", "gitbase")),
    ("pipeline", ("pipeline",)),
    ("api", ("api",)),  # the Python API (lifecycle.evaluate, ...): calls what the CLI calls
    ("cli", ("cli", "__main__")),
]

# Upward imports still in the code: (importer, imported) -> why it is not fixed yet.
ALLOWED_UPWARD: dict[tuple[str, str], str] = {}

# Import cycles still in the code, each as the sorted modules of one strongly connected
# component -> why. An entry whose modules are not all in the tree is skipped, not stale:
# it may name work in progress that is not committed yet.
ALLOWED_CYCLES: dict[tuple[str, ...], str] = {}

# Modules outside lifecycle/engines/ that import llama_cpp, always lazily (inside a
# function), and why they cannot go through an engine (yet).
ALLOWED_LLAMA_CPP: dict[str, str] = {
    "lifecycle.quantize": (
        "llama_model_quantize is not an engine operation (no model is loaded); imported "
        "inside quantize_blob/normalise_quant only, so variants imports without llama_cpp"
    ),
}


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    line: int
    lazy: bool  # inside a function: runs when called, not when the module is imported


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    """Every import in ``path`` (TYPE_CHECKING blocks excepted), resolved to modules."""
    found: list[Import] = []
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def targets(node: ast.Import | ast.ImportFrom) -> list[str]:
        if isinstance(node, ast.Import):
            return [alias.name for alias in node.names]
        base = node.module or ""
        if node.level:
            parent = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join([*parent, base] if base else parent)
        # ``from lifecycle import modelfile`` imports the module lifecycle.modelfile.
        subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules]
        return subs or [base]

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for other in child.orelse:
                    visit(other, lazy)
                continue
            if isinstance(child, ast.Import | ast.ImportFrom):
                for target in targets(child):
                    found.append(Import(name, target, child.lineno, lazy))
            in_function = isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            visit(child, lazy or in_function)

    visit(ast.parse(path.read_text(encoding="utf-8")), False)
    return found


def layer_of(module: str) -> int:
    first = module.split(".")[1] if module.count(".") else ""
    for index, (_, members) in enumerate(LAYERS):
        if first in members:
            return index
    raise AssertionError(f"{module} is in no layer: add it to LAYERS in {__file__}")


def internal_edges() -> list[Import]:
    modules = all_modules()
    edges = []
    for name, path in modules.items():
        for imp in imports_of(name, path, modules):
            if imp.imported in modules and imp.imported != name and name != "lifecycle":
                edges.append(imp)
    return edges


def test_every_module_has_a_layer() -> None:
    for name in all_modules():
        if name != "lifecycle":
            layer_of(name)


def test_no_upward_imports() -> None:
    upward = {}
    for imp in internal_edges():
        if imp.imported == "lifecycle":  # ``from lifecycle import __version__``
            continue
        if layer_of(imp.imported) > layer_of(imp.importer):
            upward[(imp.importer, imp.imported)] = imp
    unexpected = sorted(set(upward) - set(ALLOWED_UPWARD))
    assert not unexpected, "upward imports: " + "; ".join(
        f"{a}:{upward[(a, b)].line} imports {b} "
        f"({LAYERS[layer_of(a)][0]} -> {LAYERS[layer_of(b)][0]})"
        for a, b in unexpected
    )
    stale = sorted(set(ALLOWED_UPWARD) - set(upward))
    assert not stale, f"fixed, remove from ALLOWED_UPWARD: {stale}"


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: the components with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def test_no_import_cycles() -> None:
    graph: dict[str, set[str]] = {}
    for imp in internal_edges():
        if imp.imported != "lifecycle":
            graph.setdefault(imp.importer, set()).add(imp.imported)
    cycles = {tuple(c) for c in strongly_connected(graph)}
    unexpected = sorted(cycles - set(ALLOWED_CYCLES))
    assert not unexpected, f"import cycles: {unexpected}"
    present = set(all_modules())
    stale = sorted(c for c in set(ALLOWED_CYCLES) - cycles if set(c) <= present)
    assert not stale, f"fixed, remove from ALLOWED_CYCLES: {stale}"


def private_imports(name: str, path: Path) -> list[str]:
    """``from lifecycle.X import _name`` in a module other than X (dunders are fine)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lifecycle"):
            for alias in node.names:
                private = alias.name.startswith("_") and not alias.name.startswith("__")
                if private and node.module != name:
                    found.append(f"{name}:{node.lineno} imports {node.module}.{alias.name}")
    return found


def test_no_private_names_across_modules() -> None:
    # A name another module needs is part of its owner's interface: make it public there.
    found = [f for name, path in all_modules().items() for f in private_imports(name, path)]
    assert not found, "private names imported across modules: " + "; ".join(found)


def private_definitions(path: Path) -> set[str]:
    """Private names a module defines: functions, classes, annotated globals, ``self._x``."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        name = None
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            name = node.name
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            name = node.target.id
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.ctx, ast.Store)
            and isinstance(node.value, ast.Name)
            and node.value.id == "self"
        ):
            name = node.attr
        if name and name.startswith("_") and not name.startswith("__"):
            names.add(name)
    return names


def private_attribute_uses(name: str, path: Path, owners: dict[str, set[str]]) -> list[str]:
    """``obj._x`` in ``name`` where ``_x`` is private to another lifecycle module (an
    attribute of ``self``/``cls`` is the module's own business; a name defined here too is
    ambiguous and left alone)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Attribute) or not node.attr.startswith("_"):
            continue
        if node.attr.startswith("__") or (
            isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")
        ):
            continue
        defined_in = owners.get(node.attr, set())
        if defined_in and name not in defined_in:
            found.append(
                f"{name}:{node.lineno} uses .{node.attr} of {', '.join(sorted(defined_in))}"
            )
    return found


def test_no_private_attributes_across_modules() -> None:
    # The same rule for attributes: another module's private method or field is not an
    # interface (the batched decoder once lived on six private members of the engine).
    modules = all_modules()
    owners: dict[str, set[str]] = {}
    for name, path in modules.items():
        for private in private_definitions(path):
            owners.setdefault(private, set()).add(name)
    found = [
        f for name, path in modules.items() for f in private_attribute_uses(name, path, owners)
    ]
    assert not found, "private attributes used across modules: " + "; ".join(found)


def test_the_checks_see_a_cycle_an_upward_and_a_private_import(tmp_path: Path) -> None:
    # The checks themselves must be able to fail.
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert layer_of("lifecycle.store") < layer_of("lifecycle.sources.oci")
    module = tmp_path / "x.py"
    module.write_text("from lifecycle.store import _hash_file, __name__, now\n")
    assert private_imports("lifecycle.x", module) == [
        "lifecycle.x:1 imports lifecycle.store._hash_file"
    ]
    assert layer_of("lifecycle.cli.pull") > layer_of("lifecycle.pipeline")
    owner = tmp_path / "owner.py"
    owner.write_text("class A:\n    def __init__(self):\n        self._llm = 1\n")
    user = tmp_path / "user.py"
    user.write_text("def f(model):\n    return model._llm, model.__dict__\n")
    owners = {n: {"lifecycle.owner"} for n in private_definitions(owner)}
    assert private_attribute_uses("lifecycle.user", user, owners) == [
        "lifecycle.user:2 uses ._llm of lifecycle.owner"
    ]


def test_llama_cpp_only_in_engines_or_lazily_where_listed() -> None:
    modules = all_modules()
    users: dict[str, list[Import]] = {}
    for name, path in modules.items():
        if name == "lifecycle.engines" or name.startswith("lifecycle.engines."):
            continue  # the engines package, its registry (preload) included
        for imp in imports_of(name, path, modules):
            if imp.imported.split(".")[0] == "llama_cpp":
                users.setdefault(name, []).append(imp)
    problems = [
        f"{name}:{imp.line} imports {imp.imported}" + ("" if imp.lazy else " at module level")
        for name, found in sorted(users.items())
        for imp in found
        if name not in ALLOWED_LLAMA_CPP or not imp.lazy
    ]
    assert not problems, "llama_cpp outside lifecycle/engines/: " + "; ".join(problems)
    stale = sorted(set(ALLOWED_LLAMA_CPP) - set(users))
    assert not stale, f"no longer imports llama_cpp, remove from ALLOWED_LLAMA_CPP: {stale}"


_BLOCK_LLAMA_CPP = """
import importlib, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "llama_cpp" or name.startswith("llama_cpp."):
            raise ImportError("llama_cpp is blocked")
sys.meta_path.insert(0, Block())
failed = []
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except ImportError as exc:
        failed.append(f"{name}: {exc}")
print("\\n".join(failed))
"""


def test_modules_outside_the_engines_import_without_llama_cpp() -> None:
    # What the AST cannot see: a module-level import of something that imports llama_cpp.
    # The engine registry (lifecycle.engines) must import; the engine modules may need it.
    names = [
        n
        for n in all_modules()
        if not n.startswith(("lifecycle.engines.", "lifecycle.cli")) and n != "lifecycle.__main__"
    ]
    out = subprocess.run(
        [sys.executable, "-c", _BLOCK_LLAMA_CPP, *names],
        capture_output=True,
        text=True,
        check=True,
        cwd=PACKAGE.parent,
    )
    assert out.stdout.strip() == ""


@pytest.mark.parametrize("module", ["lifecycle.store", "lifecycle.tags", "lifecycle.hostinfo"])
def test_bottom_modules_import_nothing_above_them(module: str) -> None:
    modules = all_modules()
    mine = layer_of(module)
    for imp in imports_of(module, modules[module], modules):
        if imp.imported in modules:
            assert layer_of(imp.imported) <= mine, imp


def test_one_timestamp_helper() -> None:
    # Records once disagreed (+00:00 from bench, Z from the store): lifecycle.clock stamps all.
    import re
    from datetime import datetime

    from lifecycle.clock import utc_now

    stamp = utc_now()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", stamp)
    assert datetime.fromisoformat(stamp).utcoffset() is not None
    writers = re.compile(r"isoformat\(timespec|strftime\(\"%Y-%m-%dT|time\.gmtime\(\)")
    others = [
        f"{name}:{n}"
        for name, path in all_modules().items()
        if name != "lifecycle.clock"
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if writers.search(line)
    ]
    assert not others, f"timestamps written outside lifecycle.clock: {others}"


def test_python_dash_m_lifecycle_is_the_command_line() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "lifecycle", "--version"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0 and "0.1.0" in done.stdout, done.stderr
