"""Vector drift: each text's embedding against the pinned one, and when to re-index.

A retrieval index stores vectors computed by one model on one runtime; when either changes so
that the vectors move, every stored vector is stale and the index must be rebuilt, whatever
the retrieval metrics on a golden set say. So a pin of an embedding model keeps every text's
vector (unit length, float16) in a sidecar next to its baseline,
``baselines/<model>.vectors.<sha256 prefix>.npy``, named by the digest of its bytes and listed
in the baseline entry (``vectors``: file, digest, dimension and each row's text key and text
digest), published with the lock and the baseline in one journal.

The gate compares each text embedded now with its pinned vector when the text is unchanged
(same digest) and reports the cosines' min / p5 / median:

- ``[gate] max_vector_drift`` (1 - cosine, off unless set): a text that moved more fails;
- ``[gate] reindex_below`` (a cosine, default :data:`REINDEX_BELOW`): a text under it marks
  the variant **re-index needed**, in the gate's headline, the pin's commit message (the
  weekly PR body) and the lock entry.

Numeric noise is not a re-index: float16 storage costs about 1e-7 of cosine and decoding
texts in other batches moved a vector by under 1e-5 in tests/test_retrieval.py, two orders
under the default threshold. Across CPU kernels (the example's 104 texts pinned with AVX2
kernels, embedded again with llama.cpp's AVX512 "zen4" build on AMD EPYC Zen 4) the lowest
cosine was 0.99984, the median 0.99995.
"""

from __future__ import annotations

import base64
import hashlib
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lifecycle.checks import Check
from lifecycle.results import percentile

REINDEX_BELOW = 0.999  # a text whose cosine to its pinned vector is under this: re-index
REINDEX = "re-index needed"
SIDECAR_GLOB = "*.vectors.*.npy"


def encode_vector(vector: np.ndarray) -> str:
    """A vector as base64 float16 (little-endian): how run records keep them compactly."""
    return base64.b64encode(np.asarray(vector, dtype="<f2").tobytes()).decode("ascii")


