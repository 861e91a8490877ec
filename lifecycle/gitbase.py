"""The bar as of a git ref: what ``lifecycle gate --base REF`` judges a change against.

A pull request carries its own ``models.lock``, ``baselines/``, ``[gate]`` bounds, suite
thresholds and golden sets. Gated against those, a PR that re-pins a worse model (or edits a
baseline, a threshold or an expectation) passes by construction. So the gate reads the *bar*
— pins, baselines, ``[gate]``, the suites and their golden sets — from the base branch
(:func:`read_bar_at`: the files are taken from the ref's git tree and fed to the ordinary
loaders), and lists what the change lowered against it (:func:`review_changes`):

- a case its baselines re-recorded from pass to fail (same variant name);
- a bound it loosened: a suite threshold lowered or dropped, a ``[gate]`` bound raised
  (``max_*``), a switch turned off (``fail_on_regression`` …), a suite a model no longer runs,
  a calibration target lowered;
- a golden expectation it changed: a case whose expected output or matchers differ, a case
  removed, a suite's match rules or schema changed.

Embedding models' baselines keep their vectors in sidecar files (:mod:`lifecycle.vectors`): they
are read from the ref too, so the gate measures vector drift against the base's pin.

Any of these fails the gate unless a commit in ``REF..HEAD`` carries the trailer
``Lifecycle-Rebaseline: <reason>`` (:func:`acknowledgements`, parsed by git's own trailer
parser). Acknowledged, the change's own values stand for the items listed; everything else is
judged on the stricter of both sides (:func:`judged_inputs`). A weekly re-pin whose cases did
not go from pass to fail and that lowered nothing needs no trailer.
"""

from __future__ import annotations

import json
import posixpath
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any

from lifecycle.baselines import BASELINES_DIR, Baseline, BaselineCase, CaseKey, load_baselines
from lifecycle.config import (
    CONFIG_FILE,
    TableReader,
    load_workspace,
    read_toml,
    workspace_evals_dir,
)
from lifecycle.errors import LifecycleError, UsageError
from lifecycle.gate import GateResult, GateSettings, read_gate_settings
from lifecycle.golden import Suite, load_suite
from lifecycle.lockfile import LOCK_FILE, read_lock
from lifecycle.results import RunRecord

TRAILER = "Lifecycle-Rebaseline"
# Where the base's vector sidecars are kept for the gate (under the workspace, git-ignored).
BASE_VECTORS_DIR = ".lifecycle/base-vectors"
# [gate] bounds where a *lower* value judges less (every other number: higher is looser).
# max_foreign_cpu_share: under a lower share, speeds are skipped on more machines.
LOWER_IS_LOOSER = frozenset({"max_foreign_cpu_share"})


@dataclass(frozen=True)
class Bar:
    """What a change is judged against: pins, baselines, ``[gate]``, suites (with their
    golden sets and thresholds) and which suites each model runs."""

    settings: GateSettings = field(default_factory=GateSettings)
    baselines: Mapping[str, Baseline] = field(default_factory=dict)
    pinned: frozenset[str] = frozenset()
    suites: Mapping[str, Suite] = field(default_factory=dict)
    model_suites: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class Rebaselined:
    """A case the base's baseline has passing and the change's baseline has failing."""

    variant: str
    suite: str
    mode: str
    case: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LoweredBound:
    """A threshold or ``[gate]`` bound the change loosened (``now`` None: removed/off)."""

    where: str  # "lifecycle.toml [gate]", "evals/triage.toml", "lifecycle.toml [models.x]"
    key: str
    base: Any
    now: Any

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ChangedExpectation:
    """A golden case (or a whole suite's rules, ``case`` "*") the change altered."""

    suite: str
    case: str
    change: str  # "expected changed", "matchers changed", "removed", "match rules changed", …
    base: Any = None
    now: Any = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Acknowledgement:
    """A commit in ``REF..HEAD`` with a ``Lifecycle-Rebaseline`` trailer."""

    commit: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class BaseReview:
    """What the change did to the bar of ``ref``, and whether a commit acknowledges it."""

    ref: str
    commit: str
    rebaselined: list[Rebaselined] = field(default_factory=list)
    lowered: list[LoweredBound] = field(default_factory=list)
    expectations: list[ChangedExpectation] = field(default_factory=list)
    acknowledgements: list[Acknowledgement] = field(default_factory=list)

    @property
    def changes(self) -> int:
        return len(self.rebaselined) + len(self.lowered) + len(self.expectations)

    @property
    def acknowledged(self) -> bool:
        return bool(self.acknowledgements)

    @property
    def blocking(self) -> bool:
        """The change lowered the bar and no commit acknowledges it: the gate fails."""
        return self.changes > 0 and not self.acknowledged

    def failure(self) -> str | None:
        if not self.blocking:
            return None
        return (
            f"{self.changes} change(s) lower the bar of {self.ref} without acknowledgement "
            f"(add a commit trailer '{TRAILER}: <reason>')"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "ref": self.ref,
            "commit": self.commit,
            "changes": self.changes,
            "acknowledged": self.acknowledged,
            "blocking": self.blocking,
            "rebaselined": [r.to_dict() for r in self.rebaselined],
            "lowered": [b.to_dict() for b in self.lowered],
            "expectations": [e.to_dict() for e in self.expectations],
            "acknowledgements": [a.to_dict() for a in self.acknowledgements],
        }


