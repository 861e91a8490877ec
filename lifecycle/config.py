"""The workspace: ``lifecycle.toml`` and environment variables as typed settings.

A workspace is a directory holding ``lifecycle.toml``. It names the models (each a Modelfile and
the eval suites it must pass) and the engine defaults. Eval suites live in ``evals/*.toml`` and
are loaded by :mod:`lifecycle.golden`. Every error names the file and the offending field, e.g.
``lifecycle.toml → engine.threads: must be an integer``.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from platformdirs import user_cache_dir

from lifecycle.errors import ConfigError

CONFIG_FILE = "lifecycle.toml"

# Environment variables, declared once and reused by the CLI's help text.
ENV_HOME = "LIFECYCLE_HOME"
ENV_WORKSPACE = "LIFECYCLE_WORKSPACE"
ENV_DEBUG = "LIFECYCLE_DEBUG"
ENV_NO_PROGRESS = "LIFECYCLE_NO_PROGRESS"
ENV_NO_CANARY = "LIFECYCLE_NO_CANARY"  # skip the engine canary before loading a model

DEFAULT_ENGINE = "llama-cpp"
# Measured with benchmarks/batched.py (see the README): on 2-4 CPU cores 4 sequences per step
# gave the most cases per second; more cost attention over a larger cache for little gain.
DEFAULT_PARALLEL = 4


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

    @property
    def config_path(self) -> Path:
        return self.root / CONFIG_FILE


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


def load_workspace(root: Path | None = None) -> Workspace:
    """Read and validate ``lifecycle.toml`` in ``root`` (found upwards from cwd when None)."""
    root = find_workspace_root(root)
    path = root / CONFIG_FILE
    data = read_toml(path)
    reader = TableReader(path, data, "")
    # gate / compare / store tables are read by the modules that own them.
    reader.reject_unknown({"workspace", "engine", "models", "gate", "compare", "bench", "store"})

    ws = reader.table("workspace")
    ws.reject_unknown({"name", "evals_dir", "runs_dir"})
    evals_dir = root / ws.string("evals_dir", "evals")
    runs_dir = root / ws.string("runs_dir", ".lifecycle/runs")

    eng = reader.table("engine")
    eng.reject_unknown({"name", "threads", "batch_size", "seed", "gpu_layers", "parallel"})
    engine = EngineSettings(
        name=eng.string("name", DEFAULT_ENGINE),
        threads=eng.integer("threads", 0, minimum=0),
        batch_size=eng.integer("batch_size", 512, minimum=1),
        seed=eng.integer("seed", 42),
        gpu_layers=eng.integer("gpu_layers", 0, minimum=-1),
        parallel=eng.integer("parallel", DEFAULT_PARALLEL, minimum=1),
    )

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
        for key, values in matrix.data.items():
            if key in ("quant", "allow_requantize"):
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
            modelfile=root / modelfile,
            suites=tuple(m.string_list("suites", [])),
            quants=tuple(quants),
            axes=axes,
            allow_requantize=allow_requantize,
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

    def string_list(self, key: str, default: list[str]) -> list[str]:
        value = self.data.get(key, default)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(key, "must be a list of strings")
        return list(value)
