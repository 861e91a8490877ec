"""Modelfile and variant commands: ``modelfile``, ``prompt``, ``build``, ``lint``."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import click

from lifecycle.cli._options import json_option, workspace_option
from lifecycle.cli._output import emit_json, library_progress, progress, table
from lifecycle.errors import EXIT_OK, UsageError


@click.command("modelfile")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@json_option
def modelfile_command(path: Path, as_json: bool) -> int:
    """Print a Modelfile in canonical form (or its parsed structure with --json)."""
    from lifecycle import modelfile as mf

    parsed = mf.parse_file(path)
    for warning in parsed.warnings:
        progress(f"warning: {warning}")
    if as_json:
        emit_json(parsed.to_dict())
    else:
        click.echo(mf.serialise(parsed), nl=False)
    return EXIT_OK


@click.command("prompt")
@click.argument("target")
@click.option(
    "--messages",
    "messages_file",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help='JSON file: a list of {"role", "content"} messages (the conversation to send).',
)
@workspace_option
def prompt_command(target: str, messages_file: Path, workspace_dir: Path | None) -> int:
    """Print the exact prompt text the engine receives for a conversation, byte for byte.

    TARGET is a Modelfile path or a variant/model name from lifecycle.toml.
    """
    from lifecycle import modelfile as mf
    from lifecycle.gguf import read_gguf
    from lifecycle.prompt import render_prompt

    messages = _read_messages(messages_file)
    if Path(target).is_file():
        parsed = mf.parse_file(Path(target))
        chat_template = None
        if parsed.template is None:
            root = _modelfile_workspace(Path(target), workspace_dir)
            local = mf.resolve_local_path(parsed.from_[0], Path(target).parent, root)
            if local is not None and local.is_file():
                chat_template = read_gguf(local).chat_template
        text = render_prompt(
            parsed, messages, chat_template=chat_template, modelfile_path=Path(target)
        )
    else:
        variant = one_variant(workspace_dir, target)
        text = render_prompt(
            variant.modelfile,
            messages,
            chat_template=read_gguf(variant.blob_path).chat_template,
            modelfile_path=variant.modelfile_path,
        )
    click.echo(text, nl=False)
    return EXIT_OK


@click.command("build")
@click.argument("models", nargs=-1)
@workspace_option
@json_option
def build_command(models: tuple[str, ...], workspace_dir: Path | None, as_json: bool) -> int:
    """Expand each model's variant matrix (quant levels x PARAMETER axes) into variants.

    Sources are pulled and missing quant levels made locally, so every listed variant is
    ready to run. Each variant's id is a hash of its blob digest and resolved Modelfile.
    """
    from lifecycle.config import load_workspace
    from lifecycle.store import Store
    from lifecycle.variants import resolve_variants

    workspace = load_workspace(workspace_dir)
    with library_progress(enabled=not as_json):
        variants = resolve_variants(workspace, Store(workspace.home), list(models) or None)
    if as_json:
        emit_json({"variants": [v.to_dict() for v in variants]})
        return EXIT_OK
    rows = [
        [v.name, v.id, v.quant, v.blob_digest[:19], _human_size(v.manifest.size), _params(v)]
        for v in variants
    ]
    click.echo(table(["variant", "id", "quant", "blob", "size", "overrides"], rows))
    return EXIT_OK


@click.command("lint")
@click.argument("models", nargs=-1)
@click.option(
    "--run",
    "run_ref",
    help="Run record whose free-mode outputs to check (a run.json path or run id; default: "
    "the latest run).",
)
@workspace_option
@json_option
def lint_command(
    models: tuple[str, ...], run_ref: str | None, workspace_dir: Path | None, as_json: bool
) -> int:
    """Check Modelfiles for template, stop-sequence, context and JSON-contract mistakes.

    MODELS are workspace models or variants (default: all), or Modelfile paths (linted
    against the model their FROM names, e.g. modelfiles/harbor-triage-chat.Modelfile).
    Outputs of a run whose variant has the same id (same weights and resolved Modelfile)
    are checked too: free-mode answers that never end are the wrong-template symptom.
    """
    from lifecycle.config import ModelSettings, load_workspace
    from lifecycle.gguf import read_gguf
    from lifecycle.lint import lint_variant
    from lifecycle.store import Store
    from lifecycle.variants import expand_variants, resolve_variants

    workspace = load_workspace(workspace_dir)
    store = Store(workspace.home)
    paths = [Path(m) for m in models if m.endswith(".Modelfile") or Path(m).is_file()]
    names = [m for m in models if Path(m) not in paths]
    variants = [] if paths and not names else resolve_variants(workspace, store, names or None)
    suites: dict[str, list[str] | None] = {
        v.name: list(workspace.models[v.model].suites) for v in variants
    }
    for path in paths:
        if not path.is_file():
            raise UsageError("Modelfile not found", path=path)
        settings = ModelSettings(
            name=path.name.removesuffix(".Modelfile"), modelfile=path.resolve(), suites=()
        )
        for variant in expand_variants(workspace, store, settings):
            variants.append(variant)
            suites[variant.name] = None  # not a workspace model: its suites are unknown
    cases = _run_cases(workspace, run_ref)
    findings = []
    for variant in variants:
        info = read_gguf(variant.blob_path)
        findings += lint_variant(variant, info, suites[variant.name], cases.get(variant.id))
    if as_json:
        emit_json({"findings": [f.to_dict() for f in findings]})
    elif findings:
        # A finding is a sentence or two: wrapped under its heading, not a 300-column table.
        for f in findings:
            click.echo(f"{f.variant}: {f.check}")
            click.echo(
                textwrap.fill(
                    f.message,
                    96,
                    initial_indent="    ",
                    subsequent_indent="    ",
                    break_on_hyphens=False,
                )
            )
    else:
        click.echo("no findings")
    return EXIT_OK


def _run_cases(workspace: Any, run_ref: str | None) -> dict[str, list[dict[str, Any]]]:
    """A run record's cases by variant id; empty when there is no run yet (lint needs none)."""
    from lifecycle.runs import find_run

    try:
        run = find_run(workspace.runs_dir, run_ref).to_dict()
    except UsageError:
        if run_ref is not None:
            raise
        return {}
    ids = {v["variant"]["name"]: v["variant"]["id"] for v in run["variants"]}
    out: dict[str, list[dict[str, Any]]] = {}
    for case in run["cases"]:
        out.setdefault(ids.get(case["variant"], ""), []).append(case)
    return out