@dataclass(frozen=True)
class JudgedInputs:
    """What :func:`lifecycle.gate.run_gate` gets under ``--base``: the record with the
    base's thresholds applied, the base's baselines (with acknowledged cases taken from the
    change), the settings, the pinned set (the base's and the change's), and the accepted
    case entries by variant (to lay over reference runs the same way)."""

    record: RunRecord
    baselines: dict[str, Baseline]
    settings: GateSettings
    pinned: set[str]
    accepted: dict[str, dict[CaseKey, BaselineCase]]

    def over_references(
        self, references: Mapping[str, list[BaselineCase]]
    ) -> dict[str, list[BaselineCase]]:
        """Reference runs with the acknowledged cases replaced by the change's entries."""
        out = {}
        for name, cases in references.items():
            taken = self.accepted.get(name, {})
            out[name] = [taken.get(c.key, c) for c in cases]
        return out


# --- reading ----------------------------------------------------------------------------------


def read_bar(root: Path, document: dict[str, Any] | None = None) -> Bar:
    """The bar of the workspace at ``root`` as it is on disk (an empty bar without config);
    ``document``: its lifecycle.toml as already parsed."""
    if not (root / CONFIG_FILE).is_file():
        return Bar()
    workspace = load_workspace(root, document)
    suites = {}
    if workspace.evals_dir.is_dir():
        suites = {p.stem: load_suite(p) for p in sorted(workspace.evals_dir.glob("*.toml"))}
    return Bar(
        settings=read_gate_settings(workspace),
        baselines=load_baselines(root),
        pinned=frozenset(read_lock(root / LOCK_FILE).variants),
        suites=suites,
        model_suites={name: m.suites for name, m in workspace.models.items()},
    )


def read_bar_at(root: Path, ref: str) -> tuple[Bar, str]:
    """The bar of the workspace at ``root`` as committed at git ref ``ref``, and the commit.

    Raises UsageError (exit 2) when ``root`` is not in a git repository or ``ref`` names no
    commit there; errors in the ref's files name them as ``REF:path``.
    """
    repo, commit = _resolve(root, ref)
    top = Path(str(repo.working_tree_dir)).resolve()
    prefix = PurePosixPath(root.resolve().relative_to(top).as_posix())
    with _snapshot() as snapshot:
        tree = commit.tree
        baselines = _listing(tree, prefix / BASELINES_DIR, ".json")
        baselines += _listing(tree, prefix / BASELINES_DIR, ".npy")  # vector sidecars
        for name in [CONFIG_FILE, LOCK_FILE, *(f"{BASELINES_DIR}/{n}" for n in baselines)]:
            _copy(tree, prefix / name, snapshot)
        document = _parsed(snapshot / prefix / CONFIG_FILE)
        evals = PurePosixPath(posixpath.normpath(_evals_dir(document, snapshot / prefix)))
        for name in _listing(tree, prefix / evals, ".toml"):
            path = prefix / evals / name
            _copy(tree, path, snapshot)
            for linked in _suite_files(snapshot / path):
                joined = posixpath.normpath(posixpath.join(str(path.parent), linked))
                if not joined.startswith("../") and joined != "..":
                    _copy(tree, PurePosixPath(joined), snapshot)
        try:
            bar = read_bar(snapshot / prefix, document.data if document else None)
        except LifecycleError as exc:
            raise _relabel(exc, snapshot, ref) from None
        bar = _keep_sidecars(bar, root / BASE_VECTORS_DIR)
    return bar, str(commit.hexsha)


