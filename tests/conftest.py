"""Shared fixtures: an isolated store, tiny real GGUF models and a tiny workspace.

Nothing here mocks the engine: the tiny models are real GGUF files that llama.cpp loads.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from registry import MISSING as REGISTRY_MISSING
from tinymodel import write_tiny_llama

from lifecycle.cli import cli
from lifecycle.cli._errors import handle_errors

REPO = Path(__file__).resolve().parent.parent

TINY_TEMPLATE = """{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if or (eq .Role "user") (eq .Role "system") }}<start_of_turn>user
{{ .Content }}<end_of_turn>
{{ if $last }}<start_of_turn>model
{{ end }}
{{- else if eq .Role "assistant" }}<start_of_turn>model
{{ .Content }}{{ if not $last }}<end_of_turn>
{{ end }}
{{- end }}
{{- end }}"""

TINY_MODELFILE = f'''FROM ./tiny.gguf
TEMPLATE """{TINY_TEMPLATE}"""
SYSTEM Reply with JSON only.
PARAMETER temperature 0
PARAMETER seed 7
PARAMETER num_ctx 1024
PARAMETER stop <end_of_turn>
MESSAGE user "Refund my last invoice"
MESSAGE assistant """{{"category": "billing", "confidence": 0.9}}"""
'''

TINY_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "properties": {
        "category": {"enum": ["billing", "technical", "sales"]},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
    },
    "required": ["category", "confidence"],
    "additionalProperties": False,
}

TINY_CASES = [
    {
        "id": f"case-{i}",
        "messages": [{"role": "user", "content": text}],
        "expected": {"category": category, "confidence": 0.9},
    }
    for i, (text, category) in enumerate(
        [
            ("I was charged twice this month.", "billing"),
            ("The API returns HTTP 500 on every call.", "technical"),
            ("How much for 200 seats?", "sales"),
            ("Please send a receipt for INV-2231.", "billing"),
        ]
    )
]


@pytest.fixture(autouse=True)
def _isolated_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Every test gets its own store and no workspace from the environment."""
    monkeypatch.setenv("LIFECYCLE_HOME", str(tmp_path_factory.mktemp("home")))
    monkeypatch.delenv("LIFECYCLE_WORKSPACE", raising=False)
    monkeypatch.delenv("LIFECYCLE_DEBUG", raising=False)
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "120")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ~5 MB random-weight llama GGUF (F32) that llama.cpp loads in milliseconds."""
    return write_tiny_llama(tmp_path_factory.mktemp("models") / "tiny.gguf")


@pytest.fixture(scope="session")
def aborting_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A GGUF with ``llama.block_count = 0``: llama.cpp's loader asserts and aborts.

    ``GGML_ASSERT(hparams.n_layer_all > 0 ...)``: in-process that kills the interpreter with
    SIGABRT, a real native crash on every CPU.
    """
    import gguf

    original = gguf.GGUFWriter.add_block_count
    gguf.GGUFWriter.add_block_count = lambda self, count: original(self, 0)  # type: ignore[method-assign]
    try:
        return write_tiny_llama(tmp_path_factory.mktemp("crash") / "zero-blocks.gguf", n_layer=1)
    finally:
        gguf.GGUFWriter.add_block_count = original  # type: ignore[method-assign]


@pytest.fixture
def tiny_workspace(tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A complete workspace around the tiny model: config, Modelfile, suite, golden set.

    Its schema mode decodes through llama.cpp's GBNF grammar: tests here expect every random-
    weight schema answer to close within the suite's 48 tokens, and under llguidance the
    first case writes digits to the limit (tests/test_forced_tokens.py covers llguidance).
    """
    monkeypatch.setenv("LIFECYCLE_SCHEMA_DECODER", "gbnf")
    root = tmp_path / "ws"
    (root / "modelfiles").mkdir(parents=True)
    (root / "golden").mkdir()
    (root / "evals").mkdir()
    shutil.copy(tiny_model, root / "modelfiles" / "tiny.gguf")
    (root / "modelfiles" / "tiny.Modelfile").write_text(TINY_MODELFILE, encoding="utf-8")
    (root / "golden" / "triage.schema.json").write_text(json.dumps(TINY_SCHEMA), encoding="utf-8")
    (root / "golden" / "triage.jsonl").write_text(
        "".join(json.dumps(c) + "\n" for c in TINY_CASES), encoding="utf-8"
    )
    (root / "evals" / "triage.toml").write_text(
        'golden = "../golden/triage.jsonl"\n'
        'schema = "../golden/triage.schema.json"\n'
        'modes = ["free", "schema"]\n'
        "threshold = 0.0\n"
        "max_tokens = 48\n"
        '[match.category]\nmatcher = "exact"\n'
        '[match.confidence]\nmatcher = "range"\nmin = 0.0\nmax = 1.0\n',
        encoding="utf-8",
    )
    (root / "lifecycle.toml").write_text(
        "[engine]\nthreads = 2\nseed = 7\n\n"
        '[models.tiny]\nmodelfile = "modelfiles/tiny.Modelfile"\nsuites = ["triage"]\n',
        encoding="utf-8",
    )
    return root


CliResult = tuple[int, str, str]


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """Run the real CLI in-process with the production error mapping; (code, stdout, stderr)."""

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        code = handle_errors(lambda: cli.main(args=list(args), standalone_mode=False))
        out, err = capsys.readouterr()
        return code, out, err

    return run


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Name the tests skipped for want of Debian's docker-registry, and how to get it.

    Without ``-rs`` pytest shows a skip as one ``s``: a new user running the README's test
    command would not learn that the OCI pull and registry tests did not run.
    """
    skipped = terminalreporter.stats.get("skipped", [])
    missing = [r.nodeid for r in skipped if REGISTRY_MISSING in str(r.longrepr)]
    if not missing:
        return
    terminalreporter.section("OCI registry tests skipped", sep="-", yellow=True)
    terminalreporter.write_line(
        f"{len(missing)} test(s) need Debian's docker-registry on loopback and did not run: "
        "apt-get install docker-registry (.ci/run installs it); see docs/troubleshooting.md"
    )
    for nodeid in missing:
        terminalreporter.write_line(f"  {nodeid}")


@pytest.fixture(scope="module")
def sequential(tiny_model: Path) -> Iterator[Any]:
    """The tiny model loaded for one sequence at a time (per test module)."""
    from lifecycle.engines import get_engine
    from lifecycle.engines.base import LoadOptions
    from lifecycle.engines.llama_cpp import LlamaCppModel

    loaded = get_engine("llama-cpp").load(tiny_model, LoadOptions(n_ctx=512, n_threads=2))
    assert isinstance(loaded, LlamaCppModel)
    yield loaded
    loaded.close()


@pytest.fixture(scope="module")
def batched(tiny_model: Path) -> Iterator[Any]:
    """The tiny model loaded with 4 sequence slots: the batched decoder (per test module)."""
    from lifecycle.engines import get_engine
    from lifecycle.engines.base import BatchedModel, LoadOptions
    from lifecycle.engines.llama_cpp import LlamaCppModel

    options = LoadOptions(n_ctx=512, n_threads=2, n_parallel=4)
    loaded = get_engine("llama-cpp").load(tiny_model, options)
    assert isinstance(loaded, LlamaCppModel) and isinstance(loaded, BatchedModel)
    yield loaded
    loaded.close()
