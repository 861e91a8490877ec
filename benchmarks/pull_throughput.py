"""Pull throughput: `lifecycle` pulling a blob from a loopback registry vs a plain copy.

Starts Debian's ``docker-registry`` on a free loopback port (as the tests do), pushes a
~200 MB Ollama-style model, then alternates two sides for ``--repeat`` rounds:

- pull: ``sources.pull`` into a fresh store (manifest GET, blob stream hashed in the same pass
  into the partial file, size and digest check, fsync, atomic rename, manifest write);
- plain: the same blob URL streamed with urllib into a file in the same directory, with the
  same chunk size and an fsync, and nothing else.

The ratio of the median wall times is printed (target: <= 1.15).

    python benchmarks/pull_throughput.py
    python benchmarks/pull_throughput.py --size-mb 200 --repeat 5
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from registry import start_registry

from lifecycle import sources
from lifecycle.store import Store, parse_tag

CHUNK = 1024 * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp, start_registry(Path(tmp) / "registry") as reg:
        data = b"GGUF" + os.urandom(args.size_mb * CHUNK - 4)
        reg.push_model("bench/model", "v1", data)
        digest = reg.push_blob("bench/model", data)
        url = f"{reg.url}/v2/bench/model/blobs/{digest}"
        tag = parse_tag(f"oci://{reg.host}/bench/model:v1")
        work = Path(tmp) / "work"
        pulls: list[float] = []
        plains: list[float] = []
        for _ in range(args.repeat):
            plains.append(_timed(work, lambda: _plain_copy(url, work / "copy.bin")))
            pulls.append(_timed(work, lambda: sources.pull(Store(work / "home"), tag)))
        pull, plain = statistics.median(pulls), statistics.median(plains)
        mb = len(data) / 1e6
        print(f"blob: {mb:.0f} MB, {args.repeat} rounds, medians")
        print(f"plain copy: {plain:.3f} s ({mb / plain:.0f} MB/s)")
        print(f"lifecycle pull: {pull:.3f} s ({mb / pull:.0f} MB/s)")
        print(f"ratio pull/plain: {pull / plain:.3f} (target <= 1.15)")


def _timed(work: Path, run: object) -> float:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    start = time.perf_counter()
    run()  # type: ignore[operator]
    return time.perf_counter() - start


def _plain_copy(url: str, target: Path) -> None:
    with urllib.request.urlopen(url) as response, target.open("wb") as out:
        while block := response.read(CHUNK):
            out.write(block)
        out.flush()
        os.fsync(out.fileno())


if __name__ == "__main__":
    main()
