"""The ``lifecycle`` command line: a thin layer over the library.

``main()`` is the console script. Known errors become one line on stderr and the exit code of
the contract (see :mod:`lifecycle.errors`); tracebacks appear only with ``LIFECYCLE_DEBUG=1``.
Command modules import the library inside their bodies so ``--help`` stays instant.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, MutableMapping

import click

from lifecycle import __version__
from lifecycle.cli._errors import handle_errors
from lifecycle.config import ENV_DEBUG, ENV_HOME, ENV_WORKSPACE

# command name -> "module:attribute". A command's module (and the library modules it imports
# at its top) is imported when the command runs, or when --help lists it: a run pays for its
# own command only.
COMMANDS = {
    "eval": "lifecycle.cli.eval:eval_command",
    "merge": "lifecycle.cli.eval:merge_command",
    "modelfile": "lifecycle.cli.modelfile:modelfile_command",
    "prompt": "lifecycle.cli.modelfile:prompt_command",
    "build": "lifecycle.cli.modelfile:build_command",
    "lint": "lifecycle.cli.modelfile:lint_command",
    "bench": "lifecycle.cli.bench:bench_command",
    "estimate": "lifecycle.cli.bench:estimate_command",
    "pull": "lifecycle.cli.pull:pull_command",
    "push": "lifecycle.cli.pull:push_command",
    "list": "lifecycle.cli.pull:list_command",
    "show": "lifecycle.cli.pull:show_command",
    "rm": "lifecycle.cli.pull:rm_command",
    "verify": "lifecycle.cli.pull:verify_command",
    "gc": "lifecycle.cli.store:gc_command",
    "du": "lifecycle.cli.store:du_command",
    "compare": "lifecycle.cli.compare:compare_command",
    "quantize": "lifecycle.cli.compare:quantize_command",
    "gate": "lifecycle.cli.promote:gate_command",
    "pin": "lifecycle.cli.promote:pin_command",
    "report": "lifecycle.cli.promote:report_command",
    "smoke": "lifecycle.cli.promote:smoke_command",
    "check-lock": "lifecycle.cli.promote:check_lock_command",
    "doctor": "lifecycle.cli.doctor:doctor_command",
    "calibrate": "lifecycle.cli.calibrate:calibrate_command",
    "plan": "lifecycle.cli.serve:plan_command",
    "loadtest": "lifecycle.cli.serve:loadtest_command",
    "cache": "lifecycle.cli.cache:cache_command",
}


class _Commands(MutableMapping[str, click.Command]):
    """The group's commands by name, each imported on first access (click reads a group's
    commands only through this mapping: lookup, listing, "did you mean")."""

    def __init__(self, targets: dict[str, str]) -> None:
        self._targets = dict(targets)
        self._loaded: dict[str, click.Command] = {}

    def __getitem__(self, name: str) -> click.Command:
        command = self._loaded.get(name)
        if command is None:
            import importlib

            module, attr = self._targets[name].split(":")  # KeyError: no such command
            command = getattr(importlib.import_module(module), attr)
            if command.name != name:
                raise AssertionError(f"{self._targets[name]} is named {command.name!r}")
            self._loaded[name] = command
        return command

    def __setitem__(self, name: str, command: click.Command) -> None:
        self._targets.pop(name, None)
        self._loaded[name] = command

    def __delitem__(self, name: str) -> None:
        if name not in self:
            raise KeyError(name)
        self._targets.pop(name, None)
        self._loaded.pop(name, None)

    def __iter__(self) -> Iterator[str]:
        yield from self._targets
        yield from (name for name in self._loaded if name not in self._targets)

    def __len__(self) -> int:
        return len(self._targets.keys() | self._loaded.keys())

    def __contains__(self, name: object) -> bool:
        return name in self._targets or name in self._loaded


@click.group(
    help="Make a local-LLM model update a reviewed, tested, pinned change.",
    epilog=(
        f"Environment: {ENV_WORKSPACE} (workspace dir), {ENV_HOME} (model store), "
        f"{ENV_DEBUG}=1 (tracebacks)."
    ),
    commands=_Commands(COMMANDS),
)
@click.version_option(__version__, prog_name="lifecycle")
def cli() -> None:
    pass


# Commands that load llama.cpp: they run under the crash supervisor (see lifecycle.crashguard).
ENGINE_COMMANDS = frozenset(
    {
        "eval",
        "smoke",
        "compare",
        "bench",
        "quantize",
        "gate",
        "build",
        "calibrate",
        "plan",
        "loadtest",
    }
)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the CLI and map errors to exit codes.

    Commands that drive llama.cpp run in a supervised child process, so that a native crash
    (SIGSEGV, SIGILL, SIGABRT) ends in one line naming the signal, the phase, the model and
    the remedy, with exit code 1, instead of a bare "signal 11".
    """
    import os

    from lifecycle import crashguard

    args = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in args if not a.startswith("-")), None)
    engine_command = command in ENGINE_COMMANDS and not {"--help", "-h"} & set(args)
    if (
        engine_command
        and not crashguard.supervised()
        and not os.environ.get(crashguard.ENV_NO_SUPERVISOR)
    ):
        if not hasattr(os, "fork"):
            crashguard.exit_now(crashguard.supervise(args))
        code = crashguard.supervise_fork()
        if code is not None:  # the supervisor; the fork goes on to run the command
            crashguard.exit_now(code)
    if os.environ.get(crashguard.ENV_PHASE_PIPE):
        crashguard.die_with_parent()  # started by a supervisor: never outlive it
    if engine_command:
        from lifecycle.engines import preload

        preload()  # llama_cpp before numpy: see lifecycle.engines.preload
    code = handle_errors(lambda: cli.main(args=args, prog_name="lifecycle", standalone_mode=False))
    if crashguard.supervised():  # the supervised child: its supervisor waits for its exit
        crashguard.exit_now(code)
    sys.exit(code)
