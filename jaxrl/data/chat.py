"""Chat templates: a prompt (problem text or messages) -> text -> token ids with a completion mask.

Two templates, chosen by name:
- `olmo2`: the study's OLMo-2 / Tulu format, written out here so it never depends on a tokenizer's
  Jinja file: `<|endoftext|><|system|>\\n{system}\\n<|user|>\\n{problem}\\n<|assistant|>\\n`, and for
  SFT the completion and `<|endoftext|>` after it. `drop_user_newline=True` reproduces the study's
  SFT path, which wrote `<|user|>{problem}` without the newline.
- `tokenizer`: the tokenizer's own `apply_chat_template`.

A prompt is a problem string (the user turn) or a list of `{"role", "content"}` messages; the
system prompt is put first unless the messages already start with one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

from jaxrl.errors import JaxrlError

# The study's system prompt for GRPO, SFT and evaluation (real newlines).
SYSTEM_PROMPT = (
    "You are a helpful AI Assistant that provides well-reasoned and detailed responses. You first "
    "think about the reasoning process as an internal monologue and then provide the user with the "
    "answer. Respond in the following format: <think>\n...\n</think>\n<answer>\n...\n</answer>"
)
OLMO2_EOS = "<|endoftext|>"  # OLMo-2's bos and eos, id 100257

Message = Mapping[str, str]
Prompt = str | Sequence[Message]


@dataclasses.dataclass(frozen=True)
class ChatConfig:
    """How prompts become text. `system_prompt=None` (or "") adds no system turn."""

    chat_template: Literal["olmo2", "tokenizer"] = "olmo2"
    system_prompt: str | None = SYSTEM_PROMPT
    drop_user_newline: bool = False  # True: the study's SFT quirk, `<|user|>{problem}` (olmo2 only)

    def __post_init__(self):
        if self.chat_template not in ("olmo2", "tokenizer"):
            raise JaxrlError(f"chat_template={self.chat_template!r}; choose olmo2 or tokenizer")


STUDY_CHAT = ChatConfig()  # the study's olmo2 template and system prompt (frozen: a safe default)


@dataclasses.dataclass(frozen=True)
class Encoded:
    """One tokenised example: `ids` int32 [T]; `completion_mask` bool [T], True on completion tokens."""

    ids: np.ndarray
    completion_mask: np.ndarray

    @property
    def prompt_length(self) -> int:
        return int(np.argmax(self.completion_mask)) if self.completion_mask.any() else len(self.ids)


def to_messages(prompt: Prompt, system_prompt: str | None) -> list[dict[str, str]]:
    """The conversation of a prompt: the system turn (unless present), then the user turn(s)."""
    if isinstance(prompt, str):
        messages = [{"role": "user", "content": prompt}]
    else:
        messages = [_message(m) for m in prompt]
        if not messages:
            raise JaxrlError("a prompt with no messages; give at least one user message")
    if system_prompt and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages


def render_prompt(prompt: Prompt, chat: ChatConfig = STUDY_CHAT, tokenizer: Any = None) -> str:
    """The text a model continues from: the conversation followed by the assistant tag."""
    messages = to_messages(prompt, chat.system_prompt)
    if chat.chat_template == "olmo2":
        return _olmo2(messages, chat.drop_user_newline) + "<|assistant|>\n"
    return _apply_tokenizer_template(tokenizer, messages, add_generation_prompt=True)


def render_example(prompt: Prompt, completion: str, chat: ChatConfig = STUDY_CHAT, tokenizer: Any = None):
    """(text, start): the prompt, the completion and its end of turn; `start` = where the completion begins."""
    prompt_text = render_prompt(prompt, chat, tokenizer)
    if chat.chat_template == "olmo2":
        return prompt_text + completion + OLMO2_EOS, len(prompt_text)
    messages = to_messages(prompt, chat.system_prompt) + [{"role": "assistant", "content": completion}]
    full = _apply_tokenizer_template(tokenizer, messages, add_generation_prompt=False)
    if not full.startswith(prompt_text):  # some templates rewrite earlier turns; keep the prompt as sampled
        full = prompt_text + completion + (tokenizer.eos_token or "")
    return full, len(prompt_text)


def encode_prompt(prompt: Prompt, tokenizer: Any, chat: ChatConfig = STUDY_CHAT) -> list[int]:
    """Token ids of `render_prompt` (the template carries bos; the tokenizer adds nothing)."""
    return list(tokenizer(render_prompt(prompt, chat, tokenizer), add_special_tokens=False)["input_ids"])


def encode_example(prompt: Prompt, completion: str, tokenizer: Any, chat: ChatConfig = STUDY_CHAT) -> Encoded:
    """The whole SFT sequence tokenised at once (as the study did), with the completion tokens marked.

    A token counts as completion when it holds any character of the completion or its end of turn.
    The sequence always ends with the tokenizer's eos: appended when the template gives none.
    """
    text, start = render_example(prompt, completion, chat, tokenizer)
    return encode_rendered(text, start, tokenizer)


def encode_rendered(text: str, start: int, tokenizer: Any) -> Encoded:
    """`encode_example` for text already rendered; `start` is the completion's first character."""
    return encode_rendered_batch([text], [start], tokenizer)[0]


