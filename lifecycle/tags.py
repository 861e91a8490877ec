"""Model references (tags): the grammar, parsing, and what a Modelfile's FROM value names.

The bottom of the library next to :mod:`lifecycle.errors`: the store keys manifests by
:class:`Tag`, the sources pull them, and the Modelfile, pin and variant code all turn FROM
values into tags here, so there is one list of schemes and one rule for bare names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from lifecycle.errors import ModelfileError, TagError

SCHEMES = ("file", "pypi", "hf", "ollama", "oci")

# The tag grammar, one pattern per scheme (references after the ``scheme:`` prefix).
_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*"
_REVISION = r"[A-Za-z0-9][A-Za-z0-9._/-]*"
_REFERENCE_RES = {
    "hf": re.compile(
        rf"^{_NAME}/{_NAME}(?::[A-Za-z0-9][A-Za-z0-9_.-]*|(?:/{_NAME})*\.gguf)(?:@{_REVISION})?$",
        re.IGNORECASE,
    ),
    "ollama": re.compile(
        r"^(?:[a-z0-9][a-z0-9._-]*/)?[a-z0-9][a-z0-9._-]*(?::[\w][\w.-]{0,127})?$"
    ),
    "oci": re.compile(
        r"^[A-Za-z0-9.-]+(?::[0-9]{1,5})?(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)+:[\w][\w.-]{0,127}$"
    ),
    "pypi": re.compile(rf"^{_NAME}$"),
}
_EXPECTED = {
    "hf": "hf:owner/repo:QUANT[@revision] or hf:owner/repo/path/file.gguf[@revision]",
    "ollama": "ollama:name[:tag] or ollama:namespace/name[:tag]",
    "oci": "oci://host[:port]/namespace/name:tag",
    "pypi": "pypi:package",
}


@dataclass(frozen=True)
class Tag:
    """A parsed model reference: ``scheme:reference`` (``oci://reference`` for OCI)."""

    scheme: str
    reference: str

    def __str__(self) -> str:
        if self.scheme == "oci":
            return f"oci://{self.reference}"
        return f"{self.scheme}:{self.reference}"


def has_scheme(text: str) -> bool:
    """Whether ``text`` is written as a tag (``hf:...``, ``oci://...``), not a name or path.

    Case-insensitive, so ``HF:x`` is refused by :func:`parse_tag` as a malformed tag
    rather than read as an Ollama library name or a file.
    """
    scheme, sep, _ = text.partition(":")
    return text.lower().startswith("oci://") or bool(sep and scheme.lower() in SCHEMES)


def parse_tag(text: str) -> Tag:
    """Parse a tag string; anything not in the tag grammar is a TagError (exit 2).

    ``ollama:name`` gets the default tag ``latest`` so ``qwen2.5`` and ``qwen2.5:latest`` are
    one tag in the store.
    """
    if text.startswith("oci://"):
        scheme, reference = "oci", text[len("oci://") :]
    else:
        scheme, _, reference = text.partition(":")
    if scheme not in SCHEMES or not reference:
        raise TagError(
            f"malformed tag {text!r}: expected one of "
            + ", ".join(f"{s}:..." for s in SCHEMES if s != "oci")
            + ", oci://host/ns/name:tag"
        )
    pattern = _REFERENCE_RES.get(scheme)
    if pattern is not None and not pattern.fullmatch(reference):
        raise TagError(f"malformed {scheme} tag {text!r}: expected {_EXPECTED[scheme]}")
    if scheme == "ollama" and ":" not in reference:
        reference += ":latest"
    return Tag(scheme, reference)


def from_tag(source: str, modelfile: Path | None = None) -> Tag:
    """The store tag a FROM value (that is not a local path) names.

    A bare name such as ``qwen2.5:7b`` means what it means to Ollama: a library model, so
    it becomes ``ollama:qwen2.5:7b``. A malformed value is a ModelfileError naming the file.
    """
    try:
        return parse_tag(source if has_scheme(source) else f"ollama:{source}")
    except TagError as exc:
        raise ModelfileError(f"FROM {source}: {exc}", path=modelfile) from None
