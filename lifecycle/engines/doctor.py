"""Can this llama.cpp build run here? The engine canary behind ``lifecycle doctor``.

A llama-cpp-python wheel is compiled for one CPU: pip caches it per version whatever
``CMAKE_ARGS`` said, so a wheel built on an AVX512 machine is happily reused on an AVX2 one
(SIGILL at the first matrix product), and a ``-march=native`` build on an Intel VM that
advertises AMX but forbids it crashes in ggml's repacked AMX kernels (SIGSEGV/SIGILL). Both
kill the process, so they can only be detected from outside it.

The canary loads a model and decodes a short prompt plus a few tokens in a subprocess. When
it crashes, it is tried again with llama.cpp's extra buffer types off (no repacked weights,
no AMX: ``use_extra_bufts = false``, llama-bench's ``--repack 0``); when that runs, the engine
runs that way on this machine, the run records it, and the rebuild command that restores full
speed is printed. Results are cached per engine build + CPU + model digest, so the check costs
one subprocess per model the first time a machine sees it and nothing after.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lifecycle.clock import utc_now
from lifecycle.crashguard import remedy
from lifecycle.engines.base import EngineCrashed
from lifecycle.engines.canary import PHASES, CanaryRun, run_canary
from lifecycle.errors import EngineError
from lifecycle.fsutil import atomic_write_text, quiet_stderr
from lifecycle.hostinfo import host_cpu

CHECK_VERSION = 1
ENGINE_CHECKS_DIR = "engine-checks"  # under LIFECYCLE_HOME: facts about this machine
CANARY_CTX = 256
CANARY_PROMPT = 'Ticket: "I was charged twice this month."\nJSON: {"category": "'
CANARY_TOKENS = 8


@dataclass(frozen=True)
class EngineCheck:
    """The canary's verdict for one model on this engine build and CPU."""

    model: str
    digest: str
    ok: bool
    extra_bufts: bool  # the setting the engine must use here (False: the fallback)
    attempts: list[CanaryRun]
    key: str
    checked_at: str
    cached: bool = False
    rebuild: str | None = None  # the command that restores full speed, when degraded

    @property
    def degraded(self) -> bool:
        return self.ok and not self.extra_bufts

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["degraded"] = self.degraded
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EngineCheck:
        attempts = [CanaryRun(**a) for a in data.get("attempts", [])]
        names = set(cls.__dataclass_fields__)
        values = {k: v for k, v in data.items() if k in names and k != "attempts"}
        return cls(**values, attempts=attempts)

    def failure(self) -> EngineCrashed:
        """The error a run raises when no setting of the engine can run this model."""
        last = self.attempts[-1] if self.attempts else CanaryRun(extra_bufts=False, ok=False)
        sig = last.signal
        how = f"crashed ({sig})" if sig else f"failed ({last.error})"
        where = f" while {PHASES.get(last.phase or '', 'running')}" if last.phase else ""
        fix = remedy(sig) if sig else "see `lifecycle doctor --json` for what the canary saw"
        message = (
            f"the engine canary {how}{where} {self.model} ({self.digest[:19]}), also with "
            f"extra buffer types off: {fix}"
        )
        if sig == "SIGILL" and self.rebuild:
            message += f"; rebuild: {self.rebuild}"
        return EngineCrashed(message, signal=sig)


def engine_build() -> dict[str, Any]:
    """llama-cpp-python's version, its system info line and GPU backend (imports llama_cpp)."""
    from lifecycle.engines.llama_cpp import LlamaCppEngine

    info = LlamaCppEngine().info()
    return {"version": info.version, **dict(info.details)}


def rebuild_command(cpu: dict[str, Any], version: str | None = None) -> str:
    """A pip command that builds llama-cpp-python for this CPU, minus what cannot run here.

    ``GGML_NATIVE=OFF`` with the ISA options spelled out (instead of ``-march=native``):
    AMX stays off unless the kernel grants it, and ``--no-cache-dir`` keeps pip from reusing
    a wheel cached from another CPU.
    """
    flags = set(cpu.get("flags", []))
    options = ["-DGGML_NATIVE=OFF"]
    for name, option in (
        ("avx", "GGML_AVX"),
        ("avx2", "GGML_AVX2"),
        ("fma", "GGML_FMA"),
        ("f16c", "GGML_F16C"),
        ("bmi2", "GGML_BMI2"),
        ("avx512f", "GGML_AVX512"),
        ("avx512vbmi", "GGML_AVX512_VBMI"),
        ("avx512_vnni", "GGML_AVX512_VNNI"),
        ("avx512_bf16", "GGML_AVX512_BF16"),
        ("avx_vnni", "GGML_AVX_VNNI"),
    ):
        if name in flags:
            options.append(f"-D{option}=ON")
    if cpu.get("amx_usable"):
        options += ["-DGGML_AMX_TILE=ON", "-DGGML_AMX_INT8=ON"]
        if "amx_bf16" in flags:
            options.append("-DGGML_AMX_BF16=ON")
    package = f"llama-cpp-python=={version}" if version else "llama-cpp-python"
    return (
        f'CMAKE_ARGS="{" ".join(options)}" pip install --force-reinstall --no-cache-dir '
        f"--no-deps {package}"
    )