def encode_rendered_batch(texts: Sequence[str], starts: Sequence[int], tokenizer: Any) -> list[Encoded]:
    """`encode_rendered` for many texts in one tokenizer call (fast tokenizers run it in parallel)."""
    if not getattr(tokenizer, "is_fast", False):  # no offsets: tokenise prompt and completion apart
        return [_encode_apart(text, start, tokenizer) for text, start in zip(texts, starts, strict=True)]
    out = tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True)
    encoded = []
    for ids, offsets, start in zip(out["input_ids"], out["offset_mapping"], starts, strict=True):
        ends = np.asarray([end for _, end in offsets], np.int64).reshape(-1)
        encoded.append(_with_eos(np.asarray(ids, np.int32), ends > start, tokenizer.eos_token_id))
    return encoded


def id_outside(ids: Sequence[int] | np.ndarray, vocab_size: int | None) -> int | None:
    """The first id of `ids` outside [0, vocab_size), or None (always None when vocab_size is None).

    A model's embedding gather clamps such an id instead of failing, so it must not reach the model."""
    ids = np.asarray(ids, np.int64).reshape(-1)
    if vocab_size is None or not ids.size:
        return None
    outside = (ids < 0) | (ids >= vocab_size)
    return int(ids[outside.argmax()]) if outside.any() else None


def outside_vocabulary(vocab_size: int) -> str:
    """The reason a row with an id outside the vocabulary is skipped and counted under."""
    return f"a token id is outside the model's vocabulary [0, {vocab_size})"


def _encode_apart(text: str, start: int, tokenizer: Any) -> Encoded:
    head = tokenizer(text[:start], add_special_tokens=False)["input_ids"]
    tail = tokenizer(text[start:], add_special_tokens=False)["input_ids"]
    mask = np.concatenate([np.zeros(len(head), bool), np.ones(len(tail), bool)])
    return _with_eos(np.asarray(head + tail, np.int32), mask, tokenizer.eos_token_id)


def _with_eos(ids: np.ndarray, mask: np.ndarray, eos: int | None) -> Encoded:
    if eos is not None and not np.any(ids[mask] == eos):
        ids, mask = np.append(ids, np.int32(eos)), np.append(mask, True)
    return Encoded(ids, mask)


def _olmo2(messages: list[dict[str, str]], drop_user_newline: bool) -> str:
    user_tag = "<|user|>" if drop_user_newline else "<|user|>\n"
    parts = [OLMO2_EOS]
    for m in messages:
        if m["role"] == "system":
            parts.append(f"<|system|>\n{m['content']}\n")
        elif m["role"] == "user":
            parts.append(f"{user_tag}{m['content']}\n")
        elif m["role"] == "assistant":  # an earlier turn of a multi-turn prompt
            parts.append(f"<|assistant|>\n{m['content']}{OLMO2_EOS}\n")
        else:
            raise JaxrlError(f"unknown chat role {m['role']!r}; the olmo2 template knows system, user, assistant")
    return "".join(parts)


def _apply_tokenizer_template(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    if tokenizer is None:
        raise JaxrlError("chat_template=tokenizer needs a tokenizer")
    if not getattr(tokenizer, "chat_template", None):
        raise JaxrlError("the tokenizer has no chat template; set chat_template=olmo2 or use an instruct tokenizer")
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except Exception as e:  # Jinja errors raised by the template itself
        raise JaxrlError(f"the tokenizer's chat template failed: {str(e).splitlines()[0]}") from None


def _message(m: Any) -> dict[str, str]:
    if not (isinstance(m, Mapping) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
        raise JaxrlError(f"a chat message must be {{'role': str, 'content': str}}, got {str(m)[:60]!r}")
    return {"role": m["role"], "content": m["content"]}
