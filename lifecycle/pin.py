"""``models.lock``: what passed, pinned by content digest, and its commit to git.

The lockfile is JSON (``json.dumps(sort_keys=True, indent=2)`` plus a final newline), one entry
per variant name under ``"variants"``::

    {
      "lock_version": 1,
      "variants": {
        "harbor-triage": {
          "model": "harbor-triage", "variant_id": "…", "from": "pypi:…", "tag": "pypi:…",
          "source": "pypi", "revision": "1.0.0", "upstream": "…", "filename": "….gguf",
          "blob_sha256": "sha256:…", "size": 253114112, "quant": "Q4_K_M",
          "modelfile": "modelfiles/harbor-triage.Modelfile", "modelfile_digest": "sha256:…",
          "parameters": {…}, "golden_sets": {"triage": {"golden_digest": …, "schema_digest": …}},
          "engine": {"name": "llama-cpp", "version": "llama-cpp-python 0.3.9"},
          "eval": {"triage/free": {"pass_rate": …, …}}, "bench": {…} | null,
          "run_id": "…", "pinned_at": "2025-01-01T00:00:00Z", "baseline": "baselines/….json"
        }
      }
    }

An entry is rewritten only when what it pins changed: the variant id (weights + Modelfile),
the golden-set digests or the engine build. Otherwise the old entry, time included, is kept,
so re-pinning with nothing changed is an empty diff. Local ``FROM ./x.gguf`` files record no
revision (theirs is a file mtime, which a fresh clone changes); the digest is the identity.

The baselines (:mod:`lifecycle.baselines`) and the lock are published together through a
journal (:mod:`lifecycle.journal`): a pin killed at any point leaves both old or both new, and
the next pin deletes the temp files a killed one left.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from lifecycle.baselines import (
    BASELINES_DIR,
    BaselineFile,
    baseline_entry,
    baseline_path,
    read_baseline_file,
    variant_environment,
)
from lifecycle.clock import utc_now
from lifecycle.errors import UsageError
from lifecycle.gate import GateResult
from lifecycle.journal import publish, remove_temps, transaction
from lifecycle.lockfile import LOCK_FILE, Lock, LockEntry, read_lock, render_json
from lifecycle.results import RunRecord, VariantInfo
from lifecycle.runtime import runtime_changes, runtime_of
from lifecycle.store import Manifest, Store
from lifecycle.tags import from_tag, parse_tag
from lifecycle.vectors import lock_extras, reindex_reason, sidecar


class GitStateError(UsageError):
    """The repository is not in a state a pin may be committed in (exit code 2)."""


PinStatus = Literal["new", "updated", "unchanged", "refused", "pruned", "skipped"]


@dataclass(frozen=True)
class PinChange:
    """What happened to one variant's pin: ``new``, ``updated``, ``unchanged``, ``refused``,
    ``pruned`` (left the variant matrix) or ``skipped`` (the engine could not run it)."""

    variant: str
    model: str
    status: PinStatus
    old_digest: str | None
    new_digest: str | None
    old_variant_id: str | None
    new_variant_id: str | None
    reasons: list[str] = field(default_factory=list)
    runtime: list[str] = field(default_factory=list)  # runtime moves (lifecycle.runtime)
    reindex: str | None = None  # why stored vectors must be rebuilt (lifecycle.vectors)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PinResult:
    """The outcome of ``lifecycle pin``."""

    lock_path: Path
    changes: list[PinChange]
    written: list[str]  # files rewritten, relative to the workspace root
    commit: str | None = None
    branch: str | None = None

    @property
    def refused(self) -> list[PinChange]:
        return [c for c in self.changes if c.status == "refused"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "lockfile": str(self.lock_path),
            "changes": [c.to_dict() for c in self.changes],
            "pinned": [c.variant for c in self.changes if c.status in ("new", "updated")],
            "unchanged": [c.variant for c in self.changes if c.status == "unchanged"],
            "refused": [c.variant for c in self.refused],
            "pruned": [c.variant for c in self.changes if c.status == "pruned"],
            "skipped": [c.variant for c in self.changes if c.status == "skipped"],
            "written": self.written,
            "commit": self.commit,
            "branch": self.branch,
        }


@dataclass(frozen=True)
class LockCheck:
    """The store checked against one lock entry: ``ok``, ``missing``, ``corrupt`` or ``moved``."""

    variant: str
    digest: str
    status: str
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def pin(
    root: Path,
    record: RunRecord,
    gate: GateResult,
    store: Store,
    *,
    bench: dict[str, dict[str, Any]] | None = None,
    commit: bool = False,
    branch: str | None = None,
    refresh: bool = False,
    keep: set[str] | None = None,
) -> PinResult:
    """Pin the variants of ``record`` that passed ``gate``; never one that failed.

    Writes ``baselines/<model>.json`` and ``models.lock`` under ``root``. With ``commit`` (or
    a ``branch``, which implies it) the files are committed with gitpython; the repository's
    state is checked before anything is written. ``refresh`` rewrites unchanged entries too.
    A variant the engine could not run is left as it was (``skipped``). With ``keep`` (the
    variant names of the workspace's matrices), lock and baseline entries of any other
    variant are removed (``pruned``).
    """
    with transaction(root):  # one pin at a time reads and rewrites the files
        remove_temps(root, LOCK_FILE)
        remove_temps(root / BASELINES_DIR)
        return _pin(root, record, gate, store, bench or {}, commit, branch, refresh, keep)


def _pin(
    root: Path,
    record: RunRecord,
    gate: GateResult,
    store: Store,
    bench: dict[str, dict[str, Any]],
    commit: bool,
    branch: str | None,
    refresh: bool,
    keep: set[str] | None,
) -> PinResult:
    lock_path = root / LOCK_FILE
    lock = read_lock(lock_path)
    entries: dict[str, LockEntry] = dict(lock.variants)
    baselines: dict[str, BaselineFile] = {}
    sidecars: dict[Path, bytes] = {}  # vector files of retrieval baselines (lifecycle.vectors)
    changes: list[PinChange] = []
    now = utc_now()

    for run in record.variants:
        name = run.variant.name
        model = run.variant.model or name
        old = entries.get(name)
        verdict = gate.verdict(name)
        old_digest = old.blob_sha256 if old else None
        old_id = old.variant_id if old else None
        if verdict is not None and verdict.engine_error:
            changes.append(
                PinChange(
                    name, model, "skipped", old_digest, None, old_id, None, [verdict.engine_error]
                )
            )
            continue
        if verdict is None or not verdict.passed:
            reasons = verdict.failures if verdict else ["not in the gate result"]
            changes.append(
                PinChange(name, model, "refused", old_digest, None, old_id, None, list(reasons))
            )
            continue
        entry = lock_entry(root, record, name, store, bench.get(name), now)
        reindex = reindex_reason(gate.checks, name)
        entry = replace(
            entry, extra={**entry.extra, **lock_extras(record.retrieval.get(name), reindex)}
        )
        if old and not refresh and old.same_pin(entry):
            changes.append(
                PinChange(name, model, "unchanged", old_digest, old_digest, old_id, old_id)
            )
            continue
        entries[name] = entry
        status: PinStatus = "updated" if old else "new"
        moved = runtime_changes(old.runtime, entry.runtime) if old else []
        changes.append(
            PinChange(
                name,
                model,
                status,
                old_digest,
                entry.blob_sha256,
                old_id,
                entry.variant_id,
                runtime=moved,
                reindex=reindex,
            )
        )
        baseline = baselines.setdefault(model, _read_baseline(root, model))
        variant = baseline_entry(record, name, bench.get(name))
        variant = replace(variant, variant=_portable_variant(root, variant.variant))
        vectors = sidecar(model, record.retrieval.get(name) or {})
        if vectors is not None:  # each text's vector, next to the baseline (digest-named)
            index, file_name, data = vectors
            variant = replace(variant, extra={**variant.extra, "vectors": index})
            sidecars[root / BASELINES_DIR / file_name] = data
        baseline.variants[name] = variant

    if keep is not None:
        for name in sorted(set(entries) - keep):
            old = entries.pop(name)
            model = old.model or name.split(":")[0]
            changes.append(
                PinChange(
                    name,
                    model,
                    "pruned",
                    old.blob_sha256,
                    None,
                    old.variant_id,
                    None,
                    ["no longer in the variant matrix"],
                )
            )
            baseline = baselines.setdefault(model, _read_baseline(root, model))
            baseline.variants.pop(name, None)

    written: list[Path] = [baseline_path(root, model) for model in sorted(baselines)]
    written += sorted(sidecars)
    if baselines:
        written.append(lock_path)
    result = PinResult(lock_path, changes, [_rel(root, p) for p in written], branch=branch)
    repo = _prepare_commit(root, [*written, lock_path], branch) if commit or branch else None

    files: dict[Path, str | bytes] = {
        baseline_path(root, model): render_json(baseline.to_dict())
        for model, baseline in sorted(baselines.items())
    }
    files.update(sidecars)
    if baselines:
        files[lock_path] = render_json(Lock(entries).to_dict())
    publish(root, files)
    if repo is not None:
        result.commit = _commit(repo, root, written, commit_message(changes))
    return result


def lock_entry(
    root: Path,
    record: RunRecord,
    name: str,
    store: Store,
    bench: dict[str, Any] | None,
    pinned_at: str,
) -> LockEntry:
    """The lock entry of one variant of ``record``."""
    run = next(v for v in record.variants if v.variant.name == name)
    v = run.variant
    env = variant_environment(record.environment, name)
    manifest = _manifest_for(root, v, store)
    suites = sorted({c.suite for c in record.cases if c.variant == name})
    eval_summary = {
        f"{s.suite}/{s.mode}": {
            "cases": s.cases,
            "passed": s.passed,
            "pass_rate": s.pass_rate,
            "json_valid_rate": s.json_valid_rate,
            "schema_valid_rate": s.schema_valid_rate,
            "threshold": s.threshold,
            "generation_tokens_per_s": s.generation_tokens_per_s,
            "latency_p50_ms": s.latency_p50_ms,
        }
        for s in record.summaries
        if s.variant == name
    }
    return LockEntry(
        model=v.model or name,
        variant_id=v.id or None,
        from_=v.source or None,
        tag=manifest.tag if manifest else None,
        source=manifest.source if manifest else "file",
        revision=manifest.revision if manifest else None,
        upstream=manifest.upstream if manifest else None,
        filename=manifest.filename if manifest else None,
        parts=[asdict(p) for p in manifest.parts] if manifest and manifest.parts else [],
        blob_sha256=v.blob_digest,
        size=v.blob_size,
        quant=v.quant or quant_of(store, v.blob_digest),
        modelfile=_rel(root, Path(v.modelfile)) if v.modelfile else None,
        modelfile_digest=v.modelfile_digest or None,
        parameters=v.parameters,
        golden_sets={s: record.golden_sets[s] for s in suites if s in record.golden_sets},
        engine={"name": env.get("engine"), "version": env.get("engine_version")},
        eval=eval_summary,
        bench=bench,
        run_id=record.run_id,
        pinned_at=pinned_at,
        baseline=_rel(root, baseline_path(root, v.model or name)),
        runtime=runtime_of(env),
    )


def verify_lock(root: Path, store: Store) -> list[LockCheck]:
    """Check the local store against ``models.lock``: every pinned blob present and intact,
    and every pinned tag still resolving, in the store, to the pinned digest."""
    lock = read_lock(root / LOCK_FILE)
    blob_checks = {c.digest: c for c in store.verify()}
    checks = []
    for name, entry in sorted(lock.variants.items()):
        digest = entry.blob_sha256
        found = blob_checks.get(digest)
        if found is None or found.status == "missing":
            checks.append(LockCheck(name, digest, "missing", "blob not in the store"))
            continue
        if found.status != "ok":
            checks.append(LockCheck(name, digest, "corrupt", f"hashes to {found.actual_digest}"))
            continue
        manifest = entry.manifest()
        if manifest is not None:
            current = store.read_manifest(parse_tag(manifest.tag))
            if current is not None and current.digest != digest:
                checks.append(
                    LockCheck(name, digest, "moved", f"{manifest.tag} is now {current.digest}")
                )
                continue
        checks.append(LockCheck(name, digest, "ok"))
    return checks


def commit_message(changes: list[PinChange]) -> str:
    """Subject plus one line per pinned variant: old → new digest."""
    pinned = [c for c in changes if c.status in ("new", "updated")]
    pruned = [c for c in changes if c.status == "pruned"]
    subject = "Pin " + ", ".join(c.variant for c in pinned) if pinned else "Pin models"
    if pruned and not pinned:
        subject = "Unpin " + ", ".join(c.variant for c in pruned)
    lines = [subject[:72], ""]
    for c in pinned:
        if c.status == "new":
            lines.append(f"{c.variant}: new pin {c.new_digest} (variant {c.new_variant_id})")
        else:
            lines.append(
                f"{c.variant}: {c.old_digest} → {c.new_digest} "
                f"(variant {c.old_variant_id} → {c.new_variant_id})"
            )
        if c.runtime:  # next to the model move: the weekly PR body is this message
            lines.append(f"{c.variant}: runtime changed: {', '.join(c.runtime)}")
        if c.reindex:
            lines.append(f"{c.variant}: {c.reindex}")
    refused = [c for c in changes if c.status == "refused"]
    for c in refused:
        lines.append(f"{c.variant}: not pinned, gate failed ({'; '.join(c.reasons)})")
    for c in changes:
        if c.status == "pruned":
            lines.append(f"{c.variant}: pin removed, no longer in the variant matrix")
    return "\n".join(lines) + "\n"


# --- helpers ---------------------------------------------------------------------------------


def _read_baseline(root: Path, model: str) -> BaselineFile:
    """The model's baseline file as committed; a new one when there is none (or of another
    schema version, which the pin then replaces)."""
    path = baseline_path(root, model)
    found = read_baseline_file(path, model) if path.is_file() else None
    return found if found is not None else BaselineFile(model=model)


def _portable_variant(root: Path, variant: VariantInfo) -> VariantInfo:
    out = variant
    if out.modelfile:
        out = replace(out, modelfile=_rel(root, Path(out.modelfile)))
    if str(out.revision or "").startswith("size="):
        out = replace(out, revision=None)  # a local file's mtime: not content, and not portable
    return out


def _manifest_for(root: Path, variant: VariantInfo, store: Store) -> Manifest | None:
    """The store manifest of a variant's FROM tag; None for a local file."""
    from lifecycle import modelfile as mf

    source = variant.source or ""
    modelfile = Path(variant.modelfile) if variant.modelfile else root / "Modelfile"
    if not modelfile.is_absolute():
        modelfile = root / modelfile
    if not source or mf.resolve_local_path(source, modelfile.parent, root) is not None:
        return None
    tag = from_tag(source, modelfile)
    if tag.scheme == "file":
        return None
    return store.read_manifest(tag)


