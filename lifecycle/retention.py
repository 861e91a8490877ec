"""What the store and the workspace keep, and why: the plan behind ``gc`` and ``du``.

Every blob, manifest, temp file, run record and cache entry gets a verdict (keep or remove)
with its reasons. A blob is kept while anything names it:

* a pin in ``models.lock``, a baseline in ``baselines/``, or the latest run (what
  ``lifecycle pin`` would pin next);
* a tracked tag: a Modelfile's FROM (a tag, or a local file imported as ``file:``), a quant
  level the variant matrix makes from it, or a tag listed in ``[store] keep``;
* its recent arrival: anything pulled or written within ``[store] grace_days``, so a pull for
  another workspace sharing the store, or a blob waiting for its manifest, is not lost.

Everything else goes, with the reason. An interrupted run's checkpoints resume against the
workspace's variants, which are tracked, so their blobs are always kept. The plan is made and
carried out under the store's exclusive lock (:meth:`lifecycle.store.Store.exclusive`): a pull
in flight finishes first, and its blob is seen with its manifest.

``[store]`` in ``lifecycle.toml`` (all optional)::

    keep = ["hf:owner/repo:Q8_0"]  # tags to keep though no Modelfile uses them
    grace_days = 7                 # untracked content younger than this is kept
    keep_runs = 20                 # newest run records kept in runs_dir (latest always)
    cache_days = 30                # cache entries unused for longer are removed
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from filelock import Timeout

from lifecycle import modelfile as mf
from lifecycle.baselines import BASELINES_DIR, load_baselines
from lifecycle.config import TableReader, Workspace
from lifecycle.errors import TagError
from lifecycle.fsutil import sweep_temps
from lifecycle.gguf import HEADER_CACHE_DIR
from lifecycle.lockfile import LOCK_FILE, read_lock
from lifecycle.runs import LATEST, RUN_FILE, read_run
from lifecycle.sources import canonical
from lifecycle.store import DIGEST_RE, Store
from lifecycle.tags import Tag, from_tag, parse_tag

DAY_S = 86400.0
# Workspace caches (relative to the root) and store caches (relative to LIFECYCLE_HOME).
WORKSPACE_CACHES = (Path(".lifecycle") / "cache",)
STORE_CACHES = (Path("engine-checks"), Path(HEADER_CACHE_DIR))

KEEP = "keep"
REMOVE = "remove"


@dataclass(frozen=True)
class RetentionSettings:
    """``[store]`` of ``lifecycle.toml``."""

    keep: tuple[str, ...] = ()
    grace_days: float = 7.0
    keep_runs: int = 20
    cache_days: float = 30.0


def load_settings(workspace: Workspace) -> RetentionSettings:
    """Read and validate ``[store]``; each error names the key."""
    table = workspace.document_reader().table("store")
    table.reject_unknown({"keep", "grace_days", "keep_runs", "cache_days"})
    defaults = RetentionSettings()
    keep = table.string_list("keep", [])
    for index, text in enumerate(keep):
        try:
            parse_tag(text)
        except TagError as exc:
            raise table.fail(f"keep[{index}]", exc.message) from None
    return RetentionSettings(
        keep=tuple(keep),
        grace_days=_number(table, "grace_days", defaults.grace_days),
        keep_runs=table.integer("keep_runs", defaults.keep_runs, minimum=1),
        cache_days=_number(table, "cache_days", defaults.cache_days),
    )


def _number(table: TableReader, key: str, default: float) -> float:
    value = table.number(key, default, minimum=0)
    return default if value is None else value


@dataclass
class Item:
    """One thing on disk and its verdict."""

    kind: str  # blob, manifest, temp, partial, stamp, run, cache
    path: Path
    size: int
    action: str = REMOVE
    reasons: list[str] = field(default_factory=list)
    digest: str | None = None
    tags: list[str] = field(default_factory=list)  # blobs: the tags whose manifests name it
    pinned: bool = False  # blobs: a pin, baseline or the latest run names it

    def keep(self, reason: str) -> None:
        self.action = KEEP
        if reason not in self.reasons:
            self.reasons.append(reason)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = str(self.path)
        return data


@dataclass
class Plan:
    """Every item gc would keep or remove; ``du`` reads the same plan."""

    items: list[Item]
    settings: RetentionSettings

    def of(self, action: str, kind: str | None = None) -> list[Item]:
        return [i for i in self.items if i.action == action and kind in (None, i.kind)]

    def bytes(self, action: str, kind: str | None = None) -> int:
        return sum(i.size for i in self.of(action, kind))

    def to_dict(self) -> dict[str, Any]:
        return {
            "settings": asdict(self.settings),
            "reclaimable_bytes": self.bytes(REMOVE),
            "kept_bytes": self.bytes(KEEP),
            "items": [i.to_dict() for i in self.items],
        }


def plan(workspace: Workspace, store: Store, *, now: float | None = None) -> Plan:
    """What gc would do now (hold :meth:`Store.exclusive` for a plan that will be acted on)."""
    settings = load_settings(workspace)
    now = time.time() if now is None else now
    grace_s = settings.grace_days * DAY_S
    pinned = _pinned_digests(workspace)
    kept_tags = _tracked(workspace, store) | {
        str(canonical(parse_tag(t))): "listed in [store] keep" for t in settings.keep
    }

    items: list[Item] = []
    kept_digests: dict[str, list[str]] = {d: list(r) for d, r in pinned.items()}
    tags_of: dict[str, list[str]] = {}
    for path, manifest in store.manifest_files():
        item = Item("manifest", path, _size(path) + _size(path.with_suffix(".Modelfile")))
        item.tags = [manifest.tag]
        for digest in manifest.digests:
            tags_of.setdefault(digest, []).append(manifest.tag)
        if manifest.tag in kept_tags:
            item.keep(kept_tags[manifest.tag])
        for digest in manifest.digests:
            for reason in pinned.get(digest, []):
                item.keep(reason)
        age = now - _mtime(path)  # when it was written here (pulled_at can be upstream's)
        if age < grace_s:
            item.keep(f"pulled {_days(age)} ago, within [store] grace_days")
        if item.action == KEEP:
            for digest in manifest.digests:
                kept_digests.setdefault(digest, []).append(
                    f"{manifest.tag}: {'; '.join(item.reasons)}"
                )
        else:
            item.reasons.append(f"{manifest.tag}: no Modelfile, pin, baseline or keep names it")
        items.append(item)

    for path in sorted(store.blobs.glob("sha256-*")) if store.blobs.is_dir() else []:
        digest = path.name.replace("-", ":", 1)
        if not DIGEST_RE.fullmatch(digest):
            continue
        item = Item("blob", path, _size(path), digest=digest, tags=sorted(tags_of.get(digest, [])))
        item.pinned = digest in pinned
        for reason in kept_digests.get(digest, []):
            item.keep(reason)
        age = now - _mtime(path)
        if item.action == REMOVE and age < grace_s:
            item.keep(f"written {_days(age)} ago, within [store] grace_days")
        if item.action == REMOVE:
            named = f" (named only by {', '.join(item.tags)}, removed too)" if item.tags else ""
            item.reasons.append("no pin, baseline, latest run or kept tag references it" + named)
        items.append(item)

    items += _temps(store, now, grace_s)
    items += _stamps(store)
    items += _runs(workspace.runs_dir, settings.keep_runs)
    for root, folders in ((workspace.root, WORKSPACE_CACHES), (store.home, STORE_CACHES)):
        for folder in folders:
            items += _cache(root / folder, now, settings.cache_days)
    return Plan(items, settings)


def collect(
    workspace: Workspace,
    store: Store,
    *,
    dry_run: bool = False,
    waiting: Callable[[], None] | None = None,
) -> Plan:
    """Plan and (unless ``dry_run``) remove, all under the store's exclusive lock."""
    with store.exclusive(waiting):
        found = plan(workspace, store)
        if dry_run:
            return found
        for item in found.of(REMOVE):
            _remove(store, item)
    return found


