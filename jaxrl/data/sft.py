"""SFT data: rows -> (prompt, completion) -> token ids under a chat template -> batches.

    data = load_sft_dataset(DataConfig("openr1.jsonl", filters=("source=cn_k12",)), tokenizer,
                            ChatConfig(), max_length=4096)
    batches = SFTBatches(data, batch_size=448, seed=42, pad_id=tokenizer.pad_token_id,
                         padding_free=True, max_length=4096)
    for batch in batches: ...          # batching.Batch, numpy [B, T]
    saved = batches.state()            # JSON-able; SFTBatches(...).restore(saved) continues exactly

Rows that cannot make an example (a column missing from the row, no assistant answer, a message
that is not {role, content}) are skipped and counted; a column that no row has is a JaxrlError.
Examples longer than `max_length` tokens (prompt, completion and eos) are dropped and counted,
as the study kept only rows of at most 4096 templated tokens; given the model's vocab_size, so are
examples with a token id outside its vocabulary (an error under `strict`).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from jaxrl.data.batching import Batch, EpochSampler, check_hosts, host_slice, packed_rows, padded_rows
from jaxrl.data.chat import (
    STUDY_CHAT,
    ChatConfig,
    Prompt,
    encode_rendered_batch,
    id_outside,
    outside_vocabulary,
    render_example,
)
from jaxrl.data.sources import DataConfig, Rows, columns_of, load_rows
from jaxrl.errors import JaxrlError
from jaxrl.shapes import round_up


@dataclasses.dataclass
class TokenizedDataset:
    """Tokenised examples stored flat: example i is `tokens[starts[i]:starts[i+1]]`.

    tokens int32 [total]; completion bool [total] (True on completion tokens); starts int64 [N+1].
    `counts`: what happened on the way (rows read, skipped by reason, too long, kept).
    """

    tokens: np.ndarray
    completion: np.ndarray
    starts: np.ndarray
    counts: dict[str, int] = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.starts) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.starts)

    def example(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids int32 [n], completion bool [n]) of example i."""
        a, b = self.starts[i], self.starts[i + 1]
        return self.tokens[a:b], self.completion[a:b]


def conversations(rows: Rows | list[dict], data: DataConfig) -> tuple[list[tuple[Prompt, str]], Counter]:
    """(prompt, completion) per usable row, and the skipped rows by reason."""
    rows = rows.rows if isinstance(rows, Rows) else rows
    pairs, skipped = [], Counter()
    use_columns = data.prompt_column is not None or data.completion_column is not None
    if use_columns and not (data.prompt_column and data.completion_column):
        raise JaxrlError("set both prompt_column and completion_column, or neither (to read messages_column)")
    needed = [data.prompt_column, data.completion_column] if use_columns else [data.messages_column]
    for column in needed:
        if rows and not any(column in r for r in rows):
            raise JaxrlError(
                f"the data has no column {column!r} (columns: {columns_of(rows)}); "
                "set messages_column, or prompt_column and completion_column"
            )
    for row in rows:
        try:
            if use_columns:
                pairs.append(_pair_from_columns(row, data.prompt_column, data.completion_column))
            else:
                pairs.append(_pair_from_messages(row, data.messages_column))
        except _BadRow as e:
            if data.strict:
                raise JaxrlError(f"bad row: {e}") from None
            skipped[str(e)] += 1
    return pairs, skipped


