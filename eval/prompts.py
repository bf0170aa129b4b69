"""Chat turns -> prompt token ids: the study's OLMo-2 template, the tokenizer's own, or plain text.

The templates themselves live in `jaxrl.data.chat` (shared with training); "none" renders the
turns as plain text for base models without a chat format.
"""

from __future__ import annotations

from collections.abc import Sequence

from jaxrl.errors import JaxrlError

CHAT_TEMPLATES = ("olmo2", "tokenizer", "none")


def system_prompt_from(value: str | None) -> str | None:
    """'study' -> the study's system prompt; None, '' or 'none' -> no system turn; else the text."""
    from jaxrl.data.chat import SYSTEM_PROMPT

    if value is None or value.strip().lower() in ("", "none"):
        return None
    return SYSTEM_PROMPT if value == "study" else value


def render_text(turns: Sequence[dict], tokenizer, system_prompt: str | None, chat_template: str) -> str:
    """The prompt text, ending where the model's reply starts."""
    if chat_template not in CHAT_TEMPLATES:
        raise JaxrlError(f"unknown chat template {chat_template!r}; choose from {', '.join(CHAT_TEMPLATES)}")
    if chat_template != "none":
        from jaxrl.data.chat import ChatConfig, render_prompt

        return render_prompt(list(turns), ChatConfig(chat_template, system_prompt), tokenizer)
    messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + list(turns)
    text = tokenizer.bos_token or ""
    for m in messages:  # "system\n\nQ1\nA1\n\nQ2\n": the reply follows the last user line
        text += m["content"] + ("\n" if m["role"] == "user" else "\n\n")
    return text


def encode(text: str, tokenizer) -> list[int]:
    """Token ids of rendered text; special tokens are in the text already, none are added."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])