def _keep_sidecars(bar: Bar, folder: Path) -> Bar:
    """The bar with its baselines' vector sidecars copied out of the snapshot (deleted when
    :func:`read_bar_at` returns) into ``folder``, where the gate reads them. Sidecars are
    named by their digest, so one folder serves every ref; a sidecar the ref lacks stays
    missing, and the gate says "baseline vectors unavailable"."""
    baselines = dict(bar.baselines)
    for name, entry in bar.baselines.items():
        index = entry.extra.get("vectors")
        if not isinstance(index, Mapping) or entry.directory is None:
            continue
        file = str(index.get("file") or "")
        source = entry.directory / file
        if file and Path(file).name == file and source.is_file():
            folder.mkdir(parents=True, exist_ok=True)
            if not (folder / file).is_file():
                shutil.copyfile(source, folder / f".{file}.tmp")
                (folder / f".{file}.tmp").replace(folder / file)
        baselines[name] = replace(entry, directory=folder)
    return replace(bar, baselines=baselines)


def acknowledgements(root: Path, base_commit: str) -> list[Acknowledgement]:
    """Every ``Lifecycle-Rebaseline`` trailer (non-empty) of the commits in
    ``base_commit..HEAD``, oldest first, as git's trailer parser reads them."""
    import git

    repo = git.Repo(root, search_parent_directories=True)
    text = repo.git.log(
        f"{base_commit}..HEAD",
        "--reverse",
        f"--format=%H%x1f%(trailers:key={TRAILER},valueonly,separator=%x1d)%x1e",
    )
    found = []
    for record in text.split("\x1e"):
        sha, _, values = record.strip().partition("\x1f")
        for value in values.split("\x1d"):
            reason = " ".join(value.split())
            if sha and reason:
                found.append(Acknowledgement(commit=sha, reason=reason))
    return found


def review_base(root: Path, ref: str) -> tuple[Bar, Bar, BaseReview]:
    """The bar at ``ref``, the workspace's own, and what the change did between them."""
    base, commit = read_bar_at(root, ref)
    head = read_bar(root)
    rebaselined, lowered, expectations = review_changes(base, head)
    review = BaseReview(
        ref, commit, rebaselined, lowered, expectations, acknowledgements(root, commit)
    )
    return base, head, review


# --- comparing --------------------------------------------------------------------------------


def review_changes(
    base: Bar, head: Bar
) -> tuple[list[Rebaselined], list[LoweredBound], list[ChangedExpectation]]:
    """What ``head`` lowered against ``base``: re-baselined cases, loosened bounds, changed
    expectations (see the module docstring)."""
    rebaselined = [
        Rebaselined(name, *key)
        for name, old in sorted(base.baselines.items())
        if (new := head.baselines.get(name)) is not None
        for key, case in sorted(old.case_map().items())
        if case.passed and (now := new.case_map().get(key)) is not None
        and not now.passed
    ]  # fmt: skip
    lowered = _loosened_settings(base.settings, head.settings)
    for model, suites in sorted(base.model_suites.items()):
        kept = head.model_suites.get(model)
        if kept is not None and set(suites) - set(kept):
            lowered.append(
                LoweredBound(f"{CONFIG_FILE} [models.{model}]", "suites", list(suites), list(kept))
            )
    expectations: list[ChangedExpectation] = []
    for name, old_suite in sorted(base.suites.items()):
        new_suite = head.suites.get(name)
        where = f"{old_suite.path.parent.name}/{name}.toml"
        if new_suite is None:
            lowered.append(LoweredBound(where, "suite", "present", None))
            continue
        lowered += _loosened_suite(where, old_suite, new_suite)
        expectations += _changed_cases(old_suite, new_suite)
    return rebaselined, lowered, expectations


