"""Choosing llama.cpp's CPU kernels on a build that carries every x86 variant.

These run only on such a build (``.ci/install-engine`` makes one; a portable single-CPU build
has nothing to choose). The crash the canary must step down from is real: a shared library
built here that claims to be the best CPU backend and aborts when llama.cpp initialises it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lifecycle.engines import cpuvariants
from lifecycle.engines.doctor import host_cpu

LIBRARIES = cpuvariants.installed_variants()
pytestmark = pytest.mark.skipif(
    not LIBRARIES, reason="llama-cpp-python here is a single-CPU build (no CPU variants)"
)

CRASHING_BACKEND = r"""
#include <stdlib.h>
int ggml_backend_score(void) { return SCORE; }
void * ggml_backend_init(void) { abort(); }
"""


def _fake_backend(folder: Path, name: str, score: int) -> Path:
    """A real shared library with ggml's backend entry points: scores ``score`` and aborts
    when loaded as a backend."""
    if shutil.which("cc") is None:
        pytest.skip("no C compiler to build the crashing backend")
    source = folder / f"{name}.c"
    source.write_text(CRASHING_BACKEND.replace("SCORE", str(score)), encoding="utf-8")
    library = folder / f"libggml-cpu-{name}.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(library), str(source)], check=True)
    return library


def _best_safe(candidates: list[cpuvariants.Candidate]) -> cpuvariants.Candidate:
    usable = host_cpu().get("amx_usable")
    runnable = [c for c in candidates if c.runnable and (usable or not c.uses_amx)]
    return max(runnable, key=lambda c: c.score)


def test_scores_come_from_ggml_and_agree_with_this_cpu() -> None:
    candidates = cpuvariants.score_libraries(LIBRARIES)
    by_name = {c.name: c for c in candidates}
    flags = set(host_cpu()["flags"])
    assert by_name["x64"].runnable  # the baseline build runs everywhere
    assert by_name["haswell"].runnable == ({"avx2", "fma", "f16c", "bmi2"} <= flags)
    assert by_name["skylakex"].runnable == ("avx512f" in flags)
    assert by_name["sapphirerapids"].uses_amx or not by_name["sapphirerapids"].runnable
    assert by_name["haswell"].score > by_name["x64"].score


def test_the_process_loads_the_chosen_kernels(tmp_path: Path) -> None:
    """A fresh process picks ggml's best safe build, and that library is what llama.cpp
    mapped when the model loaded (read back from /proc/self/maps)."""
    script = (
        "from lifecycle.engines import cpuvariants, compat\n"
        "import llama_cpp, json\n"
        "llama_cpp.llama_backend_init()\n"
        "maps = open('/proc/self/maps').read()\n"
        "loaded = sorted({l.split()[-1] for l in maps.splitlines() if 'libggml-cpu-' in l})\n"
        "print(json.dumps({'choice': cpuvariants.active().to_dict(), 'loaded': loaded}))\n"
    )
    env = {**os.environ, "LIFECYCLE_HOME": str(tmp_path)}
    env.pop("GGML_BACKEND_PATH", None)
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True
    )
    out = json.loads(proc.stdout.splitlines()[-1])
    expected = _best_safe(cpuvariants.score_libraries(LIBRARIES))
    assert out["choice"]["name"] == expected.name
    assert out["choice"]["verified"] is False  # a library import does not run the canary
    assert [Path(p).name for p in out["loaded"]] == [Path(expected.path).name]


def test_canary_steps_down_from_kernels_that_crash(tmp_path: Path) -> None:
    """The best-scoring build dies when llama.cpp starts it: the canary sees the signal, the
    next build is verified and chosen, and the choice is remembered with the crash."""
    crashing = _fake_backend(tmp_path, "crashy", 1 << 20)
    libraries = [crashing, *LIBRARIES]
    messages: list[str] = []
    choice = cpuvariants.choose(libraries, home=tmp_path, canary=True, say=messages.append)
    assert choice is not None
    expected = _best_safe(choice.candidates)
    assert expected.name == "crashy"  # it did score best...
    assert "SIGABRT" in choice.crashed["crashy"]  # ...and died for real
    second = _best_safe([c for c in choice.candidates if c.name != "crashy"])
    assert (choice.name, choice.verified) == (second.name, True)
    assert any("crashy CPU kernels crashed (SIGABRT)" in m for m in messages)
    again = cpuvariants.choose(libraries, home=tmp_path, canary=True)
    assert again is not None and again.cached and again.name == second.name


def test_amx_builds_are_passed_over_where_the_kernel_refuses_amx(tmp_path: Path) -> None:
    """ggml's score reads CPUID only; a build scoring the AMX bit is excluded unless this
    process may use AMX (here the fake build would crash anyway, so it must not be tried)."""
    if host_cpu().get("amx_usable"):
        pytest.skip("this machine may use AMX")
    amx_like = _fake_backend(tmp_path, "amxlike", (1 << 20) | cpuvariants.AMX_SCORE_BIT)
    choice = cpuvariants.choose([amx_like, *LIBRARIES], home=tmp_path, canary=True)
    assert choice is not None
    assert "refuses AMX" in choice.excluded["amxlike"]
    assert "amxlike" not in choice.crashed  # never run
    assert choice.name != "amxlike" and choice.verified


def test_a_damaged_choice_is_decided_again(tmp_path: Path) -> None:
    first = cpuvariants.choose(LIBRARIES, home=tmp_path)
    assert first is not None and not first.cached
    stored = tmp_path / cpuvariants.CHOICES_DIR / f"cpu-variant-{first.key}.json"
    stored.write_text("{not json", encoding="utf-8")
    again = cpuvariants.choose(LIBRARIES, home=tmp_path)
    assert again is not None and not again.cached and again.name == first.name


def test_a_backend_path_the_user_set_is_left_alone(tmp_path: Path) -> None:
    chosen = str(LIBRARIES[0])
    script = (
        "import os\nfrom lifecycle.engines import cpuvariants\n"
        "print(cpuvariants.activate(), os.environ['GGML_BACKEND_PATH'])\n"
    )
    env = {**os.environ, "LIFECYCLE_HOME": str(tmp_path), "GGML_BACKEND_PATH": chosen}
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True
    )
    assert proc.stdout.split() == ["None", chosen]


def test_doctor_names_the_kernels_it_runs(tmp_path: Path) -> None:
    env = {**os.environ, "LIFECYCLE_HOME": str(tmp_path)}
    env.pop("GGML_BACKEND_PATH", None)
    proc = subprocess.run(
        [sys.executable, "-m", "lifecycle", "doctor", "--no-models", "--json"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    kernels = json.loads(proc.stdout)["cpu_kernels"]
    expected = _best_safe(cpuvariants.score_libraries(LIBRARIES))
    assert (kernels["name"], kernels["verified"]) == (expected.name, True)
