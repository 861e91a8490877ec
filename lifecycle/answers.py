"""Answers cached per case, keyed by everything that decides the engine's output.

An answer is a pure function of the weights (blob digest; the tokenizer is in them), the
exact rendered prompt, the sampling settings, the schema the grammar is built from (and for a
schema answer the decoder: llguidance or llama.cpp's GBNF), the stop sequences, what the
request asks the engine to record (logprobs, margin field), the engine build and numeric
environment (engine name, version and details: ggml commit, backends, CPU features), the
load settings that change the arithmetic (threads, batch, GPU layers, extra buffer types, KV
cache types, flash attention, parallel sequences), the CPU model, and ``max_tokens``. So an
answer generated once serves every later run that asks the same thing: a pull request adding
three golden tickets generates three cases, a matcher edit none, and two variants that differ
only in ``num_ctx`` share their answers.

Two fields are left out of the key and checked when an entry is read instead:

- ``max_tokens``: an answer that stopped (EOS or a stop sequence) after ``c`` tokens is also
  the answer under any limit above ``c``; a truncated one serves only its own limit.
- ``num_ctx``: llama.cpp's answer does not depend on it while every token of the case fits
  (prompt + max_tokens <= num_ctx, which the engines require anyway), proven byte for byte,
  sequential and batched, by tests/test_answers.py.

Storage: ``.lifecycle/answers/<k[:2]>/<k>/<max_tokens>-<num_ctx>.json``, one small JSON file
per entry written atomically (temp file, fsync, rename), so processes sharing a workspace
never tear or lose each other's entries. An entry that does not parse, or whose recorded key
disagrees with its name or the request, is ignored with a warning and regenerated. The store
is bounded (``LIFECYCLE_ANSWERS_MAX_MB``, default :data:`DEFAULT_MAX_MB`); :func:`prune`
removes the least recently used entries first.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from lifecycle.engines import EngineInfo, Generation, GenerationRequest, LoadOptions
from lifecycle.envnames import ENV_ANSWERS_MAX_MB
from lifecycle.fsutil import atomic_write_text, sweep_temps

ANSWERS_DIR = Path(".lifecycle") / "answers"
FORMAT = 1
DEFAULT_MAX_MB = 256
ENV_MAX_MB = ENV_ANSWERS_MAX_MB
# Engines whose numerics this process can name; a server's answers depend on a build and a
# configuration the key cannot see, so they are never cached.
CACHEABLE_ENGINES = ("llama-cpp", "llama-cpp-isolated")

Warn = Callable[[str], None]


@dataclass(frozen=True)
class AnswerKey:
    """What decides one answer: ``fields`` (hashed into the entry's directory) plus the two
    values an entry is matched on when read (``max_tokens``, ``n_ctx``)."""

    fields: Mapping[str, Any]
    max_tokens: int
    n_ctx: int

    @property
    def digest(self) -> str:
        return _digest(self.fields)


@dataclass(frozen=True)
class Answer:
    """A cached generation and the run that produced it."""

    generation: Generation
    run_id: str
    path: Path


def answer_key(
    request: GenerationRequest,
    *,
    blob_digest: str,
    engine: EngineInfo,
    load: LoadOptions,
    cpu: str | None,
) -> AnswerKey:
    """The key of ``request`` on the weights ``blob_digest`` loaded with ``load``."""
    details = dict(engine.details)
    # Schema mode's decoder decides its tokens (llguidance forces canonical tokens and fixes
    # the separators): it keys schema answers only, so free answers survive a change of it.
    decoder = details.pop("schema_decoder", None)
    # Free-mode drafting verifies tokens in batches (other rounding): it keys the answers it
    # decodes (free, greedy) and only when on, so other answers keep their keys.
    drafting = details.pop("free_drafting", "off")
    key = {
        "format": FORMAT,
        "blob": blob_digest,
        "prompt": request.prompt,
        "sampling": {
            "temperature": request.temperature,
            "seed": request.seed,
            "top_k": request.top_k,
            "top_p": request.top_p,
            "min_p": request.min_p,
            "repeat_penalty": request.repeat_penalty,
        },
        # The grammar is compiled from the schema by the engine build, which is in the key.
        "schema": request.json_schema,
        "stop": list(request.stop),
        "record": [request.logprobs, request.logprob_field, request.margin_field],
        "engine": [engine.name, engine.version, details],
        "load": {
            "n_threads": load.n_threads,
            "n_batch": load.n_batch,
            "n_gpu_layers": load.n_gpu_layers,
            "n_parallel": load.n_parallel,
            "extra_bufts": load.extra_bufts,
            "type_k": load.type_k,
            "type_v": load.type_v,
            "flash_attn": load.flash_attn,
        },
        "cpu": cpu,
    }
    if request.json_schema and decoder is not None:
        key["schema_decoder"] = decoder
    if not request.json_schema and request.temperature <= 0.0 and drafting not in (None, "off"):
        key["free_drafting"] = drafting
    return AnswerKey(fields=key, max_tokens=request.max_tokens, n_ctx=load.n_ctx)


def cacheable(engine: str) -> bool:
    return engine in CACHEABLE_ENGINES


class AnswerCache:
    """The answer store of one workspace (``root/.lifecycle/answers``)."""

    def __init__(self, directory: Path, *, warn: Warn | None = None) -> None:
        self.directory = directory
        self._warn = warn or (lambda _msg: None)
        self.written = 0

    @classmethod
    def of_workspace(cls, root: Path, *, warn: Warn | None = None) -> AnswerCache:
        return cls(root / ANSWERS_DIR, warn=warn)

    def lookup(self, key: AnswerKey) -> Answer | None:
        """An entry that answers ``key`` (the exact one first), or None."""
        folder = self._folder(key)
        try:
            names = sorted(os.listdir(folder))
        except OSError:
            return None
        exact = _entry_name(key.max_tokens, key.n_ctx)
        names.sort(key=lambda n: n != exact)
        for name in names:
            if not name.endswith(".json") or name.startswith("."):
                continue
            answer = self._read(folder / name, key)
            if answer is not None and _serves(answer.generation, name, key):
                _touch(answer.path)  # least recently used goes first when pruning
                return answer
        return None

    def store(self, key: AnswerKey, generation: Generation, run_id: str) -> None:
        """Record ``generation`` as the answer to ``key`` (atomic; concurrent writers safe)."""
        doc = {
            "format": FORMAT,
            "digest": key.digest,
            "key": key.fields,
            "max_tokens": key.max_tokens,
            "n_ctx": key.n_ctx,
            "run_id": run_id,
            "created": time.time(),
            "generation": generation.to_dict(),
        }
        text = json.dumps(doc, sort_keys=True, ensure_ascii=False) + "\n"
        path = self._folder(key) / _entry_name(key.max_tokens, key.n_ctx)
        try:
            atomic_write_text(path, text)
        except FileNotFoundError:  # a prune removed the emptied folder meanwhile: once more
            atomic_write_text(path, text)
        self.written += 1

    def _folder(self, key: AnswerKey) -> Path:
        digest = key.digest
        return self.directory / digest[:2] / digest

    def _read(self, path: Path, key: AnswerKey) -> Answer | None:
        """The entry at ``path`` if it is whole and recorded for ``key``; else warn, None."""
        problem = None
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            problem = _check(doc, path, key)
            if problem is None:
                return Answer(_generation(doc["generation"]), str(doc["run_id"]), path)
        except FileNotFoundError:
            return None  # pruned meanwhile
        except (OSError, ValueError, TypeError, KeyError) as exc:
            problem = f"unreadable ({exc.__class__.__name__}: {exc})"
        self._warn(f"warning: cached answer {path} ignored, regenerating: {problem}")
        return None


def _check(doc: Any, path: Path, key: AnswerKey) -> str | None:
    """Why the entry ``doc`` read from ``path`` must not answer ``key``; None if it may."""
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        return "not an answer entry of this format"
    if doc.get("digest") != path.parent.name or _digest(doc.get("key")) != path.parent.name:
        return "its key does not hash to its place in the cache"
    if doc["key"] != _plain(key.fields):
        return "its key differs from the request's"
    if path.name != _entry_name(doc.get("max_tokens"), doc.get("n_ctx")):
        return "its max_tokens / num_ctx disagree with its file name"
    return None


def _serves(generation: Generation, name: str, key: AnswerKey) -> bool:
    """Whether an answer generated under the limits in ``name`` is the answer under ``key``'s.

    Same tokens need: the generation ends the same way (the same limit, or a stop before
    the new limit) and every token fits the new context (the engines' own admission rule).
    """
    max_tokens = int(name.removesuffix(".json").split("-")[0])
    same_end = max_tokens == key.max_tokens or (
        generation.finish_reason == "stop" and generation.completion_tokens < key.max_tokens
    )
    return same_end and generation.prompt_tokens + key.max_tokens <= key.n_ctx


def _generation(data: Any) -> Generation:
    if not isinstance(data, dict):
        raise TypeError("generation is not an object")
    known = {f.name for f in fields(Generation)}
    values = {k: v for k, v in data.items() if k in known}
    for name in ("token_logprobs", "token_offsets"):
        if values.get(name) is not None:
            values[name] = tuple(values[name])
    generation = Generation(**values)
    if not isinstance(generation.text, str) or generation.finish_reason not in ("stop", "length"):
        raise ValueError("generation has no text or an unknown finish_reason")
    return generation


def _entry_name(max_tokens: Any, n_ctx: Any) -> str:
    return f"{int(max_tokens)}-{int(n_ctx)}.json"


def _plain(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists)."""
    return json.loads(json.dumps(value, sort_keys=True))


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:40]


def _touch(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.utime(path)


@dataclass(frozen=True)
class PruneResult:
    """What :func:`prune` removed and what is left."""

    removed: int
    removed_bytes: int
    invalid: int  # entries that did not parse, removed whatever the bound
    kept: int
    kept_bytes: int
    max_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "removed": self.removed,
            "removed_bytes": self.removed_bytes,
            "invalid": self.invalid,
            "kept": self.kept,
            "kept_bytes": self.kept_bytes,
            "max_bytes": self.max_bytes,
        }


def max_bytes_from_env() -> int:
    """The store's bound: ``LIFECYCLE_ANSWERS_MAX_MB`` or :data:`DEFAULT_MAX_MB` MiB."""
    raw = os.environ.get(ENV_MAX_MB)
    try:
        mb = float(raw) if raw else DEFAULT_MAX_MB
    except ValueError:
        mb = DEFAULT_MAX_MB
    return int(max(mb, 0) * 1024 * 1024)


def total_bytes(directory: Path) -> int:
    """The size of the store's entries (stat only: cheap enough after every run)."""
    return sum(stat.st_size for _path, stat in _entries(directory))


def prune(directory: Path, max_bytes: int, *, dry_run: bool = False) -> PruneResult:
    """Bring the store under ``max_bytes``: entries that do not parse go, then the least
    recently used ones (read or written), and the temp files of dead writers."""
    entries: list[tuple[float, int, Path]] = []
    invalid: list[tuple[int, Path]] = []
    for path, stat in _entries(directory):
        if _parses(path):
            entries.append((stat.st_mtime, stat.st_size, path))
        else:
            invalid.append((stat.st_size, path))
    total = sum(size for _, size, _ in entries)
    doomed = list(invalid)
    for _mtime, size, path in sorted(entries):
        if total <= max_bytes:
            break
        doomed.append((size, path))
        total -= size
    if not dry_run:
        for _size, path in doomed:
            path.unlink(missing_ok=True)
            _remove_empty(path.parent, directory)
        for folder in _folders(directory):
            sweep_temps(folder, ".*.tmp")
    return PruneResult(
        removed=len(doomed),
        removed_bytes=sum(size for size, _ in doomed),
        invalid=len(invalid),
        kept=len(entries) + len(invalid) - len(doomed),
        kept_bytes=total,
        max_bytes=max_bytes,
    )


def _folders(directory: Path) -> Iterator[Path]:
    try:
        shards = list(os.scandir(directory))
    except OSError:
        return
    for shard in shards:
        if not shard.is_dir(follow_symlinks=False):
            continue
        for folder in os.scandir(shard.path):
            if folder.is_dir(follow_symlinks=False):
                yield Path(folder.path)


def _entries(directory: Path) -> Iterator[tuple[Path, os.stat_result]]:
    for folder in _folders(directory):
        for item in os.scandir(folder):
            if item.name.endswith(".json") and not item.name.startswith("."):
                try:
                    yield Path(item.path), item.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue


def _parses(path: Path) -> bool:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        _generation(doc["generation"])
        return isinstance(doc, dict) and doc.get("format") == FORMAT
    except (OSError, ValueError, TypeError, KeyError):
        return False


def _remove_empty(folder: Path, top: Path) -> None:
    """Remove ``folder`` and its shard when empty (another writer may refill them: fine)."""
    while folder != top and folder.is_relative_to(top):
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent
