"""Which of llama.cpp's CPU kernel builds this process loads, on a build that carries several.

Built with ``GGML_BACKEND_DL`` and ``GGML_CPU_ALL_VARIANTS`` (as llama.cpp's release binaries
and Ollama are), llama.cpp ships one CPU backend per x86 generation (``libggml-cpu-haswell.so``,
``-skylakex``, ``-zen4``, ``-sapphirerapids`` ...) and loads, at the first backend use, the one
whose ``ggml_backend_score()`` is highest. Two things keep lifecycle from leaving it at that:

- ggml's score reads CPUID only ("does not check for OS support", says its source): on a VM
  that advertises AMX but refuses the tile state, the sapphirerapids build wins and dies;
- ``ggml_backend_load_all`` looks in the executable's folder and the working directory, not in
  llama-cpp-python's ``lib`` folder, so inside Python it finds no CPU backend at all.

So the choice is made here: ggml's own scores (read from each library in a subprocess), minus
the AMX builds where the kernel refuses AMX (:func:`lifecycle.hostinfo.amx_usable`),
then — when the CLI is about to run the engine — the canary, a subprocess that loads a tiny
quantized model with the candidate and decodes, stepping down to the next build on a crash.
The choice reaches llama.cpp through ``GGML_BACKEND_PATH`` before the first backend load and
is cached per build and CPU, so later runs pay a stat and a small file read.

On a build with one CPU backend compiled in (the portable default), nothing here does anything.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lifecycle import envnames
from lifecycle.engines.canary import PHASES, run_canary
from lifecycle.fsutil import atomic_write_text
from lifecycle.hostinfo import host_cpu

CHOICE_VERSION = 1
CHOICES_DIR = "engine-checks"  # under LIFECYCLE_HOME, beside the per-model canary verdicts
SCORE_TIMEOUT_S = 60.0
AMX_SCORE_BIT = 1 << 11  # ggml_backend_cpu_x86_score adds this for a build with AMX_INT8

_ACTIVE: Choice | None = None  # what this process chose, for `doctor` and the run record


@dataclass(frozen=True)
class Candidate:
    """One CPU backend library of the build, with ggml's score for this CPU (0: cannot run)."""

    name: str  # "zen4", from libggml-cpu-zen4.so
    path: str
    score: int
    uses_amx: bool

    @property
    def runnable(self) -> bool:
        return self.score > 0


@dataclass(frozen=True)
class Choice:
    """The CPU backend this machine runs, and how it was decided."""

    name: str
    path: str
    key: str
    verified: bool  # the canary ran a quantized model with it
    candidates: list[Candidate] = field(default_factory=list)
    crashed: dict[str, str] = field(default_factory=dict)  # build -> how its canary died
    excluded: dict[str, str] = field(default_factory=dict)  # build -> why it was passed over
    cached: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Choice:
        candidates = [Candidate(**c) for c in data.get("candidates", [])]
        names = set(cls.__dataclass_fields__) - {"candidates"}
        return cls(**{k: v for k, v in data.items() if k in names}, candidates=candidates)


def package_dir() -> Path | None:
    """llama-cpp-python's package folder, found without importing it."""
    try:
        spec = importlib.util.find_spec("llama_cpp")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    return Path(spec.origin).parent


def installed_variants() -> list[Path]:
    """The build's CPU backend libraries, one per kernel variant (none on a single-CPU build).

    ggml installs them to CMake's binary folder, which llama-cpp-python 0.3.36 leaves at
    ``bin`` on Linux: ``site-packages/bin``, not beside its other libraries in
    ``llama_cpp/lib`` (looked in too, for a build that puts them there).
    """
    package = package_dir()
    if package is None:
        return []
    return [
        *variant_libraries(package / "lib"),
        *variant_libraries(package.parent / "bin"),
    ]


def variant_libraries(folder: Path) -> list[Path]:
    """The CPU backend libraries in ``folder``."""
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.glob("libggml-cpu-*") if p.suffix in (".so", ".dylib") and p.is_file()
    )


def variant_name(path: Path) -> str:
    return path.stem.removeprefix("libggml-cpu-")


def active() -> Choice | None:
    """The choice :func:`activate` made in this process (None: a single-CPU build, or the
    user's own ``GGML_BACKEND_PATH``)."""
    return _ACTIVE


def activate(
    *, home: Path | None = None, canary: bool = False, say: Callable[[str], None] | None = None
) -> Choice | None:
    """Point llama.cpp at this machine's CPU backend before it loads one; idempotent.

    ``canary``: verify an unverified choice by running a quantized model with it (the CLI does,
    before commands that run the engine); a library user's first import takes ggml's best
    score minus the AMX rule, and the next CLI run verifies it. A ``GGML_BACKEND_PATH`` the user
    set is left alone.
    """
    global _ACTIVE
    if _ACTIVE is not None and (_ACTIVE.verified or not canary):
        return _ACTIVE
    if os.environ.get(envnames.ENV_GGML_BACKEND_PATH) and _ACTIVE is None:
        return None
    libraries = installed_variants()
    if not libraries:
        return None
    choice = choose(libraries, home=home, canary=canary, say=say)
    if choice is not None:
        os.environ[envnames.ENV_GGML_BACKEND_PATH] = choice.path
        _ACTIVE = choice
    return choice


