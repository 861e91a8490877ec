"""Running a canary: a subprocess that loads a model with this engine build and decodes a few
tokens, and how it ended (ran, failed with an error, or died of a signal in which phase).

The subprocess is ``python -m lifecycle.engines.doctor`` (see its ``_canary_main``); what a
verdict means for a model is :mod:`lifecycle.engines.doctor`'s business, which CPU kernels to
load is :mod:`lifecycle.engines.cpuvariants`'. This module imports no engine.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lifecycle.crashguard import child_environment, note

CANARY_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class CanaryRun:
    """One canary attempt: a subprocess loading ``model`` and decoding a few tokens."""

    extra_bufts: bool
    ok: bool
    signal: str | None = None  # SIGSEGV, SIGILL, ... when the process died of one
    phase: str | None = None  # load, prompt, generation: where it got to
    error: str | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PHASES = {
    "quantize": "making the canary model",
    "load": "loading",
    "prompt": "decoding the prompt of",
    "generation": "generating with",
}


def run_canary(
    model_path: Path,
    *,
    extra_bufts: bool,
    n_gpu_layers: int = 0,
    name: str = "",
    timeout_s: float = CANARY_TIMEOUT_S,
    env: dict[str, str] | None = None,
    tiny: bool = False,
) -> CanaryRun:
    """Load ``model_path`` and decode a few tokens in a fresh subprocess; report how it went.

    ``env``: variables set for the subprocess only (a CPU backend to try). ``tiny``:
    ``model_path`` is a folder, where the subprocess makes (or finds) the tiny quantized
    canary model itself, so that making it is tried with the same build.
    """
    note(phase="canary", model=name or model_path.name)
    args = [sys.executable, "-m", "lifecycle.engines.doctor", str(model_path)]
    args += [str(int(extra_bufts)), str(n_gpu_layers), "tiny" if tiny else "file"]
    started = time.perf_counter()
    try:
        proc = subprocess.run(
            args,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env={**child_environment(), **(env or {})},
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return CanaryRun(extra_bufts, False, error=f"no answer within {timeout_s:g} s")
    seconds = round(time.perf_counter() - started, 3)
    phase = None
    result: dict[str, Any] = {}
    for line in proc.stdout.splitlines():
        try:
            data = json.loads(line)
        except ValueError:
            continue
        phase = data.get("phase", phase)
        result = data if "ok" in data else result
    if proc.returncode < 0:
        try:
            sig = signal.Signals(-proc.returncode).name
        except ValueError:
            sig = f"signal {-proc.returncode}"
        return CanaryRun(extra_bufts, False, signal=sig, phase=phase, seconds=seconds)
    if result.get("ok"):
        return CanaryRun(extra_bufts, True, phase=phase, seconds=seconds)
    error = result.get("error") or (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return CanaryRun(extra_bufts, False, phase=phase, error=str(error), seconds=seconds)
