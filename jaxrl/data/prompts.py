"""Prompts for GRPO and evaluation: rows -> chat-templated prompt ids, with the row kept for scoring.

    prompts = load_prompts(DataConfig("openr1.jsonl", prompt_column="problem"), tokenizer,
                           ChatConfig(), max_prompt_length=512)
    batches = PromptBatches(prompts, batch_size=16, seed=42)
    batch = next(batches)       # batch.prompt_ids -> sampler; batch.rows[i]["solution"] -> rewards

Prompts longer than `max_prompt_length` keep their last tokens (left truncation, as TRL does) and
are counted in `counts["truncated"]`. Rows without usable prompt text, and (given the model's
vocab_size) prompts with a token id outside its vocabulary, are skipped and counted; a prompt
column that no row has is a JaxrlError.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any

from jaxrl.data.batching import EpochSampler, check_hosts, host_slice
from jaxrl.data.chat import STUDY_CHAT, ChatConfig, encode_prompt, id_outside, outside_vocabulary
from jaxrl.data.sources import DataConfig, Rows, columns_of, load_rows
from jaxrl.errors import JaxrlError


@dataclasses.dataclass
class PromptSet:
    """`prompt_ids[i]` (list of int) is the templated prompt of `rows[i]` (the source row, all columns)."""

    prompt_ids: list[list[int]]
    rows: list[dict[str, Any]]
    counts: dict[str, int] = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.prompt_ids)


@dataclasses.dataclass
class PromptBatch:
    """One host's prompts of a global batch, and their rows (gold answer, solution, ...)."""

    prompt_ids: list[list[int]]
    rows: list[dict[str, Any]]


def encode_prompts(
    rows: Rows | list[dict],
    tokenizer: Any,
    chat: ChatConfig = STUDY_CHAT,
    prompt_column: str = "problem",
    max_prompt_length: int | None = None,
    strict: bool = False,
    vocab_size: int | None = None,
) -> PromptSet:
    """Templated, tokenised, left-truncated prompts of `rows[prompt_column]` (text or messages).

    vocab_size: the model's; a prompt with an id outside [0, vocab_size) is skipped and counted (an
    error when `strict`). None: no check."""
    rows = rows.rows if isinstance(rows, Rows) else rows
    if rows and not any(prompt_column in r for r in rows):
        raise JaxrlError(f"the data has no column {prompt_column!r} (columns: {columns_of(rows)}); set prompt_column")
    if max_prompt_length is not None and max_prompt_length < 1:
        raise JaxrlError(f"max_prompt_length must be at least 1, got {max_prompt_length}")
    ids, kept, skipped, truncated = [], [], Counter(), 0
    for number, row in enumerate(rows):
        prompt = row.get(prompt_column)
        try:
            if not prompt or not isinstance(prompt, (str, list)):
                raise JaxrlError(f"{prompt_column!r} is missing or not text/messages")
            prompt_ids = encode_prompt(prompt, tokenizer, chat)
            if (outside := id_outside(prompt_ids, vocab_size)) is not None:
                if strict:
                    raise JaxrlError(
                        f"prompt {number}: token id {outside} is outside the model's vocabulary [0, {vocab_size}); "
                        "the tokenizer is larger than the model's embedding"
                    )
                raise JaxrlError(outside_vocabulary(vocab_size))
        except JaxrlError as e:
            if strict:
                raise
            skipped[str(e)] += 1
            continue
        if max_prompt_length is not None and len(prompt_ids) > max_prompt_length:
            prompt_ids, truncated = prompt_ids[-max_prompt_length:], truncated + 1
        ids.append(prompt_ids)
        kept.append(row)
    if not ids:
        raise JaxrlError("no usable prompt: " + ", ".join(f"{n} {why}" for why, n in skipped.items()))
    counts = {"prompts": len(ids), "truncated": truncated}
    counts.update({f"skipped: {why}": n for why, n in skipped.items()})
    return PromptSet(ids, kept, counts)


def load_prompts(
    data: DataConfig,
    tokenizer: Any,
    chat: ChatConfig = STUDY_CHAT,
    max_prompt_length: int | None = None,
    vocab_size: int | None = None,
) -> PromptSet:
    """`load_rows` -> `encode_prompts` on `data.prompt_column` (default "problem"); vocab_size: the model's."""
    rows = load_rows(data)
    column = data.prompt_column or "problem"
    prompts = encode_prompts(rows, tokenizer, chat, column, max_prompt_length, data.strict, vocab_size)
    counts = {"rows": len(rows) + sum(rows.skipped.values()) + rows.filtered_out, "filtered_out": rows.filtered_out}
    counts.update({f"skipped: {why}": n for why, n in rows.skipped.items()})
    prompts.counts = {**counts, **prompts.counts}
    return prompts


class PromptBatches:
    """Resumable global batches of `batch_size` prompts; this host keeps its contiguous slice.

    Same order, epochs, `state()` and `restore()` as SFTBatches (jaxrl.data.batching.EpochSampler).
    """

    def __init__(
        self,
        prompts: PromptSet,
        batch_size: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        num_epochs: int | None = None,
        process_index: int = 0,
        process_count: int = 1,
    ):
        check_hosts(batch_size, process_index, process_count, "prompts")
        self.prompts = prompts
        self.process_index, self.process_count = process_index, process_count
        self.sampler = EpochSampler(len(prompts), batch_size, seed, shuffle, num_epochs)

    @property
    def steps_per_epoch(self) -> int:
        return self.sampler.steps_per_epoch

    def __iter__(self) -> Iterator[PromptBatch]:
        return self

    def __next__(self) -> PromptBatch:
        indices = next(self.sampler)
        mine = indices[host_slice(len(indices), self.process_index, self.process_count)]
        return PromptBatch([self.prompts.prompt_ids[i] for i in mine], [self.prompts.rows[i] for i in mine])

    def state(self) -> dict[str, int]:
        return self.sampler.state()

    def restore(self, state: Mapping[str, Any]) -> None:
        self.sampler.restore(dict(state))