def choose(
    libraries: list[Path],
    *,
    home: Path | None = None,
    canary: bool = False,
    refresh: bool = False,
    say: Callable[[str], None] | None = None,
) -> Choice | None:
    """The CPU backend to load here: recalled, or decided and remembered."""
    from lifecycle.config import lifecycle_home

    say = say or (lambda _m: None)
    cpu = host_cpu()
    key = choice_key(libraries, cpu)
    path = (home or lifecycle_home()) / CHOICES_DIR / f"cpu-variant-{key}.json"
    if not refresh:
        recalled = _recall(path)
        if recalled is not None and (recalled.verified or not canary):
            return recalled
    candidates = score_libraries(libraries)
    excluded = {
        c.name: "the kernel refuses AMX here (arch_prctl ARCH_REQ_XCOMP_PERM)"
        for c in candidates
        if c.runnable and c.uses_amx and not cpu.get("amx_usable")
    }
    ranked = [c for c in candidates if c.runnable and c.name not in excluded]
    ranked.sort(key=lambda c: -c.score)
    if not ranked:
        return None
    crashed: dict[str, str] = {}
    chosen, verified = ranked[0], False
    if canary:
        for candidate in ranked:
            died = run_variant_canary(candidate, home=home)
            if died is None:
                chosen, verified = candidate, True
                break
            crashed[candidate.name] = died
            say(f"warning: llama.cpp's {candidate.name} CPU kernels {died} here; trying the next")
        else:  # every build failed: more likely the canary than the kernels; ggml's pick
            chosen = ranked[0]
    choice = Choice(
        name=chosen.name,
        path=chosen.path,
        key=key,
        verified=verified,
        candidates=candidates,
        crashed=crashed,
        excluded=excluded,
    )
    if verified or not crashed:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(choice.to_dict(), indent=2, sort_keys=True) + "\n")
    return choice


def choice_key(libraries: list[Path], cpu: dict[str, Any]) -> str:
    """Changes with the build's libraries (name, size, mtime) and with the CPU."""
    stats = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in libraries]
    parts = [CHOICE_VERSION, stats, cpu.get("model"), cpu.get("flags"), cpu.get("amx_usable")]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:24]


def _recall(path: Path) -> Choice | None:
    try:
        choice = Choice.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None  # none yet, or damaged: decided again
    if not Path(choice.path).is_file():
        return None
    return Choice(**{**asdict(choice), "candidates": choice.candidates, "cached": True})


def score_libraries(libraries: list[Path]) -> list[Candidate]:
    """ggml's ``ggml_backend_score()`` of each library for this CPU, read in a subprocess
    (loading a library built for a newer CPU is harmless by ggml's design, but a surprise must
    not kill the caller). A library that kills the scorer scores 0."""
    scores: dict[str, int] = {}
    remaining = list(libraries)
    while remaining:
        args = [sys.executable, "-m", "lifecycle.engines.cpuvariants", *map(str, remaining)]
        proc = subprocess.run(
            args, capture_output=True, text=True, timeout=SCORE_TIMEOUT_S, stdin=subprocess.DEVNULL
        )
        for line in proc.stdout.splitlines():
            data = json.loads(line)
            scores[data["path"]] = int(data["score"])
        done = [p for p in remaining if str(p) in scores]
        remaining = remaining[len(done) :]
        if remaining and proc.returncode != 0:
            scores[str(remaining.pop(0))] = 0  # this one killed the scorer
    return [
        Candidate(
            name=variant_name(p),
            path=str(p),
            score=scores.get(str(p), 0),
            uses_amx=bool(scores.get(str(p), 0) & AMX_SCORE_BIT),
        )
        for p in libraries
    ]


def run_variant_canary(candidate: Candidate, *, home: Path | None = None) -> str | None:
    """Run the tiny quantized canary model with ``candidate``; None when it ran, else how it
    died ("crashed (SIGILL) while loading", ...)."""
    from lifecycle.config import lifecycle_home

    checks_dir = (home or lifecycle_home()) / CHOICES_DIR
    run = run_canary(
        checks_dir,
        extra_bufts=True,
        name=f"cpu-{candidate.name}",
        tiny=True,
        env={envnames.ENV_GGML_BACKEND_PATH: candidate.path},
    )
    if run.ok:
        return None
    how = f"crashed ({run.signal})" if run.signal else f"failed ({run.error})"
    return f"{how} while {PHASES.get(run.phase or '', 'starting')}"


def _score_main(paths: list[str]) -> int:
    """``python -m lifecycle.engines.cpuvariants LIB...``: a JSON line per library scored."""
    package = package_dir()
    base = package / "lib" / "libggml-base.so" if package else None
    if base is not None and base.is_file():
        ctypes.CDLL(str(base), mode=ctypes.RTLD_GLOBAL)  # the variants link against it
    for path in paths:
        lib = ctypes.CDLL(path, mode=ctypes.RTLD_LOCAL)
        score_fn = getattr(lib, "ggml_backend_score", None)
        score = 0
        if score_fn is not None:
            score_fn.restype = ctypes.c_int
            score_fn.argtypes = []
            score = int(score_fn())
        print(json.dumps({"path": path, "score": score}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(_score_main(sys.argv[1:]))
