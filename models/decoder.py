"""One NNX decoder for Llama, Qwen2 and OLMo-2.

The families differ only by `ModelConfig` flags. Per-layer weights are stacked on a leading
`layers` axis and run with `lax.scan`, so compile time does not grow with depth (on CPU the pass
without a cache unrolls it, `layer_unroll`, and a decode loop runs the layers on weights split
before it, `decode_layers`). Shapes:
B batch, T new tokens, S key slots (T without a cache), D hidden, H / K query / KV heads,
E head_dim, F mlp, V vocab, L layers.

Masking is by segment ids and positions: a query attends to a key when both have the same
non-zero segment id and the key's position is not after the query's. Padding is segment 0, so
left or right padding and packed sequences all work the same way. Without a cache attention is
`jaxrl.models.attention.attend` (by default blockwise: the [T, S] scores never exist); with a
cache the new tokens attend to the cache's slots with the scores materialised (T is small).
"""

from __future__ import annotations

import dataclasses
import math
from operator import itemgetter

import jax
import jax.numpy as jnp
from flax import nnx
from jaxrl.models.attention import NEG_INF, allowed, attend
from jaxrl.models.config import ModelConfig
from jaxrl.models.row_cache import RingWindow, RowCache, advance, ring_attention, window

from jaxrl.sharding import LogicalMesh, constrain, target_platform

# The cache's layouts after its leading layer axis: b batch, k KV head, s slot, e head_dim. Keys
# keep slots beside head_dim and values put slots last: the orders XLA's attention matmuls want, so
# decoding reads each layer's cache in place instead of first copying it transposed.
K_CACHE_LAYOUT, V_CACHE_LAYOUT = "bkse", "bkes"
_CACHE_AXIS_NAMES = {"b": "batch", "k": "kv_heads", "s": "seq", "e": None}


def cache_axes(layout: str) -> tuple:
    """Logical axes of a stacked cache array in `layout` (K_CACHE_LAYOUT or V_CACHE_LAYOUT)."""
    return ("layers",) + tuple(_CACHE_AXIS_NAMES[a] for a in layout)


def cache_shape(config: ModelConfig, batch: int, slots: int, layout: str) -> tuple[int, ...]:
    """Shape of a stacked cache array in `layout`: [L] + the sizes of b, k, s, e in that order."""
    sizes = {"b": batch, "k": config.num_kv_heads, "s": slots, "e": config.head_dim}
    return (config.num_layers,) + tuple(sizes[a] for a in layout)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
    """Keys and values of every layer for S slots, and where the next tokens go.

    k: [L, B, K, S, E] and v: [L, B, K, E, S] in the compute dtype (K_CACHE_LAYOUT and
    V_CACHE_LAYOUT); segment_bs: int32 [B, S], 0 for empty slots;
    position_bs: int32 [B, S]; index: int32 scalar, the first slot the next call writes.
    """

    k: jax.Array
    v: jax.Array
    segment_bs: jax.Array
    position_bs: jax.Array
    index: jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class SharedPrompts:
    """Prompts that `group` consecutive rows each continue (GRPO's completions of one prompt), run
    once instead of once per row: every layer's keys and values k, v [L, N, P, K, E] (compute dtype,
    after RoPE; [N, P, K, E] inside a layer) and the prompts' segment ids and positions int32
    [N, P]. Row b continues prompt b // group."""

    k: jax.Array
    v: jax.Array
    segments: jax.Array
    positions: jax.Array
    group: int = dataclasses.field(metadata={"static": True})

    def each_row(self, x_n):
        """[N, ...] -> [N x group, ...]: a prompt's array for each row that continues it."""
        return jnp.repeat(x_n, self.group, axis=0)


def default_positions(segment_ids_bt):
    """int32 [B, T]: each token's count of non-padding tokens before it (0 for padding)."""
    return jnp.maximum(jnp.cumsum(segment_ids_bt > 0, axis=1) - 1, 0)


