"""Teacher-forced scoring: log-probabilities of given continuations under a decoder.

Sequences are right-padded into batches of a fixed size and a power-of-two length, so a whole
dataset compiles a handful of shapes. Logits are formed only where a
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


def bucket(n: int, minimum: int) -> int:
    """The next power of two >= max(n, minimum): few distinct shapes, so few compiles."""
    return max(minimum, 1 << max(n - 1, 0).bit_length())


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
def _token_logprobs(model, tokens_bt, segments_bt, where_bc, targets_bc):
    """log p(targets[b, c]) at position where[b, c] (the next-token distribution there) -> fp32 [B, C]."""
    h_btd, _ = model.hidden_states(tokens_bt, segments_bt)
    h_bcd = jnp.take_along_axis(h_btd, where_bc[..., None], axis=1)
    logprobs_bcv = jax.nn.log_softmax(model.logits(h_bcd), axis=-1)
    return jnp.take_along_axis(logprobs_bcv, targets_bc[..., None], axis=-1)[..., 0]


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
        logprobs = np.asarray(_token_logprobs(model, tokens, segments, where, targets), np.float64)
        for i, seq in enumerate(seqs):
            for j, (_, _, index) in enumerate(rows[seq]):
                out[index] += logprobs[i, j]
    return out
