"""Every attention implementation available here equals the materialised-scores reference on
random inputs with right padding, left padding and packing, forward and gradients (fp32)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jaxrl.models.attention import IMPLEMENTATIONS, allowed, attend, blockwise_attention, xla_attention

from jaxrl.errors import JaxrlError

B, T, H, K, E = 3, 37, 4, 2, 8


def layouts():
    """segment ids and positions [B, T] for three rows: right-padded, left-padded, packed."""
    seg = np.zeros((B, T), np.int32)
    seg[0, :29] = 1  # right padding
    seg[1, 11:] = 1  # left padding
    seg[2, :10], seg[2, 10:25], seg[2, 25:34] = 1, 2, 3  # three packed sequences, then padding
    pos = np.zeros((B, T), np.int32)
    for b in range(B):
        for s in (1, 2, 3):
            idx = np.flatnonzero(seg[b] == s)
            pos[b, idx] = np.arange(len(idx))
    return jnp.asarray(seg), jnp.asarray(pos)


def qkv(seed: int = 0):
    kq, kk, kv = jax.random.split(jax.random.key(seed), 3)
    return (
        jax.random.normal(kq, (B, T, H, E), jnp.float32),
        jax.random.normal(kk, (B, T, K, E), jnp.float32),
        jax.random.normal(kv, (B, T, K, E), jnp.float32),
    )


def reference(q, k, v, seg, pos):
    return xla_attention(q, k, v, allowed(seg, pos, seg, pos))


def blockwise(block_q, block_k):
    return lambda q, k, v, seg, pos: blockwise_attention(q, k, v, seg, pos, seg, pos, block_q, block_k)


# block sizes that divide T, that leave a ragged last block, and a single block
CASES = [blockwise(8, 8), blockwise(16, 5), blockwise(64, 64)]
CASES += [
    lambda q, k, v, seg, pos, impl=impl: attend(q, k, v, seg, pos, seg, pos, impl)
    for impl in IMPLEMENTATIONS
    if impl != "cudnn" or jax.default_backend() == "gpu"
]


@pytest.mark.parametrize("implementation", CASES)
def test_forward_and_gradients_equal_the_reference(implementation):
    q, k, v = qkv()
    seg, pos = layouts()
    real = (seg > 0)[:, :, None, None]  # padding queries see nothing; nothing reads their output
    cotangent = jax.random.normal(jax.random.key(1), q.shape) * real

    def loss(fn):
        return lambda q, k, v: jnp.sum(fn(q, k, v, seg, pos) * cotangent)

    got, want = implementation(q, k, v, seg, pos), reference(q, k, v, seg, pos)
    np.testing.assert_allclose(np.where(real, got, 0), np.where(real, want, 0), atol=1e-5, rtol=1e-5)
    grads = jax.grad(loss(implementation), argnums=(0, 1, 2))(q, k, v)
    ref_grads = jax.grad(loss(reference), argnums=(0, 1, 2))(q, k, v)
    for name, g, r in zip("qkv", grads, ref_grads, strict=True):
        np.testing.assert_allclose(g, r, atol=1e-5, rtol=1e-5, err_msg=f"d{name}")


def test_bf16_inputs_stay_close_and_keep_their_dtype():
    q, k, v = (x.astype(jnp.bfloat16) for x in qkv(2))
    seg, pos = layouts()
    got = blockwise_attention(q, k, v, seg, pos, seg, pos, 8, 8)
    want = reference(q, k, v, seg, pos)
    assert got.dtype == jnp.bfloat16
    real = (seg > 0)[:, :, None, None]
    as_f32 = lambda x: np.where(real, np.asarray(x, np.float32), 0.0)
    np.testing.assert_allclose(as_f32(got), as_f32(want), atol=3e-2)


def test_padding_rows_are_zero_and_finite():
    q, k, v = qkv(3)
    seg, pos = layouts()
    out = blockwise_attention(q, k, v, seg, pos, seg, pos, 8, 8)
    assert np.isfinite(np.asarray(out)).all()
    np.testing.assert_array_equal(out[1, :11], 0.0)


def test_unknown_implementation_is_an_error():
    q, k, v = qkv()
    seg, pos = layouts()
    with pytest.raises(JaxrlError, match="attention='flash'"):
        attend(q, k, v, seg, pos, seg, pos, "flash")
