"""Integrity of the store: blobs verified before use, debris of killed writers, bad inputs.

Real files and real processes throughout: a byte flipped in a stored blob, a writer killed
with SIGKILL mid-write, a tmpfs that fills up, files that are not GGUFs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from _pull_fixtures import blobs_and_partials

from lifecycle.config import lifecycle_home
from lifecycle.gguf import read_gguf
from lifecycle.sources import pull_file
from lifecycle.store import Store

CliResult = tuple[int, str, str]


def _flip_a_weight(blob: Path) -> None:
    """Flip one byte inside a tensor's data (the header stays valid: only a hash sees it)."""
    tensor = next(t for t in read_gguf(blob).tensors if t.name == "blk.0.attn_norm.weight")
    with blob.open("r+b") as handle:
        handle.seek(tensor.offset + 1)
        byte = handle.read(1)
        handle.seek(tensor.offset + 1)
        handle.write(bytes([byte[0] ^ 0xFF]))


def _error_line(stderr: str) -> str:
    """The one error line (progress lines such as "pulling ..." may precede it)."""
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and stderr.strip().endswith(errors[0]), stderr
    return errors[0]


def _pulled_workspace_blob(workspace: Path) -> Path:
    store = Store(lifecycle_home())
    return store.blob_path(pull_file(store, workspace / "modelfiles" / "tiny.gguf").digest)


@pytest.mark.parametrize(
    "command",
    [
        ["eval", "--limit", "1", "--json"],
        ["bench", "tiny", "-p", "8", "-n", "4", "-r", "1", "--json"],
        ["build", "--json"],
    ],
    ids=["eval", "bench", "build"],
)
def test_a_corrupt_blob_fails_before_anything_loads_it(
    tiny_workspace: Path, run_cli: Callable[..., CliResult], command: list[str]
) -> None:
    blob = _pulled_workspace_blob(tiny_workspace)
    # A first use verifies the blob and stamps it; the edit after it must still be seen.
    assert run_cli("build", "-C", str(tiny_workspace))[0] == 0
    _flip_a_weight(blob)
    code, out, err = run_cli(*command, "-C", str(tiny_workspace))
    assert code == 1, err
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: model corrupt: ")
    assert str(blob) in lines[0] and "expected " + blob.name[7:] in lines[0]
    assert not (tiny_workspace / ".lifecycle" / "runs").exists()  # no run record


def test_a_corrupt_blob_is_never_quantized(
    tiny_workspace: Path, run_cli: Callable[..., CliResult]
) -> None:
    blob = _pulled_workspace_blob(tiny_workspace)
    _flip_a_weight(blob)
    code, _, err = run_cli("quantize", "sha256:" + blob.name[7:], "--to", "Q8_0")
    assert code == 1 and "model corrupt" in err, err
    assert not (Store(lifecycle_home()).manifests / "quantized").exists()


VERIFY = """
import sys
from pathlib import Path
from lifecycle.store import Store
print(Store(Path(sys.argv[1])).verified_blob(sys.argv[2]))
"""


def test_the_stamp_sees_an_edit_even_with_its_mtime_put_back(tiny_model: Path) -> None:
    """A fresh process trusts the stamp of an untouched blob and re-hashes an edited one."""
    store = Store(lifecycle_home())
    digest = pull_file(store, tiny_model).digest
    blob = store.blob_path(digest)
    assert (store.stamps / blob.name).is_file()  # hashed while pulled: stamped then

    def verify() -> subprocess.CompletedProcess[str]:
        args = [sys.executable, "-c", VERIFY, str(store.home), digest]
        return subprocess.run(args, capture_output=True, text=True, timeout=60)

    assert verify().stdout.strip() == str(blob)
    before = blob.stat()
    _flip_a_weight(blob)
    os.utime(blob, ns=(before.st_atime_ns, before.st_mtime_ns))  # same size and mtime
    failed = verify()
    assert failed.returncode != 0 and "model corrupt" in failed.stderr


SLOW_WRITER = """
import sys, time
from pathlib import Path
from lifecycle.store import Store
store = Store(Path(sys.argv[1]))
def chunks():
    for i in range(10_000):
        yield bytes([i % 251]) * 65536
        time.sleep(0.01)
with store.writing():
    store.put_stream(chunks())
"""