def _modelfile_workspace(modelfile: Path, workspace_dir: Path | None) -> Path:
    """The root a standalone Modelfile's FROM path must stay inside.

    ``--workspace`` when given; else the workspace holding the Modelfile (its nearest
    lifecycle.toml upwards), else the Modelfile's own folder. Never the current directory:
    the same command must mean the same thing wherever it is run from.
    """
    from lifecycle.config import find_workspace_root
    from lifecycle.errors import ConfigError

    if workspace_dir is not None:
        return workspace_dir
    try:
        return find_workspace_root(modelfile.parent)
    except ConfigError:
        return modelfile.resolve().parent


def one_variant(workspace_dir: Path | None, name: str) -> Any:
    from lifecycle.config import load_workspace
    from lifecycle.store import Store
    from lifecycle.variants import resolve_variants

    workspace = load_workspace(workspace_dir)
    variants = resolve_variants(workspace, Store(workspace.home), [name])
    if len(variants) != 1:
        names = ", ".join(v.name for v in variants)
        raise UsageError(f"{name!r} names {len(variants)} variants ({names}); name one")
    return variants[0]


def _read_messages(path: Path) -> list[dict[str, str]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot read: {exc.strerror}", path=path) from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"not JSON: {exc.msg}", path=path, line=exc.lineno) from None
    if isinstance(data, dict) and "messages" in data:
        data = data["messages"]
    ok = isinstance(data, list) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in data
    )
    if not ok or not data:
        raise UsageError('expected a non-empty list of {"role", "content"} objects', path=path)
    return [{"role": m["role"], "content": m["content"]} for m in data]


def _params(variant: Any) -> str:
    return " ".join(f"{k}={v}" for k, v in variant.overrides.items()) or "-"


def _human_size(size: int) -> str:
    return f"{size / 1e6:.1f} MB"
