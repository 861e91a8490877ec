"""Lint: the mistakes that make a local model ignore its prompt contract.

Each check catches a failure teams meet in production: a TEMPLATE that formats turns
differently from the model's own chat template ("wrong chat template"), a chat-turn TEMPLATE on
a model whose GGUF has no chat template (a base model: it never learnt to end a turn, so it
writes past the answer), an end-of-turn marker missing from the stop sequences (generations
run past the JSON), free-form outputs of a run that all hit the token limit instead of ending,
a num_ctx beyond what the model was trained for, and a SYSTEM prompt that asks for JSON while
no suite checks JSON. Findings are warnings: ``lifecycle lint`` reports them and
``lifecycle eval`` prints them.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from lifecycle import templates
from lifecycle.errors import TemplateError
from lifecycle.gguf import GGUFInfo
from lifecycle.prompt import render_prompt
from lifecycle.variants import Variant

# End-of-turn markers of common chat formats (Gemma, Llama 3, ChatML, Phi-3, Mistral).
TURN_END_MARKERS = ("<end_of_turn>", "<|eot_id|>", "<|im_end|>", "<|end|>", "</s>", "[/INST]")
# Tokens that only a chat-tuned model knows: the turn structure of those formats.
TURN_TOKENS = (
    "<start_of_turn>", "<end_of_turn>", "<|start_header_id|>", "<|eot_id|>", "<|im_start|>",
    "<|im_end|>", "<|user|>", "<|assistant|>", "<|end|>", "[INST]", "[/INST]",
)  # fmt: skip

SAMPLE_CONVERSATION = (
    {"role": "user", "content": "My invoice is wrong."},
    {"role": "assistant", "content": '{"category": "billing"}'},
    {"role": "user", "content": "The app crashes on start."},
)


@dataclass(frozen=True)
class Finding:
    """One lint warning about a variant."""

    variant: str
    check: str
    message: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def lint_variant(
    variant: Variant,
    info: GGUFInfo,
    suite_names: list[str] | None,
    cases: list[dict[str, Any]] | None = None,
) -> list[Finding]:
    """Every finding for one variant, given its GGUF header and the suites it runs.

    ``suite_names`` None means unknown (a Modelfile linted outside the workspace's models).
    ``cases`` are this variant's cases from a run record (same variant id), if any.
    """
    findings = []
    modelfile = variant.modelfile

    def add(check: str, message: str) -> None:
        findings.append(Finding(variant.name, check, message))

    if modelfile.template and info.chat_template:
        ours = render_prompt(modelfile, SAMPLE_CONVERSATION, chat_template=None)
        try:
            theirs = _render_gguf_template(variant, info.chat_template)
        except TemplateError as exc:
            theirs = None
            add("chat-template", f"the GGUF's chat template cannot be rendered: {exc.message}")
        if theirs is not None and _normalise(ours) != _normalise(theirs):
            add(
                "template-mismatch",
                "TEMPLATE renders a conversation differently from the GGUF's chat template "
                f"(first difference at char {_first_difference(ours, theirs)})",
            )

    turn_tokens = [t for t in TURN_TOKENS if t in (modelfile.template or "")]
    if modelfile.template and not info.chat_template and turn_tokens:
        add(
            "base-model-chat-template",
            f"TEMPLATE uses chat turn tokens ({', '.join(turn_tokens)}) but the GGUF has no "
            "chat template: a base model, never trained to end a turn, writes past its answer. "
            "Prompt it few-shot in a completion format and stop at a delimiter "
            "(e.g. 'Ticket: ...\\nJSON:' with PARAMETER stop at the newline)",
        )

    template = modelfile.template or info.chat_template or ""
    stops = modelfile.parameters.get("stop", [])
    stop_list = stops if isinstance(stops, list) else []
    for marker in TURN_END_MARKERS:
        if marker in template and marker not in stop_list and marker != "</s>":
            add(
                "stop-missing",
                f"the template ends turns with {marker} but it is not a stop sequence "
                f"(add: PARAMETER stop {marker})",
            )

    num_ctx = variant.parameter("num_ctx")
    if info.context_length and isinstance(num_ctx, int) and num_ctx > info.context_length:
        add(
            "num-ctx",
            f"num_ctx {num_ctx} exceeds the model's trained context length {info.context_length}",
        )

    asks_json = modelfile.system and re.search(r"\bjson\b", modelfile.system, re.IGNORECASE)
    if asks_json and suite_names is not None and not suite_names:
        add("json-unchecked", "SYSTEM asks for JSON but no eval suite checks this model")

    free = [c for c in cases or [] if c.get("mode") == "free" and not c.get("error")]
    ran_on = [c for c in free if c.get("finish_reason") == "length"]
    if free and len(ran_on) * 2 > len(free):
        example = str(ran_on[0].get("output", ""))
        add(
            "no-end-of-generation",
            f"{len(ran_on)} of {len(free)} free-mode outputs ran to the token limit without an "
            f"end-of-generation token or stop sequence (e.g. {example[:60]!r}): the model "
            "does not know where its answer ends with this TEMPLATE and stops",
        )
    return findings


def _render_gguf_template(variant: Variant, chat_template: str) -> str:
    conversation: list[dict[str, str]] = []
    if variant.modelfile.system:
        conversation.append({"role": "system", "content": variant.modelfile.system})
    conversation += [dict(m) for m in SAMPLE_CONVERSATION]
    return templates.render_chat_template(chat_template, conversation, add_generation_prompt=True)


def _normalise(text: str) -> str:
    # BOS text is added by the tokenizer on one side and written by Jinja on the other.
    for bos in ("<bos>", "<s>", "<|begin_of_text|>"):
        text = text.removeprefix(bos)
    return text.strip()


def _first_difference(a: str, b: str) -> int:
    a, b = _normalise(a), _normalise(b)
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return min(len(a), len(b))
