"""Errors shown to the user.

Every error the tool raises on purpose derives from :class:`LifecycleError`. Each carries the
exit code of the CLI contract (1 tool failure, 2 usage/config error) and, where it is known,
the location of the bad input (file, line, field) so the message can name it. The CLI prints
``str(error)`` as one line; tracebacks appear only with ``LIFECYCLE_DEBUG=1``.
"""

from __future__ import annotations

from pathlib import Path

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_GATE_FAILED = 3
EXIT_UPSTREAM_CHANGED = 4


class LifecycleError(Exception):
    """Root of every error the tool reports to the user (exit code 1: the tool failed)."""

    exit_code = EXIT_FAILURE

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.path = str(path) if path is not None else None
        self.line = line
        self.field = field

    def location(self) -> str:
        """``file:line`` / ``file → field`` prefix, or an empty string when nothing is known."""
        where = self.path or ""
        if self.line is not None:
            where = f"{where}:{self.line}" if where else f"line {self.line}"
        if self.field:
            where = f"{where} → {self.field}" if where else self.field
        return where

    def __str__(self) -> str:
        where = self.location()
        return f"{where}: {self.message}" if where else self.message


class UsageError(LifecycleError):
    """The command line or the workspace is wrong (exit code 2)."""

    exit_code = EXIT_USAGE


class ConfigError(UsageError):
    """``lifecycle.toml`` or an eval suite file is invalid."""


class ModelfileError(UsageError):
    """A Modelfile cannot be parsed or names something that does not exist."""


class TemplateError(UsageError):
    """A TEMPLATE (Go) or chat template (Jinja) cannot be parsed or rendered."""


class GoldenSetError(UsageError):
    """A golden-set file (JSONL cases or JSON Schema) is invalid."""


class TagError(UsageError):
    """A model tag string is malformed."""


class ModelError(LifecycleError):
    """A model file is missing, truncated or not a valid GGUF (exit code 1)."""


class EngineError(LifecycleError):
    """The inference engine failed to load a model or to generate (exit code 1)."""


class StoreError(LifecycleError):
    """The local blob store or a source failed (exit code 1)."""
