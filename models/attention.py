"""Attention over segment ids and positions, by one of several implementations.

    out_bthe = attend(q_bthe, k_bske, v_bske, segments_q_bt, positions_q_bt, segments_k_bs, positions_k_bs)

A query attends to a key when both carry the same non-zero segment id and the key's position is
not after the query's, so padding (segment 0, left or right), packed sequences and causality are
one rule. Shapes: B batch, T queries, S keys, H query heads, K KV heads (H = K x G), E head_dim.
Scores, softmax and log-sum-exp are fp32; the matmuls take the inputs' dtype.

Implementations (`ModelConfig.attention`):
- `blockwise` (plain JAX, every backend): queries and keys in blocks with an online softmax (a
  running max and sum per query, in fp32); the backward pass recomputes each block's scores from
  the saved log-sum-exp, so neither direction ever holds the [T, S] scores. Blocks with no allowed
  pair (the upper triangle of a causal mask, other segments) are skipped.
- `xla`: the scores [B, K, G, T, S] materialised and one softmax (the reference; cheapest for short
  sequences, quadratic in memory).
- `cudnn`: `jax.nn.dot_product_attention` with cuDNN's fused kernel on NVIDIA GPUs, for batches it
  can mask (causal, one segment per row, right padding only); other batches take `blockwise`.
- `splash`: JAX's Pallas splash-attention kernel for TPUs (block-sparse: it skips masked blocks,
  takes segment ids natively, and has a fused backward), with its causal mask; it covers every
  batch whose positions grow with the slot inside each segment (padding on either side, packing),
  checked on the device, and lengths that are multiples of 128. Elsewhere `blockwise`. On a mesh
  the kernel runs inside `shard_map` (a Mosaic kernel cannot be partitioned by the compiler): rows
  over the batch axes, heads over `tensor`, each shard building its own kernel for its local heads.
  Compiled for anything but a TPU it runs in Pallas' interpreter (slow; for tests). Mosaic compiles
  its bf16 matmuls at the default precision only: `jax_default_matmul_precision=highest` fails it.
- `auto`: `cudnn` on a GPU, `splash` on a TPU, else `blockwise`; sequences that fit one block
  (T and S <= 512) take `xla`, since one block is the whole score matrix anyway and the plain path
  has no loop to run.
The platform is the one the program is compiled for: the mesh's devices' (`target_platform`), so a
program compiled for a TPU topology on a CPU host is the one a TPU host compiles.
A query with no allowed key (a padding row) gets zeros from `blockwise` and `cudnn` and the mean of
the values from `xla`; either way nothing reads it.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec
from jaxrl.models.config import ATTENTION as IMPLEMENTATIONS

from jaxrl.errors import JaxrlError
from jaxrl.sharding import LogicalMesh, target_platform

NEG_INF = -1e30
BLOCK_Q, BLOCK_K = 512, 512


def allowed(segments_q, positions_q, segments_k, positions_k):
    """bool [B, T, S]: may query t see key s."""
    same = segments_q[:, :, None] == segments_k[:, None, :]
    return same & (segments_k[:, None, :] > 0) & (positions_k[:, None, :] <= positions_q[:, :, None])


def xla_attention(q_bthe, k_bske, v_bske, allowed_bts):
    """The scores materialised: fp32 [B, K, G, T, S], one softmax. Returns [B, T, H, E]."""
    b, t, h, e = q_bthe.shape
    kv_heads = k_bske.shape[2]
    q = q_bthe.reshape(b, t, kv_heads, h // kv_heads, e)
    scores = jnp.einsum("btkge,bske->bkgts", q, k_bske, preferred_element_type=jnp.float32)
    scores = jnp.where(allowed_bts[:, None, None], scores / math.sqrt(e), NEG_INF)
    probs = jax.nn.softmax(scores, axis=-1).astype(v_bske.dtype)
    return jnp.einsum("bkgts,bske->btkge", probs, v_bske).reshape(b, t, h, e)


def resolve(implementation: str, t: int, s: int, platform: str) -> str:
    """The implementation `attend` runs for T queries and S keys compiled for `platform`."""
    if implementation not in IMPLEMENTATIONS:
        raise JaxrlError(f"attention={implementation!r}; choose one of {', '.join(IMPLEMENTATIONS)}")
    if implementation == "auto":
        if t <= BLOCK_Q and s <= BLOCK_K:
            return "xla"
        implementation = {"gpu": "cudnn", "tpu": "splash"}.get(platform, "blockwise")
    if implementation == "splash" and not splash_fits(t, s):
        return "blockwise"
    return implementation


def splash_fits(t: int, s: int) -> bool:
    """Whether the splash kernel takes T queries and S keys: self-attention in blocks of 128."""
    return t == s and t % 128 == 0


def attend(
    q_bthe,
    k_bske,
    v_bske,
    segments_q,
    positions_q,
    segments_k,
    positions_k,
    implementation="auto",
    mesh: LogicalMesh | None = None,
):
    """Attention of every query to the keys its segment and position allow. Returns [B, T, H, E]
    in v's dtype. `implementation`: one of IMPLEMENTATIONS (see the module docstring); `mesh`: the
    mesh the program runs on (its devices decide the platform; splash shards over it)."""
    platform = target_platform(mesh)
    implementation = resolve(implementation, q_bthe.shape[1], k_bske.shape[1], platform)
    masks = (segments_q.astype(jnp.int32), positions_q.astype(jnp.int32))
    masks += (segments_k.astype(jnp.int32), positions_k.astype(jnp.int32))
    if implementation == "xla":
        return xla_attention(q_bthe, k_bske, v_bske, allowed(*masks))
    if implementation == "cudnn":
        return cudnn_attention(q_bthe, k_bske, v_bske, *masks, platform=platform)
    if implementation == "splash":
        return splash_attention(q_bthe, k_bske, v_bske, *masks, interpret=platform != "tpu", mesh=mesh)
    return blockwise_attention(q_bthe, k_bske, v_bske, *masks)


# -- blockwise ------------------------------------------------------------------------------------


def _blocks(x, size: int, axis: int = 1):
    """Pads `axis` to a multiple of `size` (zeros) and moves the block index to the front:
    [B, N, ...] -> [N / size, B, size, ...]."""
    n = x.shape[axis]
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, -n % size)
    x = jnp.pad(x, pad)
    shape = x.shape[:axis] + (x.shape[axis] // size, size) + x.shape[axis + 1 :]
    return jnp.moveaxis(x.reshape(shape), axis, 0)


def _unblocks(x, n: int):
    """[N / size, B, size, ...] -> [B, N, ...] (the padding cut off)."""
    x = jnp.moveaxis(x, 0, 1)
    return x.reshape(x.shape[0], -1, *x.shape[3:])[:, :n]


def _block_scores(q_bqkge, k_bske, mask_bqs, scale):
    """fp32 scores [B, K, G, q, s] of one block pair, masked with NEG_INF."""
    s = jnp.einsum("bqkge,bske->bkgqs", q_bqkge, k_bske, preferred_element_type=jnp.float32) * scale
    return jnp.where(mask_bqs[:, None, None], s, NEG_INF)


def _block_flags(sq_blocks, pq_blocks, sk_blocks, pk_blocks):
    """bool [nq, nk]: does query block i see any key of block j (computed a block at a time)."""

    def row(args):
        sq_i, pq_i = args
        return jax.vmap(lambda sk_j, pk_j: jnp.any(allowed(sq_i, pq_i, sk_j, pk_j)))(sk_blocks, pk_blocks)

    return jax.lax.map(row, (sq_blocks, pq_blocks))


def _forward(q, k, v, sq, pq, sk, pk, block_q, block_k):
    """(out fp32 [B, T, K, G, E], log-sum-exp fp32 [B, K, G, T]; +inf where a query sees nothing).

    Each query block visits only the key blocks it sees, in a while loop (a `lax.cond` per block
    would make JAX keep every block's scores when this runs inside a differentiated scan)."""
    b, t, kv, g, e = q.shape
    scale = 1.0 / math.sqrt(e)
    k_blocks, v_blocks = _blocks(k, block_k), _blocks(v, block_k)
    sk_blocks, pk_blocks = _blocks(sk, block_k), _blocks(pk, block_k)
    q_blocks, sq_blocks, pq_blocks = _blocks(q, block_q), _blocks(sq, block_q), _blocks(pq, block_q)
    flags = _block_flags(sq_blocks, pq_blocks, sk_blocks, pk_blocks)

    def one_q_block(args):
        q_i, sq_i, pq_i, flags_i = args
        visit = jnp.argsort(~flags_i, stable=True)  # the key blocks it sees first, in order

        def one_k_block(carry):
            n, top, total, acc = carry  # running max [B,K,G,q], sum [B,K,G,q], weighted values [B,q,K,G,E]
            j = visit[n]
            k_j, v_j, sk_j, pk_j = (x[j] for x in (k_blocks, v_blocks, sk_blocks, pk_blocks))
            mask = allowed(sq_i, pq_i, sk_j, pk_j)
            s = _block_scores(q_i, k_j, mask, scale)
            new_top = jnp.maximum(top, jnp.max(s, axis=-1))
            p = jnp.where(mask[:, None, None], jnp.exp(s - new_top[..., None]), 0.0)
            rescale = jnp.exp(top - new_top)
            pv = jnp.einsum("bkgqs,bske->bqkge", p.astype(v_j.dtype), v_j, preferred_element_type=jnp.float32)
            acc = acc * jnp.moveaxis(rescale, -1, 1)[..., None] + pv
            return n + 1, new_top, total * rescale + jnp.sum(p, axis=-1), acc

        init = (
            jnp.zeros((), jnp.int32),
            jnp.full((b, kv, g, block_q), -jnp.inf, jnp.float32),
            jnp.zeros((b, kv, g, block_q), jnp.float32),
            jnp.zeros((b, block_q, kv, g, e), jnp.float32),
        )
        seen_blocks = jnp.sum(flags_i)
        _, top, total, acc = jax.lax.while_loop(lambda c: c[0] < seen_blocks, one_k_block, init)
        seen = total > 0
        out = acc / jnp.moveaxis(jnp.where(seen, total, 1.0), -1, 1)[..., None]
        lse = jnp.where(seen, top + jnp.log(jnp.where(seen, total, 1.0)), jnp.inf)
        return out, lse

    out, lse = jax.lax.map(one_q_block, (q_blocks, sq_blocks, pq_blocks, flags))
    return _unblocks(out, t), jnp.moveaxis(lse, 0, 3).reshape(b, kv, g, -1)[..., :t]


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8))
def _blockwise(q, k, v, sq, pq, sk, pk, block_q, block_k):
    return _forward(q, k, v, sq, pq, sk, pk, block_q, block_k)[0].astype(v.dtype)


