"""``lifecycle doctor``: can this machine run the engine, and how?"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from lifecycle.cli._options import json_option, workspace_option
from lifecycle.cli._output import emit, progress, table
from lifecycle.errors import EXIT_FAILURE, EXIT_OK, LifecycleError


@click.command("doctor")
@workspace_option
@click.option("--refresh", is_flag=True, help="Run the canaries again even when cached.")
@click.option("--no-models", is_flag=True, help="Check the engine build only (tiny model).")
@json_option
def doctor_command(
    workspace_dir: Path | None, refresh: bool, no_models: bool, as_json: bool
) -> int:
    """Check the llama.cpp engine on this machine: build, CPU, GPUs, and a canary per model.

    Each canary loads a model and decodes a few tokens in a subprocess (a tiny generated
    model for the build itself, then every workspace model). When one crashes, it is tried
    again with llama.cpp's extra buffer types off; when that runs, evals use that mode on this
    machine and the rebuild command that restores full speed is printed. Results are cached
    per engine build + CPU + model; `eval`, `smoke` and `gate` run the same check before
    they load a model. Exit codes: 0 every model runs (perhaps degraded); 1 some cannot.
    """
    from lifecycle.config import lifecycle_home
    from lifecycle.engines.devices import ggml_devices
    from lifecycle.engines.doctor import (
        ENGINE_CHECKS_DIR,
        check_model,
        engine_build,
        file_digest,
        host_cpu,
        rebuild_command,
        tiny_canary_model,
    )

    kernels = _cpu_kernels(refresh)
    build = engine_build()
    cpu = host_cpu()
    home = lifecycle_home()
    checks_dir = home / ENGINE_CHECKS_DIR
    targets: list[tuple[str, Path, str, int]] = []
    tiny = tiny_canary_model(checks_dir)
    targets.append(("(engine build: tiny Q4_0 model)", tiny, file_digest(tiny), 0))
    skipped: str | None = None
    if not no_models:
        try:
            targets += _workspace_targets(workspace_dir)
        except LifecycleError as exc:
            skipped = f"workspace models not checked: {exc}"
            progress(skipped)
    checks = []
    for name, path, digest, n_gpu_layers in targets:
        progress(f"canary: {name}")
        check = check_model(
            checks_dir,
            path,
            name=name,
            digest=digest,
            n_gpu_layers=n_gpu_layers,
            refresh=refresh,
            build=build,
            cpu=cpu,
        )
        checks.append(check)
    ok = all(c.ok for c in checks)
    degraded = any(c.degraded for c in checks)
    version = str(build.get("llama_cpp_python") or "") or None
    document: dict[str, Any] = {
        "ok": ok,
        "degraded": degraded,
        "engine": build,
        "cpu": cpu,
        "cpu_kernels": kernels,
        "gpus": _gpus(),
        # Backends compiled into llama.cpp and the devices each answered with: tells a build
        # without a GPU backend from one whose GPU is hidden (CUDA_VISIBLE_DEVICES="").
        "ggml": ggml_devices(),
        "canaries": [c.to_dict() for c in checks],
        "rebuild": rebuild_command(cpu, version) if degraded or not ok else None,
        "workspace": skipped,
    }
    emit(as_json, document, lambda: _render(document))
    return EXIT_OK if ok else EXIT_FAILURE


def _workspace_targets(workspace_dir: Path | None) -> list[tuple[str, Path, str, int]]:
    """One canary per distinct (blob, GPU offload) among the workspace's variants."""
    from lifecycle.config import load_workspace
    from lifecycle.store import Store
    from lifecycle.variants import resolve_variants

    workspace = load_workspace(workspace_dir)
    seen: set[tuple[str, bool]] = set()
    targets = []
    for variant in resolve_variants(workspace, Store(workspace.home)):
        params = variant.modelfile.parameters
        layers = variant.int_parameter("num_gpu") if "num_gpu" in params else 0
        layers = layers or workspace.engine.gpu_layers
        key = (variant.blob_digest, layers > 0)
        if key not in seen:
            seen.add(key)
            targets.append((variant.name, variant.blob_path, variant.blob_digest, layers))
    return targets


