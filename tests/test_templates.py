"""Prompt templates: the Go text/template subset, Ollama's /api/chat assembly, Jinja sandbox.

The model-family fixtures in tests/data/templates are TEMPLATEs as Ollama ships them (its
built-in template/*.gotmpl files and library models); expected prompts are written out by hand.
Where Ollama publishes the expected output itself (template/testdata, template_test.go) the same
conversation and text are used, so those cases are checked against Ollama's own answers.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import pytest

from lifecycle.errors import TemplateError
from lifecycle.templates import (
    build_prompt,
    parse_go_template,
    render_chat_template,
    render_go,
)

DATA = Path(__file__).parent / "data" / "templates"


def fixture(name: str) -> str:
    return (DATA / name).read_text(encoding="utf-8")


SYS = "Answer in one word."
CHAT = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "Name a colour."},
]
CHAT_SYS = [{"role": "system", "content": SYS}, *CHAT]


def chat(template: str, messages: list[dict[str, Any]], system: str | None = None) -> str:
    return build_prompt(template, system=system, modelfile_messages=[], messages=messages)


# --- model families: exact prompts ----------------------------------------------------------

FAMILY_CASES = {
    ("llama3.2.gotmpl", False): (
        "<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n\n"
        "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello! How can I help?<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nName a colour.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    ),
    ("llama3.2.gotmpl", True): (
        "<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n\n"
        "Answer in one word.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello! How can I help?<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nName a colour.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    ),
    ("gemma.gotmpl", False): (
        "<start_of_turn>user\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello! How can I help?<end_of_turn>\n"
        "<start_of_turn>user\nName a colour.<end_of_turn>\n"
        "<start_of_turn>model\n"
    ),
    ("gemma.gotmpl", True): (
        "<start_of_turn>user\nAnswer in one word.\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello! How can I help?<end_of_turn>\n"
        "<start_of_turn>user\nName a colour.<end_of_turn>\n"
        "<start_of_turn>model\n"
    ),
    ("gemma3.gotmpl", False): (
        "<start_of_turn>user\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello! How can I help?<end_of_turn>\n"
        "<start_of_turn>user\nName a colour.<end_of_turn>\n"
        "<start_of_turn>model\n\n"
    ),
    ("gemma3.gotmpl", True): (
        "<start_of_turn>user\nAnswer in one word.\n\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello! How can I help?<end_of_turn>\n"
        "<start_of_turn>user\nName a colour.<end_of_turn>\n"
        "<start_of_turn>model\n\n"
    ),
    ("qwen2.5.gotmpl", False): (
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello! How can I help?<|im_end|>\n"
        "<|im_start|>user\nName a colour.<|im_end|>\n"
        "<|im_start|>assistant\n"
    ),
    ("qwen2.5.gotmpl", True): (
        "<|im_start|>system\nAnswer in one word.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello! How can I help?<|im_end|>\n"
        "<|im_start|>user\nName a colour.<|im_end|>\n"
        "<|im_start|>assistant\n"
    ),
    ("mistral.gotmpl", False): (
        "[INST] Hi[/INST] Hello! How can I help?</s>[INST] Name a colour.[/INST]"
    ),
    ("mistral.gotmpl", True): (
        "[INST] Answer in one word.\n\nHi[/INST] Hello! How can I help?</s>"
        "[INST] Name a colour.[/INST]"
    ),
    # phi3 is a legacy template: one execution per turn, no separator between turns.
    ("phi3.gotmpl", False): (
        "<|user|>\nHi<|end|>\n<|assistant|>\nHello! How can I help?<|end|>"
        "<|user|>\nName a colour.<|end|>\n<|assistant|>\n"
    ),
    ("phi3.gotmpl", True): (
        "<|system|>\nAnswer in one word.<|end|>\n"
        "<|user|>\nHi<|end|>\n<|assistant|>\nHello! How can I help?<|end|>"
        "<|user|>\nName a colour.<|end|>\n<|assistant|>\n"
    ),
}


@pytest.mark.parametrize(("name", "with_system"), list(FAMILY_CASES))
def test_family_prompt_request_system_message(name: str, with_system: bool) -> None:
    messages = CHAT_SYS if with_system else CHAT
    assert chat(fixture(name), messages) == FAMILY_CASES[name, with_system]


@pytest.mark.parametrize("name", sorted({n for n, _ in FAMILY_CASES}))
def test_family_prompt_modelfile_system_equals_request_system(name: str) -> None:
    # SYSTEM from the Modelfile is inserted as a leading system message (routes.go).
    assert chat(fixture(name), CHAT, system=SYS) == FAMILY_CASES[name, True]


OLLAMA_CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Hello, how are you?"},
    {"role": "assistant", "content": "I'm doing great. How can I help you today?"},
    {"role": "user", "content": "I'd like to show off how chat templating works!"},
]

# Ollama's template/testdata/<name>/system-user-assistant-user, verbatim.
OLLAMA_TESTDATA = {
    "gemma.gotmpl": (
        "<start_of_turn>user\nYou are a helpful assistant.\nHello, how are you?<end_of_turn>\n"
        "<start_of_turn>model\nI'm doing great. How can I help you today?<end_of_turn>\n"
        "<start_of_turn>user\nI'd like to show off how chat templating works!<end_of_turn>\n"
        "<start_of_turn>model\n"
    ),
    "gemma3.gotmpl": (
        "<start_of_turn>user\nYou are a helpful assistant.\n\nHello, how are you?<end_of_turn>\n"
        "<start_of_turn>model\nI'm doing great. How can I help you today?<end_of_turn>\n"
        "<start_of_turn>user\nI'd like to show off how chat templating works!<end_of_turn>\n"
        "<start_of_turn>model\n\n"
    ),
    "mistral.gotmpl": (
        "[INST] You are a helpful assistant.\n\nHello, how are you?[/INST] I'm doing great. "
        "How can I help you today?</s>[INST] I'd like to show off how chat templating works!"
        "[/INST]"
    ),
}


@pytest.mark.parametrize("name", sorted(OLLAMA_TESTDATA))
def test_matches_ollama_published_testdata(name: str) -> None:
    assert chat(fixture(name), OLLAMA_CONVERSATION) == OLLAMA_TESTDATA[name]


# template_test.go TestExecuteWithMessages: legacy and .Messages templates, same output.
MISTRAL_CHAT = [
    {"role": "user", "content": "Hello friend!"},
    {"role": "assistant", "content": "Hello human!"},
    {"role": "user", "content": "What is your name?"},
]
MISTRAL_MESSAGES_TMPL = (
    "[INST] {{ if .System }}{{ .System }}\n\n{{ end }}\n{{- range .Messages }}\n"
    '{{- if eq .Role "user" }}{{ .Content }}[/INST] {{ else if eq .Role "assistant" }}'
    "{{ .Content }}[INST] {{ end }}\n{{- end }}"
)


@pytest.mark.parametrize(
    "template",
    [
        fixture("legacy-no-response.gotmpl"),  # gets {{ .Response }} appended (template.go)
        "[INST] {{ if .System }}{{ .System }}\n\n{{ end }}{{ .Prompt }}[/INST] {{ .Response }}",
        MISTRAL_MESSAGES_TMPL,
    ],
)
@pytest.mark.parametrize("with_system", [False, True])
def test_ollama_execute_with_messages_mistral(template: str, with_system: bool) -> None:
    messages = MISTRAL_CHAT
    expected = "[INST] Hello friend![/INST] Hello human![INST] What is your name?[/INST] "
    if with_system:
        messages = [{"role": "system", "content": "You are a helpful assistant!"}, *messages]
        expected = "[INST] You are a helpful assistant!\n\n" + expected[len("[INST] ") :]
    assert chat(template, messages) == expected


def test_legacy_prefilled_assistant_turn_is_left_open() -> None:
    # template_test.go "mistral assistant": the last turn is cut right after {{ .Response }}.
    messages = [*MISTRAL_CHAT, {"role": "assistant", "content": "My name is Ollama and I"}]
    expected = (
        "[INST] Hello friend![/INST] Hello human![INST] What is your name?[/INST] "
        "My name is Ollama and I"
    )
    assert chat("[INST] {{ .Prompt }}[/INST] {{ .Response }}", messages) == expected
    assert chat("[INST] {{ .Prompt }}[/INST] ", messages) == expected


def test_legacy_chatml_multi_turn() -> None:
    # template_test.go "chatml" with its legacy "response" template.
    messages = [{"role": "system", "content": "You are a helpful assistant!"}, *MISTRAL_CHAT]
    assert chat(fixture("legacy-chatml.gotmpl"), messages) == (
        "<|im_start|>system\nYou are a helpful assistant!<|im_end|>\n"
        "<|im_start|>user\nHello friend!<|im_end|>\n"
        "<|im_start|>assistant\nHello human!<|im_end|>\n"
        "<|im_start|>user\nWhat is your name?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_legacy_single_turn() -> None:
    template = fixture("legacy-chatml.gotmpl")
    assert chat(template, [{"role": "user", "content": "Hi"}], system="Be brief.") == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


# --- Ollama's assembly rules ----------------------------------------------------------------


def test_modelfile_messages_come_after_system_and_before_request() -> None:
    history = [
        {"role": "user", "content": "Refund my last invoice"},
        {"role": "assistant", "content": '{"action": "refund"}'},
    ]
    prompt = build_prompt(
        fixture("qwen2.5.gotmpl"),
        system="Reply with JSON only.",
        modelfile_messages=history,
        messages=[{"role": "user", "content": "Cancel my plan"}],
    )
    assert prompt == (
        "<|im_start|>system\nReply with JSON only.<|im_end|>\n"
        "<|im_start|>user\nRefund my last invoice<|im_end|>\n"
        '<|im_start|>assistant\n{"action": "refund"}<|im_end|>\n'
        "<|im_start|>user\nCancel my plan<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_request_system_message_replaces_modelfile_system() -> None:
    # routes.go checks only the request's first message; the request system then lands after
    # the MESSAGE history, and .System carries it.
    prompt = build_prompt(
        "{{ .System }}|{{ range .Messages }}{{ .Role }}:{{ .Content }};{{ end }}",
        system="modelfile system",
        modelfile_messages=[{"role": "user", "content": "m1"}],
        messages=[{"role": "system", "content": "req"}, {"role": "user", "content": "q"}],
    )
    assert prompt == "req|user:m1;system:req;user:q;"


def test_modelfile_system_kept_when_request_system_is_not_first() -> None:
    prompt = build_prompt(
        "{{ .System }}|{{ range .Messages }}{{ .Role }};{{ end }}",
        system="base",
        modelfile_messages=[],
        messages=[{"role": "user", "content": "q"}, {"role": "system", "content": "late"}],
    )
    assert prompt == "base\n\nlate|system;user;system;"


def test_consecutive_messages_of_one_role_are_merged() -> None:
    prompt = chat(
        fixture("qwen2.5.gotmpl"),
        [{"role": "user", "content": "part one"}, {"role": "user", "content": "part two"}],
    )
    assert prompt == ("<|im_start|>user\npart one\n\npart two<|im_end|>\n<|im_start|>assistant\n")


def test_empty_system_is_not_inserted() -> None:
    assert chat(fixture("qwen2.5.gotmpl"), CHAT, system="") == FAMILY_CASES["qwen2.5.gotmpl", False]


def test_empty_request_is_an_error() -> None:
    with pytest.raises(TemplateError, match="at least one message"):
        chat(fixture("qwen2.5.gotmpl"), [])


def test_unknown_top_level_field_names_line() -> None:
    with pytest.raises(TemplateError, match=r"line 2: unknown field \.Sytem"):
        chat("{{ .System }}\n{{ .Sytem }}", CHAT)


def test_tool_calls_render_through_messages() -> None:
    messages = [
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
        },
        {"role": "tool", "content": "sunny"},
    ]
    assert chat(fixture("qwen2.5.gotmpl"), messages) == (
        "<|im_start|>user\nWeather?<|im_end|>\n"
        "<|im_start|>assistant\n<tool_call>\n"
        '{"name": "get_weather", "arguments": {"city":"Paris"}}\n'
        "</tool_call><|im_end|>\n"
        "<|im_start|>user\n<tool_response>\nsunny\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_uses_messages_and_names() -> None:
    llama = parse_go_template(fixture("llama3.2.gotmpl"))
    assert llama.uses_messages
    assert llama.names == {"System", "Tools", "Messages"}
    phi = parse_go_template(fixture("phi3.gotmpl"))
    assert not phi.uses_messages
    assert phi.names == {"System", "Prompt", "Response"}


# --- Go text/template constructs ------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "data", "expected"),
    [
        ("a \n {{- .X -}} \n b", {"X": 1}, "a1b"),
        ("a {{ .X }} b", {"X": "x"}, "a x b"),
        ("{{-3}}", {}, "-3"),
        ("{{ .A.B }}", {"A": {"B": "deep"}}, "deep"),
        ("{{ $ }}", {"X": "<"}, '{"X":"\\u003c"}'),
        ("x{{/* a\ncomment */}}y {{- /* trimmed */ -}} z", {}, "xyz"),
        ("{{ if .A }}a{{ else if .B }}b{{ else }}c{{ end }}", {"A": 0, "B": "y"}, "b"),
        ("{{ if .A }}a{{ else if .B }}b{{ else }}c{{ end }}", {"A": "", "B": []}, "c"),
        ("{{ if .A }}a{{ else if .B }}b{{ else }}c{{ end }}", {"A": [0], "B": 1}, "a"),
        ("{{ range $i, $m := .L }}{{ $i }}{{ $m }}{{ . }}{{ end }}", {"L": ["a", "b"]}, "0aa1bb"),
        ("{{ range $m := .L }}{{ $m }}{{ end }}", {"L": ["a", "b"]}, "ab"),
        ("{{ range .L }}{{ .N }}{{ $.S }}{{ end }}", {"L": [{"N": 1}, {"N": 2}], "S": "!"}, "1!2!"),
        ("{{ range .L }}x{{ else }}none{{ end }}", {"L": []}, "none"),
        (
            "{{ range $k, $v := .M }}{{ $k }}={{ $v }};{{ end }}",
            {"M": {"b": 2, "a": 1}},
            "a=1;b=2;",
        ),
        ("{{ range 3 }}{{ . }}{{ end }}", {}, "012"),
        (
            "{{ range .L }}{{ if eq . 2 }}{{ continue }}{{ end }}"
            "{{ if eq . 4 }}{{ break }}{{ end }}{{ . }}{{ end }}",
            {"L": [1, 2, 3, 4, 5]},
            "13",
        ),
        ("{{ with .M }}{{ .A }}{{ else }}none{{ end }}", {"M": {"A": "a"}}, "a"),
        ("{{ with .M }}{{ .A }}{{ else }}none{{ end }}", {"M": {}}, "none"),
        ("{{ with $x := .S }}{{ $x }}{{ . }}{{ end }}", {"S": "s"}, "ss"),
        ("{{ $x := 1 }}{{ range .L }}{{ $x = . }}{{ end }}{{ $x }}", {"L": [5, 6]}, "6"),
        ("{{ if true }}{{ $y := 2 }}{{ $y }}{{ end }}", {}, "2"),
        ("{{ len .S }} {{ len .L }} {{ len .M }}", {"S": "héllo", "L": [1], "M": {}}, "6 1 0"),
        (
            '{{ index .L 1 }} {{ index .M "k" }} {{ index .N 0 1 }}',
            {"L": [1, 2], "M": {"k": "v"}, "N": [[0, 9]]},
            "2 v 9",
        ),
        (
            "{{ slice .L 1 }} {{ slice .L 1 2 }} {{ slice .S 0 2 }} {{ len (slice .L 0) }}",
            {"L": [1, 2, 3], "S": "abc"},
            "[2,3] [2] ab 3",
        ),
        (
            '{{ eq .R "user" }} {{ eq .R "a" "b" "user" }} {{ ne 1 2 }} {{ eq 1 1 }}',
            {"R": "user"},
            "true true true true",
        ),
        (
            '{{ lt 1 2 }} {{ le 2 2 }} {{ gt 1 2 }} {{ ge 1.5 1.5 }} {{ lt "a" "b" }}',
            {},
            "true true false true true",
        ),
        (
            '{{ and 1 0 }} {{ and 1 "x" }} {{ or 0 "" }} {{ or 0 "y" }} {{ not .L }} {{ not 1 }}',
            {"L": []},
            "0 x  y true false",
        ),
        ("{{ and .Missing .Missing.X }}", {"Missing": None}, "<no value>"),
        ("{{ .M.absent }}", {"M": {}}, "<no value>"),
        (
            "{{ json .V }}",
            {"V": {"a": [1, 2.0, "<&>"], "b": None, "c": True}},
            '{"a":[1,2,"\\u003c\\u0026\\u003e"],"b":null,"c":true}',
        ),
        ("{{ .V | json }}", {"V": 'q"uote'}, '"q\\"uote"'),
        (
            '{{ printf "%s=%d %q %v %.2f %5s|%-3d|%t %x %%" "a" 7 "q" .L 3.14159 "r" 4 true 255 }}',
            {"L": [1]},
            'a=7 "q" [1] 3.14     r|4  |true ff %',
        ),
        ('{{ print "a" 1 2 "b" }} {{ println 1 "x" }}', {}, "a1 2b 1 x\n"),
        (
            "{{ 1.5 }} {{ 1e6 }} {{ 0x1F }} {{ 'a' }} {{ `r\\n` }} {{ \"e\\t\" }} {{ print nil }}",
            {},
            "1.5 1e+06 31 97 r\\n e\t <nil>",
        ),
        (
            '{{ (index .L 0).Role }} {{ ("x" | len) }} {{ len (slice $.L 0) | printf "%d!" }}',
            {"L": [{"role": "u"}]},
            "u 1 1!",
        ),
        ("{{ .Role }}/{{ .ToolCalls }}", {"role": "r", "tool_calls": []}, "r/[]"),
        (
            "{{ toTypeScriptType .P }} {{ toTypeScriptType .Q }}",
            {"P": {"type": ["string", "integer"]}, "Q": {"anyOf": [{"type": "null"}]}},
            "string | number null",
        ),
    ],
)
def test_go_constructs(template: str, data: dict[str, Any], expected: str) -> None:
    assert render_go(template, data) == expected


def test_current_date_functions() -> None:
    today = datetime.date.today()
    out = render_go('{{ currentDate }} {{ yesterdayDate "ignored" }}', {})
    assert out == f"{today:%Y-%m-%d} {today - datetime.timedelta(days=1):%Y-%m-%d}"


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("ok\n{{ .X", r"line 2: unclosed action"),
        ("a\nb\n{{ frobnicate .X }}", r"line 3: function 'frobnicate' not defined"),
        ("x\n{{ end }}", r"line 2: unexpected \{\{end\}\}"),
        ("{{ if .X }}\n{{ else }}\n{{ else }}{{ end }}", r"line 3: expected \{\{end\}\}"),
        ("\n{{ if .X }}never closed", r"line 2: unexpected EOF"),
        ("{{ $y }}", r"line 1: undefined variable '\$y'"),
        ("{{ range .L }}{{ end }}{{ break }}", r"line 1: \{\{break\}\} outside \{\{range\}\}"),
        ('{{ .X | "s" }}', r"line 1: non executable command in pipeline stage 2"),
        ('{{ "unterminated }}', r"line 1: unterminated quoted string"),
        ("{{/* open", r"line 1: unclosed comment"),
        ("{{ /* spaced */ }}", r"line 1: unexpected '/' in action"),
        ("{{/* x */ .X }}", r"line 1: comment ends before closing delimiter"),
        ('{{ template "x" }}', r"line 1: \{\{template\}\} is not supported"),
        ("{{ (len .X }}", r"line 1: unclosed left paren"),
    ],
)
def test_parse_errors_name_the_line(template: str, message: str) -> None:
    with pytest.raises(TemplateError, match=message) as info:
        parse_go_template(template)
    assert info.value.line is not None


@pytest.mark.parametrize(
    ("template", "data", "message"),
    [
        ("\n{{ .Nope }}", {"X": 1}, r"line 2: unknown field \.Nope"),
        ('{{ eq .X "1" }}', {"X": 1}, r"incompatible types for comparison"),
        ("\n\n{{ index .L 5 }}", {"L": [1]}, r"line 3: error calling index: index out of range"),
        ("{{ .S.Field }}", {"S": "str"}, r"can't evaluate field Field in type string"),
        ("{{ .N.Field }}", {"N": None}, r"nil pointer evaluating"),
        ("{{ len 3 }}", {}, r"len of type int"),
        ("{{ nil | print }}", {}, r"line 1: nil is not a command"),
        ("{{ .X 1 }}", {"X": 1}, r"can't give argument to non-function \.X"),
        ("{{ slice .L 2 1 }}", {"L": [1, 2]}, r"index out of range"),
    ],
)
def test_render_errors_name_the_line(template: str, data: dict[str, Any], message: str) -> None:
    with pytest.raises(TemplateError, match=message):
        render_go(template, data)


def test_message_struct_fields_are_checked() -> None:
    with pytest.raises(TemplateError, match=r"line 1: can't evaluate field Rol in type"):
        chat("{{ range .Messages }}{{ .Rol }}{{ end }}", CHAT)


# --- Jinja chat templates -------------------------------------------------------------------


def test_gemma_jinja_chat_template() -> None:
    out = render_chat_template(fixture("gemma3.jinja"), CHAT_SYS, bos_token="<bos>")
    assert out == (
        "<bos><start_of_turn>user\nAnswer in one word.\n\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello! How can I help?<end_of_turn>\n"
        "<start_of_turn>user\nName a colour.<end_of_turn>\n"
        "<start_of_turn>model\n"
    )


def test_gemma_jinja_without_generation_prompt_and_content_parts() -> None:
    messages = [{"role": "user", "content": [{"type": "text", "text": " Hi "}]}]
    out = render_chat_template(fixture("gemma3.jinja"), messages, add_generation_prompt=False)
    assert out == "<start_of_turn>user\nHi<end_of_turn>\n"


def test_gemma2_jinja_and_raise_exception() -> None:
    out = render_chat_template(fixture("gemma2.jinja"), CHAT, bos_token="<bos>")
    assert out == (
        "<bos><start_of_turn>user\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello! How can I help?<end_of_turn>\n"
        "<start_of_turn>user\nName a colour.<end_of_turn>\n<start_of_turn>model\n"
    )
    with pytest.raises(TemplateError, match="System role not supported"):
        render_chat_template(fixture("gemma2.jinja"), CHAT_SYS)


def test_jinja_trim_blocks_and_helpers() -> None:
    template = (
        "{% for m in messages %}\n  {% if m.role %}\n[{{ m.role }}]\n  {% endif %}\n{% endfor %}"
    )
    assert render_chat_template(template, CHAT[:2]) == "[user]\n[assistant]\n"
    year = str(datetime.datetime.now().year)
    assert render_chat_template("{{ strftime_now('%Y') }}", []) == year
    assert render_chat_template("{{ {'a': '<b>'} | tojson }}", []) == '{"a": "<b>"}'


def test_jinja_syntax_error_names_line() -> None:
    with pytest.raises(TemplateError, match=r"line 2: chat template syntax error"):
        render_chat_template("ok\n{% if %}", [])


@pytest.mark.parametrize(
    "attack",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ ''.__class__ }}",
        "{{ cycler.__init__.__globals__.os.popen('touch {marker}').read() }}",
        "{{ joiner.__init__.__globals__ }}",
        "{{ namespace.__init__.__globals__ }}",
        "{% for c in ().__class__.__base__.__subclasses__() %}{{ c }}{% endfor %}",
        "{{ self._TemplateReference__context }}",
        "{{ messages.append({'role': 'system'}) }}",
        "{{ messages[0].update({'role': 'x'}) }}",
        "{{ (lipsum | attr('__globals__'))['os'].popen('touch {marker}') }}",
    ],
)
def test_jinja_sandbox_escapes_fail(attack: str, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    messages = [{"role": "user", "content": "hi"}]
    with pytest.raises(TemplateError):
        render_chat_template(attack.replace("{marker}", str(marker)), messages)
    assert not marker.exists()
    assert messages == [{"role": "user", "content": "hi"}]