def tokenize_sft(
    pairs: Sequence[tuple[Prompt, str]],
    tokenizer: Any,
    chat: ChatConfig = STUDY_CHAT,
    max_length: int | None = None,
    chunk: int = 1024,
    *,
    vocab_size: int | None = None,
    strict: bool = False,
) -> TokenizedDataset:
    """Tokenises every pair; those over `max_length` tokens are dropped and counted ("too_long").

    vocab_size: the model's; an example with an id outside [0, vocab_size) is skipped and counted
    (an error when `strict`). None: no check."""
    kept_ids, kept_masks, too_long, bad = [], [], 0, Counter()
    for at in range(0, len(pairs), chunk):
        texts, starts, numbers = [], [], []
        for number, (prompt, completion) in enumerate(pairs[at : at + chunk], at):
            try:
                text, start = render_example(prompt, completion, chat, tokenizer)
            except JaxrlError as e:  # e.g. a role the template does not know
                bad[str(e)] += 1
                continue
            texts.append(text)
            starts.append(start)
            numbers.append(number)
        encoded_batch = encode_rendered_batch(texts, starts, tokenizer) if texts else []
        for number, encoded in zip(numbers, encoded_batch, strict=True):
            if (outside := id_outside(encoded.ids, vocab_size)) is not None:
                if strict:
                    raise JaxrlError(
                        f"SFT example {number}: token id {outside} is outside the model's vocabulary "
                        f"[0, {vocab_size}); the tokenizer is larger than the model's embedding"
                    )
                bad[outside_vocabulary(vocab_size)] += 1
                continue
            if max_length is not None and len(encoded.ids) > max_length:
                too_long += 1
                continue
            kept_ids.append(encoded.ids)
            kept_masks.append(encoded.completion_mask)
    if not kept_ids:
        raise JaxrlError(
            f"no SFT example left: {too_long} of {len(pairs)} are longer than max_length={max_length}"
            + "".join(f", {n} skipped: {why}" for why, n in bad.items())
        )
    starts = np.zeros(len(kept_ids) + 1, np.int64)
    starts[1:] = np.cumsum([len(i) for i in kept_ids])
    counts = {"examples": len(pairs), "too_long": too_long, "kept": len(kept_ids)}
    counts.update({f"skipped: {why}": n for why, n in bad.items()})
    return TokenizedDataset(np.concatenate(kept_ids), np.concatenate(kept_masks), starts, counts)


def conversation_columns(data: DataConfig) -> tuple[str, ...]:
    """The columns SFT reads: `data.columns` when set, else the messages or prompt/completion columns."""
    if data.columns:
        return data.columns
    wanted = (data.prompt_column, data.completion_column) if data.prompt_column else (data.messages_column,)
    return tuple(c for c in wanted if c)


def load_sft_dataset(
    data: DataConfig,
    tokenizer: Any,
    chat: ChatConfig = STUDY_CHAT,
    max_length: int | None = None,
    vocab_size: int | None = None,
) -> TokenizedDataset:
    """`load_rows` -> `conversations` -> `tokenize_sft`, with every count in `.counts`.

    Only the conversation columns are read (unless `data.columns` names others). vocab_size: the
    model's (see `tokenize_sft`).
    """
    rows = load_rows(data, conversation_columns(data))
    pairs, skipped = conversations(rows, data)
    if not pairs:
        raise JaxrlError(f"no usable SFT row in {rows.source}: " + ", ".join(f"{n} {w}" for w, n in skipped.items()))
    dataset = tokenize_sft(pairs, tokenizer, chat, max_length, vocab_size=vocab_size, strict=data.strict)
    counts = {"rows": len(rows) + sum(rows.skipped.values()) + rows.filtered_out, "filtered_out": rows.filtered_out}
    counts.update({f"skipped: {why}": n for why, n in (rows.skipped + skipped).items()})
    dataset.counts = {**counts, **dataset.counts}
    return dataset