def check_model(
    checks_dir: Path,
    model_path: Path,
    *,
    name: str,
    digest: str,
    n_gpu_layers: int = 0,
    refresh: bool = False,
    build: dict[str, Any] | None = None,
    cpu: dict[str, Any] | None = None,
) -> EngineCheck:
    """Run (or recall) the canary for one model; fall back to extra buffer types off.

    Never raises for a crash: the returned check says whether the model can run and how.
    """
    build = build or engine_build()
    cpu = cpu or host_cpu()
    key_parts = [CHECK_VERSION, build, cpu, digest, n_gpu_layers > 0]
    key = hashlib.sha256(json.dumps(key_parts, sort_keys=True).encode()).hexdigest()[:24]
    path = checks_dir / f"{key}.json"
    if not refresh and path.is_file():
        try:
            check = EngineCheck.from_dict(json.loads(path.read_text(encoding="utf-8")))
            return EngineCheck(**{**asdict(check), "attempts": check.attempts, "cached": True})
        except (OSError, ValueError, TypeError):
            pass  # a damaged cache entry is re-measured
    attempts = [run_canary(model_path, extra_bufts=True, n_gpu_layers=n_gpu_layers, name=name)]
    if not attempts[0].ok and attempts[0].signal:
        attempts.append(
            run_canary(model_path, extra_bufts=False, n_gpu_layers=n_gpu_layers, name=name)
        )
    ok = attempts[-1].ok
    version = str(build.get("llama_cpp_python") or "") or None
    check = EngineCheck(
        model=name,
        digest=digest,
        ok=ok,
        extra_bufts=attempts[-1].extra_bufts if ok else True,
        attempts=attempts,
        key=key,
        checked_at=utc_now(),
        rebuild=rebuild_command(cpu, version) if len(attempts) > 1 else None,
    )
    # Only verdicts are cached: a canary that failed without a signal (a timeout, a file
    # llama.cpp rejects) says nothing lasting about the build.
    if ok or attempts[-1].signal:
        checks_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(check.to_dict(), indent=2, sort_keys=True) + "\n")
    return check


def extra_bufts_for(
    model_path: Path,
    *,
    name: str,
    digest: str | None = None,
    n_gpu_layers: int = 0,
    home: Path | None = None,
    say: Callable[[str], None] | None = None,
) -> bool:
    """Whether llama.cpp's extra buffer types may be used for this model here.

    Runs (or recalls) the canary. Raises :class:`EngineCrashed` when the model cannot run
    either way; says so, with the rebuild command, when it only runs with them off.
    """
    from lifecycle.config import ENV_NO_CANARY, lifecycle_home

    if os.environ.get(ENV_NO_CANARY):
        return True
    say = say or (lambda _m: None)
    checks_dir = (home or lifecycle_home()) / ENGINE_CHECKS_DIR
    check = check_model(
        checks_dir,
        model_path,
        name=name,
        digest=digest or blob_digest(model_path),
        n_gpu_layers=n_gpu_layers,
    )
    if not check.cached:
        state = "ok" if check.ok and not check.degraded else "degraded" if check.ok else "FAILED"
        say(f"engine canary {name}: {state} ({len(check.attempts)} attempt(s))")
    if not check.ok:
        raise check.failure()
    if check.degraded:
        first = check.attempts[0]
        say(
            f"warning: {name}: llama.cpp crashed ({first.signal}) with its extra buffer types "
            f"on this CPU; running without them (slower). Full speed: {check.rebuild}"
        )
    return check.extra_bufts


def blob_digest(path: Path) -> str:
    """A model file's sha256: from a store blob's name, else by hashing the file."""
    if path.name.startswith("sha256-") and len(path.name) == 71:
        return "sha256:" + path.name[7:]
    return file_digest(path)


def tiny_canary_model(checks_dir: Path) -> Path:
    """A tiny Q4_0 GGUF for checking the build itself: quantized, so repacked kernels run."""
    path = checks_dir / "canary-tiny-q4_0.gguf"
    if path.is_file():
        return path
    import llama_cpp

    from lifecycle.tinymodel import write_tiny_llama

    checks_dir.mkdir(parents=True, exist_ok=True)
    source = write_tiny_llama(checks_dir / f".canary-f32-{os.getpid()}.gguf")
    tmp = checks_dir / f".canary-q4_0-{os.getpid()}.gguf"
    try:
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = int(llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0)
        with quiet_stderr():  # llama.cpp logs every tensor it quantizes
            status = llama_cpp.llama_model_quantize(str(source).encode(), str(tmp).encode(), params)
        if status != 0:
            raise EngineError("llama.cpp could not quantize the canary model")
        os.replace(tmp, path)
    finally:
        source.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)
    return path


def file_digest(path: Path) -> str:
    """sha256 of a file, as the store names blobs."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


def _canary_main(argv: list[str]) -> int:
    """``python -m lifecycle.engines.doctor MODEL EXTRA_BUFTS N_GPU_LAYERS [tiny|file]``: a JSON
    line a phase (``tiny``: MODEL is the folder of the tiny canary model)."""
    from lifecycle.engines.base import GenerationRequest, LoadOptions
    from lifecycle.engines.llama_cpp import LlamaCppModel

    path, extra_bufts, n_gpu_layers = Path(argv[0]), argv[1] == "1", int(argv[2])

    def say(**data: Any) -> None:
        print(json.dumps(data), flush=True)

    if argv[3:4] == ["tiny"]:
        say(phase="quantize")
        path = tiny_canary_model(path)
    say(phase="load")
    options = LoadOptions(
        n_ctx=CANARY_CTX, n_batch=64, n_gpu_layers=n_gpu_layers, extra_bufts=extra_bufts
    )
    try:
        model = LlamaCppModel(path, options)
        say(phase="prompt")
        generation = model.generate(
            GenerationRequest(prompt=CANARY_PROMPT, max_tokens=CANARY_TOKENS, temperature=0.0)
        )
    except EngineError as exc:
        say(ok=False, error=exc.message)
        return 1
    say(phase="generation")
    say(ok=True, tokens=generation.completion_tokens)
    model.close()
    return 0


if __name__ == "__main__":
    from lifecycle.crashguard import die_with_parent

    die_with_parent()
    raise SystemExit(_canary_main(sys.argv[1:]))
