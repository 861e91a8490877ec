"""``lifecycle gate --base REF`` on an embedding model: the base's vectors and metric floors.

A real git repository around a retrieval workspace (a tiny generated GGUF with mean pooling):
main pins it, branch ``pr`` changes it. The base's sidecar is read from git, not from disk.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import git
import pytest
from _kb import write_kb_workspace
from _promote import init_repo

from lifecycle.gitbase import judged_inputs, review_base
from lifecycle.runs import find_run
from lifecycle.tinymodel import write_tiny_llama
from lifecycle.vectors import REINDEX

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture(scope="module")
def embedder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("emb") / "emb.gguf", pooling="mean")


@pytest.fixture
def pinned(tmp_path: Path, embedder: Path, run_cli: Run) -> tuple[Path, git.Repo]:
    """The retrieval workspace pinned and committed on main, on a new branch ``pr``."""
    ws = write_kb_workspace(tmp_path / "ws", embedder)
    repo = init_repo(ws)
    run = evaluate(run_cli, ws)
    assert run_cli("pin", "-C", str(ws), "--commit", "--run", run)[0] == 0
    assert repo.git.status("--porcelain") == ""
    assert list((ws / "baselines").glob("kb.vectors.*.npy")), "premise: a sidecar is pinned"
    repo.git.checkout("-b", "pr")
    return ws, repo


def evaluate(run_cli: Run, ws: Path) -> str:
    code, out, err = run_cli("eval", "-C", str(ws), "-q", "--json")
    assert code == 0, err
    run_id: str = json.loads(out)["run_id"]
    return run_id


def gate(run_cli: Run, ws: Path, run: str, *args: str) -> tuple[int, dict[str, Any]]:
    code, out, err = run_cli("gate", "-C", str(ws), "--run", run, "--json", *args)
    assert out, err
    doc: dict[str, Any] = json.loads(out)
    return code, doc


def drift(doc: dict[str, Any]) -> dict[str, Any]:
    (check,) = [c for c in doc["checks"] if c["name"] == "vector_drift"]
    return check


def test_a_repinned_pooling_is_a_re_index_against_the_base_vectors(
    pinned: tuple[Path, git.Repo], run_cli: Run
) -> None:
    ws, repo = pinned
    base_sidecars = sorted(p.name for p in (ws / "baselines").glob("kb.vectors.*.npy"))
    # The change: another pooling, re-pinned on the PR, the old sidecar removed from the tree.
    modelfile = ws / "modelfiles" / "kb.Modelfile"
    modelfile.write_text("FROM ./emb.gguf\nPARAMETER pooling last\n", encoding="utf-8")
    repo.git.rm(
        "--quiet", "models.lock", "baselines/kb.json", *(f"baselines/{n}" for n in base_sidecars)
    )
    repo.git.add("--all")
    repo.git.commit("-m", "kb: last-token pooling")
    run = evaluate(run_cli, ws)
    assert run_cli("pin", "-C", str(ws), "--commit", "--run", run)[0] == 0
    assert not (ws / "baselines" / base_sidecars[0]).exists()

    # Against its own pin, nothing moved.
    _code, own = gate(run_cli, ws, run)
    assert drift(own)["current"] > 0.9999 and REINDEX not in own["headline"]
    # Against main's pin, read from git: the vectors moved, the index must be rebuilt.
    _code, doc = gate(run_cli, ws, run, "--base", "main")
    check = drift(doc)
    assert "unavailable" not in check["message"], check["message"]
    assert check["current"] < 0.999
    assert f"kb: {REINDEX}" in doc["headline"]
    assert (ws / ".lifecycle" / "base-vectors" / base_sidecars[0]).is_file()


def test_a_base_sidecar_absent_from_git_is_unavailable_not_a_crash(
    pinned: tuple[Path, git.Repo], run_cli: Run
) -> None:
    ws, repo = pinned
    # A base whose baseline names a sidecar that its tree lacks.
    sidecars = [f"baselines/{p.name}" for p in (ws / "baselines").glob("kb.vectors.*.npy")]
    repo.git.rm("--quiet", *sidecars)
    repo.git.commit("-m", "lose the sidecar")
    run = evaluate(run_cli, ws)
    code, doc = gate(run_cli, ws, run, "--base", "HEAD")
    assert "baseline vectors unavailable" in drift(doc)["message"]
    assert code == 0 and doc["passed"] is True


def test_lowered_metric_floors_are_listed_and_judged_at_the_base(
    pinned: tuple[Path, git.Repo], run_cli: Run
) -> None:
    ws, repo = pinned
    suite = ws / "evals" / "kb.toml"
    suite.write_text(
        suite.read_text(encoding="utf-8").replace("mrr = 0.5", "mrr = 0.1"), encoding="utf-8"
    )
    repo.git.add("--all")
    repo.git.commit("-m", "kb: lower the MRR floor")
    base, head, review = review_base(ws, "main")
    assert [(b.key, b.base, b.now) for b in review.lowered] == [("threshold.mrr", 0.5, 0.1)]
    record = find_run(ws / ".lifecycle" / "runs", evaluate(run_cli, ws))
    assert record.retrieval["kb"]["kb"]["thresholds"]["mrr"] == 0.1  # the change's own floor
    judged = judged_inputs(record, base, head, review)
    assert judged.record.retrieval["kb"]["kb"]["thresholds"] == {"hit_rate": 0.5, "mrr": 0.5}
