"""Whose chat template a served model's answers test (issue 23, item 5).

llama-cpp-python's real server on loopback: on a GGUF without a chat template it falls back to
its llama-2 format, so chat completions test a rendering the Modelfile never asked for. The
run says so before it starts, and ``--template modelfile`` sends the Modelfile's own rendering
to ``/v1/completions``, which then answers exactly as the embedded engine does.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import TINY_MODELFILE

from lifecycle import modelfile as mf
from lifecycle.engines import GenerationRequest, LoadOptions, get_engine
from lifecycle.engines.openai import OpenAIModel
from lifecycle.engines.served_template import ServedTemplate, first_difference, same_rendering
from lifecycle.errors import UsageError
from lifecycle.prompt import render_prompt

for _extra in ("uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings"):
    pytest.importorskip(_extra, reason="llama-cpp-python[server] extras are not installed")

from test_engine_openai import GEMMA_TEMPLATE, served  # noqa: E402

Run = Callable[..., tuple[int, str, str]]
CASE = ({"role": "user", "content": "My invoice shows the wrong amount."},)


@pytest.fixture
def bare_server(tiny_workspace: Path) -> Iterator[str]:
    """The workspace's own tiny GGUF (no chat template in it), served."""
    yield from served(tiny_workspace / "modelfiles" / "tiny.gguf")


def _templated(tmp_path_factory: pytest.TempPathFactory, template: str) -> Iterator[str]:
    from tinymodel import write_tiny_llama

    path = tmp_path_factory.mktemp("templated") / "tiny-chat.gguf"
    write_tiny_llama(path, chat_template=template)
    yield from served(path)


@pytest.fixture(scope="module")
def templated_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The same weights with a Gemma-style chat template that renders as the Modelfile does
    (it writes the BOS token itself, as Gemma's own template does)."""
    yield from _templated(tmp_path_factory, "{{ bos_token }}" + GEMMA_TEMPLATE)


@pytest.fixture(scope="module")
def bos_less_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The same template without ``bos_token``: llama-cpp-python's chat formatter then sends
    the prompt without BOS (it assumes a template writes its special tokens)."""
    yield from _templated(tmp_path_factory, GEMMA_TEMPLATE)


def _request() -> GenerationRequest:
    recipe = mf.parse(TINY_MODELFILE)
    prompt = render_prompt(recipe, CASE, chat_template=None)
    return GenerationRequest(prompt=prompt, messages=CASE, max_tokens=8, seed=7)


def _load(url: str, tiny_model: Path, template: str = "server") -> OpenAIModel:
    engine = get_engine("openai", base_url=url, template=template)
    model = engine.load(tiny_model, LoadOptions(modelfile=TINY_MODELFILE))
    assert isinstance(model, OpenAIModel)
    return model


def test_a_matching_server_template_is_recognised(templated_server: str, tiny_model: Path) -> None:
    found = _load(templated_server, tiny_model).served_template(_request())
    # llama-cpp-python has no /apply-template: the probe's prompt token count decides.
    assert found.same is True and "prompt tokens" in found.evidence
    assert found.label() == "server" and found.warning("tiny") is None


def test_a_template_that_drops_bos_is_caught_by_one_token(
    bos_less_server: str, tiny_model: Path
) -> None:
    found = _load(bos_less_server, tiny_model).served_template(_request())
    counts = re.search(r"(\d+) prompt tokens as served, (\d+) as the Modelfile", found.evidence)
    assert found.same is False and counts and int(counts[2]) - int(counts[1]) == 1


def test_the_llama2_fallback_is_named_as_a_different_template(
    bare_server: str, tiny_model: Path
) -> None:
    found = _load(bare_server, tiny_model).served_template(_request())
    assert found.same is False and found.label() == "server-differs"
    counts = re.search(r"(\d+) prompt tokens as served, (\d+) as the Modelfile", found.evidence)
    assert counts and counts[1] != counts[2]
    warning = found.warning("tiny:f16")
    assert (
        warning and "differs from the Modelfile's" in warning and "--template modelfile" in warning
    )


def test_eval_warns_before_the_run_and_modelfile_template_matches_the_embedded_engine(
    tiny_workspace: Path, run_cli: Run, bare_server: str
) -> None:
    common = ("eval", "-C", str(tiny_workspace), "--json", "--mode", "free", "--limit", "3")
    code, out, err = run_cli(*common, "--no-cache")
    assert code == 0, err
    embedded = json.loads(out)

    code, out, err = run_cli(*common, "--engine", "openai", "--base-url", bare_server)
    assert code == 0, err
    served = json.loads(out)
    assert "the server's chat template differs from the Modelfile's TEMPLATE" in err
    assert list(served["environment"]["prompt_template"].values()) == ["server-differs"]
    # What the llama-2 fallback does to the answers: not the embedded engine's.
    assert not all(
        _agrees(ours, theirs)
        for ours, theirs in zip(served["cases"], embedded["cases"], strict=True)
    )

    code, out, err = run_cli(
        *common, "--engine", "openai", "--base-url", bare_server, "--template", "modelfile"
    )
    assert code == 0, err
    rendered = json.loads(out)
    assert "differs" not in err
    assert list(rendered["environment"]["prompt_template"].values()) == ["modelfile"]
    # Same rendering, same weights, greedy: the server answers as the embedded engine does,
    # and the legacy completions' logprobs give each case its decision margin. (The random
    # tiny model writes invalid UTF-8: the server drops those bytes where the embedded engine
    # writes U+FFFD, and at max_tokens it decodes on to finish a character.)
    assert all(
        _agrees(ours, theirs)
        for ours, theirs in zip(rendered["cases"], embedded["cases"], strict=True)
    )
    assert all(c["margin"] is not None for c in rendered["cases"])


def _agrees(served: dict, embedded: dict) -> bool:
    """The served answer is the embedded one, up to how each writes invalid UTF-8."""
    ours, theirs = str(served["output"]), str(embedded["output"]).replace("\ufffd", "")
    if embedded["finish_reason"] == "length":
        return ours.startswith(theirs)
    return ours == theirs


def test_template_is_a_setting_of_the_openai_engine_only(
    tiny_workspace: Path, run_cli: Run
) -> None:
    code, _, err = run_cli("eval", "-C", str(tiny_workspace), "--template", "modelfile")
    assert code == 2 and "template" in err
    with pytest.raises(UsageError, match="template must be one of server, modelfile"):
        get_engine("openai", base_url="http://127.0.0.1:9", template="jinja")


def test_renderings_compare_up_to_a_leading_special_token() -> None:
    ours = "<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n"
    assert same_rendering(ours, ours)
    assert same_rendering(f"<bos>{ours}", ours)
    assert not same_rendering(f"hello {ours}", ours)
    assert not same_rendering("[INST] hi [/INST]", ours)
    assert first_difference("[INST] hi", ours) == "at char 0: '[INST] hi' vs '<start_of_turn>u'"
    assert first_difference("abc", "abd") == "at char 2: 'c' vs 'd'"
    assert ServedTemplate("server", None, "no tokenize endpoint").label() == "server-unknown"
