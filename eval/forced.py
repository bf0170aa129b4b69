"""Teacher-forced scoring: log-probabilities of given continuations under a decoder.

Sequences are right-padded into batches of a fixed size and a length rounded up to a multiple of
`pad_to`, so a whole dataset compiles a handful of shapes. Logits are formed only where a
continuation token is predicted, in fp32.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def round_up(n: int, multiple: int) -> int:
    return max(multiple, -(-n // multiple) * multiple)


def pad_batch(sequences: Sequence[Sequence[int]], batch: int, length: int, pad_id: int = 0):
    """tokens int32 [batch, length] right-padded with `pad_id`, segment ids int32 (1 real, 0 pad);
    rows past len(sequences) are all padding."""
    tokens = np.full((batch, length), pad_id, np.int32)
    segments = np.zeros((batch, length), np.int32)
    for i, seq in enumerate(sequences):
        tokens[i, : len(seq)] = seq
        segments[i, : len(seq)] = 1
    return tokens, segments


@nnx.jit
def _gathered_logprobs(model, tokens_bt, segments_bt, where_bc, targets_bc, mask_bc):
    """Sum over c of log p(targets[b, c] | tokens before where[b, c] + 1) -> fp32 [B]."""
    h_btd, _ = model.hidden_states(tokens_bt, segments_bt)
    h_bcd = jnp.take_along_axis(h_btd, where_bc[..., None], axis=1)
    logprobs_bcv = jax.nn.log_softmax(model.logits(h_bcd), axis=-1)
    picked = jnp.take_along_axis(logprobs_bcv, targets_bc[..., None], axis=-1)[..., 0]
    return jnp.sum(jnp.where(mask_bc, picked, 0.0), axis=1)


def continuation_logprobs(
    model, pairs: Sequence[tuple[Sequence[int], Sequence[int]]], batch_size: int = 8, pad_to: int = 64
) -> np.ndarray:
    """log p(continuation | prompt) summed over the continuation's tokens, float64 [len(pairs)]."""
    out = np.zeros(len(pairs), np.float64)
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        seqs = [list(p) + list(c) for p, c in chunk]
        width = max(len(c) for _, c in chunk)
        tokens, segments = pad_batch(seqs, batch_size, round_up(max(map(len, seqs)), pad_to))
        where = np.zeros((batch_size, width), np.int32)
        targets = np.zeros((batch_size, width), np.int32)
        mask = np.zeros((batch_size, width), bool)
        for i, (p, c) in enumerate(chunk):
            if not p or not c:
                raise ValueError("each pair needs a non-empty prompt and continuation")
            where[i, : len(c)] = np.arange(len(p) - 1, len(p) - 1 + len(c))
            targets[i, : len(c)] = c
            mask[i, : len(c)] = True
        sums = _gathered_logprobs(model, tokens, segments, where, targets, mask)
        out[start : start + len(chunk)] = np.asarray(sums)[: len(chunk)]
    return out
