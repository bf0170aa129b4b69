"""Teacher-forced scoring: log-probabilities of given continuations under a decoder.

Sequences are right-padded into batches of a fixed size and a power-of-two length, so a whole
dataset compiles a handful of shapes. Logits are formed only where a
continuation token is predicted, in fp32.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from flax import nnx
from jaxrl.models.logprobs import logprobs_at

from jaxrl.shapes import bucket


def pad_batch(sequences: Sequence[Sequence[int]], batch: int, length: int, pad_id: int = 0):
    """tokens int32 [batch, length] right-padded with `pad_id`, segment ids int32 (1 real, 0 pad);
    rows past len(sequences) are all padding."""
    tokens = np.full((batch, length), pad_id, np.int32)
    segments = np.zeros((batch, length), np.int32)
    for i, seq in enumerate(sequences):
        tokens[i, : len(seq)] = seq
        segments[i, : len(seq)] = 1
    return tokens, segments


_logprobs_at = nnx.jit(logprobs_at)


def continuation_logprobs(
    model, pairs: Sequence[tuple[Sequence[int], Sequence[int]]], batch_size: int = 8, min_length: int = 64
) -> np.ndarray:
    """log p(continuation | prompt) summed over the continuation's tokens, float64 [len(pairs)].

    Pairs that share a prompt and whose continuations are single tokens (choice letters) share one
    row: the prompt is run once and every continuation is read off its last position.
    """
    rows: dict[tuple, list] = {}  # sequence -> [(where, target, output index)]
    for index, (prompt, cont) in enumerate(pairs):
        prompt, cont = tuple(prompt), tuple(cont)
        if not prompt or not cont:
            raise ValueError("each pair needs a non-empty prompt and continuation")
        key = prompt if len(cont) == 1 else prompt + cont
        rows.setdefault(key, []).extend((len(prompt) - 1 + j, t, index) for j, t in enumerate(cont))
    out = np.zeros(len(pairs), np.float64)
    keys = list(rows)
    for start in range(0, len(keys), batch_size):
        seqs = keys[start : start + batch_size]
        width = max(len(rows[s]) for s in seqs)
        tokens, segments = pad_batch(seqs, batch_size, bucket(max(map(len, seqs)), min_length))
        where = np.zeros((batch_size, width), np.int32)
        targets = np.zeros((batch_size, width), np.int32)
        for i, seq in enumerate(seqs):
            picks = rows[seq]
            where[i, : len(picks)] = [w for w, _, _ in picks]
            targets[i, : len(picks)] = [t for _, t, _ in picks]
        logprobs = np.asarray(_logprobs_at(model, tokens, segments, where, targets), np.float64)
        for i, seq in enumerate(seqs):
            for j, (_, _, index) in enumerate(rows[seq]):
                out[index] += logprobs[i, j]
    return out
