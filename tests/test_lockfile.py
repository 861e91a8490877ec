"""models.lock as a typed document: the committed lock round-trips byte for byte; bad entries
are named by field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lifecycle.errors import UsageError
from lifecycle.lockfile import LOCK_FILE, Lock, LockEntry, read_lock, render_json

REPO = Path(__file__).resolve().parent.parent


def test_the_committed_lock_round_trips_byte_for_byte() -> None:
    path = REPO / LOCK_FILE
    lock = read_lock(path)
    assert lock.variants, "the example workspace pins variants"
    assert render_json(lock.to_dict()) == path.read_text(encoding="utf-8")
    for name, entry in lock.variants.items():
        assert entry.blob_sha256.startswith("sha256:"), name
        manifest = entry.manifest()
        assert manifest is not None and manifest.digest == entry.blob_sha256


def test_unknown_keys_survive_and_from_is_spelled_as_in_the_file(tmp_path: Path) -> None:
    data = {"model": "m", "blob_sha256": "sha256:" + "a" * 64, "from": "file:x.gguf", "new": 1}
    entry = LockEntry.from_dict(data)
    assert entry.from_ == "file:x.gguf" and entry.extra == {"new": 1}
    assert entry.to_dict()["from"] == "file:x.gguf" and entry.to_dict()["new"] == 1
    assert entry.manifest() is None  # no tag: a local file
    path = tmp_path / LOCK_FILE
    path.write_text(render_json(Lock({"m": entry}).to_dict()), encoding="utf-8")
    assert read_lock(path).variants["m"] == entry


def test_a_missing_lock_is_empty_and_a_bad_entry_is_named(tmp_path: Path) -> None:
    assert read_lock(tmp_path / LOCK_FILE).variants == {}
    path = tmp_path / LOCK_FILE
    path.write_text(json.dumps({"lock_version": 1, "variants": {"m": {"model": "m"}}}), "utf-8")
    with pytest.raises(UsageError, match="blob_sha256") as info:
        read_lock(path)
    assert "variants.m.blob_sha256" in str(info.value) and LOCK_FILE in str(info.value)
    path.write_text(json.dumps({"lock_version": 9, "variants": {}}), "utf-8")
    with pytest.raises(UsageError, match="lock_version 1 expected"):
        read_lock(path)


def test_the_runtime_round_trips_and_a_new_machine_alone_is_no_change(tmp_path: Path) -> None:
    base = {"model": "m", "blob_sha256": "sha256:" + "a" * 64, "variant_id": "v1"}
    runtime = {"engine_version": "llama-cpp-python 0.3.36", "kv_cache_type_k": "f16"}
    entry = LockEntry.from_dict({**base, "runtime": {**runtime, "cpu_features": ["AVX2"]}})
    path = tmp_path / LOCK_FILE
    text = render_json(Lock({"m": entry}).to_dict())
    path.write_text(text, encoding="utf-8")
    assert render_json(read_lock(path).to_dict()) == text
    assert '"runtime"' in text and "runtime" not in entry.extra
    elsewhere = LockEntry.from_dict({**base, "runtime": {**runtime, "cpu_features": ["AVX512F"]}})
    assert entry.same_pin(elsewhere)
    q4 = LockEntry.from_dict({**base, "runtime": {**runtime, "kv_cache_type_k": "q4_0"}})
    assert not entry.same_pin(q4)
    # An entry pinned before the runtime was recorded: unknown, not different, and written
    # back without a runtime key.
    older = LockEntry.from_dict(base)
    assert older.same_pin(q4) and "runtime" not in older.to_dict()
