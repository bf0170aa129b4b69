"""Batches for training: a deterministic, resumable order, per-host slices, padded or packed rows.

The order: epoch `e` visits the examples in `permutation(seed, e)` and cuts it into global batches
of `batch_size` examples; the last partial batch of an epoch is dropped (so every step sees the
same number of examples, like the study's 448 sequences per step). `state()` is the position of
the next batch as a small JSON-able dict; `restore(state)` continues from it exactly.

Multi-host: every host computes the same global batch, then keeps its contiguous slice
(`process_index` of `process_count`): a slice of the examples for padded batches, a slice of the
rows for packed ones. Shapes come from the whole global batch, so every host's slice has the same
shape and the slices concatenated along axis 0 are the single-host batch.

Row layout (`Batch`, numpy, every array [B, T]), following models/decoder.py:
- `tokens` int32; `segment_ids` int32, 0 = padding, 1, 2, ... = the examples packed in a row;
- `positions` int32, restarting at 0 for every example;
- `targets` int32: the next token of the same example (pad id where there is none);
- `loss_mask` float32, aligned with the logits: 1 where the prediction made at t (of `targets[t]`)
  is trained on. Full-sequence loss (the study): every target of the example; completion-only:
  targets inside the completion. The loss is sum(ce(logits, targets) * loss_mask) / sum(loss_mask).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np

from jaxrl.errors import JaxrlError
from jaxrl.shapes import round_up


class Batch(NamedTuple):
    """One host's rows of a global batch (see the module docstring); all arrays [B, T]."""

    tokens: np.ndarray
    segment_ids: np.ndarray
    positions: np.ndarray
    targets: np.ndarray
    loss_mask: np.ndarray

    @property
    def num_examples(self) -> int:
        """Examples in these rows (segments with at least one token)."""
        seg = self.segment_ids
        return int(np.sum((seg > 0) & (np.diff(seg, prepend=0, axis=1) != 0)))


class EpochSampler:
    """Global batches of example indices in a seeded per-epoch order; resumable.

    Yields int64 [batch_size] index arrays; `num_epochs=None` runs forever.
    """

    def __init__(
        self, num_examples: int, batch_size: int, seed: int = 0, shuffle: bool = True, num_epochs: int | None = None
    ):
        if batch_size < 1:
            raise JaxrlError(f"batch size must be at least 1, got {batch_size}")
        if num_examples < batch_size:
            raise JaxrlError(
                f"{num_examples} examples are fewer than one batch of {batch_size}; lower the batch size or add data"
            )
        self.num_examples, self.batch_size, self.seed = num_examples, batch_size, seed
        self.shuffle, self.num_epochs = shuffle, num_epochs
        self.steps_per_epoch = num_examples // batch_size
        self.epoch, self.step_in_epoch = 0, 0
        self._order: np.ndarray | None = None

    def order(self, epoch: int) -> np.ndarray:
        """The visiting order of epoch `epoch` (a pure function of seed and epoch)."""
        if not self.shuffle:
            return np.arange(self.num_examples)
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)

    def __iter__(self) -> Iterator[np.ndarray]:
        return self

    def __next__(self) -> np.ndarray:
        if self.step_in_epoch == self.steps_per_epoch:
            self.epoch, self.step_in_epoch = self.epoch + 1, 0
        if self.num_epochs is not None and self.epoch >= self.num_epochs:
            raise StopIteration
        if self._order is None or self._order_epoch != self.epoch:
            self._order, self._order_epoch = self.order(self.epoch), self.epoch
        start = self.step_in_epoch * self.batch_size
        self.step_in_epoch += 1
        return self._order[start : start + self.batch_size]

    def state(self) -> dict[str, int]:
        """Where the next batch starts, plus what must match on restore."""
        return {
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "seed": self.seed,
            "num_examples": self.num_examples,
            "batch_size": self.batch_size,
        }

    def restore(self, state: dict[str, Any]) -> None:
        for key in ("seed", "num_examples", "batch_size"):
            if key in state and state[key] != getattr(self, key):
                raise JaxrlError(
                    f"cannot resume the data order: {key} was {state[key]}, now "
                    f"{getattr(self, key)}; resume with the same data and batch size"
                )
        epoch, step = int(state["epoch"]), int(state["step_in_epoch"])
        if epoch < 0 or not 0 <= step <= self.steps_per_epoch:
            raise JaxrlError(f"bad data position epoch={epoch} step_in_epoch={step}")
        self.epoch, self.step_in_epoch = epoch, step