def _cpu_kernels(refresh: bool) -> dict[str, Any] | None:
    """Which of the build's CPU backends runs here (None: one is compiled in). The choice this
    process runs with is shown; ``--refresh`` decides again (for the next run: this process
    has loaded its backend already)."""
    from lifecycle.engines import cpuvariants

    choice = cpuvariants.activate(canary=True, say=progress)  # the CLI's choice, or made now
    if refresh and choice is not None:
        libraries = cpuvariants.installed_variants()
        choice = cpuvariants.choose(libraries, canary=True, refresh=True, say=progress) or choice
    return choice.to_dict() if choice else None


def _gpus() -> list[dict[str, Any]]:
    """NVIDIA GPUs NVML can see (empty without a driver or pynvml)."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return []
    out = []
    for index in range(pynvml.nvmlDeviceGetCount()):
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        name = pynvml.nvmlDeviceGetName(handle)
        memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
        out.append(
            {
                "index": index,
                "name": name.decode() if isinstance(name, bytes) else str(name),
                "memory_total_bytes": int(memory.total),
            }
        )
    return out


def _render(doc: dict[str, Any]) -> str:
    cpu, engine = doc["cpu"], doc["engine"]
    amx = "not advertised"
    if cpu["amx_advertised"]:
        amx = "usable" if cpu["amx_usable"] else "advertised but NOT usable by this process"
    backends = doc["ggml"].get("backends") or {}
    listed = ", ".join(f"{name} ({count} device(s))" for name, count in backends.items())
    lines = [
        f"engine:  {engine.get('version')} (GPU offload "
        f"{'available' if engine.get('gpu_offload') else 'unavailable: no GPU device'})",
        f"backends: {listed or doc['ggml'].get('reason') or 'unknown'}",
        f"build:   {engine.get('system_info')}",
        f"cpu:     {cpu['model']} ({cpu['machine']}); {' '.join(cpu['flags'])}",
        f"amx:     {amx}",
        f"kernels: {_render_kernels(doc['cpu_kernels'])}",
        "gpus:    "
        + (
            ", ".join(f"{g['name']} ({g['memory_total_bytes'] >> 20} MiB)" for g in doc["gpus"])
            or "none found"
        ),
        "",
    ]
    rows = []
    for c in doc["canaries"]:
        first = c["attempts"][0] if c["attempts"] else {}
        if not c["ok"]:
            state = "FAILS"
        elif c["degraded"]:
            state = f"runs without extra buffer types ({first.get('signal')} with them)"
        else:
            state = "ok"
        rows.append([c["model"], c["digest"][:19], state, "cached" if c["cached"] else "now"])
    lines.append(table(["model", "blob", "canary", "checked"], rows))
    if doc["rebuild"]:
        lines += ["", "rebuild for full speed on this CPU:", f"  {doc['rebuild']}"]
    lines.append("")
    lines.append(
        "doctor: "
        + (
            "FAILED: some model cannot run here"
            if not doc["ok"]
            else "ok (degraded: slower CPU kernels)"
            if doc["degraded"]
            else "ok"
        )
    )
    return "\n".join(lines)


def _render_kernels(kernels: dict[str, Any] | None) -> str:
    if kernels is None:
        return "compiled in (a build for one CPU level)"
    runnable = [c for c in kernels["candidates"] if c["score"] > 0]
    score = next((c["score"] for c in runnable if c["name"] == kernels["name"]), 0)
    how = "verified by the canary" if kernels["verified"] else "not yet verified"
    text = (
        f"{kernels['name']} of {len(kernels['candidates'])} CPU builds "
        f"({len(runnable)} runnable here; ggml score {score}; {how})"
    )
    passed = {**kernels["excluded"], **kernels["crashed"]}
    if passed:
        text += "; passed over: " + "; ".join(f"{k} ({v})" for k, v in passed.items())
    return text
