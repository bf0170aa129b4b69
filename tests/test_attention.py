"""Every attention implementation available here equals the materialised-scores reference on
random inputs with right padding, left padding and packing, forward and gradients (fp32)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jaxrl.models.attention import (
    IMPLEMENTATIONS,
    allowed,
    attend,
    blockwise_attention,
    positions_follow_slots,
    splash_attention,
    xla_attention,
)

from jaxrl.errors import JaxrlError

B, T, H, K, E = 3, 37, 4, 2, 8


def layouts(t: int = T):
    """segment ids and positions [B, t] for three rows: right-padded, left-padded, packed."""
    seg = np.zeros((B, t), np.int32)
    seg[0, : t * 29 // 37] = 1  # right padding
    seg[1, t * 11 // 37 :] = 1  # left padding
    cut = [t * n // 37 for n in (10, 25, 34)]
    seg[2, : cut[0]], seg[2, cut[0] : cut[1]], seg[2, cut[1] : cut[2]] = 1, 2, 3  # packed, then padding
    pos = np.zeros((B, t), np.int32)
    for b in range(B):
        for s in (1, 2, 3):
            idx = np.flatnonzero(seg[b] == s)
            pos[b, idx] = np.arange(len(idx))
    return jnp.asarray(seg), jnp.asarray(pos)


def qkv(seed: int = 0, t: int = T):
    kq, kk, kv = jax.random.split(jax.random.key(seed), 3)
    return (
        jax.random.normal(kq, (B, t, H, E), jnp.float32),
        jax.random.normal(kk, (B, t, K, E), jnp.float32),
        jax.random.normal(kv, (B, t, K, E), jnp.float32),
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


def splash(q, k, v, seg, pos):
    return splash_attention(q, k, v, seg, pos, seg, pos)  # Pallas' interpreter off a TPU


@pytest.mark.parametrize("implementation, length", [(case, T) for case in CASES] + [(splash, 256)])
def test_forward_and_gradients_equal_the_reference(implementation, length):
    q, k, v = qkv(t=length)
    seg, pos = layouts(length)
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


def test_splash_covers_exactly_the_batches_its_causal_mask_describes():
    seg, pos = layouts(256)
    assert bool(positions_follow_slots(seg, pos))
    assert not bool(positions_follow_slots(seg, pos.at[0, 5].set(0)))  # a position that does not grow
    assert not bool(positions_follow_slots(seg.at[2, 0].set(3), pos))  # segment 3 in two runs
    # a batch it does not cover takes blockwise and is still right
    q, k, v = qkv(4, 256)
    pos = pos.at[1, 200:].set(pos[1, 200:] + 7)  # a jump is fine: positions still grow
    shuffled = pos.at[0, 10:20].set(pos[0, 10:20][::-1])
    for p in (pos, shuffled):
        real = (seg > 0)[:, :, None, None]
        got, want = splash(q, k, v, seg, p), reference(q, k, v, seg, p)
        np.testing.assert_allclose(np.where(real, got, 0), np.where(real, want, 0), atol=1e-5, rtol=1e-5)


def test_auto_takes_the_plain_path_only_within_one_block(monkeypatch):
    """Up to one block (512) the scores are one block anyway; beyond it `auto` never materialises them."""
    import jaxrl.models.attention as attention

    taken = []
    monkeypatch.setattr(attention, "xla_attention", lambda q, *rest: taken.append("xla") or q)
    monkeypatch.setattr(attention, "blockwise_attention", lambda q, *rest, **kw: taken.append("blockwise") or q)
    for t in (37, 513):
        q, k, v = qkv(t=t)
        seg, pos = layouts(t)
        attend(q, k, v, seg, pos, seg, pos, "auto")
    assert taken == ["xla", "blockwise"]


def test_ring_attention_reads_only_the_blocks_holding_each_rows_tokens():
    from jaxrl.models.decoder import cached_attention
    from jaxrl.models.row_cache import MAX_CHUNK, RowCache, ring_attention, window

    b, kv, g, e, layers, slots = 3, 2, 2, 8, 2, 4 * MAX_CHUNK
    keys = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(keys[0], (b, 1, kv * g, e))
    k_all = jax.random.normal(keys[1], (layers, b, kv, slots, e))
    v_all = jax.random.normal(keys[2], (layers, b, kv, e, slots))
    # the next token goes to slot 100; row 1 holds 300 tokens, so its oldest wraps round to slot 824
    lengths, index = jnp.array([0, 300, 40]), jnp.int32(100)
    age = (index - jnp.arange(slots)) % slots
    want = cached_attention(q, k_all[1], v_all[1], (age[None, :] <= lengths[:, None])[:, None])
    ring = window(RowCache(k_all, v_all, lengths, index))
    assert (int(ring.first), int(ring.blocks)) == (3, 2)  # blocks 3 and 0 of 4
    # blocks 1 and 2 hold NaN: reading them at all would poison every row
    outside = (jnp.arange(slots) >= MAX_CHUNK) & (jnp.arange(slots) < 3 * MAX_CHUNK)
    k_nan = jnp.where(outside[:, None], jnp.nan, k_all)
    v_nan = jnp.where(outside, jnp.nan, v_all)
    got = ring_attention(q, k_nan, v_nan, 1, ring)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)


def test_a_short_ring_is_read_whole_in_one_pass():
    """A ring of at most MAX_CHUNK slots (96 here: blocks of 32 before) is attended whole, with no
    loop, and each row still sees only its own tokens, wrapping round; the layer may be static."""
    from jaxrl.models.decoder import cached_attention
    from jaxrl.models.row_cache import RowCache, ring_attention, window

    b, kv, g, e, layers, slots = 3, 2, 2, 8, 2, 96
    keys = jax.random.split(jax.random.key(1), 3)
    q = jax.random.normal(keys[0], (b, 1, kv * g, e))
    k_all = jax.random.normal(keys[1], (layers, b, kv, slots, e))
    v_all = jax.random.normal(keys[2], (layers, b, kv, e, slots))
    lengths, index = jnp.array([0, 70, 95]), jnp.int32(20)  # rows 1 and 2 wrap round to the ring's end
    age = (index - jnp.arange(slots)) % slots
    want = cached_attention(q, k_all[1], v_all[1], (age[None, :] <= lengths[:, None])[:, None])
    ring = window(RowCache(k_all, v_all, lengths, index))
    for layer in (1, jnp.int32(1)):
        got = ring_attention(q, k_all, v_all, layer, ring)
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)
    hlo = jax.jit(ring_attention).lower(q, k_all, v_all, jnp.int32(1), ring).as_text()
    assert "while" not in hlo


@pytest.mark.parametrize("mesh_spec", ["fsdp=2,tensor=2", "fsdp=2,tensor=4"])
def test_splash_per_shard_on_a_mesh_equals_the_reference(mesh_spec):
    """Rows over fsdp, heads over tensor (with tensor=4 the 2 KV heads do not split: each shard
    gets the KV heads of its own query heads); forward and gradients, Pallas' interpreter on CPU."""
    from jaxrl.sharding import LogicalMesh, make_mesh

    lm = LogicalMesh(make_mesh(mesh_spec, jax.devices()[: 4 if mesh_spec.endswith("2") else 8]))
    seg, pos = (jnp.concatenate([x, x[:1]]) for x in layouts(128))  # 4 rows, one 128-block
    q, k, v = (jnp.concatenate([x, x[:1]]) for x in qkv(5, 128))
    real = (seg > 0)[:, :, None, None]
    cotangent = jax.random.normal(jax.random.key(1), q.shape) * real
    sharded = jax.jit(lambda q, k, v: splash_attention(q, k, v, seg, pos, seg, pos, mesh=lm))
    loss = lambda fn: lambda q, k, v: jnp.sum(fn(q, k, v) * cotangent)
    want_fn = lambda q, k, v: reference(q, k, v, seg, pos)
    np.testing.assert_allclose(np.where(real, sharded(q, k, v), 0), np.where(real, want_fn(q, k, v), 0), atol=1e-5)
    grads = jax.grad(loss(sharded), argnums=(0, 1, 2))(q, k, v)
    for name, g, r in zip("qkv", grads, jax.grad(loss(want_fn), argnums=(0, 1, 2))(q, k, v), strict=True):
        np.testing.assert_allclose(g, r, atol=1e-5, rtol=1e-5, err_msg=f"d{name}")
