"""``lifecycle doctor`` and the engine canary: real subprocesses on real models."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

from lifecycle.config import load_workspace
from lifecycle.engines.doctor import (
    ENGINE_CHECKS_DIR,
    EngineCheck,
    check_model,
    host_cpu,
    rebuild_command,
)
from lifecycle.runner import EvalOptions, run_eval

Run = Callable[..., tuple[int, str, str]]


def test_doctor_reports_build_cpu_and_a_canary_per_model(
    tiny_workspace: Path, run_cli: Run
) -> None:
    code, out, err = run_cli("doctor", "-C", str(tiny_workspace), "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["ok"] and not doc["degraded"] and doc["rebuild"] is None
    assert doc["engine"]["version"].startswith("llama-cpp-python ")
    assert "CPU :" in doc["engine"]["system_info"]
    cpu = doc["cpu"]
    assert cpu["model"] and set(cpu["flags"]) <= set(host_cpu()["flags"]) | {"avx2"}
    assert isinstance(cpu["amx_advertised"], bool) and "amx_usable" in cpu
    assert doc["ggml"]["backends"].get("CPU") == 1  # llama.cpp's own device registry
    names = [c["model"] for c in doc["canaries"]]
    assert names == ["(engine build: tiny Q4_0 model)", "tiny"]
    for canary in doc["canaries"]:
        assert canary["ok"] and canary["extra_bufts"] and not canary["cached"]
        (attempt,) = canary["attempts"]
        assert attempt["ok"] and attempt["extra_bufts"] and attempt["signal"] is None

    code, out, _ = run_cli("doctor", "-C", str(tiny_workspace), "--json")
    assert code == 0 and all(c["cached"] for c in json.loads(out)["canaries"])
    code, out, _ = run_cli("doctor", "-C", str(tiny_workspace))
    assert code == 0 and "doctor: ok" in out and "canary" in out


def test_a_crashing_model_is_retried_without_extra_buffer_types(
    tiny_workspace: Path, aborting_gguf: Path, run_cli: Run
) -> None:
    shutil.copy(aborting_gguf, tiny_workspace / "modelfiles" / "tiny.gguf")
    code, out, err = run_cli("doctor", "-C", str(tiny_workspace), "--json")
    assert code == 1, err
    doc = json.loads(out)
    assert not doc["ok"] and doc["rebuild"].startswith('CMAKE_ARGS="-DGGML_NATIVE=OFF')
    tiny = next(c for c in doc["canaries"] if c["model"] == "tiny")
    assert [(a["extra_bufts"], a["signal"], a["phase"]) for a in tiny["attempts"]] == [
        (True, "SIGABRT", "load"),
        (False, "SIGABRT", "load"),
    ]
    # The verdict is cached (per build + CPU + digest): eval refuses at once, exit 1.
    code, _, err = run_cli("eval", "-C", str(tiny_workspace))
    assert code == 1
    assert "engine canary crashed (SIGABRT) while loading tiny" in err


def test_eval_applies_the_canary_verdict_and_records_it(tiny_workspace: Path) -> None:
    workspace = load_workspace(tiny_workspace)
    record = run_eval(workspace, EvalOptions(modes=["schema"], resume=False))
    assert record.environment["extra_bufts"] == {"tiny": True}
    (variant,) = record.variants
    digest = variant.variant.blob_digest
    checks_dir = workspace.home / ENGINE_CHECKS_DIR
    check = check_model(
        checks_dir, tiny_workspace / "modelfiles" / "tiny.gguf", name="tiny", digest=digest
    )
    assert check.cached and check.ok

    # A machine where the canary only ran with extra buffer types off (as on an Intel VM that
    # advertises AMX): its recorded verdict makes the eval load that way, and say so.
    degraded = json.loads((checks_dir / f"{check.key}.json").read_text())
    degraded["extra_bufts"] = False
    degraded["attempts"] = [
        {
            "extra_bufts": True,
            "ok": False,
            "signal": "SIGSEGV",
            "phase": "prompt",
            "error": None,
            "seconds": 0.5,
        },
        {
            "extra_bufts": False,
            "ok": True,
            "signal": None,
            "phase": "generation",
            "error": None,
            "seconds": 0.5,
        },
    ]
    degraded["rebuild"] = rebuild_command(host_cpu(), "0.3.36")
    (checks_dir / f"{check.key}.json").write_text(json.dumps(degraded))
    assert EngineCheck.from_dict(degraded).degraded
    messages: list[str] = []
    again = run_eval(
        workspace, EvalOptions(modes=["schema"], resume=False), progress=messages.append
    )
    assert again.environment["extra_bufts"] == {"tiny": False}
    assert any("running without them" in m and "CMAKE_ARGS" in m for m in messages)
    # Same weights, other CPU kernels: the outputs of this tiny model do not change.
    assert [c.output for c in again.cases] == [c.output for c in record.cases]
    # bench and compare load through the same verdict.
    from lifecycle.bench import BenchOptions, run_bench

    bench = run_bench(
        tiny_workspace / "modelfiles" / "tiny.gguf",
        BenchOptions(n_prompt=16, n_gen=4, repetitions=1, n_ctx=256, bandwidth=False),
        variant={"name": "tiny", "blob_digest": digest},
        home=workspace.home,
    )
    assert bench.environment["extra_bufts"] is False and bench.points[0].ok


def test_rebuild_command_follows_the_cpu() -> None:
    avx2 = {"flags": ["avx", "avx2", "fma", "f16c", "bmi2"], "amx_usable": False}
    command = rebuild_command(avx2, "0.3.36")
    assert "-DGGML_AVX2=ON" in command and "AVX512" not in command and "AMX" not in command
    assert command.endswith("--no-cache-dir --no-deps llama-cpp-python==0.3.36")
    sapphire = {
        "flags": [
            "avx",
            "avx2",
            "fma",
            "f16c",
            "bmi2",
            "avx512f",
            "avx512_vnni",
            "avx512_bf16",
            "amx_tile",
            "amx_int8",
            "amx_bf16",
        ],
        "amx_usable": False,
    }
    command = rebuild_command(sapphire)
    assert "-DGGML_AVX512=ON" in command and "-DGGML_AVX512_VNNI=ON" in command
    assert "AMX" not in command  # advertised, but the kernel refuses it to this process
    assert "-DGGML_AMX_TILE=ON" in rebuild_command({**sapphire, "amx_usable": True})