def rms_norm(x, weight, eps: float, weight_fp32: bool, axes=(-1,)):
    """RMSNorm over `axes` in fp32; OLMo-2 multiplies by the weight before casting back."""
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(jnp.square(xf), axis=axes, keepdims=True) + eps)
    if weight_fp32:
        return (weight.astype(jnp.float32) * xf).astype(x.dtype)
    return weight.astype(x.dtype) * xf.astype(x.dtype)


def rope_frequencies(config: ModelConfig) -> jax.Array:
    """Inverse frequencies [E/2] (fp32), with linear or llama3 scaling applied."""
    e = config.head_dim
    inv = 1.0 / (config.rope_theta ** (jnp.arange(0, e, 2, dtype=jnp.float32) / e))
    s = config.rope_scaling
    if s is None:
        return inv
    if s.rope_type == "linear":
        return inv / s.factor
    low_wavelen = s.original_max_position_embeddings / s.low_freq_factor
    high_wavelen = s.original_max_position_embeddings / s.high_freq_factor
    wavelen = 2 * math.pi / inv
    scaled = jnp.where(wavelen > low_wavelen, inv / s.factor, inv)
    smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (
        s.high_freq_factor - s.low_freq_factor
    )
    smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return jnp.where(medium, smoothed, scaled)


def apply_rope(x_bthe, cos_bte, sin_bte):
    """Rotate-half RoPE (the HF convention): halves of the head dim are the pair."""
    x1, x2 = jnp.split(x_bthe.astype(jnp.float32), 2, axis=-1)
    cos, sin = cos_bte[:, :, None, :], sin_bte[:, :, None, :]
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_bthe.dtype)


