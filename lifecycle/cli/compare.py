"""``lifecycle compare`` (quant levels side by side) and ``lifecycle quantize`` (make them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from lifecycle.cli._options import workspace_option
from lifecycle.cli._output import emit, library_progress, progress, table
from lifecycle.errors import EXIT_OK, UsageError


@click.command("compare")
@click.argument("names", nargs=-1, required=True)
@workspace_option
@click.option("--reference", help="The subject others are measured against (default: most bpw).")
@click.option(
    "--text",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Reference text to score (default: compare.text, else the packaged text).",
)
@click.option("--ctx", "n_ctx", type=click.IntRange(min=8), help="Chunk size in tokens (512).")
@click.option("--chunks", type=click.IntRange(min=1), help="Score only the first N chunks.")
@click.option(
    "--score",
    type=click.Choice(["all", "second-half"]),
    default="all",
    show_default=True,
    help="Positions scored per chunk; second-half is llama-perplexity's choice.",
)
@click.option("--top-k", type=click.IntRange(min=1), help="Reference log-probs kept (1024).")
@click.option("--suite", "-s", "suites", multiple=True, help="Golden suite(s) to run.")
@click.option("--mode", "modes", multiple=True, type=click.Choice(["free", "schema"]))
@click.option("--limit", type=click.IntRange(min=1), help="First N cases per suite.")
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads for the engine.")
@click.option("--no-eval", is_flag=True, help="Skip task quality (golden suites).")
@click.option("--no-text", is_flag=True, help="Skip token-level quality (reference text).")
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="No progress on stderr.")
def compare_command(
    names: tuple[str, ...],
    workspace_dir: Path | None,
    reference: str | None,
    text: Path | None,
    n_ctx: int | None,
    chunks: int | None,
    score: str,
    top_k: int | None,
    suites: tuple[str, ...],
    modes: tuple[str, ...],
    limit: int | None,
    threads: int | None,
    no_eval: bool,
    no_text: bool,
    as_json: bool,
    quiet: bool,
) -> int:
    """Compare variants, models or tags: KL divergence, golden A/B, speed and size.

    NAMES are workspace variants (harbor-triage:q4_k_m-ctx2048), model names (all their
    variants), tags (hf:..., file:...) or GGUF paths. Writes the report, the eval run and a
    chart under .lifecycle/compare/. Exit codes: 0 compared; 2 usage or config error; 1 the
    tool failed.
    """
    from lifecycle.compare import CompareOptions, compare
    from lifecycle.comparerender import render_report, save_report
    from lifecycle.config import lifecycle_home, load_workspace
    from lifecycle.errors import ConfigError

    if no_eval and no_text:
        raise UsageError("--no-eval and --no-text together leave nothing to compare")
    if text is not None and not text.is_file():
        raise UsageError("reference text not found", path=text)
    try:
        workspace = load_workspace(workspace_dir)
    except ConfigError:
        if workspace_dir is not None:
            raise
        workspace = None  # tags and paths can be compared outside a workspace
    options = CompareOptions(
        reference=reference,
        text=text,
        n_ctx=n_ctx,
        chunks=chunks,
        score=score,
        top_k=top_k,
        limit=limit,
        threads=threads,
        token_quality=not no_text,
        task_quality=not no_eval,
        suites=suites or None,
        modes=modes or None,
    )
    # A live bar per subject while the reference text is scored (minutes on a CPU), and per
    # model load and quantization, on a terminal only: with --json, -q or a redirected stderr
    # the step prints one line.
    with library_progress(enabled=not (as_json or quiet)) as bars:
        report = compare(
            list(names),
            options,
            workspace=workspace,
            progress=None if quiet else progress,
            ticker=bars,
        )
    out_dir = (workspace.root / ".lifecycle" if workspace else lifecycle_home()) / "compare"
    path, _chart = save_report(report, out_dir)
    emit(as_json, report.to_dict(), lambda: render_report(report))
    progress(f"comparison: {path}" + (f"; chart: {report.chart}" if report.chart else ""))
    return EXIT_OK


@click.command("quantize")
@click.argument("tag")
@click.option(
    "--to", "targets", required=True, help="Comma-separated quant types, e.g. Q8_0,Q4_K_M."
)
@click.option("--allow-requantize", is_flag=True, help="Quantize an already quantized source.")
@click.option("--threads", type=click.IntRange(min=0), default=0, help="Quantizer threads.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON on stdout.")
def quantize_command(
    tag: str, targets: str, allow_requantize: bool, threads: int, as_json: bool
) -> int:
    """Quantize TAG (a tag, a stored digest or a GGUF path) to each --to type, into the store.

    Each output is a store blob with a provenance manifest (source digest, target, tool
    version); a repeat request is answered from the store.
    """
    from lifecycle.config import lifecycle_home
    from lifecycle.gguf import read_gguf
    from lifecycle.quantize import normalise_quant, quantize_blob
    from lifecycle.store import Store

    wanted = [normalise_quant(t) for t in targets.split(",") if t.strip()]
    if not wanted:
        raise UsageError("--to names no quant type")
    store = Store(lifecycle_home())
    source = _source_digest(store, tag)
    results = []
    for target in dict.fromkeys(wanted):
        progress(f"quantizing {tag} to {target}")
        with library_progress(enabled=not as_json):
            result = quantize_blob(
                store, source, target, allow_requantize=allow_requantize, threads=threads
            )
        row = result.to_dict()
        row["path"] = str(store.blob_path(result.digest))
        row["bits_per_weight"] = read_gguf(store.blob_path(result.digest)).bits_per_weight
        results.append(row)
    document = {"source": tag, "source_digest": source, "quantized": results}
    emit(as_json, document, lambda: render_quantized(results))
    return EXIT_OK


def _source_digest(store: Any, tag: str) -> str:
    """The store digest of TAG: a digest as is, a tag resolved (pulled), a path imported."""
    from lifecycle.sources import pull_file
    from lifecycle.targets import resolve_target

    target = resolve_target(tag, store)
    if target is None:
        raise UsageError(
            f"{tag!r} is neither a tag (hf:, ollama:, oci://, pypi:, file:) nor a file"
        )
    if target.digest is None:  # a GGUF file outside the store: import it
        return str(pull_file(store, target.path).digest)
    return target.digest


def render_quantized(results: list[dict[str, Any]]) -> str:
    rows = [
        [
            r["target"],
            r["source_type"],
            r["digest"][:19],
            f"{r['size'] / 2**20:.1f} MiB",
            None if r["bits_per_weight"] is None else round(r["bits_per_weight"], 2),
            "yes" if r["requantized"] else "no",
            "yes" if r["cached"] else "no",
        ]
        for r in results
    ]
    headers = ["target", "from", "digest", "size", "bpw", "requantized", "cached"]
    return table(headers, rows)