def _remove(store: Store, item: Item) -> None:
    if item.kind == "blob" and item.digest:
        store.delete_blob(item.digest)
    elif item.kind == "manifest":
        item.path.with_suffix(".Modelfile").unlink(missing_ok=True)
        item.path.unlink(missing_ok=True)
    elif item.kind == "temp":
        # A sweep again, not an unlink: a writer may have started since the plan.
        sweep_temps(item.path.parent, item.path.name)
    elif item.kind == "partial" and item.digest:
        # Only while no pull is resuming it (the pull holds the digest's lock meanwhile).
        with contextlib.suppress(Timeout), store.blob_lock(item.digest).acquire(timeout=0):
            item.path.unlink(missing_ok=True)
    elif item.kind == "run":
        shutil.rmtree(item.path, ignore_errors=True)
    else:
        item.path.unlink(missing_ok=True)


# --- what names a blob --------------------------------------------------------------------


def _pinned_digests(workspace: Workspace) -> dict[str, list[str]]:
    """Digests named by models.lock, baselines/ and the latest run, with the reason."""
    found: dict[str, list[str]] = {}

    def add(digest: Any, reason: str) -> None:
        if isinstance(digest, str) and DIGEST_RE.fullmatch(digest):
            found.setdefault(digest, []).append(reason)

    for name, entry in sorted(read_lock(workspace.root / LOCK_FILE).variants.items()):
        add(entry.blob_sha256, f"pinned in {LOCK_FILE} ({name})")
        for part in entry.parts:
            add(part.get("digest"), f"pinned in {LOCK_FILE} ({name})")
    for name, baseline in sorted(load_baselines(workspace.root).items()):
        add(baseline.variant.blob_digest, f"baseline of {name} in {BASELINES_DIR}/")
    latest = workspace.runs_dir / LATEST
    if latest.is_file():
        record = read_run(latest)
        for run in record.variants:
            add(run.variant.blob_digest, f"latest run {record.run_id}")
    return found


