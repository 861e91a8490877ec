"""The GGUF header cache under ``$LIFECYCLE_HOME/gguf-headers`` (lifecycle.gguf).

A cached summary is the parsed one, field for field; a damaged entry is ignored and
rewritten; a changed file gets a new summary; a file still being written is not cached; and
a process served from the cache never imports gguf-py.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lifecycle import gguf as gguf_mod
from lifecycle.config import lifecycle_home
from lifecycle.errors import ModelError
from lifecycle.gguf import DEFAULT_MAX_ARRAY_LEN, HEADER_CACHE_DIR, read_gguf
from lifecycle.tinymodel import write_tiny_llama


@pytest.fixture(autouse=True)
def _fresh_process_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each read below goes past the in-process memo, as a new process would."""
    monkeypatch.setattr(gguf_mod, "_HEADERS", {})


def _forget() -> None:
    gguf_mod._HEADERS.clear()


def _as_blob(model: Path) -> Path:
    """``model`` copied into the store's layout: blobs/sha256-<hex>."""
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    blob = lifecycle_home() / "blobs" / f"sha256-{digest}"
    blob.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model, blob)
    return blob


@pytest.fixture
def no_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    """Files outside the store are cached once still for a few seconds (their ctime cannot
    be backdated): here, at once."""
    monkeypatch.setattr(gguf_mod, "_STILL_NS", -1)


def _entries() -> list[Path]:
    directory = lifecycle_home() / HEADER_CACHE_DIR
    return sorted(directory.glob("*.json")) if directory.is_dir() else []


def _parsed(path: Path) -> gguf_mod.GGUFInfo:
    return gguf_mod._read_gguf_file(path, DEFAULT_MAX_ARRAY_LEN)


def test_a_blob_is_cached_by_digest_and_served_as_parsed(tiny_model: Path) -> None:
    blob = _as_blob(tiny_model)
    first = read_gguf(blob)
    (entry,) = _entries()
    assert entry.name == f"{blob.name}.json"
    _forget()
    served = read_gguf(blob)
    assert served == first == _parsed(blob)
    assert served.source == str(blob)
    # The entry serves the blob under any path that names it (another home, a link).
    link = blob.parent.parent / "elsewhere" / "blobs" / blob.name
    link.parent.mkdir(parents=True)
    link.symlink_to(blob)
    _forget()
    assert read_gguf(link) == _parsed(link)
    assert _entries() == [entry]


def test_a_damaged_entry_is_ignored_and_rewritten(tiny_model: Path) -> None:
    blob = _as_blob(tiny_model)
    expected = read_gguf(blob)
    (entry,) = _entries()
    good = entry.read_text(encoding="utf-8")
    document = json.loads(good)
    summary = json.loads(document["info"])
    summary["context_length"] = 1  # a summary edited without its checksum
    tampered = {**document, "info": json.dumps(summary)}
    damages = [
        good[: len(good) // 2],  # torn
        "",  # empty
        "[]",  # not an entry
        json.dumps(tampered),
        json.dumps({**document, "info": document["info"].replace('"tensors"', '"tensorz"')}),
    ]
    for damaged in damages:
        entry.write_text(damaged, encoding="utf-8")
        _forget()
        assert read_gguf(blob) == expected
        assert entry.read_text(encoding="utf-8") == good, damaged[:40]


@pytest.mark.usefixtures("no_wait")
def test_a_changed_file_gets_a_new_entry(tmp_path: Path) -> None:
    model = write_tiny_llama(tmp_path / "model.gguf", name="first")
    assert read_gguf(model).name == "first"
    (entry,) = _entries()
    before = json.loads(entry.read_text(encoding="utf-8"))["identity"]
    assert before["path"] == os.path.realpath(model)

    write_tiny_llama(tmp_path / "model.gguf", name="second", n_layer=3)
    _forget()
    info = read_gguf(model)
    assert info.name == "second" and info.block_count == 3
    assert info == _parsed(model)
    assert _entries() == [entry]
    after = json.loads(entry.read_text(encoding="utf-8"))["identity"]
    assert after != before and after["size"] == model.stat().st_size


def test_a_file_written_just_now_is_not_cached(tmp_path: Path) -> None:
    """A file rewritten within one timestamp tick keeps its size and mtime: only a file that
    has been still for a few seconds is cached (git's "racy clean" problem)."""
    model = write_tiny_llama(tmp_path / "model.gguf")
    old = time.time_ns() - 3600 * 10**9
    os.utime(model, ns=(old, old))  # an old mtime (cp -p, tar -x): the ctime is still now
    assert read_gguf(model) == _parsed(model)
    assert _entries() == []


@pytest.mark.usefixtures("no_wait")
def test_a_malformed_file_is_never_cached(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 60)
    for _ in range(2):
        _forget()
        with pytest.raises(ModelError):
            read_gguf(bad)
    assert _entries() == []


def test_another_array_limit_bypasses_the_cache(tiny_model: Path) -> None:
    blob = _as_blob(tiny_model)
    read_gguf(blob, max_array_len=None)
    assert _entries() == []


def test_a_process_served_from_the_cache_imports_no_gguf_py(tiny_model: Path) -> None:
    blob = _as_blob(tiny_model)
    probe = (
        "import sys\n"
        "from lifecycle.gguf import read_gguf\n"
        f"info = read_gguf({str(blob)!r})\n"
        "print(info.file_type, 'gguf' in sys.modules)"
    )

    def run() -> str:
        env = {**os.environ, "LIFECYCLE_HOME": str(lifecycle_home())}
        done = subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    assert run() == "F32 True"  # parsed: the ggml type table comes from gguf-py
    assert run() == "F32 False"  # served from the entry the first process wrote
