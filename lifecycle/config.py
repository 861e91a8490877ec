"""The workspace: ``lifecycle.toml`` and environment variables as typed settings.

A workspace is a directory holding ``lifecycle.toml``. It names the models (each a Modelfile and
the eval suites it must pass) and the engine defaults. Eval suites live in ``evals/*.toml`` and
are loaded by :mod:`lifecycle.golden`. Every error names the file and the offending field, e.g.
``lifecycle.toml → engine.threads: must be an integer``.
"""

from __future__ import annotations

import itertools
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from platformdirs import user_cache_dir

from lifecycle import envnames
from lifecycle.errors import ConfigError
from lifecycle.fsutil import OutsideRoot, confine

CONFIG_FILE = "lifecycle.toml"

# The environment variables the CLI's help text and the doctor name: declared in
# lifecycle.envnames, re-exported for the modules that import them from here.
ENV_HOME = envnames.ENV_HOME
ENV_WORKSPACE = envnames.ENV_WORKSPACE
ENV_DEBUG = envnames.ENV_DEBUG
ENV_NO_PROGRESS = envnames.ENV_NO_PROGRESS
ENV_NO_CANARY = envnames.ENV_NO_CANARY

DEFAULT_ENGINE = "llama-cpp"
# Measured with benchmarks/batched.py (docs/performance.md): on 2-4 CPU cores 4 sequences per step
# gave the most cases per second; more cost attention over a larger cache for little gain.
DEFAULT_PARALLEL = 4

# KV cache element types llama.cpp accepts (--cache-type-k/-v); Ollama's server takes f16,
# q8_0 and q4_0. Quantized types other than these two are rarely used but load the same way.
KV_CACHE_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")
# Unquantized types: llama.cpp needs flash attention for any other V cache type.
PLAIN_KV_TYPES = ("f32", "f16", "bf16")
# Runtime settings of [engine] that a model's [models.<name>.variants] table may also set:
# a single value for every variant of the model, a list for a matrix axis.
CACHE_KEYS = ("kv_cache_type", "kv_cache_type_k", "kv_cache_type_v", "flash_attention")


@dataclass(frozen=True)
class EngineSettings:
    """Engine defaults for every run in the workspace; Modelfile PARAMETERs override sampling."""

    name: str = DEFAULT_ENGINE
    threads: int = 0  # 0 = let the engine pick (all physical cores)
    batch_size: int = 512
    seed: int = 42
    gpu_layers: int = 0
    # Cases decoded together in one llama.cpp context (continuous batching); 1 = one at a time.
    parallel: int = DEFAULT_PARALLEL
    # KV cache element types and flash attention: they change the numerics (and memory).
    kv_cache_type_k: str = "f16"
    kv_cache_type_v: str = "f16"
    flash_attention: bool = False


@dataclass(frozen=True)
class CacheSettings:
    """The KV cache settings one variant runs with ([engine] defaults, then the model's)."""

    type_k: str = "f16"
    type_v: str = "f16"
    flash_attention: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "kv_cache_type_k": self.type_k,
            "kv_cache_type_v": self.type_v,
            "flash_attention": self.flash_attention,
        }


def cache_settings(
    engine: EngineSettings, overrides: dict[str, Any] | None = None
) -> CacheSettings:
    """``engine``'s KV cache settings with a variant's ``overrides`` (CACHE_KEYS) applied;
    ``kv_cache_type`` sets K and V, ``kv_cache_type_k``/``_v`` then set one each."""
    o = overrides or {}
    both = o.get("kv_cache_type")
    return CacheSettings(
        type_k=o.get("kv_cache_type_k", both or engine.kv_cache_type_k),
        type_v=o.get("kv_cache_type_v", both or engine.kv_cache_type_v),
        flash_attention=bool(o.get("flash_attention", engine.flash_attention)),
    )


@dataclass(frozen=True)
class BenchSettings:
    """``[bench]``: the short bench ``lifecycle smoke`` runs on every variant."""

    n_prompt: int = 64
    n_gen: int = 16
    repetitions: int = 2


