"""Turn exceptions into one-line messages and the contract's exit codes."""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

import click

from lifecycle.config import ENV_DEBUG
from lifecycle.errors import EXIT_FAILURE, EXIT_USAGE, LifecycleError


def handle_errors(run: Callable[[], Any]) -> int:
    """Call ``run``; return its integer result (or 0) or the exit code of what it raised."""
    debug = bool(os.environ.get(ENV_DEBUG))
    try:
        result = run()
        return result if isinstance(result, int) else 0
    except LifecycleError as exc:
        _report(f"error: {exc}", debug)
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.Abort:
        click.echo("aborted", err=True)
        return EXIT_FAILURE
    except click.ClickException as exc:
        exc.show()
        return EXIT_USAGE if isinstance(exc, click.UsageError) else exc.exit_code
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    except Exception as exc:  # a bug or an unexpected failure: still one line by default
        _report(f"error: unexpected {type(exc).__name__}: {exc}", debug)
        return EXIT_FAILURE


def _report(message: str, debug: bool) -> None:
    if debug:
        traceback.print_exc(file=sys.stderr)
    click.echo(message, err=True)