def judged_inputs(record: RunRecord, base: Bar, head: Bar, review: BaseReview) -> JudgedInputs:
    """The inputs of the gate under ``--base`` (see :class:`JudgedInputs`).

    Unacknowledged, every bound is the stricter of both sides and the baselines are the
    base's; acknowledged, the change's values stand for what the review lists.
    """
    accept = review.acknowledged
    settings = _stricter_settings(base.settings, head.settings, accept)
    summaries = []
    for s in record.summaries:
        suite = base.suites.get(s.suite)
        floor = suite.thresholds.get(s.mode) if suite is not None else None
        if floor is not None and not accept and (s.threshold is None or s.threshold < floor):
            s = replace(s, threshold=floor, met_threshold=s.pass_rate >= floor)
        summaries.append(s)
    retrieval = record.retrieval if accept else _base_floors(record.retrieval, base.suites)
    accepted: dict[str, dict[CaseKey, BaselineCase]] = {}
    if accept:
        changed = {(e.suite, e.case) for e in review.expectations}
        for name, new in head.baselines.items():
            keys = {(r.suite, r.mode, r.case) for r in review.rebaselined if r.variant == name}
            taken = {
                key: case
                for key, case in new.case_map().items()
                if key in keys or (key[0], key[2]) in changed or (key[0], "*") in changed
            }
            if taken:
                accepted[name] = taken
    baselines = {}
    for name, old in base.baselines.items():
        taken = accepted.get(name, {})
        cases = [taken.get(c.key, c) for c in old.cases] if taken else old.cases
        baselines[name] = replace(old, cases=cases)
    return JudgedInputs(
        record=replace(record, summaries=summaries, retrieval=retrieval),
        baselines=baselines,
        settings=settings,
        pinned=set(base.pinned | head.pinned),
        accepted=accepted,
    )


