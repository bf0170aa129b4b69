"""KL(base || tuned): the mean per-token KL divergence, teacher-forced over reference texts.

For every predicted token of a reference continuation (the study: a MATH-500 solution after its
chat-templated problem), KL(p_base || p_tuned) = sum_v p_base(v) (log p_base(v) - log p_tuned(v))
over the whole vocabulary, in fp32. Logits are formed `chunk` positions at a time, so memory
holds [batch, chunk, vocab], never [batch, length, vocab]. The dataset figure is the mean over
all predicted tokens (token-weighted); the mean of per-sequence means is reported beside it.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxrl.eval.forced import pad_batch
from jaxrl.models.logprobs import scaled_logits

from jaxrl.errors import JaxrlError
from jaxrl.shapes import bucket, round_up


@functools.partial(nnx.jit, static_argnames="chunk")
def _kl_sums(base, tuned, tokens_bt, segments_bt, mask_bt, *, chunk: int):
    """Per-row sums of the token KL where mask_bt (the position predicts a reference token): [B]."""
    h_base, _ = base.hidden_states(tokens_bt, segments_bt)
    h_tuned, _ = tuned.hidden_states(tokens_bt, segments_bt)
    b, t, _ = h_base.shape
    split = lambda x: jnp.swapaxes(x.reshape(b, t // chunk, chunk, *x.shape[2:]), 0, 1)

    def step(total_b, xs):
        hb, ht, m = xs
        lp_base = jax.nn.log_softmax(scaled_logits(hb, base.unembed()), axis=-1)
        lp_tuned = jax.nn.log_softmax(scaled_logits(ht, tuned.unembed()), axis=-1)
        kl_bc = jnp.sum(jnp.exp(lp_base) * (lp_base - lp_tuned), axis=-1)
        return total_b + jnp.sum(jnp.where(m, kl_bc, 0.0), axis=1), None

    total, _ = jax.lax.scan(step, jnp.zeros((b,), jnp.float32), (split(h_base), split(h_tuned), split(mask_bt)))
    return total


def mean_token_kl(
    base,
    tuned,
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
    batch_size: int = 4,
    chunk: int = 128,
) -> dict:
    """KL(base || tuned) over the continuation tokens of (prompt_ids, continuation_ids) pairs.

    Returns {"kl": token-weighted mean, "kl_seq_mean": mean of per-sequence means,
    "kl_seq_stderr": its standard error, "num_tokens", "num_sequences"}.
    """
    if base.config.vocab_size != tuned.config.vocab_size:
        raise JaxrlError(
            f"KL needs one vocabulary; base has {base.config.vocab_size} tokens, tuned {tuned.config.vocab_size}"
        )
    per_seq, counts = [], []
    for start in range(0, len(pairs), batch_size):
        part = pairs[start : start + batch_size]
        seqs = [list(p) + list(c) for p, c in part]
        tokens, segments = pad_batch(seqs, batch_size, round_up(bucket(max(map(len, seqs)), chunk), chunk))
        mask = np.zeros(tokens.shape, bool)
        for i, (p, c) in enumerate(part):
            if not p or not c:
                raise ValueError("each pair needs a non-empty prompt and continuation")
            mask[i, len(p) - 1 : len(p) - 1 + len(c)] = True  # positions that predict the continuation
        sums = np.asarray(_kl_sums(base, tuned, tokens, segments, mask, chunk=chunk), np.float64)
        for i, (_, c) in enumerate(part):
            per_seq.append(sums[i] / len(c))
            counts.append(len(c))
    per_seq, counts = np.asarray(per_seq), np.asarray(counts)
    stderr = float(per_seq.std(ddof=1) / np.sqrt(len(per_seq))) if len(per_seq) > 1 else 0.0
    return {
        "kl": float((per_seq * counts).sum() / counts.sum()),
        "kl_seq_mean": float(per_seq.mean()),
        "kl_seq_stderr": stderr,
        "num_tokens": int(counts.sum()),
        "num_sequences": len(per_seq),
    }
