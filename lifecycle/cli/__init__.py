"""The ``lifecycle`` command line: a thin layer over the library.

``main()`` is the console script. Known errors become one line on stderr and the exit code of
the contract (see :mod:`lifecycle.errors`); tracebacks appear only with ``LIFECYCLE_DEBUG=1``.
Command modules import the library inside their bodies so ``--help`` stays instant.
"""

from __future__ import annotations

import sys

import click

from lifecycle import __version__
from lifecycle.cli._errors import handle_errors
from lifecycle.cli.bench import bench_command, estimate_command
from lifecycle.cli.cache import cache_command
from lifecycle.cli.calibrate import calibrate_command
from lifecycle.cli.compare import compare_command, quantize_command
from lifecycle.cli.doctor import doctor_command
from lifecycle.cli.eval import eval_command, merge_command
from lifecycle.cli.modelfile import build_command, lint_command, modelfile_command, prompt_command
from lifecycle.cli.promote import (
    check_lock_command,
    gate_command,
    pin_command,
    report_command,
    smoke_command,
)
from lifecycle.cli.pull import (
    list_command,
    pull_command,
    push_command,
    rm_command,
    show_command,
    verify_command,
)
from lifecycle.cli.serve import loadtest_command, plan_command
from lifecycle.cli.store import du_command, gc_command
from lifecycle.config import ENV_DEBUG, ENV_HOME, ENV_WORKSPACE


@click.group(
    help="Make a local-LLM model update a reviewed, tested, pinned change.",
    epilog=(
        f"Environment: {ENV_WORKSPACE} (workspace dir), {ENV_HOME} (model store), "
        f"{ENV_DEBUG}=1 (tracebacks)."
    ),
)
@click.version_option(__version__, prog_name="lifecycle")
def cli() -> None:
    pass


cli.add_command(eval_command)
cli.add_command(merge_command)
cli.add_command(modelfile_command)
cli.add_command(prompt_command)
cli.add_command(build_command)
cli.add_command(lint_command)
cli.add_command(bench_command)
cli.add_command(estimate_command)
cli.add_command(pull_command)
cli.add_command(push_command)
cli.add_command(list_command)
cli.add_command(show_command)
cli.add_command(rm_command)
cli.add_command(verify_command)
cli.add_command(gc_command)
cli.add_command(du_command)
cli.add_command(compare_command)
cli.add_command(quantize_command)
cli.add_command(gate_command)
cli.add_command(pin_command)
cli.add_command(report_command)
cli.add_command(smoke_command)
cli.add_command(check_lock_command)
cli.add_command(doctor_command)
cli.add_command(calibrate_command)
cli.add_command(plan_command)
cli.add_command(loadtest_command)
cli.add_command(cache_command)

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
