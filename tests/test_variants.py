"""The variant matrix: quant levels x PARAMETER axes, content ids, local quantization, lint."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from lifecycle.config import load_workspace
from lifecycle.errors import ConfigError, UsageError
from lifecycle.gguf import read_gguf
from lifecycle.quantize import normalise_quant, quantize_blob
from lifecycle.store import Store
from lifecycle.variants import resolve_variants

Run = Callable[..., tuple[int, str, str]]

MATRIX = """
[models.tiny.variants]
quant = ["F32", "Q8_0", "Q4_K_M"]
num_ctx = [512, 1024]
"""


def add_matrix(workspace: Path, text: str = MATRIX) -> None:
    config = workspace / "lifecycle.toml"
    config.write_text(config.read_text() + text, encoding="utf-8")


def test_matrix_expands_to_named_variants_with_content_ids(tiny_workspace: Path) -> None:
    add_matrix(tiny_workspace)
    workspace = load_workspace(tiny_workspace)
    store = Store(workspace.home)
    variants = resolve_variants(workspace, store)
    assert [v.name for v in variants] == [
        "tiny:f32-ctx512", "tiny:f32-ctx1024", "tiny:q8_0-ctx512",
        "tiny:q8_0-ctx1024", "tiny:q4_k_m-ctx512", "tiny:q4_k_m-ctx1024",
    ]  # fmt: skip
    assert len({v.id for v in variants}) == 6
    # Quant levels are real, distinct blobs made by llama.cpp's quantizer.
    types = {v.quant: read_gguf(v.blob_path).file_type for v in variants}
    assert types == {"F32": "F32", "Q8_0": "Q8_0", "Q4_K_M": "Q4_K_M"}
    sizes = {v.quant: v.manifest.size for v in variants}
    assert sizes["F32"] > sizes["Q8_0"] > sizes["Q4_K_M"]
    assert variants[0].modelfile.parameters["num_ctx"] == 512
    # Resolving again gives the same ids (nothing depends on time or paths).
    again = resolve_variants(workspace, store)
    assert [v.id for v in again] == [v.id for v in variants]


def test_selection_by_variant_name_and_did_you_mean(tiny_workspace: Path) -> None:
    add_matrix(tiny_workspace)
    workspace = load_workspace(tiny_workspace)
    store = Store(workspace.home)
    chosen = resolve_variants(workspace, store, ["tiny:q8_0-ctx512"])
    assert [v.name for v in chosen] == ["tiny:q8_0-ctx512"]
    assert len(resolve_variants(workspace, store, ["tiny"])) == 6
    with pytest.raises(UsageError, match=r"did you mean 'tiny:q8_0-ctx512'"):
        resolve_variants(workspace, store, ["tiny:q8-ctx512"])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[models.tiny.variants]\nnum_ctx = [512, 'big']\n", "'big' is not a valid num_ctx"),
        ("[models.tiny.variants]\nstop = [['a']]\n", "not a PARAMETER that can vary"),
        ("[models.tiny.variants]\nnum_ctxx = [512]\n", "not a PARAMETER that can vary"),
        ("[models.tiny.variants]\ntemperature = []\n", "must be a non-empty list"),
    ],
)
def test_bad_matrix_names_the_field(tiny_workspace: Path, text: str, message: str) -> None:
    add_matrix(tiny_workspace, text)
    with pytest.raises(ConfigError, match=message) as info:
        resolve_variants(load_workspace(tiny_workspace), Store(Path("/nonexistent")))
    assert "models.tiny.variants." in str(info.value)


def test_requantizing_needs_explicit_permission(tiny_workspace: Path) -> None:
    add_matrix(tiny_workspace, '[models.tiny.variants]\nquant = ["Q8_0"]\n')
    workspace = load_workspace(tiny_workspace)
    store = Store(workspace.home)
    q8 = resolve_variants(workspace, store)[0]
    with pytest.raises(UsageError, match=r"already quantized \(Q8_0\).*--allow-requantize"):
        quantize_blob(store, q8.blob_digest, "Q4_0")
    result = quantize_blob(store, q8.blob_digest, "Q4_0", allow_requantize=True)
    assert result.requantized and result.source_type == "Q8_0" and not result.cached
    assert quantize_blob(store, q8.blob_digest, "Q4_0", allow_requantize=True).cached


def test_quant_names_are_validated_against_llama_cpp() -> None:
    assert normalise_quant("q4_k_m") == "Q4_K_M"
    with pytest.raises(UsageError, match=r"unknown quant type 'Q4_KM' \(did you mean Q4_K_M\?\)"):
        normalise_quant("Q4_KM")


def test_eval_reports_each_variant(tiny_workspace: Path, run_cli: Run) -> None:
    add_matrix(tiny_workspace, '[models.tiny.variants]\nquant = ["F32", "Q4_K_M"]\n')
    code, out, err = run_cli("eval", "-C", str(tiny_workspace), "--json", "--mode", "schema")
    doc = json.loads(out)
    assert code == 0, err
    assert [s["variant"] for s in doc["summaries"]] == ["tiny:f32", "tiny:q4_k_m"]
    assert {v["variant"]["quant"] for v in doc["variants"]} == {"F32", "Q4_K_M"}
    blobs = doc["environment"]["blobs"]
    assert blobs["tiny:f32"] != blobs["tiny:q4_k_m"]


def test_build_json_lists_variants(tiny_workspace: Path, run_cli: Run) -> None:
    add_matrix(tiny_workspace)
    code, out, _ = run_cli("build", "-C", str(tiny_workspace), "--json")
    variants = json.loads(out)["variants"]
    assert code == 0 and len(variants) == 6
    assert variants[1]["overrides"] == {"num_ctx": 1024}
    assert variants[1]["parameters"]["temperature"] == 0.0


def test_show_modelfile_prints_the_resolved_modelfile(tiny_workspace: Path, run_cli: Run) -> None:
    add_matrix(tiny_workspace)
    code, out, _ = run_cli("show", "--modelfile", "tiny:q8_0-ctx1024", "-C", str(tiny_workspace))
    assert code == 0
    lines = out.splitlines()
    assert lines[2].startswith("FROM ") and "/blobs/sha256-" in lines[2]
    assert "PARAMETER num_ctx 1024" in lines
    assert "PARAMETER stop <end_of_turn>" in lines


def test_lint_flags_missing_stop_and_oversized_context(tiny_workspace: Path, run_cli: Run) -> None:
    modelfile = tiny_workspace / "modelfiles/tiny.Modelfile"
    text = modelfile.read_text().replace("PARAMETER stop <end_of_turn>\n", "")
    modelfile.write_text(text.replace("num_ctx 1024", "num_ctx 4096"))
    code, out, _ = run_cli("lint", "-C", str(tiny_workspace), "--json")
    checks = {f["check"]: f["message"] for f in json.loads(out)["findings"]}
    assert code == 0
    assert "<end_of_turn> but it is not a stop sequence" in checks["stop-missing"]
    assert checks["num-ctx"] == "num_ctx 4096 exceeds the model's trained context length 2048"


def test_lint_compares_template_with_the_gguf_chat_template(
    tiny_workspace: Path, run_cli: Run
) -> None:
    from tinymodel import write_tiny_llama

    # A GGUF whose own chat template is ChatML, served with a Gemma-style TEMPLATE.
    chatml = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    write_tiny_llama(tiny_workspace / "modelfiles/tiny.gguf", chat_template=chatml)
    code, out, _ = run_cli("lint", "-C", str(tiny_workspace), "--json")
    checks = [f["check"] for f in json.loads(out)["findings"]]
    assert code == 0 and "template-mismatch" in checks


def test_prompt_command_prints_the_exact_prompt(tiny_workspace: Path, run_cli: Run) -> None:
    messages = tiny_workspace / "messages.json"
    messages.write_text(json.dumps([{"role": "user", "content": "Where is my invoice?"}]))
    code, out, _ = run_cli("prompt", "tiny", "--messages", str(messages), "-C", str(tiny_workspace))
    assert code == 0
    assert out == (
        "<start_of_turn>user\nReply with JSON only.<end_of_turn>\n"
        "<start_of_turn>user\nRefund my last invoice<end_of_turn>\n"
        '<start_of_turn>model\n{"category": "billing", "confidence": 0.9}<end_of_turn>\n'
        "<start_of_turn>user\nWhere is my invoice?<end_of_turn>\n<start_of_turn>model\n"
    )


def test_modelfile_command_prints_canonical_and_json(tiny_workspace: Path, run_cli: Run) -> None:
    path = str(tiny_workspace / "modelfiles/tiny.Modelfile")
    code, out, _ = run_cli("modelfile", path, "--json")
    parsed = json.loads(out)
    assert code == 0
    assert parsed["from"] == ["./tiny.gguf"]
    assert parsed["parameters"] == {
        "temperature": 0.0, "seed": 7, "num_ctx": 1024, "stop": ["<end_of_turn>"]
    }  # fmt: skip
    assert parsed["messages"][0] == {"role": "user", "content": "Refund my last invoice"}
    code, canonical, _ = run_cli("modelfile", path)
    assert code == 0 and canonical.startswith('FROM ./tiny.gguf\nTEMPLATE """')
    broken = tiny_workspace / "broken.Modelfile"
    broken.write_text("FROM ./tiny.gguf\nPARAMETER temperature hot\n")
    code, _, err = run_cli("modelfile", str(broken))
    assert code == 2 and "broken.Modelfile:2:" in err


