"""Another CPU variant of the engine build is a numeric change the gate judges by margins.

Two machines of one CPU model name (AMD EPYC with AVX2 only, AMD EPYC Zen 4 with AVX512) run
different llama.cpp kernels once the build carries every CPU variant: the recorded system
info line says which, and the gate must see it, or near-tie flips and rank swaps of an
embedding model read as regressions of a model that did not change.
"""

from __future__ import annotations

import numpy as np

from lifecycle.gate import numeric_changes
from lifecycle.retrieval import TEMPERATURE, moved_by_near_ties

AVX2 = "CPU : SSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | REPACK = 1 |"
AVX512 = AVX2.replace("BMI2 = 1 |", "BMI2 = 1 | AVX512 = 1 | AVX512_VNNI = 1 |")


def _environment(system_info: str) -> dict[str, object]:
    return {
        "engine": "llama-cpp",
        "engine_version": "llama-cpp-python 0.3.36",
        "cpu": "AMD EPYC",
        "machine": "x86_64",
        "engine_details": {"system_info": system_info},
    }


def test_other_cpu_kernels_are_a_numeric_change_on_the_same_cpu_name() -> None:
    assert numeric_changes(_environment(AVX2), _environment(AVX512)) == ["cpu_features"]
    assert numeric_changes(_environment(AVX2), _environment(AVX2)) == []
    # A baseline recorded without a system info line says nothing either way.
    assert numeric_changes(_environment(""), _environment(AVX512)) == []


def _unit(*values: float) -> np.ndarray:
    vector = np.array(values, dtype=np.float64)
    return vector / np.linalg.norm(vector)


def test_rank_swaps_are_noise_only_when_near_ties_in_both_runs() -> None:
    bound = 0.5 * TEMPERATURE  # the default noise margin, as a cosine gap
    query = _unit(1.0, 0.0, 0.0)
    relevant, close, far = _unit(1.0, 0.29, 0.0), _unit(1.0, 0.30, 0.0), _unit(0.2, 1.0, 0.0)

    def pairs(relevant_now: np.ndarray) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]:
        return {
            ("kb", "query/q"): (query, query),
            ("kb", "corpus/a"): (relevant, relevant_now),
            ("kb", "corpus/b"): (close, close),
            ("kb", "corpus/c"): (far, far),
        }

    # The relevant document slips just under its neighbour: a swap inside the noise bound.
    slipped = _unit(1.0, 0.31, 0.0)
    assert 0 < float(relevant @ query - close @ query) < bound
    assert moved_by_near_ties(pairs(slipped), "kb", "q", {"a": 1.0}, bound)
    # It falls far below: a confident swap, judged as a change of the model.
    fallen = _unit(0.1, 1.0, 0.0)
    assert not moved_by_near_ties(pairs(fallen), "kb", "q", {"a": 1.0}, bound)
    # Two relevant documents of one grade trading places move no metric.
    assert moved_by_near_ties(pairs(fallen), "kb", "q", {"a": 1.0, "b": 1.0, "c": 1.0}, bound)
    # A vector missing (the text changed since the pin): not explained as noise.
    partial = {k: v for k, v in pairs(slipped).items() if k != ("kb", "corpus/b")}
    assert not moved_by_near_ties(partial, "kb", "q", {"a": 1.0, "b": 1.0}, bound)