def _blockwise_fwd(q, k, v, sq, pq, sk, pk, block_q, block_k):
    out, lse = _forward(q, k, v, sq, pq, sk, pk, block_q, block_k)
    out = out.astype(v.dtype)
    return out, (q, k, v, sq, pq, sk, pk, out, lse)


def _blockwise_bwd(block_q, block_k, residuals, d_out):
    """Recomputes each block's probabilities from the log-sum-exp: dV = P^T dO, dS = P (dO V^T -
    rowsum(dO O)), dQ = dS K / sqrt(E), dK = dS^T Q / sqrt(E); all sums in fp32."""
    q, k, v, sq, pq, sk, pk, out, lse = residuals
    b, t, kv, g, e = q.shape
    scale = 1.0 / math.sqrt(e)
    d_out = d_out.astype(jnp.float32)
    delta = jnp.einsum("btkge,btkge->bkgt", d_out, out.astype(jnp.float32))  # rowsum(dO * O)
    q_blocks, do_blocks = _blocks(q, block_q), _blocks(d_out, block_q)
    sq_blocks, pq_blocks = _blocks(sq, block_q), _blocks(pq, block_q)
    lse_blocks, delta_blocks = _blocks(lse, block_q, axis=3), _blocks(delta, block_q, axis=3)

    def one_k_block(dq, xs):
        k_j, v_j, sk_j, pk_j = xs

        def one_q_block(carry, ys):
            dk_j, dv_j, dq = carry
            i, q_i, do_i, sq_i, pq_i, lse_i, delta_i = ys
            mask = allowed(sq_i, pq_i, sk_j, pk_j)

            def update(carry):
                dk_j, dv_j, dq = carry
                s = _block_scores(q_i, k_j, mask, scale)
                p = jnp.where(mask[:, None, None], jnp.exp(s - lse_i[..., None]), 0.0)  # [B,K,G,q,s]
                dv_j = dv_j + jnp.einsum("bkgqs,bqkge->bske", p, do_i)
                dp = jnp.einsum("bqkge,bske->bkgqs", do_i, v_j.astype(jnp.float32))
                ds = p * (dp - delta_i[..., None]) * scale
                dk_j = dk_j + jnp.einsum("bkgqs,bqkge->bske", ds, q_i.astype(jnp.float32))
                dq_i = jnp.einsum("bkgqs,bske->bqkge", ds, k_j.astype(jnp.float32))
                start = (0, i * block_q, 0, 0, 0)
                dq = jax.lax.dynamic_update_slice(dq, jax.lax.dynamic_slice(dq, start, dq_i.shape) + dq_i, start)
                return dk_j, dv_j, dq

            return jax.lax.cond(jnp.any(mask), update, lambda c: c, carry), None

        zeros = jnp.zeros(k_j.shape, jnp.float32)
        ids = jnp.arange(q_blocks.shape[0], dtype=jnp.int32)
        ys = (ids, q_blocks, do_blocks, sq_blocks, pq_blocks, lse_blocks, delta_blocks)
        (dk_j, dv_j, dq), _ = jax.lax.scan(one_q_block, (zeros, zeros, dq), ys)
        return dq, (dk_j, dv_j)

    dq = jnp.zeros((b, q_blocks.shape[0] * block_q, kv, g, e), jnp.float32)
    xs = (_blocks(k, block_k), _blocks(v, block_k), _blocks(sk, block_k), _blocks(pk, block_k))
    dq, (dk, dv) = jax.lax.scan(one_k_block, dq, xs)
    s = k.shape[1]
    dq, dk, dv = dq[:, :t].astype(q.dtype), _unblocks(dk, s).astype(k.dtype), _unblocks(dv, s).astype(v.dtype)
    return dq, dk, dv, None, None, None, None


