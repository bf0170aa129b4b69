"""Log-probabilities of given tokens under a decoder: the one place they are computed.

Every consumer goes through here: the GRPO loss and its rollout scoring (`completion_logprobs`,
chunked over the sequence and optionally the vocabulary), the SFT loss (`token_logprobs`,
`target_logprobs`), evaluation's teacher-forced scoring (`logprobs_at`) and KL to a base
(`scaled_logits`). Shapes: B rows, T tokens, C predicted positions, D hidden, V vocabulary.
Logits and everything after them are fp32; the matmul runs in the hidden states' dtype.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jaxrl.models.decoder import default_positions

from jaxrl.errors import JaxrlError


def scaled_logits(h_bcd, w_dv, temperature: float = 1.0):
    """fp32 logits [B, C, V] = (h @ w) / temperature."""
    logits = jnp.einsum("bcd,dv->bcv", h_bcd, w_dv.astype(h_bcd.dtype), preferred_element_type=jnp.float32)
    return logits / temperature


def target_logprobs(logits_bcv, targets_bc):
    """log softmax(logits)[target] [B, C] and the log-normaliser [B, C]."""
    lse = jax.nn.logsumexp(logits_bcv, axis=-1)
    return jnp.take_along_axis(logits_bcv, targets_bc[..., None], axis=-1)[..., 0] - lse, lse


def _chunked(x, chunk: int):
    """[B, C, ...] -> [C / chunk, B, chunk, ...] (C padded with zeros to a multiple of chunk)."""
    b, c = x.shape[:2]
    n = -(-c // chunk)
    x = jnp.pad(x, [(0, 0), (0, n * chunk - c)] + [(0, 0)] * (x.ndim - 2))
    return jnp.moveaxis(x.reshape(b, n, chunk, *x.shape[2:]), 1, 0)


def _unchunked(x, c: int):
    """[n, B, chunk] -> [B, C]."""
    n, b, chunk = x.shape
    return jnp.moveaxis(x, 0, 1).reshape(b, n * chunk)[:, :c]


def _block_stats(h_bcd, w_dv, targets_bc, temperature: float, with_entropy: bool):
    """(log-prob of the target, entropy) of one chunk over the whole vocabulary at once."""
    logits = scaled_logits(h_bcd, w_dv, temperature)
    logp, lse = target_logprobs(logits, targets_bc)
    if not with_entropy:
        return logp, jnp.zeros_like(logp)
    logp_all = jax.lax.stop_gradient(logits - lse[..., None])
    return logp, -jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1)


def _vocab_chunked_stats(h_bcd, w_dv, targets_bc, temperature: float, with_entropy: bool, vocab_chunk: int):
    """`_block_stats` with the vocabulary cut into blocks of `vocab_chunk` and an online logsumexp
    (a running max and a rescaled sum), so at most [B, chunk, vocab_chunk] logits exist at once."""
    d, v = w_dv.shape
    if v % vocab_chunk:
        raise JaxrlError(f"logprob_vocab_chunk_size={vocab_chunk} does not divide the vocabulary ({v})")
    blocks = jnp.moveaxis(w_dv.reshape(d, v // vocab_chunk, vocab_chunk), 1, 0)  # [n, D, vocab_chunk]
    starts = jnp.arange(v // vocab_chunk, dtype=jnp.int32) * vocab_chunk

    @jax.checkpoint
    def block(carry, xs):
        top, total, weighted, target = carry  # running max, sum exp(l - top), sum exp(l - top) * l, target logit
        w, start = xs
        logits = scaled_logits(h_bcd, w, temperature)
        new_top = jax.lax.stop_gradient(jnp.maximum(top, jnp.max(logits, axis=-1)))  # any shift is exact
        rescale = jnp.exp(top - new_top)
        e = jnp.exp(logits - new_top[..., None])
        total = total * rescale + jnp.sum(e, axis=-1)
        weighted = weighted * rescale + jax.lax.stop_gradient(jnp.sum(e * logits, axis=-1))
        local = targets_bc - start
        inside = (local >= 0) & (local < vocab_chunk)
        picked = jnp.take_along_axis(logits, jnp.clip(local, 0, vocab_chunk - 1)[..., None], axis=-1)[..., 0]
        return (new_top, total, weighted, target + jnp.where(inside, picked, 0.0)), None

    zeros = jnp.zeros(targets_bc.shape, jnp.float32)
    init = (jnp.full(targets_bc.shape, -jnp.inf, jnp.float32), zeros, zeros, zeros)
    (top, total, weighted, target), _ = jax.lax.scan(block, init, (blocks, starts))
    lse = top + jnp.log(total)
    entropy = jax.lax.stop_gradient(lse - weighted / total) if with_entropy else zeros
    return target - lse, entropy


def token_logprobs(
    h_bcd,
    w_dv,
    targets_bc,
    temperature: float = 1.0,
    chunk_size: int = 256,
    with_entropy: bool = False,
    vocab_chunk_size: int = 0,
):
    """log softmax(h @ w / temperature)[target] [B, C] fp32 (and the entropy [B, C] if asked).

    The sequence is cut into chunks of `chunk_size` and each chunk is rematerialised in the
    backward pass, so at most [B, chunk_size, V] logits exist at once, never [B, C, V]; with
    `vocab_chunk_size` > 0 the vocabulary is cut too (at most [B, chunk_size, vocab_chunk_size]).
    Keep the vocabulary whole when it is sharded over `tensor`: the shards already cut it.
    """
    c = h_bcd.shape[1]
    chunk = max(1, min(chunk_size, c))

    @jax.checkpoint
    def one_chunk(args):
        h, targets = args
        if vocab_chunk_size:
            return _vocab_chunked_stats(h, w_dv, targets, temperature, with_entropy, vocab_chunk_size)
        return _block_stats(h, w_dv, targets, temperature, with_entropy)

    logp, entropy = jax.lax.map(one_chunk, (_chunked(h_bcd, chunk), _chunked(targets_bc, chunk)))
    logp = _unchunked(logp, c)
    return (logp, _unchunked(entropy, c)) if with_entropy else logp


def completion_logprobs(
    model,
    tokens_bt,
    segment_ids_bt,
    completion_length: int,
    temperature: float = 1.0,
    chunk_size: int = 256,
    with_entropy: bool = False,
    vocab_chunk_size: int = 0,
    prompt_group: int = 1,
):
    """Log-probs [B, C] of the completion tokens (the last C slots of `tokens_bt`) under `model`.

    tokens_bt / segment_ids_bt: int32 [B, P + C], prompt left-padded, completion right-padded;
    segment 0 marks padding. The token at slot P + t is predicted from the hidden state at P + t - 1.
    prompt_group > 1: every `prompt_group` consecutive rows share their prompt (`shared_prompt_rows`
    checks a batch), which then runs once for the group instead of once per row.
    """
    t = tokens_bt.shape[1]
    p = t - completion_length
    if prompt_group > 1:
        positions = default_positions(segment_ids_bt)
        first = lambda x: x[::prompt_group, :p]
        h_prompt, prompts = model.hidden_states(
            first(tokens_bt), first(segment_ids_bt), first(positions), group=prompt_group
        )
        h_new, _ = model.hidden_states(tokens_bt[:, p:], segment_ids_bt[:, p:], positions[:, p:], prompts=prompts)
        last = prompts.each_row(h_prompt[:, -1:])  # predicts each completion's first token
        h_bcd = jnp.concatenate([last, h_new[:, :-1]], axis=1)
    else:
        h_btd, _ = model.hidden_states(tokens_bt, segment_ids_bt)
        h_bcd = h_btd[:, p - 1 : t - 1]
    targets = tokens_bt[:, p:]
    return token_logprobs(h_bcd, model.unembed(), targets, temperature, chunk_size, with_entropy, vocab_chunk_size)


def shared_prompt_rows(tokens_bt, completion_length: int, group: int) -> bool:
    """Whether every `group` consecutive rows of `tokens_bt` (a host array [B, P + C]) hold the same
    prompt (the first P slots): what `completion_logprobs(prompt_group=group)` needs."""
    tokens = np.asarray(tokens_bt)
    rows, t = tokens.shape
    if group <= 1:
        return True
    if rows % group:
        return False
    prompts = tokens[:, : t - completion_length].reshape(rows // group, group, -1)
    return bool(np.all(prompts == prompts[:, :1]))


def logprobs_at(model, tokens_bt, segment_ids_bt, where_bc, targets_bc):
    """log p(targets[b, c]) under the next-token distribution at position where[b, c]: fp32 [B, C]."""
    h_btd, _ = model.hidden_states(tokens_bt, segment_ids_bt)
    h_bcd = jnp.take_along_axis(h_btd, where_bc[..., None], axis=1)
    return target_logprobs(scaled_logits(h_bcd, model.unembed()), targets_bc)[0]
