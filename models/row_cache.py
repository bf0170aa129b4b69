"""The continuous-batching cache: rows that fill independently, in one ring of slots.

    cache = RowCache(k [L, B, K, S, E], v [L, B, K, E, S], lengths int32 [B], index int32 [])

Every call writes each row's new token at the same slot, `index` (one in-place dynamic-update-slice
per layer, which a mesh that splits the rows does locally), then moves `index` on by one, wrapping
at S. A row holding `lengths[b]` tokens finds them in the slots just before `index`: its token of
age a (0 = the new one) sits at slot (index - a) mod S. A row placed at any turn starts there with
its prompt (`place`), so rows of every length share one write position; S = prompt bucket +
new-token bucket suffices, since a row never holds more.

`ring_attention` reads the cache in aligned blocks of `chunk` slots, only the blocks that hold the
last max(lengths) + 1 slots before `index`, with an online softmax in fp32: never the rest. A ring
of at most MAX_CHUNK slots is read whole, in one pass.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from jaxrl.models.attention import NEG_INF

MAX_CHUNK = 256  # slots per block read by `ring_attention`


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class RowCache:
    """k: [L, B, K, S, E], v: [L, B, K, E, S] (the decoder's cache layouts); lengths: int32 [B], the
    tokens row b holds (0 for an idle row); index: int32 [], the slot the next call writes."""

    k: jax.Array
    v: jax.Array
    lengths: jax.Array
    index: jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class RingWindow:
    """What one call's new tokens see: row b the slots of age 0 .. ages[b] before (and at) `index`,
    held in `blocks` aligned blocks of `chunk` slots from block `first`, wrapping."""

    ages: jax.Array  # int32 [B]
    index: jax.Array  # int32 []
    first: jax.Array  # int32 []
    blocks: jax.Array  # int32 []
    chunk: int = dataclasses.field(metadata=dict(static=True))


def chunk_size(slots: int) -> int:
    """The largest power of two that divides `slots`, at most MAX_CHUNK (blocks tile the ring)."""
    return math.gcd(slots, MAX_CHUNK)


def window(cache: RowCache) -> RingWindow:
    """The slots the next call's tokens see: each row its own `lengths` plus the new token."""
    slots = cache.k.shape[3]
    c = chunk_size(slots)
    span = jnp.max(cache.lengths) + 1  # slots from the oldest token any row sees to `index`
    oldest = (cache.index - span + 1) % slots
    blocks = jnp.minimum((oldest % c + span + c - 1) // c, slots // c)
    return RingWindow(cache.lengths, cache.index, oldest // c, blocks, c)


def advance(cache: RowCache, k, v) -> RowCache:
    """The cache after a call wrote one token per row at `index`."""
    return RowCache(k, v, cache.lengths + 1, (cache.index + 1) % k.shape[3])


def ring_attention(q_bthe, k_all, v_all, layer, w: RingWindow):
    """Attention of one new token per row to that row's tokens only, reading from the stacked cache
    (`layer` of k_all / v_all) just the blocks `w` names (a ring of at most MAX_CHUNK slots whole:
    the loop's own ops cost more there than the slots it skips). Returns [B, 1, H, E] in v's dtype."""
    b, t, h, e = q_bthe.shape
    kv, slots, c = k_all.shape[2], k_all.shape[3], w.chunk
    g = h // kv
    q = q_bthe.reshape(b, t, kv, g, e)

    def add_block(at, width, top, total, acc):
        """The running max and sum [B, K, G, T] and weighted values [B, K, G, T, E] after the
        `width` slots from slot `at`."""
        k = jax.lax.dynamic_slice(k_all, (layer, 0, 0, at, 0), (1, b, kv, width, e))[0]
        v = jax.lax.dynamic_slice(v_all, (layer, 0, 0, 0, at), (1, b, kv, e, width))[0]
        age = (w.index - at - jnp.arange(width)) % slots
        seen = age[None, :] <= w.ages[:, None]  # [B, width]
        s = jnp.einsum("btkge,bkse->bkgts", q, k, preferred_element_type=jnp.float32) / math.sqrt(e)
        s = jnp.where(seen[:, None, None, None], s, NEG_INF)
        new_top = jnp.maximum(top, jnp.max(s, axis=-1))
        p = jnp.exp(s - new_top[..., None])
        rescale = jnp.exp(top - new_top)
        pv = jnp.einsum("bkgts,bkes->bkgte", p.astype(v.dtype), v, preferred_element_type=jnp.float32)
        return new_top, total * rescale + jnp.sum(p, axis=-1), acc * rescale[..., None] + pv

    def one_block(carry):
        j, *running = carry
        return j + 1, *add_block(((w.first + j) % (slots // c)) * c, c, *running)

    init = (
        jnp.full((b, kv, g, t), -jnp.inf, jnp.float32),
        jnp.zeros((b, kv, g, t), jnp.float32),
        jnp.zeros((b, kv, g, t, e), jnp.float32),
    )
    if slots <= MAX_CHUNK:
        _, total, acc = add_block(0, slots, *init)
    else:
        _, _, total, acc = jax.lax.while_loop(lambda carry: carry[0] < w.blocks, one_block, (jnp.int32(0), *init))
    out = acc / total[..., None]  # every row sees its new token, so total > 0
    return jnp.einsum("bkgte->btkge", out).reshape(b, t, h, e).astype(v_all.dtype)


def place(cache: RowCache, take_b, prompt_k, prompt_v, length) -> RowCache:
    """Rows `take_b` (bool [B]) start over holding one prompt: its `length` tokens, from a cache of
    P slots (k [L, 1, K, P, E], v [L, 1, K, E, P]), land in the slots just before `index`."""
    slots = cache.k.shape[3]

    def ring(prompt, cache_array, axis):
        widths = [(0, 0)] * prompt.ndim
        widths[axis] = (0, slots - prompt.shape[axis])
        rolled = jnp.roll(jnp.pad(prompt, widths), cache.index - length, axis=axis)  # token j: age length - j
        return jnp.where(take_b.reshape((1, -1) + (1,) * (cache_array.ndim - 2)), rolled, cache_array)

    lengths = jnp.where(take_b, length, cache.lengths)
    return RowCache(ring(prompt_k, cache.k, 3), ring(prompt_v, cache.v, 4), lengths, cache.index)