def _tracked(workspace: Workspace, store: Store) -> dict[str, str]:
    """Tags the workspace uses (FROM lines and the quant levels made from them) -> reason."""
    tags: dict[str, str] = {}
    for settings in workspace.models.values():
        path = settings.modelfile
        for source in mf.parse_file(path).from_:
            local = mf.resolve_local_path(source, path.parent, workspace.root)
            tag = Tag("file", str(local.resolve())) if local else canonical(from_tag(source, path))
            tags[str(tag)] = f"FROM of model {settings.name}"
            manifest = store.read_manifest(tag)
            if manifest is None:
                continue
            for quant in settings.quants:
                tags[f"quantized:{manifest.digest}/{quant.upper()}"] = (
                    f"quant {quant.upper()} of model {settings.name}"
                )
    return tags


# --- debris, runs and caches ---------------------------------------------------------------


def _temps(store: Store, now: float, grace_s: float) -> list[Item]:
    items = []
    folders = [store.blobs] + (
        sorted(p for p in store.manifests.iterdir() if p.is_dir())
        if store.manifests.is_dir()
        else []
    )
    for folder in folders:
        pattern = ".*.incomplete" if folder == store.blobs else ".*.tmp"
        for temp, size in sweep_temps(folder, pattern, dry_run=True):
            items.append(Item("temp", temp, size, reasons=["left by a killed writer"]))
    for path in sorted(store.blobs.glob(".sha256-*.partial")) if store.blobs.is_dir() else []:
        digest = path.name[1:].removesuffix(".partial").replace("-", ":", 1)
        item = Item("partial", path, _size(path), digest=digest)
        age = now - _mtime(path)
        if age < grace_s:
            item.keep(f"interrupted download, {_days(age)} old: pull again to resume it")
        else:
            item.reasons.append(f"interrupted download untouched for {_days(age)}")
        items.append(item)
    return items


def _stamps(store: Store) -> list[Item]:
    folder = store.stamps
    return [
        Item("stamp", path, _size(path), reasons=["verification stamp of a deleted blob"])
        for path in (sorted(folder.iterdir()) if folder.is_dir() else [])
        if not (store.blobs / path.name).exists()
    ]


def _runs(runs_dir: Path, keep_runs: int) -> list[Item]:
    runs = [p for p in runs_dir.iterdir() if (p / RUN_FILE).is_file()] if runs_dir.is_dir() else []
    runs.sort(key=lambda p: (_mtime(p / RUN_FILE), p.name), reverse=True)
    latest = _latest_id(runs_dir)
    items = []
    for index, path in enumerate(runs):
        item = Item("run", path, sum(_size(f) for f in path.rglob("*") if f.is_file()))
        if index < keep_runs:
            item.keep(f"one of the newest {keep_runs} runs ([store] keep_runs)")
        if path.name == latest:
            item.keep("the latest run")
        if item.action == REMOVE:
            item.reasons.append(f"older than the newest {keep_runs} runs ([store] keep_runs)")
        items.append(item)
    return items


def _latest_id(runs_dir: Path) -> str | None:
    with contextlib.suppress(Exception):
        return read_run(runs_dir / LATEST).run_id
    return None


def _cache(folder: Path, now: float, cache_days: float) -> list[Item]:
    items = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []:
        age = now - _mtime(path)
        item = Item("cache", path, _size(path))
        if age < cache_days * DAY_S:
            item.keep(f"used {_days(age)} ago, within [store] cache_days")
        else:
            item.reasons.append(f"unused for {_days(age)} ([store] cache_days)")
        items.append(item)
    return items


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _days(seconds: float) -> str:
    days = seconds / DAY_S
    if days >= 1:
        return f"{days:.0f} day(s)"
    return f"{seconds / 3600:.0f} hour(s)"
