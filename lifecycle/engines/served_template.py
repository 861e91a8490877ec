"""Which chat template a served model's answers test: the server's or the Modelfile's.

An OpenAI-compatible server renders chat messages with its own template (the GGUF's, or a
fallback such as llama-cpp-python's llama-2 format for a GGUF that has none), not the
Modelfile's TEMPLATE. A suite run that way tests the server's rendering, which is what
production clients get, but may not be what the Modelfile (and the embedded engine) says. The
engine can instead send the Modelfile's rendering to ``/v1/completions``. Either way the run
says which one it tested and, before the run, whether the two differ on the first case.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from lifecycle.engines.base import GenerationRequest

# "server": chat messages, rendered by the server; "modelfile": the Modelfile's rendering sent
# as a raw prompt to /v1/completions.
TemplateSource = Literal["server", "modelfile"]
TEMPLATE_SOURCES: tuple[TemplateSource, ...] = ("server", "modelfile")
_SPECIAL = re.compile(r"<[^<>\s]{1,24}>")


@dataclass(frozen=True)
class ServedTemplate:
    """What a check of the served template found on one case."""

    source: TemplateSource
    same: bool | None  # None: the server offers no way to tell
    evidence: str

    def label(self) -> str:
        """One word for the run record: modelfile, server, server-differs or server-unknown."""
        if self.source == "modelfile":
            return "modelfile"
        return {True: "server", False: "server-differs", None: "server-unknown"}[self.same]

    def warning(self, variant: str) -> str | None:
        """The line to print before the run, when the answers test another template."""
        if self.source == "modelfile" or self.same is True:
            return None
        if self.same is None:
            return (
                f"note: {variant}: cannot tell whether the server's chat template matches the "
                f"Modelfile's ({self.evidence}); answers test the server's"
            )
        return (
            f"warning: {variant}: the server's chat template differs from the Modelfile's "
            f"TEMPLATE ({self.evidence}): answers test the server's rendering; "
            "--template modelfile sends the Modelfile's to /v1/completions instead"
        )


@runtime_checkable
class ChecksServedTemplate(Protocol):
    """A served model that can say whether it renders a case as the Modelfile does."""

    def served_template(self, request: GenerationRequest) -> ServedTemplate:
        """Compare the server's rendering of ``request.messages`` with ``request.prompt``."""
        ...


def first_difference(server: str, modelfile: str) -> str:
    """Where two renderings part, quoted briefly: ``at char 0: '[INST]' vs '<start_of_turn>'``."""
    at = next(
        (i for i, (a, b) in enumerate(zip(server, modelfile, strict=False)) if a != b),
        min(len(server), len(modelfile)),
    )
    return f"at char {at}: {server[at : at + 16]!r} vs {modelfile[at : at + 16]!r}"


def same_rendering(server: str, modelfile: str) -> bool:
    """Whether the server's rendered text is the Modelfile's, allowing one leading special
    token's text (``<bos>``, ``<s>``) that some templates write where the tokenizer otherwise
    adds it."""
    if server == modelfile:
        return True
    return server.endswith(modelfile) and _SPECIAL.fullmatch(server[: -len(modelfile)]) is not None