def host_slice(n: int, process_index: int, process_count: int) -> slice:
    """The contiguous share of `n` items (rows or examples) that host `process_index` keeps."""
    check_hosts(n, process_index, process_count, "items")
    per_host = n // process_count
    return slice(process_index * per_host, (process_index + 1) * per_host)


def check_hosts(n: int, process_index: int, process_count: int, what: str) -> None:
    if not 0 <= process_index < process_count:
        raise JaxrlError(f"process_index {process_index} is not in [0, {process_count})")
    if n % process_count:
        raise JaxrlError(
            f"{n} {what} per batch do not split over {process_count} hosts; use a multiple of {process_count}"
        )


def padded_rows(examples: list[tuple[np.ndarray, np.ndarray]], length: int, pad_id: int) -> Batch:
    """One example per row, right-padded to `length`.

    examples: (ids int32 [n], trained bool [n]) where `trained[i]` says token i is a loss target.
    """
    return _rows([[e] for e in examples], length, pad_id)


def packed_rows(
    examples: list[tuple[np.ndarray, np.ndarray]],
    length: int,
    num_rows: int | None,
    pad_id: int,
    rows_multiple_of: int = 1,
) -> Batch:
    """The examples packed into rows of `length` tokens by first-fit decreasing (deterministic).

    The row count is the packing's, rounded up to `rows_multiple_of` (empty rows are all padding),
    or exactly `num_rows` when given (a JaxrlError if they do not fit).
    """
    order = sorted(range(len(examples)), key=lambda i: (-len(examples[i][0]), i))
    rows: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = len(examples[i][0])
        if n > length:
            raise JaxrlError(f"an example of {n} tokens does not fit a packed row of {length}; raise max_length")
        for r, free in enumerate(room):
            if n <= free:
                rows[r].append(i)
                room[r] -= n
                break
        else:
            rows.append([i])
            room.append(length - n)
    count = round_up(len(rows), rows_multiple_of)
    if num_rows is not None:
        if len(rows) > num_rows:
            raise JaxrlError(
                f"{len(examples)} examples need {len(rows)} packed rows of {length} tokens, "
                f"more than num_rows={num_rows}"
            )
        count = num_rows
    rows += [[] for _ in range(count - len(rows))]
    return _rows([[examples[i] for i in sorted(r)] for r in rows], length, pad_id)


def _rows(rows: list[list[tuple[np.ndarray, np.ndarray]]], length: int, pad_id: int) -> Batch:
    b = len(rows)
    tokens = np.full((b, length), pad_id, np.int32)
    targets = np.full((b, length), pad_id, np.int32)
    segment_ids = np.zeros((b, length), np.int32)
    positions = np.zeros((b, length), np.int32)
    loss_mask = np.zeros((b, length), np.float32)
    for r, row in enumerate(rows):
        at = 0
        for segment, (ids, trained) in enumerate(row, 1):
            n = len(ids)
            if at + n > length:
                raise JaxrlError(f"an example of {n} tokens does not fit a row of {length}")
            tokens[r, at : at + n] = ids
            targets[r, at : at + n - 1] = ids[1:]
            segment_ids[r, at : at + n] = segment
            positions[r, at : at + n] = np.arange(n)
            loss_mask[r, at : at + n - 1] = trained[1:]
            at += n
    return Batch(tokens, segment_ids, positions, targets, loss_mask)
