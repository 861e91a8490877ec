"""The Python API: what a team embeds in its own code, as the command line does it.

    import lifecycle

    workspace = lifecycle.load_workspace("path/to/workspace")
    record = lifecycle.evaluate(workspace, models=["harbor-triage"], parallel=4)
    print(record.summary["pass_rate"])
    verdict = lifecycle.judge(workspace, record)
    raise SystemExit(verdict.exit_code)

Everything here is a thin call into the modules the CLI uses, with the same defaults, so a
script and ``lifecycle eval`` / ``lifecycle gate`` agree. Engines and matchers can be added
without forking: see :mod:`lifecycle.plugins`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lifecycle.config import Workspace
    from lifecycle.gate import GateResult
    from lifecycle.results import RunRecord


def load_workspace(root: str | Path | None = None) -> Workspace:
    """Read and validate the workspace's ``lifecycle.toml`` (found upwards from the current
    directory when ``root`` is None); a bad file raises :class:`lifecycle.errors.ConfigError`
    naming the file, line or field."""
    from lifecycle.config import load_workspace as load

    return load(Path(root) if root is not None else None)


def evaluate(
    workspace: Workspace,
    *,
    models: Sequence[str] | None = None,
    suites: Sequence[str] | None = None,
    modes: Sequence[str] | None = None,
    engine: str | None = None,
    parallel: int | None = None,
    threads: int | None = None,
    limit: int | None = None,
    cache: bool = True,
    progress: Callable[[str], None] | None = None,
) -> RunRecord:
    """Run the golden suites (``lifecycle eval``) and return the run record, unsaved.

    ``cache=False`` generates every answer (``--no-cache``); ``progress`` receives the lines
    the CLI prints on stderr. Engine failures are recorded per variant, not raised.
    """
    from lifecycle.runner import EvalOptions, run_eval

    options = EvalOptions(
        models=list(models) if models else None,
        suites=list(suites) if suites else None,
        modes=list(modes) if modes else None,
        engine=engine,
        parallel=parallel,
        threads=threads,
        limit=limit,
        answers=cache,
    )
    return run_eval(workspace, options, progress=progress)


def judge(workspace: Workspace, record: RunRecord) -> GateResult:
    """Judge ``record`` against the workspace's baselines and ``[gate]`` (``lifecycle gate``).

    ``.exit_code`` is the command's: 0 pass, 3 a pinned variant regressed, 1 an engine failed.
    (Not named ``gate``: ``lifecycle.gate`` is the module, which an import anywhere would set
    on the package in its place.)
    """
    from lifecycle.pipeline import gate_workspace

    return gate_workspace(workspace, record)