def _start_slow_writer(store: Store) -> tuple[subprocess.Popen[bytes], Path]:
    writer = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, str(store.home)])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        temps = list(store.blobs.glob(".*.incomplete")) if store.blobs.is_dir() else []
        if temps and temps[0].stat().st_size > 0:
            return writer, temps[0]
        time.sleep(0.02)
    writer.kill()
    raise AssertionError("the writer never started writing")


@pytest.mark.parametrize("command", ["pull", "verify", "rm", "gc"])
def test_a_killed_writers_temp_file_is_removed_by_the_next_command(
    tiny_workspace: Path, run_cli: Callable[..., CliResult], command: str
) -> None:
    store = Store(lifecycle_home())
    tiny = tiny_workspace / "modelfiles" / "tiny.gguf"
    assert run_cli("pull", f"file:{tiny}")[0] == 0
    writer, temp = _start_slow_writer(store)
    try:
        assert store.sweep() == []  # a live writer's file is never taken
        assert temp.exists()
    finally:
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait(timeout=30)
    assert temp.exists()  # SIGKILL left it behind
    args = {
        "pull": ["pull", f"file:{tiny}"],
        "verify": ["verify"],
        "rm": ["rm", f"file:{tiny}"],
        "gc": ["gc", "-C", str(tiny_workspace)],
    }[command]
    code, _, err = run_cli(*args)
    assert code == 0, err
    assert not temp.exists()
    assert blobs_and_partials(store)[1] == []


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Path:
    mount = tmp_path / "small"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], capture_output=True
    )
    if result.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def _fill_leaving(mount: Path, free_bytes: int) -> None:
    """Fill the file system, then give back exactly ``free_bytes`` (page-rounded)."""
    filler = mount / "filler"
    with filler.open("wb") as out:
        try:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        except OSError:
            pass
    page = os.statvfs(mount).f_frsize
    keep = max(0, filler.stat().st_size - free_bytes)
    os.truncate(filler, keep // page * page)
    assert os.statvfs(mount).f_bavail * page >= free_bytes


def test_disk_full_writing_the_manifest_names_it_and_orphans_nothing(
    small_tmpfs: Path,
    tiny_model: Path,
    run_cli: Callable[..., CliResult],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Room for the blob but not for its manifest: one line, the path, no orphaned blob."""
    monkeypatch.setenv("LIFECYCLE_HOME", str(small_tmpfs))
    store = Store(small_tmpfs)
    (store.manifests / "file").mkdir(parents=True)
    store.blobs.mkdir()
    store.stamps.mkdir()
    page = os.statvfs(small_tmpfs).f_frsize
    size = tiny_model.stat().st_size
    _fill_leaving(small_tmpfs, -(-size // page) * page)
    code, out, err = run_cli("pull", f"file:{tiny_model}")
    assert code == 1 and out == ""
    line = _error_line(err)
    assert line.endswith("cannot write to the store: disk full")
    assert str(store.manifests / "file") in line
    assert blobs_and_partials(store) == ([], [])
    assert store.list_manifests() == []
    assert not [p for p in (store.manifests / "file").iterdir()]


@pytest.mark.parametrize("kind", ["passwd", "truncated", "empty", "directory"])
def test_pull_file_refuses_what_is_not_a_gguf(
    tmp_path: Path, tiny_model: Path, run_cli: Callable[..., CliResult], kind: str
) -> None:
    path = tmp_path / f"{kind}.gguf"
    if kind == "passwd":
        path = Path("/etc/passwd")
    elif kind == "truncated":
        path.write_bytes(tiny_model.read_bytes()[: tiny_model.stat().st_size // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    else:
        path.mkdir()
    code, out, err = run_cli("pull", f"file:{path}")
    assert code == 1 and out == ""
    line = _error_line(err)
    assert line.startswith(f"error: {path}: ")
    if kind == "directory":
        assert "is a directory" in line
    store = Store(lifecycle_home())
    assert blobs_and_partials(store) == ([], []) and store.list_manifests() == []


def test_from_a_directory_says_it_is_a_directory(
    tiny_workspace: Path, run_cli: Callable[..., CliResult]
) -> None:
    modelfile = tiny_workspace / "modelfiles" / "tiny.Modelfile"
    (tiny_workspace / "modelfiles" / "weights").mkdir()
    text = modelfile.read_text(encoding="utf-8").replace("FROM ./tiny.gguf", "FROM ./weights")
    modelfile.write_text(text, encoding="utf-8")
    code, _, err = run_cli("build", "-C", str(tiny_workspace))
    assert code == 2
    assert "FROM ./weights: is a directory, not a GGUF file" in err
