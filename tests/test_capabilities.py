"""Optional engine capabilities are runtime-checkable protocols (lifecycle.engines.base,
lifecycle.tokenstats), checked with isinstance rather than looked up by attribute name."""

from __future__ import annotations

from pathlib import Path

from lifecycle.engines import BatchedModel, LoadOptions, ThreadedModel, get_engine
from lifecycle.engines.base import MeasuredLoadEngine, runs_concurrently
from lifecycle.engines.ollama import OllamaEngine, OllamaModel
from lifecycle.tokenstats import ScoringModel


def test_the_llama_cpp_engine_meets_the_protocols_its_callers_check(tiny_model: Path) -> None:
    engine = get_engine("llama-cpp")
    assert isinstance(engine, MeasuredLoadEngine)  # bench and plan read its buffers
    model = engine.load(tiny_model, LoadOptions(n_ctx=256, n_threads=2))
    try:
        for capability in (ThreadedModel, ScoringModel, BatchedModel):
            assert isinstance(model, capability), capability
        assert model.n_threads == 2  # type: ignore[attr-defined]
        assert not runs_concurrently(model)  # one context: cases in turn, prefixes reused
    finally:
        model.close()


def test_what_lacks_a_capability_is_told_apart() -> None:
    engine = OllamaEngine(host="http://127.0.0.1:9")
    assert not isinstance(engine, MeasuredLoadEngine)
    served = OllamaModel(engine, "m", LoadOptions(n_ctx=256, n_threads=3))
    assert runs_concurrently(served) and isinstance(served, ThreadedModel)
    assert not isinstance(served, ScoringModel) and not isinstance(served, BatchedModel)
    for capability in (ThreadedModel, ScoringModel, BatchedModel):
        assert not isinstance(object(), capability), capability