def quant_of(store: Store, digest: str) -> str | None:
    """The quant level (GGUF file type) of a stored blob; None when it cannot be read."""
    from lifecycle.gguf import read_gguf

    try:
        return read_gguf(store.blob_path(digest)).file_type
    except Exception:  # a blob that is gone or unreadable: the lock still pins the digest
        return None


def _rel(root: Path, path: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


_IN_PROGRESS = (
    ("MERGE_HEAD", "a merge"),
    ("rebase-merge", "a rebase"),
    ("rebase-apply", "a rebase (or git am)"),
    ("CHERRY_PICK_HEAD", "a cherry-pick"),
    ("REVERT_HEAD", "a revert"),
)


def _prepare_commit(root: Path, paths: list[Path], branch: str | None) -> Any:
    """Check the repository before anything is written; switch to ``branch`` when given."""
    import git

    repo = check_repository(root, paths)
    if branch is not None:
        if not branch or branch.startswith("-"):
            raise GitStateError(f"invalid branch name {branch!r}")
        try:
            repo.git.check_ref_format("--branch", branch)
        except git.GitCommandError:
            raise GitStateError(f"invalid branch name {branch!r}") from None
        if branch in [h.name for h in repo.heads]:
            raise GitStateError(f"branch {branch!r} already exists")
        repo.git.checkout("-b", branch)
    return repo


def check_repository(root: Path, paths: list[Path]) -> Any:
    """The git repository around ``root``, if a pin may be committed there.

    Refuses outside a repository, in the middle of a merge, rebase, cherry-pick or revert, and
    when any of ``paths`` (the lockfile, the baselines) has uncommitted changes: a pin commit
    must hold only what the pin wrote.
    """
    import git

    try:
        repo = git.Repo(root, search_parent_directories=True)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        raise GitStateError(
            f"{root} is not inside a git repository (run `git init`, or pin without --commit)"
        ) from None
    if repo.bare or repo.working_tree_dir is None:
        raise GitStateError("the repository is bare; pin in a working tree")
    git_dir = Path(repo.git_dir)
    for marker, what in _IN_PROGRESS:
        if (git_dir / marker).exists():
            raise GitStateError(
                f"the repository is in the middle of {what}; finish or abort it before pinning"
            )
    work = Path(repo.working_tree_dir)
    _check_index_lock(git_dir, work)
    rel = [_rel(work, p) for p in paths]
    dirty = repo.git.status("--porcelain", "--untracked-files=all", "--", *rel)
    if dirty.strip():
        lines = dirty.splitlines()
        names = ", ".join(sorted({line[3:] for line in lines}))
        # Staged and not committed is what a `pin --commit` killed before its commit leaves.
        staged = all(line[0] not in " ?" for line in lines)
        raise GitStateError(
            f"uncommitted changes to {names}"
            + (" (staged: an interrupted `pin --commit`?)" if staged else "")
            + "; commit or discard them before `pin --commit` "
            "(pin without --commit only writes the files)"
        )
    return repo


def _check_index_lock(git_dir: Path, work: Path) -> None:
    """Refuse while ``.git/index.lock`` exists, saying whether a git process still holds it.

    git leaves the file behind when it is killed mid-command (a killed ``pin --commit``
    among them), and every later commit fails on it until it is removed.
    """
    lock = git_dir / "index.lock"
    if not lock.exists():
        return
    if _git_running_in(work):
        raise GitStateError(
            f"another git command is running in {work} ({lock} exists); pin when it is done"
        )
    raise GitStateError(
        f"stale {lock} (no git process is running; an interrupted git command left it): "
        f"remove it with `rm {lock}` and pin again"
    )


def _git_running_in(work: Path) -> bool:
    """Whether a live git process works in ``work`` (or one whose directory we cannot see)."""
    import psutil

    for proc in psutil.process_iter(["name", "cwd", "status"]):
        info = proc.info
        if info["name"] != "git" or info["status"] == psutil.STATUS_ZOMBIE:
            continue
        cwd = info["cwd"]
        if cwd is None or Path(cwd).resolve().is_relative_to(work.resolve()):
            return True
    return False


def _commit(repo: Any, root: Path, paths: list[Path], message: str) -> str | None:
    """Stage and commit exactly ``paths``; None when they hold nothing new."""
    import git

    work = Path(repo.working_tree_dir)
    rel = [_rel(work, p) for p in paths if p.exists()]
    if not rel:
        return None
    repo.git.add("--", *rel)
    if repo.head.is_valid() and not repo.git.diff("--cached", "--name-only", "--", *rel).strip():
        return None
    fd, msg_path = tempfile.mkstemp(prefix="lifecycle-commit-", suffix=".txt")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(message)
        # The message travels in a file and the paths after "--": git reads neither as options.
        repo.git.commit(f"--file={msg_path}", "--", *rel)
    except git.GitCommandError as exc:
        raise GitStateError(f"git commit failed: {exc.stderr.strip() or exc}") from None
    finally:
        Path(msg_path).unlink(missing_ok=True)
    return str(repo.head.commit.hexsha)