def decode_vector(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f2").astype(np.float64)


# --- the sidecar -------------------------------------------------------------------------


def sidecar(
    model: str, suites: Mapping[str, Mapping[str, Any]]
) -> tuple[dict[str, Any], str, bytes] | None:
    """The sidecar of one variant's retrieval suites (``RunRecord.retrieval[variant]``):
    (the baseline entry's ``vectors`` index, the file name, the bytes); None without vectors.

    Rows are sorted by (suite, text key), so the same vectors give the same bytes and name.
    """
    rows: list[tuple[str, str, str]] = []  # (suite, key, text digest)
    arrays: list[np.ndarray] = []
    dimension = None
    for suite in sorted(suites):
        info = suites[suite]
        for key in sorted(info.get("texts") or {}):
            digest, encoded = info["texts"][key]
            vector = decode_vector(encoded)
            if dimension is None:
                dimension = vector.size
            if vector.size != dimension:
                return None  # one variant embeds at one dimension; a mix cannot be one file
            rows.append((suite, key, digest))
            arrays.append(vector)
    if not arrays or dimension is None:
        return None
    buffer = io.BytesIO()
    np.save(buffer, np.stack(arrays).astype("<f2"), allow_pickle=False)
    data = buffer.getvalue()
    sha = hashlib.sha256(data).hexdigest()
    name = f"{model}.vectors.{sha[:16]}.npy"
    index = {
        "file": name,
        "sha256": "sha256:" + sha,
        "dtype": "float16",
        "dimension": dimension,
        "rows": [[suite, key, digest] for suite, key, digest in rows],
        "pooling": {s: suites[s].get("pooling") for s in sorted(suites)},
        "normalisation": "l2",
    }
    return index, name, data


def read_sidecar(directory: Path, index: Mapping[str, Any]) -> np.ndarray | str:
    """The pinned vectors (rows as ``index["rows"]``), or why they are unavailable."""
    name = str(index.get("file") or "")
    if not name or "/" in name or "\\" in name or name.startswith("."):
        return f"the baseline names no usable sidecar ({name!r})"
    path = directory / name
    try:
        data = path.read_bytes()
    except OSError as exc:
        return f"{path.name}: {exc.strerror or exc}"
    if "sha256:" + hashlib.sha256(data).hexdigest() != index.get("sha256"):
        return f"{path.name} does not match the digest its baseline records"
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as exc:
        return f"{path.name} is not a vector file ({exc})"
    rows = index.get("rows") or []
    if array.ndim != 2 or array.shape != (len(rows), int(index.get("dimension") or -1)):
        return f"{path.name} has shape {array.shape}, not {len(rows)} x {index.get('dimension')}"
    return array.astype(np.float64)


# --- drift -------------------------------------------------------------------------------


def cosines(pinned: np.ndarray, now: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two stacks of vectors."""
    dots = np.sum(pinned * now, axis=1)
    norms = np.linalg.norm(pinned, axis=1) * np.linalg.norm(now, axis=1)
    return np.clip(dots / np.where(norms > 0, norms, 1.0), -1.0, 1.0)


def drift_summary(values: Sequence[float]) -> dict[str, float]:
    data = [float(v) for v in values]
    return {
        "min": round(min(data), 6),
        "p5": round(percentile(data, 5), 6),
        "median": round(percentile(data, 50), 6),
    }


def paired_vectors(
    suites_now: Mapping[str, Mapping[str, Any]],
    index: Mapping[str, Any],
    pinned: np.ndarray,
) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] | str:
    """Each text unchanged since the pin (same digest): (suite, key) -> (pinned, now) vectors,
    or why they cannot be compared (another dimension)."""
    out: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
    for row, (suite, key, digest) in enumerate(index.get("rows") or []):
        entry = ((suites_now.get(suite) or {}).get("texts") or {}).get(key)
        if entry is None or entry[0] != digest:
            continue  # the text is new or changed: nothing to compare it with
        vector = decode_vector(entry[1])
        if vector.size != pinned.shape[1]:
            return f"dimension {pinned.shape[1]} pinned, {vector.size} now"
        out[(suite, key)] = (pinned[row], vector)
    return out


def baseline_pairs(
    suites_now: Mapping[str, Mapping[str, Any]] | None,
    baseline_extra: Mapping[str, Any],
    baseline_dir: Path | None,
) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] | str:
    """:func:`paired_vectors` of a run and the baseline entry's sidecar, or why not."""
    index = baseline_extra.get("vectors")
    if not suites_now:
        return "the run embedded nothing"
    if not isinstance(index, Mapping):
        return "the baseline keeps none"
    pinned = (
        read_sidecar(baseline_dir, index)
        if baseline_dir is not None
        else "the baseline was not read from a file"
    )
    if isinstance(pinned, str):
        return pinned
    return paired_vectors(suites_now, index, pinned)


def vector_checks(
    name: str,
    pairs: Mapping[tuple[str, str], tuple[np.ndarray, np.ndarray]] | str | None,
    *,
    max_vector_drift: float | None,
    reindex_below: float,
) -> list[Check]:
    """The drift checks of one variant.

    ``pairs``: :func:`baseline_pairs` of the run's retrieval suites and the baseline entry
    (None: the variant embedded nothing or has no baseline). Never raises on a bad sidecar:
    it says "baseline vectors unavailable" and the metrics are judged without it.
    """
    if pairs is None:
        return []
    if isinstance(pairs, str):
        return [_check(name, "skip", f"baseline vectors unavailable: {pairs}")]
    keys = [f"{suite} {key}" for suite, key in pairs]
    then_rows = [then for then, _now in pairs.values()]
    now_rows = [now for _then, now in pairs.values()]
    if not keys:
        return [_check(name, "skip", "no text embedded now is unchanged since the pin")]
    values = cosines(np.stack(then_rows), np.stack(now_rows))
    summary = drift_summary(values.tolist())
    worst = keys[int(np.argmin(values))]
    shown = (
        f"cosine to the pinned vectors over {len(keys)} texts: min {summary['min']:.6f} "
        f"({worst}), p5 {summary['p5']:.6f}, median {summary['median']:.6f}"
    )
    out: list[Check] = []
    if max_vector_drift is None:
        out.append(_check(name, "pass", shown, current=summary["min"]))
    else:
        ok = 1.0 - summary["min"] <= max_vector_drift
        out.append(
            _check(
                name,
                "pass" if ok else "fail",
                shown + f"; allowed drift {max_vector_drift:g} (1 - cosine)",
                current=summary["min"],
                threshold=1.0 - max_vector_drift,
            )
        )
    moved = int(np.sum(values < reindex_below))
    if moved:
        out.append(
            Check(
                name="reindex",
                variant=name,
                status="pass",
                message=f"{REINDEX}: {moved} of {len(keys)} texts moved below cosine "
                f"{reindex_below:g} (min {summary['min']:.4f}); vectors stored by the pinned "
                "model no longer match this one's",
                current=summary["min"],
                threshold=reindex_below,
            )
        )
    return out


def _check(name: str, status: str, message: str, **values: Any) -> Check:
    return Check(name="vector_drift", variant=name, status=status, message=message, **values)


def reindex_notes(checks: Sequence[Any]) -> list[str]:
    """Headline parts: "<variant>: re-index needed" for each variant a re-index check marks."""
    return sorted({f"{c.variant}: {REINDEX}" for c in checks if c.name == "reindex"})


def reindex_reason(checks: Sequence[Any], variant: str) -> str | None:
    """Why ``variant`` needs a re-index (the check's message), None when it does not."""
    return next((c.message for c in checks if c.name == "reindex" and c.variant == variant), None)


def lock_extras(
    suites: Mapping[str, Mapping[str, Any]] | None, reindex: str | None
) -> dict[str, Any]:
    """What a lock entry of an embedding model adds: its retrieval figures per suite, and
    ``reindex`` (why) when this pin moved the vectors an index holds."""
    out: dict[str, Any] = {}
    if suites:
        out["retrieval"] = {
            suite: {
                "k": info.get("k"),
                "pooling": info.get("pooling"),
                "dimension": info.get("dimension"),
                **(info.get("metrics") or {}),
            }
            for suite, info in sorted(suites.items())
        }
    if reindex:
        out["reindex"] = reindex
    return out
