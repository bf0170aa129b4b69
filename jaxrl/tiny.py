"""Tiny tokenizers made on the spot, for tests and CPU runs (nothing is downloaded).

`build_tokenizer` trains a byte-level BPE on a small corpus and gives it the OLMo-2 (Tulu) chat
format the study uses. A whole tiny model (weights and this tokenizer) is `jaxrl.models.tiny`.
"""

from __future__ import annotations

from pathlib import Path

EOS = "<|endoftext|>"
PAD = "<|pad|>"
ROLE_TAGS = ("<|system|>", "<|user|>", "<|assistant|>")

# The OLMo-2 / Tulu format: <|endoftext|><|system|>\n...\n<|user|>\n...\n<|assistant|>\n...<|endoftext|>
OLMO2_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '<|system|>\\n' + message['content'] + '\\n' }}"
    "{% elif message['role'] == 'user' %}{{ '<|user|>\\n' + message['content'] + '\\n' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ '<|assistant|>\\n' + message['content'] + eos_token }}"
    "{% if not loop.last %}{{ '\\n' }}{% endif %}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)


def default_corpus() -> list[str]:
    """A few hundred lines of arithmetic and reasoning-format text."""
    lines = []
    for a in range(20):
        for b in range(0, 20, 3):
            lines.append(
                f"What is {a} + {b}? <think>\n{a} plus {b} is {a + b}.\n</think>\n"
                f"<answer>\n\\boxed{{{a + b}}}\n</answer>"
            )
    lines += [
        "The answer is a number. Think step by step, then answer.",
        "You are a helpful AI Assistant that provides well-reasoned and detailed responses.",
    ]
    return lines


def build_tokenizer(directory: str | Path, corpus: list[str] | None = None, vocab_size: int = 384):
    """Trains, saves and returns a `PreTrainedTokenizerFast` with at most `vocab_size` tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(ROLE_TAGS),
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus or default_corpus(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS, pad_token=PAD, unk_token=None)
    fast.add_tokens(list(ROLE_TAGS))  # plain-text role tags, one token each
    fast.chat_template = OLMO2_CHAT_TEMPLATE
    fast.save_pretrained(directory)
    return fast