def _base_floors(
    retrieval: Mapping[str, Mapping[str, Mapping[str, Any]]], suites: Mapping[str, Suite]
) -> dict[str, dict[str, dict[str, Any]]]:
    """The run's retrieval suites with each metric's minimum the higher of both sides'."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for variant, by_suite in retrieval.items():
        out[variant] = {}
        for name, info in by_suite.items():
            suite = suites.get(name)
            floors = dict(info.get("thresholds") or {})
            if suite is not None and suite.embedding is not None:
                for metric, was in suite.embedding.thresholds.items():
                    floors[metric] = max(was, floors.get(metric, was))
            out[variant][name] = {**info, "thresholds": floors}
    return out


def apply_review(gate: GateResult, review: BaseReview) -> None:
    """Fail ``gate`` (a gate-wide failure, exit 3) when the review blocks."""
    message = review.failure()
    if message:
        gate.failures.append(message)
        gate.passed = False


# --- helpers ----------------------------------------------------------------------------------


def _loosened_settings(base: GateSettings, head: GateSettings) -> list[LoweredBound]:
    now = head.to_dict()
    return [
        LoweredBound(f"{CONFIG_FILE} [gate]", key, was, now.get(key))
        for key, was in base.to_dict().items()
        if _looser(key, was, now.get(key))
    ]


def _looser(key: str, was: Any, now: Any) -> bool:
    """Whether ``[gate]`` ``key`` judges less at ``now`` than at ``was``."""
    if isinstance(was, bool):
        return was and not now
    if was is None:  # off in the base: nothing to loosen
        return False
    if now is None or isinstance(now, bool) or not isinstance(now, int | float):
        return True
    return bool(now < was) if key in LOWER_IS_LOOSER else bool(now > was)


def _stricter_settings(base: GateSettings, head: GateSettings, accept: bool) -> GateSettings:
    if accept:
        return head
    values = {
        key: was
        for key, was in base.to_dict().items()
        if key in head.to_dict() and _looser(key, was, head.to_dict()[key])
    }
    calibration = head.calibration or base.calibration
    return replace(head, calibration=calibration, **values)


def _loosened_suite(where: str, old: Suite, new: Suite) -> list[LoweredBound]:
    out = []
    for mode, was in old.thresholds.items():
        now = new.thresholds.get(mode) if mode in new.modes else None
        if now is None or now < was:
            out.append(LoweredBound(where, f"threshold.{mode}", was, now))
    if old.embedding is not None:  # a retrieval suite's per-metric minimums
        floors = new.embedding.thresholds if new.embedding is not None else {}
        for metric, was in sorted(old.embedding.thresholds.items()):
            now = floors.get(metric)
            if now is None or now < was:
                out.append(LoweredBound(where, f"threshold.{metric}", was, now))
    if old.calibration is not None:
        target = new.calibration.target if new.calibration is not None else None
        if target is None or target < old.calibration.target:
            out.append(LoweredBound(where, "calibration.target", old.calibration.target, target))
    return out


def _changed_cases(old: Suite, new: Suite) -> list[ChangedExpectation]:
    out = []
    if old.schema_digest != new.schema_digest:
        out.append(ChangedExpectation(old.name, "*", "schema changed"))
    if _plain(old.match) != _plain(new.match):
        out.append(
            ChangedExpectation(
                old.name, "*", "match rules changed", _plain(old.match), _plain(new.match)
            )
        )
    cases = {c.id: c for c in new.cases}
    for case in old.cases:
        now = cases.get(case.id)
        if now is None:
            out.append(ChangedExpectation(old.name, case.id, "removed", dict(case.expected)))
        elif _canonical(case.expected) != _canonical(now.expected):
            out.append(
                ChangedExpectation(
                    old.name, case.id, "expected changed", dict(case.expected), dict(now.expected)
                )
            )
        elif _plain(case.match) != _plain(now.match):
            out.append(
                ChangedExpectation(
                    old.name, case.id, "matchers changed", _plain(case.match), _plain(now.match)
                )
            )
    return out


def _plain(match: Mapping[str, Any]) -> dict[str, Any]:
    return {name: m.to_dict() for name, m in sorted(match.items())}


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def _resolve(root: Path, ref: str) -> tuple[Any, Any]:
    import git

    try:
        repo = git.Repo(root, search_parent_directories=True)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        raise UsageError("--base needs a git repository", path=root) from None
    if repo.bare or repo.working_tree_dir is None:
        raise UsageError("--base needs a working tree, not a bare repository", path=root)
    try:
        commit = repo.commit(ref)
    except (git.BadName, git.BadObject, ValueError, git.GitCommandError):
        raise UsageError(
            f"--base: {ref!r} names no commit here (fetch it; a CI checkout needs fetch-depth: 0)"
        ) from None
    return repo, commit


@contextmanager
def _snapshot() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="lifecycle-base-")).resolve()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _listing(tree: Any, directory: PurePosixPath, suffix: str) -> list[str]:
    """Names of the files ending in ``suffix`` directly in ``directory`` of the tree."""
    try:
        folder = tree / str(directory)
    except KeyError:
        return []
    if folder.type != "tree":
        return []
    return sorted(b.name for b in folder.blobs if b.name.endswith(suffix))


def _copy(tree: Any, path: PurePosixPath, snapshot: Path) -> None:
    """Write the tree's file at ``path`` (repo-relative) under ``snapshot``, if it is one."""
    try:
        blob = tree / str(path)
    except KeyError:
        return
    if blob.type != "blob":
        return
    target = snapshot / str(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(blob.data_stream.read())


def _parsed(config: Path) -> TableReader | None:
    """The ref's lifecycle.toml (its text, copied into the snapshot) parsed once, by the
    parser of the workspace's own; None when the ref has none or it does not parse (then
    :func:`read_bar` names the error)."""
    if not config.is_file():
        return None
    try:
        return TableReader(config, read_toml(config))
    except LifecycleError:
        return None


def _evals_dir(document: TableReader | None, root: Path) -> str:
    """``[workspace] evals_dir`` of the ref's lifecycle.toml, relative to its workspace
    (default ``evals``; a bad value is named by :func:`read_bar`)."""
    if document is None:
        return "evals"
    try:
        return workspace_evals_dir(document, root).relative_to(root).as_posix()
    except (LifecycleError, ValueError):
        return "evals"


def _suite_files(path: Path) -> list[str]:
    """The golden set and schema (or corpus and queries) paths a suite file names (as written,
    relative)."""
    try:
        data = read_toml(path)
    except LifecycleError:
        return []
    keys = ("golden", "schema", "corpus", "queries")  # generation suites, then embedding ones
    return [v for key in keys if isinstance(v := data.get(key), str)]


def _relabel(exc: LifecycleError, snapshot: Path, ref: str) -> LifecycleError:
    """The error with the snapshot's paths written as ``REF:path``."""
    where = f"{snapshot}/"
    if exc.path and exc.path.startswith(where):
        exc.path = f"{ref}:{exc.path[len(where) :]}"
    exc.message = exc.message.replace(where, f"{ref}:")
    return exc
