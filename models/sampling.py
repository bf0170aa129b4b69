"""Choosing the next token from fp32 logits: greedy, temperature, top-k and top-p.

The knobs are traced scalars, so changing their values never recompiles; only the two static
flags below pick a different program (greedy argmax; sorting for truncation).

The returned log-prob is always taken under the untruncated distribution,
`log_softmax(logits / temperature)` (greedy: `log_softmax(logits)`), because that is what a GRPO
trainer recomputes from the policy's logits.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

NEG_INF = -jnp.inf


def truncation_mask(sorted_logits_rv: jax.Array, top_k, top_p) -> jax.Array:
    """Which tokens top-k then top-p keep, in sorted (descending) order. bool [R, V].

    top-k keeps the k highest ranks (0 = off); top-p then keeps the smallest prefix of the
    renormalised top-k distribution whose mass reaches top_p (the first token always stays).
    """
    rank = jnp.arange(sorted_logits_rv.shape[-1])
    keep = (top_k <= 0) | (rank < top_k)
    probs = jax.nn.softmax(jnp.where(keep, sorted_logits_rv, NEG_INF), axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    return keep & (mass_before < top_p)


def choose_tokens(
    logits_rv: jax.Array,
    keys_r: jax.Array,
    temperature,
    top_k,
    top_p,
    *,
    greedy: bool,
    truncate: bool,
) -> tuple[jax.Array, jax.Array]:
    """Picks one token per row. Returns (tokens int32 [R], logprobs fp32 [R]).

    logits_rv: [R, V] (any float dtype; worked in fp32). keys_r: one PRNG key per row, so a row's
    draw does not depend on the other rows, the batch bucket or the sharding.
    temperature: > 0 unless `greedy`; top_k: int (0 = off); top_p: float in (0, 1].
    truncate: apply top-k / top-p (sorts the vocabulary; leave False when both are off).
    """
    logits = logits_rv.astype(jnp.float32)
    if greedy:
        tokens = jnp.argmax(logits, axis=-1)
        logprobs = jax.nn.log_softmax(logits, axis=-1)
    else:
        scaled = logits / temperature
        logprobs = jax.nn.log_softmax(scaled, axis=-1)
        if truncate:
            # One stable sort of (-logit, id): descending, ties broken by the lower token id.
            ids = jnp.broadcast_to(jnp.arange(scaled.shape[-1], dtype=jnp.int32), scaled.shape)
            neg_sorted, order = jax.lax.sort((-scaled, ids), dimension=-1, num_keys=1)
            sorted_logits = -neg_sorted
            kept = jnp.where(truncation_mask(sorted_logits, top_k, top_p), sorted_logits, NEG_INF)
            rank = jax.vmap(jax.random.categorical)(keys_r, kept)
            tokens = jnp.take_along_axis(order, rank[:, None], axis=-1)[:, 0]
        else:
            tokens = jax.vmap(jax.random.categorical)(keys_r, scaled)
    tokens = tokens.astype(jnp.int32)
    return tokens, jnp.take_along_axis(logprobs, tokens[:, None], axis=-1)[:, 0]
