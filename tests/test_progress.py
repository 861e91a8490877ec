"""Progress of long library steps (model load, quantization) reaches the sink the CLI installs."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from lifecycle import progress
from lifecycle.engines.base import LoadOptions
from lifecycle.engines.llama_cpp import LlamaCppEngine
from lifecycle.gguf import read_gguf
from lifecycle.quantize import expected_size, quantize_blob
from lifecycle.store import Store

Report = tuple[str, int, int | None]


def _recorder() -> tuple[list[Report], progress.Sink]:
    seen: list[Report] = []
    return seen, lambda label, done, total: seen.append((label, done, total))


def _stored(tmp_path: Path, model: Path) -> tuple[Store, str]:
    store = Store(tmp_path / "home")
    store.blobs.mkdir(parents=True)
    digest = "sha256:" + hashlib.sha256(model.read_bytes()).hexdigest()
    shutil.copy(model, store.blob_path(digest))
    return store, digest


def test_model_load_reports_llama_cpp_progress_to_the_end(tiny_model: Path) -> None:
    seen, sink = _recorder()
    with progress.reporting(sink):
        model = LlamaCppEngine().load(tiny_model, LoadOptions(n_ctx=256, model_name="tiny:f32"))
    model.close()
    assert seen, "llama.cpp's load callback never reached the sink"
    assert {label for label, _, _ in seen} == {"loading tiny:f32"}
    done = [d for _, d, _ in seen]
    assert done == sorted(done) and done[-1] == 100 and {t for _, _, t in seen} == {100}


def test_load_without_a_sink_reports_nothing_and_leaves_the_defaults_alone(
    tiny_model: Path,
) -> None:
    # A --json command inside a command that draws bars installs no sink: the outer sink
    # hears nothing, llama.cpp gets no progress callback, and its default parameters are
    # llama.cpp's own again after the load.
    from llama_cpp import llama_cpp as low_level

    original = low_level.llama_model_default_params
    seen, sink = _recorder()
    with progress.reporting(sink), progress.reporting(None):
        model = LlamaCppEngine().load(tiny_model, LoadOptions(n_ctx=256, model_name="tiny:f32"))
    try:
        assert seen == []
        assert not model._llm.model_params.progress_callback  # a NULL function pointer
        assert low_level.llama_model_default_params is original
    finally:
        model.close()
    # The same load with the sink reachable reports, and still restores the defaults.
    with progress.reporting(sink):
        LlamaCppEngine().load(tiny_model, LoadOptions(n_ctx=256, model_name="tiny:f32")).close()
    assert seen and low_level.llama_model_default_params is original


def test_quantize_reports_file_growth_ending_at_the_estimate(
    tmp_path: Path, tiny_model: Path
) -> None:
    store, digest = _stored(tmp_path, tiny_model)
    seen, sink = _recorder()
    with progress.reporting(sink):
        result = quantize_blob(store, digest, "Q8_0")
    expected = expected_size(read_gguf(tiny_model), "Q8_0")
    assert seen[-1] == ("quantize Q8_0", expected, expected)
    assert all(done <= expected for _, done, _ in seen)
    # The estimate is a progress figure, but a sane one: within a third of the real file.
    assert 0.66 < result.size / expected < 1.5, (result.size, expected)
    # A cached result does no work and reports none.
    seen.clear()
    with progress.reporting(sink):
        assert quantize_blob(store, digest, "Q8_0").cached
    assert seen == []


def test_expected_size_is_zero_for_a_type_it_cannot_size(tiny_model: Path) -> None:
    assert expected_size(read_gguf(tiny_model), "NOT_A_TYPE") == 0
    # K-quant mixes are sized by their base block type.
    assert expected_size(read_gguf(tiny_model), "Q4_K_M") > 0


def test_a_sink_is_installed_only_inside_its_reporting_block() -> None:
    assert progress.current() is None
    _seen, sink = _recorder()
    with progress.reporting(sink):
        assert progress.current() is sink
        with progress.reporting(None):  # a --json command inside: nothing is drawn
            assert progress.current() is None
        assert progress.current() is sink
    assert progress.current() is None