def cached_attention(q_bthe, k, v, allowed_bts, k_layout: str = K_CACHE_LAYOUT, v_layout: str = V_CACHE_LAYOUT):
    """Grouped-query attention of new tokens to a cache's slots, with fp32 scores and softmax.
    Returns [B, T, H, E]. k, v: in the order their layout strings name (the cache's)."""
    b, t, h, e = q_bthe.shape
    kv_heads = k.shape[k_layout.index("k")]
    q = q_bthe.reshape(b, t, kv_heads, h // kv_heads, e)
    scores = jnp.einsum(f"btkge,{k_layout}->bkgts", q, k, preferred_element_type=jnp.float32)
    scores = jnp.where(allowed_bts[:, None, None], scores / math.sqrt(e), NEG_INF)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum(f"bkgts,{v_layout}->btkge", probs, v)
    return out.reshape(b, t, h, e)


def write_layer(cache, new_btke, layer, index, layout: str):
    """Writes `new_btke` into the stacked `cache` ([L] + `layout`, e.g. "bkse") at slots
    [index, index+T) of `layer`. Returns (the updated cache, that layer's slice in `layout`)."""
    new = jnp.einsum(f"btke->{layout.replace('s', 't')}", new_btke.astype(cache.dtype))[None]
    zero = jnp.zeros((), jnp.int32)
    start = (layer,) + tuple(index if axis == "s" else zero for axis in layout)
    cache = jax.lax.dynamic_update_slice(cache, new, start)
    return cache, jax.lax.dynamic_index_in_dim(cache, layer, axis=0, keepdims=False)


class Layers(nnx.Module):
    """The stacked weights of all L layers (leading axis `layers`)."""

    def __init__(self, c: ModelConfig, rngs: nnx.Rngs):
        L, D, F, H, K, E = (
            c.num_layers,
            c.hidden_size,
            c.intermediate_size,
            c.num_heads,
            c.num_kv_heads,
            c.head_dim,
        )
        normal = nnx.initializers.normal(0.02)
        dtype = c.weight_dtype

        def weight(shape, axes):
            return nnx.Param(normal(rngs.params(), shape, dtype), axes=axes)

        def const(value, shape, axes):
            return nnx.Param(jnp.full(shape, value, dtype), axes=axes)

        self.q = weight((L, D, H, E), ("layers", "embed", "heads", "head_dim"))
        self.k = weight((L, D, K, E), ("layers", "embed", "kv_heads", "head_dim"))
        self.v = weight((L, D, K, E), ("layers", "embed", "kv_heads", "head_dim"))
        self.o = weight((L, H, E, D), ("layers", "heads", "head_dim", "embed"))
        self.q_bias = const(0.0, (L, H, E), ("layers", "heads", "head_dim")) if c.qkv_bias else None
        self.k_bias = const(0.0, (L, K, E), ("layers", "kv_heads", "head_dim")) if c.qkv_bias else None
        self.v_bias = const(0.0, (L, K, E), ("layers", "kv_heads", "head_dim")) if c.qkv_bias else None
        self.o_bias = const(0.0, (L, D), ("layers", "embed")) if c.o_bias else None
        self.q_norm = const(1.0, (L, H, E), ("layers", "heads", "head_dim")) if c.qk_norm else None
        self.k_norm = const(1.0, (L, K, E), ("layers", "kv_heads", "head_dim")) if c.qk_norm else None
        self.gate = weight((L, D, F), ("layers", "embed", "mlp"))
        self.up = weight((L, D, F), ("layers", "embed", "mlp"))
        self.down = weight((L, F, D), ("layers", "mlp", "embed"))
        self.attn_norm = const(1.0, (L, D), ("layers", "embed"))
        self.mlp_norm = const(1.0, (L, D), ("layers", "embed"))

    def arrays(self) -> dict[str, jax.Array]:
        """The stacked weights as plain arrays, absent optional ones left out."""
        return {k: v[...] for k, v in vars(self).items() if isinstance(v, nnx.Param)}


def project(x_bt_in, w_in_out, contracted: int = 1, flat: bool = False):
    """x's trailing `contracted` dims times w's leading ones: [B, T, *in] x [*in, *out] -> [B, T, *out].

    flat: as one 2-D matmul over all B x T tokens (what `block` does on CPU). As an einsum over
    (b, t), XLA's CPU backend contracts both token dims in the backward pass's weight gradients and
    first copies the activations transposed, element by element (~30 ms a layer on the GRPO bench;
    flat, the update ran ~10% faster). On TPU the einsum stays: flattening B x T there changed the
    SFT step's collectives and added 1.1 GiB of temporaries on v5p-64."""
    if not flat:
        spec = "abcdefgh"
        x_in, w_out = spec[:contracted], spec[contracted : w_in_out.ndim]
        return jnp.einsum(f"yz{x_in},{x_in}{w_out}->yz{w_out}", x_bt_in, w_in_out)
    b, t = x_bt_in.shape[:2]
    w_2d = w_in_out.reshape(math.prod(w_in_out.shape[:contracted]), -1)
    y = x_bt_in.reshape(b * t, w_2d.shape[0]) @ w_2d
    return y.reshape(b, t, *w_in_out.shape[contracted:])


def block(c: ModelConfig, lm: LogicalMesh | None, p, x_btd, rope, mask, kv=None):
    """One decoder layer on one layer's weights `p`. Without a cache, `mask` is (segment ids,
    positions [B, T], this layer's `SharedPrompts` or None) and `attend` applies them with
    `c.attention`'s implementation. With `kv = (k_all, v_all, layer, index)` (the whole stacked
    cache), `mask` is bool [B, T, S]: the layer writes its new keys/values into the cache and
    attends to all its slots. Returns (x_btd, the new tokens' (k, v) [B, T, K, E] without a cache,
    else the updated (k_all, v_all))."""
    dt = c.compute_dtype
    cos, sin = rope
    norm = lambda x, w, axes=(-1,): rms_norm(x, w, c.rms_norm_eps, c.norm_weight_fp32, axes)
    flat = target_platform(lm) == "cpu"
    mm = lambda x, w, contracted=1: project(x, w.astype(dt), contracted, flat)

    h = x_btd if c.post_norm else norm(x_btd, p["attn_norm"])
    q, k, v = mm(h, p["q"]), mm(h, p["k"]), mm(h, p["v"])  # [B, T, H or K, E]
    if c.qkv_bias:
        q, k, v = q + p["q_bias"].astype(dt), k + p["k_bias"].astype(dt), v + p["v_bias"].astype(dt)
    if c.qk_norm:  # over the whole projection, all heads together
        q, k = norm(q, p["q_norm"], (-2, -1)), norm(k, p["k_norm"], (-2, -1))
    q = constrain(lm, apply_rope(q, cos, sin), ("batch", "seq", "heads", None))
    k = constrain(lm, apply_rope(k, cos, sin), ("batch", "seq", "kv_heads", None))
    if kv is None:
        segments, positions, prefix = mask
        keys, values, segments_k, positions_k = k, v, segments, positions
        if prefix is not None:  # rows continue shared prompts: each attends to its prompt's keys first
            rows = prefix.each_row
            keys, values = jnp.concatenate([rows(prefix.k), k], 1), jnp.concatenate([rows(prefix.v), v], 1)
            segments_k = jnp.concatenate([rows(prefix.segments), segments], 1)
            positions_k = jnp.concatenate([rows(prefix.positions), positions], 1)
        heads = attend(q, keys, values, segments, positions, segments_k, positions_k, c.attention, lm)
        kv_out = (k, v)
    else:  # write the new keys/values into this layer's cache, attend to all slots
        k_all, v_all, layer, index = kv
        k_all, k = write_layer(k_all, k, layer, index, K_CACHE_LAYOUT)
        v_all, v = write_layer(v_all, v, layer, index, V_CACHE_LAYOUT)
        if isinstance(mask, RingWindow):  # a RowCache: read each row's own tokens only
            heads = ring_attention(q, k_all, v_all, layer, mask)
        else:
            heads = cached_attention(q, k.astype(dt), v.astype(dt), mask)
        kv_out = (k_all, v_all)
    out = mm(heads, p["o"], contracted=2)
    if c.o_bias:
        out = out + p["o_bias"].astype(dt)
    x_btd = x_btd + (norm(out, p["attn_norm"]) if c.post_norm else out)

    h = x_btd if c.post_norm else norm(x_btd, p["mlp_norm"])
    gated = jax.nn.silu(mm(h, p["gate"])) * mm(h, p["up"])
    gated = constrain(lm, gated, ("batch", "seq", "mlp"))
    out = mm(gated, p["down"])
    x_btd = x_btd + (norm(out, p["mlp_norm"]) if c.post_norm else out)
    return constrain(lm, x_btd, ("batch", "seq", None)), kv_out


def layer_unroll(c: ModelConfig, lm: LogicalMesh | None) -> int:
    """Layers per iteration of the layer scan without a cache: `c.scan_unroll`, or where it is 0
    the default of the mesh's platform (the default backend without a mesh): all layers on CPU,
    where one scanned layer's work is small beside the loop's own cost (the GRPO bench's update ran
    ~7% faster unrolled; partial unrolls gained nothing; the cached path has its own rule,
    `decode_layers`), 1 on TPU and GPU, where no measurement says otherwise, and 1 with
    `remat` (unrolled, XLA may merge a layer's recomputation with its forward pass and keep every
    activation: the plan of the study's 7B SFT step grew from < 32 GB to 155 GB per device)."""
    if c.scan_unroll:
        return min(c.scan_unroll, c.num_layers)
    return c.num_layers if target_platform(lm) == "cpu" and not c.remat else 1


def decode_layers(model: Decoder) -> tuple[dict[str, jax.Array], ...] | None:
    """The layers' weights for a decode loop, split once before it into L per-layer dicts, where
    `c.decode_layers` says (auto: on CPU); None where the loop scans the stacked weights. Pass them
    to every cached `hidden_states` call of the loop.

    On CPU a scanned layer first copies its weights out of the stacked arrays (a dynamic slice per
    matrix, every token: on the GRPO bench close to half a decode step's work); split weights are
    read in place and each layer's cache index is static. The barrier keeps XLA from
    moving the slices back into the loop. Elsewhere the scan stays (no measurement says otherwise,
    and compile time would grow with depth)."""
    c = model.config
    split = c.decode_layers == "split" or (c.decode_layers == "auto" and target_platform(model.mesh) == "cpu")
    if not split:
        return None
    stacked = model.layers.arrays()
    return jax.lax.optimization_barrier(tuple(jax.tree.map(itemgetter(i), stacked) for i in range(c.num_layers)))


def cache_plan(cache: KVCache | RowCache, segment_ids_bt, positions_bt):
    """(which slots the tokens see: bool [B, T, S], or a RingWindow for a RowCache; the slot the
    tokens are written from; a function (k, v) -> the updated cache) for T new tokens."""
    if isinstance(cache, RowCache):
        if segment_ids_bt.shape[1] != 1:
            raise ValueError(f"a RowCache takes one new token per row, got {segment_ids_bt.shape[1]}")
        return window(cache), cache.index, lambda k, v: advance(cache, k, v)
    write = lambda a, new: jax.lax.dynamic_update_slice_in_dim(a, new, cache.index, axis=1)
    seg_k, pos_k = write(cache.segment_bs, segment_ids_bt), write(cache.position_bs, positions_bt)
    t = segment_ids_bt.shape[1]
    mask = allowed(segment_ids_bt, positions_bt, seg_k, pos_k)
    return mask, cache.index, lambda k, v: KVCache(k, v, seg_k, pos_k, cache.index + t)


class Decoder(nnx.Module):
    """A causal LM. `Decoder(config, rngs=nnx.Rngs(0), mesh=lm)`; create it sharded with
    `jaxrl.models.init_decoder`, or load weights with `jaxrl.models.load_hf`."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs, mesh: LogicalMesh | None = None):
        self.config = config
        self.mesh = mesh
        V, D, dtype = config.vocab_size, config.hidden_size, config.weight_dtype
        self.embed = nnx.Param(nnx.initializers.normal(0.02)(rngs.params(), (V, D), dtype), axes=("vocab", "embed"))
        self.layers = Layers(config, rngs)
        self.final_norm = nnx.Param(jnp.ones((D,), dtype), axes=("embed",))
        self.lm_head = (
            None
            if config.tie_word_embeddings
            else nnx.Param(nnx.initializers.normal(0.02)(rngs.params(), (D, V), dtype), axes=("embed", "vocab"))
        )

    def hidden_states(
        self, tokens_bt, segment_ids_bt=None, positions_bt=None, cache=None, prompts=None, group=0, layers=None
    ):
        """Final-normed hidden states [B, T, D] (compute dtype) and the updated cache.

        segment_ids_bt: int [B, T], 0 for padding (default: all 1).
        positions_bt: int [B, T] (default: count of non-padding tokens before each token).
        cache: a KVCache (the T tokens go to slots [cache.index, cache.index + T)) or a RowCache
        (T = 1; rows of independent lengths, `jaxrl.models.row_cache`).
        layers: with a cache, the per-layer weights of `decode_layers`: the layers then run one
        after another on them instead of scanning the stacked weights.
        Without a cache, for prompts that groups of rows continue (GRPO's completions):
        group > 0: the rows are prompts, and every layer's keys and values come back in place of
        the cache as stacked `SharedPrompts` that `group` consecutive rows each continue;
        prompts: those `SharedPrompts`; each row's tokens also attend to its prompt's.
        """
        c, lm = self.config, self.mesh
        if segment_ids_bt is None:
            segment_ids_bt = jnp.ones(tokens_bt.shape, jnp.int32)
        segment_ids_bt = segment_ids_bt.astype(jnp.int32)
        if positions_bt is None:
            positions_bt = default_positions(segment_ids_bt)
        positions_bt = positions_bt.astype(jnp.int32)
        angles = positions_bt[..., None].astype(jnp.float32) * rope_frequencies(c)
        rope = (jnp.cos(angles), jnp.sin(angles))

        x = jnp.take(self.embed[...], tokens_bt, axis=0).astype(c.compute_dtype)
        if c.frozen_embedding_row is not None:
            # HF's padding_idx: the pad row's lookups pass no gradient back (masking the gathered
            # rows, not the [V, D] table, which a tied lm_head still trains through `unembed`)
            is_pad = (tokens_bt == c.frozen_embedding_row)[..., None]
            x = jnp.where(is_pad, jax.lax.stop_gradient(x), x)
        x = constrain(lm, x, ("batch", "seq", None))

        params = self.layers.arrays()
        if cache is None:

            def step(x, layer):
                p, prompt_kv = layer
                prefix = None if prompts is None else dataclasses.replace(prompts, k=prompt_kv[0], v=prompt_kv[1])
                x, kv = block(c, lm, p, x, rope, (segment_ids_bt, positions_bt, prefix))
                return x, (kv if group else None)

            unroll = layer_unroll(c, lm)
            if c.remat:  # inside a rolled scan nothing can merge the recomputation away
                step = jax.checkpoint(step, prevent_cse=unroll > 1)
            prompt_kv = None if prompts is None else (prompts.k, prompts.v)
            x, kv = jax.lax.scan(step, x, (params, prompt_kv), unroll=unroll)
            if group:
                cache = SharedPrompts(*kv, segment_ids_bt, positions_bt, group)
        else:
            # The whole stacked cache rides in the scan's carry and each layer writes only its new
            # slots into it, so XLA updates the buffer in place instead of copying every layer's
            # slice in and out of the scan on each call (what dominated one-token decode).
            mask, index, updated = cache_plan(cache, segment_ids_bt, positions_bt)

            def step(carry, layer):
                x, k_all, v_all = carry
                p, i = layer
                x, (k_all, v_all) = block(c, lm, p, x, rope, mask, (k_all, v_all, i, index))
                return (x, k_all, v_all), None

            if layers is None:
                layer_ids = jnp.arange(c.num_layers, dtype=jnp.int32)
                (x, k_all, v_all), _ = jax.lax.scan(step, (x, cache.k, cache.v), (params, layer_ids))
            else:  # static layer indices: each layer's cache is read and written where it lies
                carry = (x, cache.k, cache.v)
                for i, p in enumerate(layers):
                    carry, _ = step(carry, (p, i))
                x, k_all, v_all = carry
            cache = updated(k_all, v_all)
        x = rms_norm(x, self.final_norm[...], c.rms_norm_eps, c.norm_weight_fp32)
        return x, cache

    def unembed(self) -> jax.Array:
        """The output projection [D, V] (the transposed embedding when tied)."""
        return self.embed[...].T if self.lm_head is None else self.lm_head[...]

    def logits(self, h_btd) -> jax.Array:
        """fp32 logits [B, T, V] from hidden states."""
        w = self.unembed().astype(self.config.compute_dtype)
        out = jnp.einsum("btd,dv->btv", h_btd, w, preferred_element_type=jnp.float32)
        return constrain(self.mesh, out, ("batch", "seq", "vocab"))

    def __call__(self, tokens_bt, segment_ids_bt=None, positions_bt=None) -> jax.Array:
        """fp32 logits [B, T, V] for a batch without a cache."""
        h, _ = self.hidden_states(tokens_bt, segment_ids_bt, positions_bt)
        return self.logits(h)


def init_cache(config: ModelConfig, batch: int, slots: int, mesh: LogicalMesh | None = None) -> KVCache:
    """An empty cache of `slots` positions per row, sharded like the activations."""

    def zeros(layout):
        shape = cache_shape(config, batch, slots, layout)
        x = jnp.zeros(shape, config.compute_dtype)
        return x if mesh is None else jax.device_put(x, mesh.sharding(cache_axes(layout), shape))

    zeros_bs = jnp.zeros((batch, slots), jnp.int32)
    if mesh is not None:
        zeros_bs = jax.device_put(zeros_bs, mesh.sharding(("batch", "seq"), (batch, slots)))
    return KVCache(zeros(K_CACHE_LAYOUT), zeros(V_CACHE_LAYOUT), zeros_bs, zeros_bs, jnp.zeros((), jnp.int32))
