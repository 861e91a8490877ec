"""Options shared by the command groups, declared once."""

from __future__ import annotations

from pathlib import Path

import click

from lifecycle.config import ENV_WORKSPACE

workspace_option = click.option(
    "--workspace",
    "-C",
    "workspace_dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar=ENV_WORKSPACE,
    help=f"Workspace directory (default: nearest lifecycle.toml upwards; env {ENV_WORKSPACE}).",
)

json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON document on stdout."
)

template_option = click.option(
    "--template",
    type=click.Choice(["server", "modelfile"]),
    help="openai engine: test the server's chat template (chat completions, the default) or "
    "the Modelfile's TEMPLATE (its rendering sent to /v1/completions).",
)