class SFTBatches:
    """Resumable SFT batches of this host (see jaxrl.data.batching for the layout and the order).

    batch_size: examples per global batch (all hosts together).
    padding_free=False: one example per row, padded to the longest example of the global batch
      rounded up to `pad_to_multiple_of` (capped at max_length) -> [batch_size / hosts, T].
    padding_free=True: the global batch's examples packed into rows of `max_length` tokens; the
      row count is rounded up to a multiple of `rows_multiple_of` x process_count, so the shape
      varies over few values -> [rows / hosts, max_length].
    completion_only_loss: train only on completion tokens (default: the whole sequence, as the study).
    """

    def __init__(
        self,
        data: TokenizedDataset,
        batch_size: int,
        pad_id: int,
        *,
        seed: int = 0,
        max_length: int | None = None,
        padding_free: bool = False,
        pad_to_multiple_of: int = 64,
        rows_multiple_of: int = 1,
        completion_only_loss: bool = False,
        shuffle: bool = True,
        num_epochs: int | None = None,
        process_index: int = 0,
        process_count: int = 1,
    ):
        # Padded batches split examples over hosts; packed ones split rows (rounded up to fit).
        check_hosts(process_count if padding_free else batch_size, process_index, process_count, "examples")
        self.data, self.pad_id = data, pad_id
        self.max_length = int(max_length if max_length is not None else data.lengths.max())
        if data.lengths.max() > self.max_length:
            raise JaxrlError(
                f"examples up to {data.lengths.max()} tokens exceed max_length={self.max_length}; "
                "tokenise with the same max_length"
            )
        self.padding_free, self.pad_to_multiple_of = padding_free, pad_to_multiple_of
        self.rows_multiple_of = rows_multiple_of * process_count
        self.completion_only_loss = completion_only_loss
        self.process_index, self.process_count = process_index, process_count
        self.sampler = EpochSampler(len(data), batch_size, seed, shuffle, num_epochs)

    @property
    def steps_per_epoch(self) -> int:
        return self.sampler.steps_per_epoch

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        indices = next(self.sampler)
        examples = [self._example(int(i)) for i in indices]
        if self.padding_free:
            batch = packed_rows(examples, self.max_length, None, self.pad_id, self.rows_multiple_of)
            rows = host_slice(len(batch.tokens), self.process_index, self.process_count)
            return Batch(*(a[rows] for a in batch))
        longest = max(len(ids) for ids, _ in examples)
        length = min(round_up(longest, self.pad_to_multiple_of), max(self.max_length, longest))
        mine = examples[host_slice(len(examples), self.process_index, self.process_count)]
        return padded_rows(mine, length, self.pad_id)

    def state(self) -> dict[str, int]:
        return self.sampler.state()

    def restore(self, state: Mapping[str, Any]) -> None:
        self.sampler.restore(dict(state))

    def _example(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        ids, completion = self.data.example(i)
        return ids, (completion if self.completion_only_loss else np.ones(len(ids), bool))


class _BadRow(ValueError):
    """A row that cannot make an example; the message is the reason it is counted under."""


def _pair_from_messages(row: dict, column: str) -> tuple[Prompt, str]:
    messages = row.get(column)
    if column not in row:
        raise _BadRow(f"no {column!r} column")
    if not isinstance(messages, list) or not messages:
        raise _BadRow(f"{column!r} is not a non-empty list of messages")
    if not all(
        isinstance(m, Mapping) and isinstance(m.get("content"), str) and isinstance(m.get("role"), str)
        for m in messages
    ):
        raise _BadRow("a message is not {role, content} text")
    last = messages[-1]
    if last["role"] != "assistant" or not last["content"]:
        raise _BadRow("the last message is not a non-empty assistant answer")
    if not any(m["role"] == "user" for m in messages[:-1]):
        raise _BadRow("no user message before the answer")
    return [dict(role=m["role"], content=m["content"]) for m in messages[:-1]], last["content"]


def _pair_from_columns(row: dict, prompt_column: str, completion_column: str) -> tuple[Prompt, str]:
    for column in (prompt_column, completion_column):
        if column not in row:
            raise _BadRow(f"no {column!r} column")
    prompt, completion = row[prompt_column], row[completion_column]
    if isinstance(completion, list):  # conversational: [{"role": "assistant", "content": ...}]
        texts = [m.get("content") for m in completion if isinstance(m, Mapping)]
        completion = texts[-1] if texts and len(texts) == len(completion) else None
    if not isinstance(completion, str) or not completion:
        raise _BadRow(f"{completion_column!r} is not non-empty text")
    if isinstance(prompt, list):
        if not prompt or not all(
            isinstance(m, Mapping) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in prompt
        ):
            raise _BadRow(f"{prompt_column!r} is not text or a list of {{role, content}} messages")
        return [dict(role=m["role"], content=m["content"]) for m in prompt], completion
    if not isinstance(prompt, str) or not prompt:
        raise _BadRow(f"{prompt_column!r} is not non-empty text")
    return prompt, completion
