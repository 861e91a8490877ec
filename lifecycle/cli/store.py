"""``lifecycle gc | du``: what the store and the workspace hold, what is kept and why."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from lifecycle.cli._options import json_option, workspace_option
from lifecycle.cli._output import emit, progress, table
from lifecycle.errors import EXIT_OK

if TYPE_CHECKING:
    from lifecycle.retention import Plan


@click.command("gc")
@click.option("--dry-run", is_flag=True, help="Say what would be removed; remove nothing.")
@workspace_option
@json_option
def gc_command(dry_run: bool, workspace_dir: Path | None, as_json: bool) -> int:
    """Remove what nothing references: blobs, manifests, temp files, old runs and caches.

    A blob stays while models.lock, baselines/, the latest run, a Modelfile's FROM (or a
    quant level made from it) or [store] keep names it, or while it is younger than
    [store] grace_days. Each line says why a thing is kept or removed. Runs under the store
    lock: a pull in progress finishes first.
    """
    from lifecycle import retention
    from lifecycle.config import load_workspace
    from lifecycle.store import Store

    workspace = load_workspace(workspace_dir)
    store = Store(workspace.home)
    found = retention.collect(
        workspace,
        store,
        dry_run=dry_run,
        waiting=lambda: progress("gc: waiting for a pull or quantize in progress to finish"),
    )
    document = {"dry_run": dry_run, **found.to_dict()}
    emit(as_json, document, lambda: render_gc(found, dry_run))
    return EXIT_OK


@click.command("du")
@workspace_option
@json_option
def du_command(workspace_dir: Path | None, as_json: bool) -> int:
    """Disk used by the store, by blob with its tags and users: pinned, kept or reclaimable."""
    from lifecycle import retention
    from lifecycle.config import load_workspace
    from lifecycle.store import Store

    workspace = load_workspace(workspace_dir)
    store = Store(workspace.home)
    with store.exclusive(lambda: progress("du: waiting for a pull in progress to finish")):
        found = retention.plan(workspace, store)
    document = du_document(found)
    emit(as_json, document, lambda: render_du(document))
    return EXIT_OK


def du_document(found: Plan) -> dict[str, Any]:
    """``du --json``: one row per blob, then totals by state and by kind of thing."""
    blobs = []
    totals = {"pinned": 0, "kept": 0, "reclaimable": 0}
    for item in found.items:
        if item.kind != "blob":
            continue
        state = "pinned" if item.pinned else "kept" if item.action == "keep" else "reclaimable"
        totals[state] += item.size
        blobs.append(
            {
                "digest": item.digest,
                "size": item.size,
                "state": state,
                "tags": item.tags,
                "reasons": item.reasons,
            }
        )
    by_kind: dict[str, dict[str, int]] = {}
    for item in found.items:
        if item.kind != "blob":
            row = by_kind.setdefault(item.kind, {"kept": 0, "reclaimable": 0})
            row["kept" if item.action == "keep" else "reclaimable"] += item.size
    return {
        "blobs": blobs,
        "blob_bytes": totals,
        "other_bytes": by_kind,
        "reclaimable_bytes": found.bytes("remove"),
    }


def render_gc(found: Plan, dry_run: bool) -> str:
    rows = [
        [
            ("would remove" if dry_run else "removed") if i.action == "remove" else "kept",
            i.kind,
            _mb(i.size),
            _what(i),
            "; ".join(i.reasons),
        ]
        for i in found.items
    ]
    verb = "would reclaim" if dry_run else "reclaimed"
    count = len(found.of("remove"))
    summary = (
        f"{verb} {_mb(found.bytes('remove'))} ({count} item(s)); kept {_mb(found.bytes('keep'))}"
    )
    return (table(["action", "kind", "size", "what", "why"], rows) + "\n" if rows else "") + summary


def render_du(doc: dict[str, Any]) -> str:
    rows = [
        [b["digest"][7:19], _mb(b["size"]), b["state"], ", ".join(b["tags"]) or "-",
         "; ".join(b["reasons"])]
        for b in doc["blobs"]
    ]  # fmt: skip
    lines = [table(["blob", "size", "state", "tags", "why"], rows)] if rows else []
    totals = doc["blob_bytes"]
    lines.append(
        f"blobs: {_mb(totals['pinned'])} pinned, {_mb(totals['kept'])} kept, "
        f"{_mb(totals['reclaimable'])} reclaimable"
    )
    for kind, row in sorted(doc["other_bytes"].items()):
        lines.append(f"{kind}: {_mb(row['kept'])} kept, {_mb(row['reclaimable'])} reclaimable")
    lines.append(f"`lifecycle gc` would reclaim {_mb(doc['reclaimable_bytes'])}")
    return "\n".join(lines)


def _what(item: Any) -> str:
    if item.kind == "blob":
        tags = f" ({', '.join(item.tags)})" if item.tags else ""
        return f"{item.digest[7:19]}{tags}"
    if item.kind == "manifest":
        return ", ".join(item.tags)
    return str(item.path)


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"
