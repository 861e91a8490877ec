"""The exact prompt text a variant sends to the engine for a conversation.

Ollama's rule, followed here: a Modelfile TEMPLATE (Go text/template) wins; without one the
GGUF's own ``tokenizer.chat_template`` (Jinja, sandboxed) is used; with neither there is no
safe way to format a chat, so it is an error rather than a guessed format.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from lifecycle import modelfile as mf
from lifecycle import templates
from lifecycle.errors import TemplateError


def render_prompt(
    modelfile: mf.Modelfile,
    messages: Sequence[Mapping[str, str]],
    *,
    chat_template: str | None,
    modelfile_path: Path | None = None,
) -> str:
    """Render SYSTEM + MESSAGE history + ``messages`` into the prompt, assistant turn open."""
    conversation = [{"role": m["role"], "content": m["content"]} for m in messages]
    history = [{"role": m.role, "content": m.content} for m in modelfile.messages]
    if modelfile.template is not None:
        return templates.build_prompt(
            modelfile.template,
            system=modelfile.system,
            modelfile_messages=history,
            messages=conversation,
        )
    if chat_template:
        full = [*history, *conversation]
        if modelfile.system is not None and not any(m["role"] == "system" for m in full):
            full.insert(0, {"role": "system", "content": modelfile.system})
        return templates.render_chat_template(chat_template, full, add_generation_prompt=True)
    raise TemplateError(
        "no TEMPLATE in the Modelfile and no chat template in the GGUF: add a TEMPLATE "
        "for this model family (see `ollama show <base> --modelfile`)",
        path=modelfile_path,
    )
