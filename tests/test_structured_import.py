"""An llguidance that is installed but cannot be imported fails schema mode in one line."""

from __future__ import annotations

import sys

import pytest

from lifecycle.engines import structured
from lifecycle.errors import EngineError


def test_a_broken_llguidance_is_named_not_a_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    if structured.schema_decoder() == "gbnf":
        pytest.skip("llguidance is not installed here")
    # None in sys.modules makes `import llguidance` raise ImportError, as a broken wheel does.
    monkeypatch.setitem(sys.modules, "llguidance", None)
    with pytest.raises(EngineError, match="llguidance is installed but cannot be imported"):
        structured.SchemaGrammars(vocab=None).grammar({"type": "object"})
