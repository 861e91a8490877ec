"""Fixtures for the pull tests: a real OCI registry, the hub stand-in, two tiny GGUFs.

Import the fixtures by name into a test module (``from _pull_fixtures import registry``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hub_server import Hub, serve_hub
from registry import MISSING, Registry, registry_binary, start_registry
from tinymodel import write_tiny_llama

from lifecycle.store import Store


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """Debian's docker-registry on a free loopback port, one per test session."""
    if registry_binary() is None:
        pytest.skip(MISSING)
    with start_registry(tmp_path_factory.mktemp("registry")) as running:
        yield running


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[Hub]:
    """The Hugging Face Hub stand-in, with ``HF_ENDPOINT`` pointing at it."""
    with serve_hub() as running:
        monkeypatch.setenv("HF_ENDPOINT", running.url)
        monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        yield running


@pytest.fixture(scope="session")
def tiny_bytes(tiny_model: Path) -> bytes:
    return tiny_model.read_bytes()


@pytest.fixture(scope="session")
def other_tiny_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A second tiny GGUF with different weights: what a silent re-publish looks like."""
    path = write_tiny_llama(tmp_path_factory.mktemp("models2") / "other.gguf", seed=1, n_layer=1)
    return path.read_bytes()


@pytest.fixture
def store() -> Store:
    from lifecycle.config import lifecycle_home

    return Store(lifecycle_home())


def blobs_and_partials(store: Store) -> tuple[list[str], list[str]]:
    """Names of the complete blobs and of the leftover partial/temp files in the store."""
    if not store.blobs.is_dir():
        return [], []
    names = sorted(p.name for p in store.blobs.iterdir() if not p.name.endswith(".lock"))
    return [n for n in names if n.startswith("sha256-")], [n for n in names if n.startswith(".")]