_blockwise.defvjp(_blockwise_fwd, _blockwise_bwd)


def blockwise_attention(q_bthe, k_bske, v_bske, sq, pq, sk, pk, block_q: int = BLOCK_Q, block_k: int = BLOCK_K):
    """Memory-efficient attention (see the module docstring). Returns [B, T, H, E] in v's dtype."""
    b, t, h, e = q_bthe.shape
    kv = k_bske.shape[2]
    block_q, block_k = min(block_q, t), min(block_k, k_bske.shape[1])
    q = q_bthe.reshape(b, t, kv, h // kv, e)
    out = _blockwise(q, k_bske, v_bske, sq, pq, sk, pk, block_q, block_k)
    return out.reshape(b, t, h, e)


# -- cuDNN ----------------------------------------------------------------------------------------


def cudnn_attention(q_bthe, k_bske, v_bske, sq, pq, sk, pk, platform: str | None = None):
    """cuDNN's fused attention for the batches its masks describe, `blockwise` for the rest.

    cuDNN masks by causality and per-row lengths of a right-padded batch: our rule when every row
    is one segment starting at slot 0 with positions 0, 1, 2, ... (an SFT batch without packing).
    That is checked on the device and `lax.cond` picks the kernel, so it works under jit. cuDNN's
    kernel takes bf16 / fp16 only: fp32 inputs, other platforms (`platform`: the target's, default
    the host's) and cached keys take `blockwise`."""
    unsupported = q_bthe.dtype not in (jnp.bfloat16, jnp.float16) or sq.shape != sk.shape
    if (platform or jax.default_backend()) != "gpu" or unsupported:
        return blockwise_attention(q_bthe, k_bske, v_bske, sq, pq, sk, pk)
    lengths = jnp.sum(sq > 0, axis=1).astype(jnp.int32)
    slots = jnp.arange(sq.shape[1], dtype=jnp.int32)[None]
    in_row = slots < lengths[:, None]
    plain = jnp.all(sq == in_row) & jnp.all(jnp.where(in_row, pq == slots, True)) & jnp.all(sq == sk)
    plain = plain & jnp.all(pq == pk)

    def fused():
        return jax.nn.dot_product_attention(
            q_bthe,
            k_bske,
            v_bske,
            is_causal=True,
            query_seq_lengths=lengths,
            key_value_seq_lengths=lengths,
            implementation="cudnn",
        )

    return jax.lax.cond(plain, fused, lambda: blockwise_attention(q_bthe, k_bske, v_bske, sq, pq, sk, pk))


# -- Pallas splash (TPU) ---------------------------------------------------------------------------


def positions_follow_slots(segments_bt, positions_bt):
    """bool []: inside every row each non-zero segment is one run of slots whose positions grow with
    the slot. Then 'key position not after the query's' is 'key slot not after the query's', the
    causal mask a kernel computes from indices."""
    same = (segments_bt[:, 1:] == segments_bt[:, :-1]) & (segments_bt[:, 1:] > 0)
    growing = jnp.all(jnp.where(same, positions_bt[:, 1:] > positions_bt[:, :-1], True))
    first = jnp.ones_like(segments_bt[:, :1], bool)
    runs = (segments_bt > 0) & jnp.concatenate([first, segments_bt[:, 1:] != segments_bt[:, :-1]], axis=1)
    ids = jnp.sort(segments_bt, axis=1)
    distinct = (ids > 0) & jnp.concatenate([first, ids[:, 1:] != ids[:, :-1]], axis=1)
    return growing & jnp.all(jnp.sum(runs, axis=1) == jnp.sum(distinct, axis=1))


def _splash_kernel(interpret: bool):
    """[B, T, H, E] q (pre-scaled), [B, S, K, E] k and v, int32 [B, T] / [B, S] segment ids ->
    [B, T, H, E]: one MQA kernel per KV head (its G query heads share it), built for these shapes."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as masks

    def run(q_bthe, k_bske, v_bske, sq, sk):
        b, t, h, e = q_bthe.shape
        s, kv = k_bske.shape[1], k_bske.shape[2]
        g = h // kv
        block = next(n for n in (512, 256, 128) if t % n == 0 and s % n == 0)
        sizes = splash.BlockSizes(
            block_q=block, block_kv=block, block_q_dkv=block, block_kv_dkv=block, block_q_dq=block, block_kv_dq=block
        )
        mask = masks.MultiHeadMask([masks.CausalMask((t, s)) for _ in range(g)])
        kernel = splash.make_splash_mqa(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)
        per_kv_head = jax.vmap(lambda q, k, v, ids: kernel(q, k, v, segment_ids=ids), in_axes=(0, 0, 0, None))
        q = q_bthe.reshape(b, t, kv, g, e).transpose(0, 2, 3, 1, 4)  # [B, K, G, T, E]
        k, v = k_bske.transpose(0, 2, 1, 3), v_bske.transpose(0, 2, 1, 3)  # [B, K, S, E]
        out = jax.vmap(per_kv_head)(q, k, v, splash.SegmentIds(q=sq, kv=sk))  # [B, K, G, T, E]
        return out.transpose(0, 3, 1, 2, 4).reshape(b, t, h, e)

    return run


def _sharded(run, mesh: LogicalMesh, q_bthe, k_bske, v_bske, sq, sk):
    """`run` inside `shard_map` on `mesh`: rows over the batch axes, query and KV heads over the
    heads' axis. KV heads that do not split over it (fewer than its size) are repeated to one per
    query head first, so every shard holds the KV heads of its own query heads."""
    b, _, h, _ = q_bthe.shape
    rows = mesh.spec(("batch",), (b,))[0]
    heads = mesh.spec(("heads",), (h,))[0]
    kv_heads = mesh.spec(("kv_heads",), (k_bske.shape[2],))[0]
    if heads != kv_heads:
        g = h // k_bske.shape[2]
        k_bske, v_bske = jnp.repeat(k_bske, g, axis=2), jnp.repeat(v_bske, g, axis=2)
    by_head, by_row = PartitionSpec(rows, None, heads, None), PartitionSpec(rows, None)
    return jax.shard_map(
        run,
        mesh=mesh.mesh,
        in_specs=(by_head, by_head, by_head, by_row, by_row),
        out_specs=by_head,
        check_vma=False,
    )(q_bthe, k_bske, v_bske, sq, sk)


def splash_attention(
    q_bthe, k_bske, v_bske, sq, pq, sk, pk, interpret: bool | None = None, mesh: LogicalMesh | None = None
):
    """The Pallas splash kernel for the batches its causal mask plus segment ids describe,
    `blockwise` for the rest. Returns [B, T, H, E]. interpret: Pallas' interpreter (default: unless
    the target, `mesh`'s devices or else the host, is a TPU); on a mesh of more than one device the
    kernel runs per shard (`_sharded`)."""
    b, t, h, e = q_bthe.shape
    if not splash_fits(t, k_bske.shape[1]):
        return blockwise_attention(q_bthe, k_bske, v_bske, sq, pq, sk, pk)
    interpret = target_platform(mesh) != "tpu" if interpret is None else interpret
    run = _splash_kernel(interpret)

    def fused():
        q = (q_bthe * (1.0 / math.sqrt(e))).astype(q_bthe.dtype)
        if mesh is None or mesh.mesh.size == 1:
            out = run(q, k_bske, v_bske, sq, sk)
        else:
            out = _sharded(run, mesh, q, k_bske, v_bske, sq, sk)
        return out.astype(v_bske.dtype)

    covered = positions_follow_slots(sq, pq) & jnp.all(sq == sk) & jnp.all(pq == pk)
    return jax.lax.cond(covered, fused, lambda: blockwise_attention(q_bthe, k_bske, v_bske, sq, pq, sk, pk))
