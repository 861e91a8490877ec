"""``lifecycle cache prune``: keep the per-case answer cache (.lifecycle/answers) bounded."""

from __future__ import annotations

from pathlib import Path

import click

from lifecycle.cli._options import json_option, workspace_option
from lifecycle.cli._output import emit
from lifecycle.errors import EXIT_OK


@click.group("cache")
def cache_command() -> None:
    """The answers cached per case by `eval` and `smoke` (.lifecycle/answers)."""


@cache_command.command("prune")
@workspace_option
@click.option(
    "--max-mb",
    type=click.FloatRange(min=0),
    help="Bound in MiB (default: $LIFECYCLE_ANSWERS_MAX_MB or 256); 0 empties the cache.",
)
@click.option("--dry-run", is_flag=True, help="Say what would be removed; remove nothing.")
@json_option
def prune_command(
    workspace_dir: Path | None, max_mb: float | None, dry_run: bool, as_json: bool
) -> int:
    """Remove unreadable answers, then the least recently used ones until under the bound."""
    from lifecycle.answers import ANSWERS_DIR, max_bytes_from_env, prune
    from lifecycle.config import load_workspace

    workspace = load_workspace(workspace_dir)
    bound = int(max_mb * 1024 * 1024) if max_mb is not None else max_bytes_from_env()
    result = prune(workspace.root / ANSWERS_DIR, bound, dry_run=dry_run)
    document = {"dry_run": dry_run, "directory": str(workspace.root / ANSWERS_DIR)}
    document.update(result.to_dict())
    verb = "would remove" if dry_run else "removed"
    mib = 1024 * 1024
    emit(
        as_json,
        document,
        lambda: (
            f"{verb} {result.removed} answer(s), {result.removed_bytes / mib:.1f} MiB "
            f"({result.invalid} unreadable); kept {result.kept}, "
            f"{result.kept_bytes / mib:.1f} MiB of {result.max_bytes / mib:.0f} MiB"
        ),
    )
    return EXIT_OK