def test_without_template_the_gguf_chat_template_is_used(
    tiny_workspace: Path, run_cli: Run
) -> None:
    from tinymodel import write_tiny_llama

    chatml = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    write_tiny_llama(tiny_workspace / "modelfiles/tiny.gguf", chat_template=chatml)
    modelfile = tiny_workspace / "modelfiles/tiny.Modelfile"
    modelfile.write_text("FROM ./tiny.gguf\nSYSTEM Reply with JSON only.\n")
    messages = tiny_workspace / "messages.json"
    messages.write_text(json.dumps({"messages": [{"role": "user", "content": "Hi"}]}))
    code, out, _ = run_cli("prompt", "tiny", "--messages", str(messages), "-C", str(tiny_workspace))
    assert code == 0
    assert out == (
        "<|im_start|>system\nReply with JSON only.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_no_template_anywhere_is_an_error_not_a_guess(tiny_workspace: Path, run_cli: Run) -> None:
    modelfile = tiny_workspace / "modelfiles/tiny.Modelfile"
    modelfile.write_text("FROM ./tiny.gguf\nPARAMETER num_ctx 512\n")
    code, out, err = run_cli("eval", "-C", str(tiny_workspace), "--json")
    assert code == 2 and out == ""
    assert "no TEMPLATE in the Modelfile and no chat template in the GGUF" in err


def test_quantized_variant_manifest_carries_the_source_revision(tiny_workspace: Path) -> None:
    # Built in one place (QuantizeResult.provenance): the store's cache record names the
    # tool, the variant's manifest the source revision it was made from.
    add_matrix(tiny_workspace, '\n[models.tiny.variants]\nquant = ["F32", "Q8_0"]\n')
    workspace = load_workspace(tiny_workspace)
    store = Store(workspace.home)
    source, quantized = resolve_variants(workspace, store)
    assert quantized.manifest.tag == f"quantized:{source.blob_digest}/Q8_0"
    assert quantized.manifest.revision == f"{source.manifest.revision}; quantized F32 → Q8_0"
    assert quantized.manifest.filename == "Q8_0.gguf"
    assert quantized.manifest.pulled_at == source.manifest.pulled_at
    [record] = (store.manifests / "quantized").glob("*.json")
    assert json.loads(record.read_text())["revision"].startswith("llama-cpp-python ")
