"""``lifecycle pull | push | list | show | rm | verify``: the model store from the command line."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from lifecycle.cli._options import json_option, workspace_option
from lifecycle.cli._output import emit, emit_json, progress, progress_bars, table
from lifecycle.errors import EXIT_FAILURE, EXIT_OK, EXIT_UPSTREAM_CHANGED, UsageError

if TYPE_CHECKING:
    from lifecycle.store import Manifest, Store, Tag


@click.command("pull")
@click.argument("tags", nargs=-1)
@click.option("--all", "all_tags", is_flag=True, help="Every tag the workspace's Modelfiles use.")
@click.option(
    "--check",
    is_flag=True,
    help="Compare upstream revisions with the store, download nothing; exit 4 on a change.",
)
@click.option(
    "--mirror",
    metavar="oci://HOST/NAMESPACE",
    help="Pull the models pinned in models.lock from this mirror, by their pinned digests.",
)
@workspace_option
@json_option
def pull_command(
    tags: tuple[str, ...],
    all_tags: bool,
    check: bool,
    mirror: str | None,
    workspace_dir: Path | None,
    as_json: bool,
) -> int:
    """Pull model TAGs into the store (hf:, ollama:, oci://, pypi:, file:).

    With --check (and no TAG, every tracked tag): exit 4 when an upstream tag moved, 0 when
    nothing did. With --mirror, the pinned models of models.lock (or the pinned TAGs named) come
    from a mirror written by `lifecycle push --lock`; digests are checked against the lock.
    Progress goes to stderr; bars are off with --json, off when stderr is not a terminal, and
    off with LIFECYCLE_NO_PROGRESS=1. Registry credentials: LIFECYCLE_REGISTRY_HOST,
    LIFECYCLE_REGISTRY_USERNAME, LIFECYCLE_REGISTRY_PASSWORD, or the Docker config.
    """
    from lifecycle import sources

    store = _store()
    if mirror is not None:
        if check or all_tags:
            raise UsageError("--mirror pulls what models.lock pins: no --check or --all with it")
        return _pull_from_mirror(store, mirror, tags, workspace_dir, as_json)
    selected = _select_tags(tags, all_tags or (check and not tags), workspace_dir)
    if check:
        changes = [sources.check(store, tag) for tag in selected]
        changed = any(c.changed for c in changes)
        documents = [c.to_dict() for c in changes]
        emit(as_json, {"changed": changed, "tags": documents}, lambda: render_changes(documents))
        return EXIT_UPSTREAM_CHANGED if changed else EXIT_OK
    bars = progress_bars(enabled=not as_json)
    manifests = []
    try:
        for tag in selected:
            progress(f"pulling {tag}")
            manifests.append(sources.pull(store, tag, progress=bars))
    finally:
        bars.close()
    emit(as_json, {"pulled": [m.to_dict() for m in manifests]}, lambda: render_manifests(manifests))
    return EXIT_OK


@click.command("push")
@click.argument("arguments", nargs=-1, metavar="[TAG] DESTINATION")
@click.option(
    "--lock",
    "from_lock",
    is_flag=True,
    help="Push every model pinned in models.lock; DESTINATION is a mirror oci://HOST/NAMESPACE.",
)
@workspace_option
@json_option
def push_command(
    arguments: tuple[str, ...], from_lock: bool, workspace_dir: Path | None, as_json: bool
) -> int:
    """Push a stored model TAG to DESTINATION (oci://host[:port]/namespace/name:tag).

    The model is written as Ollama writes one (GGUF layer, Modelfile layers, config, manifest),
    so Ollama and `lifecycle pull` can both pull it. With --lock, every model pinned in the
    workspace's models.lock goes to the mirror DESTINATION under a name made from its tag and
    digest, which is where `lifecycle pull --mirror DESTINATION` looks for it.
    """
    from lifecycle.sources import canonical, mirror
    from lifecycle.store import parse_tag

    store = _store()
    if from_lock:
        if len(arguments) != 1:
            raise UsageError("push --lock takes one DESTINATION: the mirror oci://host/namespace")
        mirror.parse_mirror(arguments[0])
        jobs = [
            (m, mirror.mirror_tag(arguments[0], m.tag, m.digest))
            for m in _locked_manifests(workspace_dir, ())
        ]
    else:
        if len(arguments) != 2:
            raise UsageError("push takes TAG DESTINATION (or --lock DESTINATION)")
        tag, destination = canonical(parse_tag(arguments[0])), parse_tag(arguments[1])
        if destination.scheme != "oci":
            raise UsageError(f"push destination {destination} must be an oci:// tag")
        manifest = store.read_manifest(tag)
        if manifest is None or not store.has_all(manifest):
            raise UsageError(f"{tag} is not in the store (run: lifecycle pull {tag})")
        jobs = [(manifest, destination)]
    bars = progress_bars(enabled=not as_json)
    pushed = []
    try:
        for manifest, destination in jobs:
            progress(f"pushing {manifest.tag} to {destination}")
            pushed.append(mirror.push(store, manifest, destination, progress=bars))
    finally:
        bars.close()
    if as_json:
        emit_json({"pushed": [p.to_dict() for p in pushed]})
    else:
        rows = [[p.tag, p.destination, p.digest[7:19], p.size, p.uploaded] for p in pushed]
        click.echo(table(["tag", "destination", "digest", "size", "uploaded"], rows))
    return EXIT_OK


@click.command("list")
@json_option
def list_command(as_json: bool) -> int:
    """List the tags in the store with their digest, size and upstream revision."""
    manifests = _store().list_manifests()
    emit(as_json, {"models": [m.to_dict() for m in manifests]}, lambda: render_manifests(manifests))
    return EXIT_OK


@click.command("show")
@click.argument("tag")
@click.option("--tensors", is_flag=True, help="Include the per-tensor table.")
@click.option(
    "--modelfile",
    "as_modelfile",
    is_flag=True,
    help="TAG is a variant or model of the workspace: print its resolved Modelfile.",
)
@workspace_option
@json_option
def show_command(
    tag: str, tensors: bool, as_modelfile: bool, workspace_dir: Path | None, as_json: bool
) -> int:
    """Show a model's GGUF summary, source and revision.

    A tag not in the store is read from upstream: hf:, ollama: and oci:// tags fetch only the
    GGUF header with range requests. With --modelfile, TAG names a variant and its resolved
    Modelfile is printed the way `ollama show --modelfile` prints one (FROM the blob path).
    """
    if as_modelfile:
        return _show_variant_modelfile(tag, workspace_dir, as_json)
    from lifecycle.gguf import read_gguf
    from lifecycle.sources import canonical, hf, oci
    from lifecycle.store import StoreError, parse_tag

    store = _store()
    parsed = canonical(parse_tag(tag))
    manifest = store.read_manifest(parsed)
    modelfile = None
    upstream: dict[str, Any] | None = None
    if manifest and store.has_all(manifest):
        info = read_gguf(store.model_path(manifest))
        path = store.modelfile_path(parsed)
        modelfile = path.read_text(encoding="utf-8") if path.is_file() else None
    elif parsed.scheme in ("hf", "ollama", "oci"):
        module = hf if parsed.scheme == "hf" else oci
        info, remote = module.read_header(parsed)
        upstream = {"source": remote.source, "revision": remote.revision, "url": remote.upstream}
        upstream["parts"] = [vars(p) for p in remote.parts]
    elif parsed.scheme == "file":
        info = read_gguf(parsed.reference)
    else:
        raise StoreError(f"{parsed} is not in the store (run: lifecycle pull {parsed})")
    document = {
        "tag": str(parsed),
        "in_store": upstream is None and manifest is not None,
        "manifest": manifest.to_dict() if manifest else None,
        "upstream": upstream,
        "gguf": info.to_dict(include_tensors=tensors),
        "modelfile": modelfile,
    }
    emit(as_json, document, lambda: render_show(document))
    return EXIT_OK


@click.command("rm")
@click.argument("tags", nargs=-1, required=True)
@json_option
def rm_command(tags: tuple[str, ...], as_json: bool) -> int:
    """Remove TAGs from the store; blobs no other tag references are deleted."""
    from lifecycle.sources import canonical
    from lifecycle.store import parse_tag

    store = _store()
    parsed = [canonical(parse_tag(t)) for t in tags]  # all valid before anything is removed
    removed = []
    for tag in parsed:
        manifest, deleted = store.remove(tag)
        removed.append({"tag": manifest.tag, "digest": manifest.digest, "deleted_blobs": deleted})
        progress(f"removed {manifest.tag} ({len(deleted)} blob(s) deleted)")
    if as_json:
        emit_json({"removed": removed})
    return EXIT_OK


@click.command("verify")
@json_option
def verify_command(as_json: bool) -> int:
    """Re-hash every blob against its manifest; exit 1 if any is missing or corrupt."""
    checks = _store().verify()
    ok = all(c.status == "ok" for c in checks)
    if as_json:
        emit_json({"ok": ok, "blobs": [c.to_dict() for c in checks]})
    else:
        rows = [[c.status, c.digest, c.size, ", ".join(c.tags)] for c in checks]
        click.echo(table(["status", "digest", "size", "tags"], rows))
        click.echo(f"{len(checks)} blob(s), " + ("all ok" if ok else "PROBLEMS FOUND"))
    return EXIT_OK if ok else EXIT_FAILURE


def render_manifests(manifests: list[Manifest]) -> str:
    """One row per tag: digest (short), size in MB (as ``build`` shows it), revision, pulled.

    Revisions are shown whole (a package version or a quantization's provenance means
    nothing cut in half); only a commit hash is shortened, the way git does.
    """
    rows = [
        [m.tag, m.digest[7:19], _megabytes(m.total_size), _short_revision(m.revision),
         len(m.digests), m.pulled_at]
        for m in manifests
    ]  # fmt: skip
    return table(["tag", "digest", "size", "revision", "files", "pulled_at"], rows)


def render_changes(changes: list[dict[str, Any]]) -> str:
    """``pull --check``: one line per tag; a change shows old → new revision and digest."""
    lines = []
    for c in changes:
        if c["status"] == "unchanged":
            lines.append(f"unchanged  {c['tag']}  {c['new_revision']}")
        elif c["status"] == "new":
            lines.append(f"new        {c['tag']}  {c['new_revision']} ({c['new_digest']})")
        else:
            lines.append(
                f"changed    {c['tag']}  revision {c['old_revision']} → {c['new_revision']}, "
                f"digest {c['old_digest']} → {c['new_digest']}"
            )
    return "\n".join(lines) or "no tags to check"


def render_show(doc: dict[str, Any]) -> str:
    """``show``: where the model came from, then its GGUF summary, then any Modelfile."""
    g = doc["gguf"]
    m = doc["manifest"] if doc["in_store"] else None
    u = doc["upstream"] or {}
    rows = [
        ("tag", doc["tag"]),
        ("source", m["source"] if m else u.get("source", "file")),
        ("revision", m["revision"] if m else u.get("revision")),
        ("digest", m["digest"] if m else None),
        ("in store", "yes" if doc["in_store"] else "no (header read upstream)"),
        ("architecture", g["architecture"]),
        ("name", g["name"]),
        ("parameters", _count(g["parameter_count"])),
        ("file type", g["file_type"]),
        ("tensor types", ", ".join(f"{k}:{v}" for k, v in sorted(g["tensor_type_counts"].items()))),
        (
            "bits per weight",
            None if g["bits_per_weight"] is None else f"{g['bits_per_weight']:.2f}",
        ),
        (
            "file size",
            None
            if g["file_size"] is None
            else f"{_megabytes(g['file_size'])} ({g['file_size']} bytes)",
        ),
        ("context length", g["context_length"]),
        ("blocks", g["block_count"]),
        ("embedding", g["embedding_length"]),
        ("heads / kv heads", f"{g['head_count']} / {g['head_count_kv']}"),
        ("head dims (k/v)", f"{g['key_length']} / {g['value_length']}"),
        ("sliding window", g["sliding_window"]),
        ("vocabulary", g["vocab_size"]),
        ("tokenizer", g["tokenizer_model"]),
        ("chat template", "yes" if g["chat_template"] else "no"),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"{k.ljust(width)}  {'-' if v is None else v}" for k, v in rows]
    if g.get("tensors"):
        lines += ["", f"tensors ({len(g['tensors'])}):", render_tensors(g["tensors"])]
    if doc["modelfile"]:
        lines += ["", "Modelfile (as the registry serves it):", doc["modelfile"].rstrip()]
    return "\n".join(lines)


def render_tensors(tensors: list[dict[str, Any]]) -> str:
    """``show --tensors``: one row per tensor in file order, with its size and offset."""
    rows = []
    for t in tensors:
        elements = 1
        for dim in t["shape"]:
            elements *= dim
        bpw = 8 * t["n_bytes"] / elements if elements else None
        shape = " x ".join(str(d) for d in t["shape"])
        rows.append(
            [t["name"], t["ggml_type_name"], shape, elements, bpw, _tensor_size(t["n_bytes"]),
             t["offset"]]
        )  # fmt: skip
    return table(["name", "type", "shape", "elements", "bits/weight", "size", "offset"], rows)


def _megabytes(size: int | None) -> str | None:
    return None if size is None else f"{size / 1e6:.1f} MB"


def _tensor_size(size: int) -> str:
    # Norm and bias tensors are a few kB: in MB they would all read 0.0.
    return f"{size / 1e6:.1f} MB" if size >= 1e6 else f"{size / 1e3:.1f} kB"


def _count(value: int | None) -> str | None:
    if value is None:
        return None
    scaled = f"{value / 1e9:.2f} B" if value >= 1e9 else f"{value / 1e6:.1f} M"
    return f"{scaled} ({value})"


def _short_revision(revision: str | None) -> str | None:
    if revision and len(revision) == 40 and all(c in "0123456789abcdef" for c in revision):
        return revision[:12]
    return revision


def _store() -> Store:
    from lifecycle.config import lifecycle_home
    from lifecycle.store import Store

    return Store(lifecycle_home())


def _pull_from_mirror(
    store: Store, base: str, tags: tuple[str, ...], workspace_dir: Path | None, as_json: bool
) -> int:
    from lifecycle.sources import mirror

    mirror.parse_mirror(base)
    bars = progress_bars(enabled=not as_json)
    manifests = []
    try:
        for locked in _locked_manifests(workspace_dir, tags):
            progress(f"pulling {locked.tag} from {base} ({locked.digest})")
            manifests.append(mirror.pull_locked(store, base, locked, progress=bars))
    finally:
        bars.close()
    emit(as_json, {"pulled": [m.to_dict() for m in manifests]}, lambda: render_manifests(manifests))
    return EXIT_OK


def _locked_manifests(workspace_dir: Path | None, tags: tuple[str, ...]) -> list[Manifest]:
    """The distinct models models.lock pins (optionally only ``tags``), one per tag+digest."""
    from lifecycle.config import load_workspace
    from lifecycle.lockfile import LOCK_FILE, read_lock
    from lifecycle.sources import canonical
    from lifecycle.store import parse_tag

    root = load_workspace(workspace_dir).root
    lock = read_lock(root / LOCK_FILE)
    found: dict[tuple[str, str], Manifest] = {}
    for _name, entry in sorted(lock.variants.items()):
        manifest = entry.manifest()
        if manifest is not None and not manifest.tag.startswith("file:"):
            found.setdefault((manifest.tag, manifest.digest), manifest)
    wanted = {str(canonical(parse_tag(t))) for t in tags}
    missing = wanted - {tag for tag, _ in found}
    if missing:
        raise UsageError(f"not pinned in {LOCK_FILE}: {', '.join(sorted(missing))}")
    selected = [m for (tag, _), m in found.items() if not wanted or tag in wanted]
    if not selected:
        raise UsageError(f"{LOCK_FILE} pins no registry, hub or package model")
    return selected


def _select_tags(tags: tuple[str, ...], tracked: bool, workspace_dir: Path | None) -> list[Tag]:
    from lifecycle.config import load_workspace
    from lifecycle.sources import tracked_tags
    from lifecycle.store import parse_tag

    if tags and tracked:
        raise UsageError("give TAGs or --all, not both")
    if tags:
        return [parse_tag(t) for t in tags]
    if not tracked:
        raise UsageError("nothing to pull: give one or more TAGs, or --all")
    return tracked_tags(load_workspace(workspace_dir))


def _show_variant_modelfile(name: str, workspace_dir: Path | None, as_json: bool) -> int:
    from dataclasses import replace

    from lifecycle import modelfile as mf
    from lifecycle.cli.modelfile import one_variant as _one_variant

    variant = _one_variant(workspace_dir, name)
    resolved = replace(variant.modelfile, from_=[str(variant.blob_path)])
    if as_json:
        emit_json({"variant": variant.to_dict(), "modelfile": resolved.to_dict()})
    else:
        click.echo(f"# Modelfile of {variant.name} (variant {variant.id})")
        click.echo(f"# FROM {variant.source} at {variant.blob_digest}")
        click.echo(mf.serialise(resolved), nl=False)
    return EXIT_OK