@dataclass(frozen=True)
class ModelSettings:
    """One served model: its Modelfile and the eval suites it has to pass."""

    name: str
    modelfile: Path
    suites: tuple[str, ...]
    # The variant matrix: quant levels (the FROM file's own, or made by local quantization)
    # and PARAMETER axes; variants are their cartesian product.
    quants: tuple[str, ...] = ()
    axes: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    allow_requantize: bool = False
    # KV cache settings (CACHE_KEYS) for every variant of the model, and as matrix axes.
    cache: dict[str, Any] = field(default_factory=dict)
    cache_axes: dict[str, tuple[Any, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class Workspace:
    """A loaded ``lifecycle.toml`` with every path resolved against the workspace root."""

    root: Path
    engine: EngineSettings
    models: dict[str, ModelSettings]
    evals_dir: Path
    runs_dir: Path
    home: Path = field(default_factory=lambda: lifecycle_home())
    bench: BenchSettings = field(default_factory=BenchSettings)
    # lifecycle.toml as parsed once by load_workspace: the modules that own the other tables
    # ([gate], [compare], [serve], [store]) read them from here, the same snapshot.
    document: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def config_path(self) -> Path:
        return self.root / CONFIG_FILE

    def document_reader(self) -> TableReader:
        """The whole parsed lifecycle.toml; errors name ``lifecycle.toml → table.field``.
        (A Workspace built by hand, without a document, reads the file.)"""
        return TableReader(self.config_path, self.document or read_toml(self.config_path), "")


def lifecycle_home() -> Path:
    """The store root: ``$LIFECYCLE_HOME`` or the user cache directory."""
    value = os.environ.get(ENV_HOME)
    return Path(value).expanduser() if value else Path(user_cache_dir("lifecycle"))


def find_workspace_root(start: Path | None = None) -> Path:
    """The nearest directory at or above ``start`` (or ``$LIFECYCLE_WORKSPACE``) with a config."""
    env = os.environ.get(ENV_WORKSPACE)
    if start is None and env:
        start = Path(env)
    here = (start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / CONFIG_FILE).is_file():
            return candidate
    raise ConfigError(
        f"no {CONFIG_FILE} found in {here} or any parent directory "
        "(run inside a workspace or pass --workspace)"
    )


def load_workspace(root: Path | None = None, document: dict[str, Any] | None = None) -> Workspace:
    """Read and validate ``lifecycle.toml`` in ``root`` (found upwards from cwd when None).

    ``document``: the file as already parsed (``gate --base`` parses it once from the text at
    a git ref, :mod:`lifecycle.gitbase`); errors still name the file in ``root``.
    """
    root = find_workspace_root(root)
    path = root / CONFIG_FILE
    data = read_toml(path) if document is None else document
    reader = TableReader(path, data, "")
    # gate / compare / store / serve tables are read by the modules that own them.
    reader.reject_unknown(
        {"workspace", "engine", "models", "gate", "compare", "bench", "store", "serve"}
    )

    ws = reader.table("workspace")
    ws.reject_unknown({"name", "evals_dir", "runs_dir"})
    evals_dir = workspace_evals_dir(reader, root)
    runs_dir = ws.confined_path("runs_dir", ".lifecycle/runs", root=root)

    eng = reader.table("engine")
    eng.reject_unknown(
        {"name", "threads", "batch_size", "seed", "gpu_layers", "parallel", *CACHE_KEYS}
    )
    both = eng.choice("kv_cache_type", "f16", KV_CACHE_TYPES)
    engine = EngineSettings(
        name=eng.string("name", DEFAULT_ENGINE),
        threads=eng.integer("threads", 0, minimum=0),
        batch_size=eng.integer("batch_size", 512, minimum=1),
        seed=eng.integer("seed", 42),
        gpu_layers=eng.integer("gpu_layers", 0, minimum=-1),
        parallel=eng.integer("parallel", DEFAULT_PARALLEL, minimum=1),
        kv_cache_type_k=eng.choice("kv_cache_type_k", both, KV_CACHE_TYPES),
        kv_cache_type_v=eng.choice("kv_cache_type_v", both, KV_CACHE_TYPES),
        flash_attention=eng.boolean("flash_attention", False),
    )
    _check_flash_attention(eng, cache_settings(engine), {})

    # Read here, not left to bench: a table nobody reads lets a typo pass silently.
    bench_table = reader.table("bench")
    bench_table.reject_unknown({"n_prompt", "n_gen", "repetitions"})
    defaults = BenchSettings()
    bench = BenchSettings(
        n_prompt=bench_table.integer("n_prompt", defaults.n_prompt, minimum=1),
        n_gen=bench_table.integer("n_gen", defaults.n_gen, minimum=1),
        repetitions=bench_table.integer("repetitions", defaults.repetitions, minimum=1),
    )

    models: dict[str, ModelSettings] = {}
    models_table = reader.table("models")
    for name in models_table.data:
        m = models_table.table(name)
        m.reject_unknown({"modelfile", "suites", "variants"})
        modelfile = m.string("modelfile", None)
        if modelfile is None:
            raise ConfigError("is required", path=path, field=f"models.{name}.modelfile")
        matrix = m.table("variants")
        quants = matrix.string_list("quant", []) if "quant" in matrix.data else []
        axes: dict[str, tuple[Any, ...]] = {}
        cache, cache_axes = _cache_matrix(matrix, engine)
        for key, values in matrix.data.items():
            if key in ("quant", "allow_requantize", *CACHE_KEYS):
                continue
            if not isinstance(values, list) or not values:
                raise ConfigError(
                    "must be a non-empty list of values",
                    path=path,
                    field=f"models.{name}.variants.{key}",
                )
            axes[key] = tuple(values)
        allow_requantize = matrix.boolean("allow_requantize", False)
        models[name] = ModelSettings(
            name=name,
            modelfile=m.confined_path("modelfile", modelfile, root=root),
            suites=tuple(m.string_list("suites", [])),
            quants=tuple(quants),
            axes=axes,
            allow_requantize=allow_requantize,
            cache=cache,
            cache_axes=cache_axes,
        )
    if not models:
        raise ConfigError("at least one model is required", path=path, field="models")
    return Workspace(
        root=root,
        engine=engine,
        models=models,
        evals_dir=evals_dir,
        runs_dir=runs_dir,
        bench=bench,
        document=data,
    )


def workspace_evals_dir(document: TableReader, root: Path) -> Path:
    """``[workspace] evals_dir`` of a parsed lifecycle.toml, joined to ``root`` (default
    ``evals``); it must stay inside ``root``."""
    return document.table("workspace").confined_path("evals_dir", "evals", root=root)


def _cache_matrix(
    matrix: TableReader, engine: EngineSettings
) -> tuple[dict[str, Any], dict[str, tuple[Any, ...]]]:
    """A model's KV cache settings from its variants table: a value applies to every variant,
    a list is a matrix axis. Every combination is checked against the engine's defaults."""
    fixed: dict[str, Any] = {}
    axes: dict[str, tuple[Any, ...]] = {}
    for key in CACHE_KEYS:
        if key not in matrix.data:
            continue
        raw = matrix.data[key]
        values = raw if isinstance(raw, list) else [raw]
        if not values:
            raise matrix.fail(key, "must be a value or a non-empty list of values")
        for value in values:
            if key == "flash_attention" and not isinstance(value, bool):
                raise matrix.fail(key, "must be true or false, or a list of them")
            if key != "flash_attention" and value not in KV_CACHE_TYPES:
                raise matrix.fail(key, f"must be one of: {', '.join(KV_CACHE_TYPES)}")
        checked = list(values)
        if isinstance(raw, list):
            axes[key] = tuple(checked)
        else:
            fixed[key] = checked[0]
    for combo in itertools.product(*axes.values()):
        overrides = {**fixed, **dict(zip(axes, combo, strict=True))}
        _check_flash_attention(matrix, cache_settings(engine, overrides), overrides)
    return fixed, axes


def _check_flash_attention(
    table: TableReader, cache: CacheSettings, overrides: dict[str, Any]
) -> None:
    """llama.cpp refuses a quantized V cache without flash attention: say so at load time."""
    if cache.type_v in PLAIN_KV_TYPES or cache.flash_attention:
        return
    # Name the key that asked for it: the model's override, else the [engine] key.
    given = overrides if overrides else table.data
    named = [k for k in ("kv_cache_type_v", "kv_cache_type", "flash_attention") if k in given]
    key = named[0] if named else "kv_cache_type"
    raise table.fail(
        key,
        f"a {cache.type_v} V cache needs flash attention in llama.cpp: "
        "set flash_attention = true (or keep the V cache f16)",
    )


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file; syntax errors become a ConfigError naming the file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("file not found", path=path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read: {exc}", path=path) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # Python 3.11's TOMLDecodeError only has the position inside its message.
        found = re.search(r" \(at line (\d+), column \d+\)", str(exc))
        message = str(exc)[: found.start()] if found else str(exc)
        line = int(found.group(1)) if found else None
        raise ConfigError(f"invalid TOML: {message}", path=path, line=line) from None


class TableReader:
    """Typed access to one TOML table; each error names ``file → dotted.field``.

    The one reader for every TOML file the tool reads (lifecycle.toml, eval suites), so
    unknown keys and wrong types are refused the same way everywhere.
    """

    def __init__(self, path: Path, data: dict[str, Any], prefix: str = "") -> None:
        self.path = path
        self.data = data
        self.prefix = prefix

    def _field(self, key: str) -> str:
        return f"{self.prefix}{key}"

    def fail(self, key: str, message: str) -> ConfigError:
        """The error for ``key`` of this table (raise it)."""
        return ConfigError(message, path=self.path, field=self._field(key))

    def fail_table(self, message: str) -> ConfigError:
        """The error for this table as a whole (raise it)."""
        return ConfigError(message, path=self.path, field=self.prefix.rstrip(".") or None)

    def reject_unknown(self, allowed: set[str]) -> None:
        for key in self.data:
            if key not in allowed:
                hint = ", ".join(sorted(allowed))
                raise self.fail(key, f"unknown key (expected one of: {hint})")

    def table(self, key: str) -> TableReader:
        value = self.data.get(key, {})
        if not isinstance(value, dict):
            raise self.fail(key, "must be a table")
        return TableReader(self.path, value, f"{self._field(key)}.")

    def string(self, key: str, default: str | Any) -> Any:
        value = self.data.get(key, default)
        if value is not default and not isinstance(value, str):
            raise self.fail(key, "must be a string")
        return value

    def text(self, key: str) -> str | None:
        """An optional string that, when given, is not empty."""
        value = self.data.get(key)
        if value is not None and (not isinstance(value, str) or not value):
            raise self.fail(key, "must be a non-empty string")
        return value

    def integer(self, key: str, default: int, *, minimum: int | None = None) -> int:
        value = self.data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, "must be an integer")
        if minimum is not None and value < minimum:
            raise self.fail(key, f"must be >= {minimum}")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            raise self.fail(key, "must be true or false")
        return value

    def number(
        self,
        key: str,
        default: float | None,
        *,
        minimum: float | None = None,
        maximum: float | None = None,
    ) -> float | None:
        """A number (an integer is taken as a float) within the bounds given; None only when
        absent and the default is None."""
        value = self.data.get(key, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(key, "must be a number")
        low = minimum is None or value >= minimum
        high = maximum is None or value <= maximum
        if not (low and high):
            if minimum is not None and maximum is not None:
                raise self.fail(key, f"must be between {minimum:g} and {maximum:g}")
            if minimum is not None:
                raise self.fail(key, f"must be >= {minimum:g}")
            raise self.fail(key, f"must be <= {maximum:g}")
        return float(value)

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        """A string that must be one of ``choices``."""
        value = self.data.get(key, default)
        if not isinstance(value, str) or value not in choices:
            raise self.fail(key, f"must be one of: {', '.join(choices)}")
        return value

    def confined_path(
        self, key: str, default: str, *, root: Path, base: Path | None = None
    ) -> Path:
        """A path string joined to ``base`` (default: ``root``) that must stay inside ``root``
        through ``..`` and symlinks, as FROM paths must; returned joined, not resolved."""
        value = self.string(key, default)
        if not value:
            raise self.fail(key, "must be a non-empty path")
        candidate = (base or root) / value
        try:
            confine(candidate, root)
        except OutsideRoot as exc:
            raise self.fail(
                key, f"{value!r} resolves to {exc.resolved}, outside the workspace {exc.root}"
            ) from None
        except (OSError, RuntimeError, ValueError) as exc:
            raise self.fail(key, f"cannot resolve {value!r}: {exc}") from None
        return candidate

    def string_list(self, key: str, default: list[str]) -> list[str]:
        value = self.data.get(key, default)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(key, "must be a list of strings")
        return list(value)
