"""``lifecycle gc`` and ``du``: what is kept (and why), what goes, and a pull running alongside."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from tinymodel import write_tiny_llama

from lifecycle.config import lifecycle_home
from lifecycle.store import Store

CliResult = tuple[int, str, str]


def _configure(workspace: Path, store_table: str) -> None:
    config = workspace / "lifecycle.toml"
    config.write_text(config.read_text(encoding="utf-8") + "\n[store]\n" + store_table)


def _pin(workspace: Path, digest: str) -> None:
    lock = {"lock_version": 1, "variants": {"tiny:old": {"model": "tiny", "blob_sha256": digest}}}
    (workspace / "models.lock").write_text(json.dumps(lock), encoding="utf-8")


def _by_path(document: dict) -> dict[str, dict]:  # type: ignore[type-arg]
    return {item["path"]: item for item in document["items"]}


def test_gc_keeps_what_is_named_and_removes_the_rest(
    tiny_workspace: Path, tmp_path: Path, run_cli: Callable[..., CliResult]
) -> None:
    ws = str(tiny_workspace)
    _configure(tiny_workspace, "grace_days = 0\n")
    assert run_cli("build", "-C", ws)[0] == 0  # imports FROM ./tiny.gguf: a tracked tag
    untracked = write_tiny_llama(tmp_path / "untracked.gguf", seed=3, n_layer=1)
    pinned = write_tiny_llama(tmp_path / "pinned.gguf", seed=4, n_layer=1)
    for path in (untracked, pinned):
        assert run_cli("pull", f"file:{path}")[0] == 0
    store = Store(lifecycle_home())
    by_tag = {m.tag: m for m in store.list_manifests()}
    _pin(tiny_workspace, by_tag[f"file:{pinned}"].digest)
    orphan, orphan_size = store.put_stream([b"no manifest names this"])
    tracked = by_tag[f"file:{(tiny_workspace / 'modelfiles' / 'tiny.gguf').resolve()}"]
    gone = by_tag[f"file:{untracked}"]

    code, out, _ = run_cli("gc", "--dry-run", "--json", "-C", ws)
    assert code == 0
    plan = json.loads(out)
    assert plan["dry_run"] is True and store.has(orphan) and store.has(gone.digest)
    items = _by_path(plan)
    blob = items[str(store.blob_path(tracked.digest))]
    assert blob["action"] == "keep" and "FROM of model tiny" in " ".join(blob["reasons"])
    blob = items[str(store.blob_path(by_tag[f"file:{pinned}"].digest))]
    assert blob["action"] == "keep" and blob["pinned"]
    assert "pinned in models.lock (tiny:old)" in blob["reasons"]
    for digest in (orphan, gone.digest):
        assert items[str(store.blob_path(digest))]["action"] == "remove"
    assert plan["reclaimable_bytes"] >= gone.size + orphan_size

    code, out, _ = run_cli("du", "--json", "-C", ws)
    states = {b["digest"]: b["state"] for b in json.loads(out)["blobs"]}
    assert states == {
        tracked.digest: "kept",
        by_tag[f"file:{pinned}"].digest: "pinned",
        gone.digest: "reclaimable",
        orphan: "reclaimable",
    }
    code, out, _ = run_cli("du", "-C", ws)
    assert code == 0 and "reclaimable" in out and "`lifecycle gc` would reclaim" in out

    code, out, _ = run_cli("gc", "-C", ws)
    assert code == 0 and out.strip().splitlines()[-1].startswith("reclaimed ")
    assert "removed" in out and "no pin, baseline, latest run or kept tag" in out
    assert not store.has(orphan) and not store.has(gone.digest)
    assert store.has(tracked.digest) and store.has(by_tag[f"file:{pinned}"].digest)
    assert sorted(m.tag for m in store.list_manifests()) == sorted([tracked.tag, f"file:{pinned}"])
    assert run_cli("verify")[0] == 0
    code, _, err = run_cli("eval", "-C", ws, "--limit", "1")
    assert code in (0, 3), err  # the tracked model still runs after gc


def test_grace_days_keeps_a_fresh_untracked_pull(
    tiny_workspace: Path, tmp_path: Path, run_cli: Callable[..., CliResult]
) -> None:
    other = write_tiny_llama(tmp_path / "other.gguf", seed=5, n_layer=1)
    assert run_cli("pull", f"file:{other}")[0] == 0
    code, out, _ = run_cli("gc", "--json", "-C", str(tiny_workspace))
    assert code == 0
    manifest = next(i for i in json.loads(out)["items"] if i["kind"] == "manifest")
    assert manifest["action"] == "keep"
    assert "within [store] grace_days" in manifest["reasons"][0]
    assert len(Store(lifecycle_home()).list_manifests()) == 1


def test_old_runs_beyond_keep_runs_are_removed(
    tiny_workspace: Path, run_cli: Callable[..., CliResult]
) -> None:
    _configure(tiny_workspace, "keep_runs = 2\n")
    runs = tiny_workspace / ".lifecycle" / "runs"
    for index in range(4):
        run = runs / f"run-{index}"
        run.mkdir(parents=True)
        (run / "run.json").write_text("{}", encoding="utf-8")
        os.utime(run / "run.json", (1_000_000 + index, 1_000_000 + index))
    code, out, _ = run_cli("gc", "--json", "-C", str(tiny_workspace))
    assert code == 0
    assert sorted(p.name for p in runs.iterdir()) == ["run-2", "run-3"]
    removed = [
        i for i in json.loads(out)["items"] if i["kind"] == "run" and i["action"] == "remove"
    ]
    assert len(removed) == 2 and "keep_runs" in removed[0]["reasons"][0]


PULL_IN_FLIGHT = """
import sys, time
from pathlib import Path
from lifecycle.store import Manifest, Store
store = Store(Path(sys.argv[1]))
with store.writing():
    digest, size = store.put_stream([b"weights of a pull in flight"])
    Path(sys.argv[2]).write_text(digest)
    time.sleep(1.5)  # between blob and manifest: where a gc without the lock loses the blob
    store.write_manifest(Manifest("pypi:inflight", "pypi", "1", "m.gguf", size, digest, "now"))
"""


def test_gc_waits_for_a_pull_between_its_blob_and_its_manifest(
    tiny_workspace: Path, tmp_path: Path, run_cli: Callable[..., CliResult]
) -> None:
    _configure(tiny_workspace, 'grace_days = 0\nkeep = ["pypi:inflight"]\n')
    store = Store(lifecycle_home())
    marker = tmp_path / "stored"
    pull = subprocess.Popen(
        [sys.executable, "-c", PULL_IN_FLIGHT, str(store.home), str(marker)],
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    code, _, err = run_cli("gc", "-C", str(tiny_workspace))
    assert pull.wait(timeout=60) == 0, pull.stderr.read() if pull.stderr else ""
    assert code == 0 and "waiting for a pull" in err
    digest = marker.read_text()
    assert store.has(digest)
    assert [m.tag for m in store.list_manifests()] == ["pypi:inflight"]


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('grace_days = "week"\n', "store.grace_days: must be a number"),
        ("keep_runs = 0\n", "store.keep_runs: must be >= 1"),
        ("keep = [1]\n", "store.keep: must be a list of strings"),
        ('keep = ["nope"]\n', "store.keep[0]: "),
        ("retention = 3\n", "store.retention: unknown key"),
    ],
)
def test_store_settings_are_validated(
    tiny_workspace: Path, run_cli: Callable[..., CliResult], table: str, message: str
) -> None:
    _configure(tiny_workspace, table)
    code, _, err = run_cli("gc", "--dry-run", "-C", str(tiny_workspace))
    assert code == 2 and message in err and "lifecycle.toml" in err
