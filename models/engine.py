"""Continuous batching: a fixed number of decode slots, refilled as completions end.

    completions = sample(model, prompts, SamplingConfig(num_samples=8), slots=32)

The (prompt, sample) pairs wait in a queue, prompt-major. One jitted `lax.while_loop` takes turns
(two inner loops, so that no branch ever copies the cache):
- refill, when a slot is free and a pair waits: the next prompt is prefilled once into a buffer
  that its samples share (its cache, and each sample's first token drawn from its logits), and its
  waiting samples take the free slots, each copying the prompt's cache into its row;
- decode, otherwise: one token for every slot. The cache is a ring (`models.row_cache`): every
  row writes at one shared slot, holds its own number of tokens before it and attends to those
  only; a row that ends (EOS or the limit) frees its slot for the next turn.
When the queue is empty and at most half the slots of every batch shard are busy, the loop hands
back to the host, which moves each shard's busy rows into the first half of its own slots (one
gather, outside the loop, that no row crosses devices in) and decodes on half as many slots (down
to MIN_SLOTS_PER_SHARD per batch shard): the last long completions do not drag idle slots along.

The output is the same as `sample`'s for the same seed, in content and order: completion i*n + j
(prompt i, sample j) draws token t with the key `fold_in(fold_in(seed, i*n + j), t)` whichever slot
it lands in, so it depends on neither the slot count nor the mesh. Slots (and the cache) are split
over the mesh's batch axes; the weights are read where they are (use the sampling layout,
`models.params.sampling_copy`, so that no weight is gathered per token).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxrl.models.decoder import (
    K_CACHE_LAYOUT,
    V_CACHE_LAYOUT,
    Decoder,
    KVCache,
    cache_axes,
    cache_shape,
    decode_layers,
)
from jaxrl.models.row_cache import RowCache, place
from jaxrl.models.sampler import DecodeValues, SamplingConfig, checked_prompts, choose_tokens

from jaxrl.errors import JaxrlError
from jaxrl.shapes import bucket
from jaxrl.sharding import LogicalMesh, constrain, data_parallel_size, put

# Halving stops here: fewer rows per device than this make a decode step barely cheaper on an
# accelerator (it reads the same weights), and each slot count is one more compiled program.
MIN_SLOTS_PER_SHARD = 4


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Slots:
    """R decode slots. row: int32 [R], the completion each decodes (-1: free); step: int32 [R],
    the tokens that completion has; last: int32 [R], its latest token (the next one fed)."""

    cache: RowCache
    row: jax.Array
    step: jax.Array
    last: jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Buffer:
    """The prompt being handed out: its cache k [L, 1, K, P, E], v [L, 1, K, E, P], its length,
    and the first token and log-prob of each of its n samples (int32 / fp32 [n]); prompt: its
    index; taken: how many of its samples have a slot (n: none waits)."""

    k: jax.Array
    v: jax.Array
    length: jax.Array
    tokens: jax.Array
    logprobs: jax.Array
    prompt: jax.Array
    taken: jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Output:
    """tokens int32 / logprobs fp32 [N, C] and lengths int32 [N] of the N completions (prompt-major);
    decode_turns and slot_steps int32 [] count the decode turns and slots x decode turns run."""

    tokens: jax.Array
    logprobs: jax.Array
    lengths: jax.Array
    decode_turns: jax.Array
    slot_steps: jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Engine:
    slots: Slots
    buffer: Buffer
    next_prompt: jax.Array  # int32 [], the next prompt to prefill
    out: Output


def _draw(values: DecodeValues, logits_rv, rows_r, steps_r):
    """Tokens and log-probs [R] with completion r's key for its token `steps_r` (as `sample`)."""
    key = jax.random.key(values.seed)
    keys = jax.vmap(lambda r, t: jax.random.fold_in(jax.random.fold_in(key, r), t))(rows_r, steps_r)
    return choose_tokens(
        logits_rv,
        keys,
        values.temperature,
        values.top_k,
        values.top_p,
        greedy=values.greedy,
        truncate=values.truncate,
    )


def _record(out: Output, rows_r, steps_r, tokens_r, logprobs_r, keep_r) -> Output:
    """Writes each kept slot's token at (its completion, its step); the others go nowhere."""
    target = jnp.where(keep_r, rows_r, out.tokens.shape[0])  # out of range: dropped
    return dataclasses.replace(
        out,
        tokens=out.tokens.at[target, steps_r].set(tokens_r, mode="drop"),
        logprobs=out.logprobs.at[target, steps_r].set(logprobs_r, mode="drop"),
        lengths=out.lengths.at[target].set(steps_r + 1, mode="drop"),
    )


def _ends(values: DecodeValues, tokens_r, steps_r):
    """bool [R]: the token just drawn (the completion's token `steps_r`) ends it."""
    return jnp.isin(tokens_r, values.eos_ids) | (steps_r + 1 >= values.max_new_tokens)


def _prefill_next(model: Decoder, layers, i, prompts_bp, lengths_b, values, n: int) -> Buffer:
    """Prompt `i` prefilled into the buffer, its samples' first tokens drawn."""
    c = model.config
    p = prompts_bp.shape[1]
    tokens = jax.lax.dynamic_index_in_dim(prompts_bp, i, keepdims=True)  # [1, P], right-padded
    length = lengths_b[i]
    segments = (jnp.arange(p) < length).astype(jnp.int32)[None]
    zeros = lambda layout: jnp.zeros(cache_shape(c, 1, p, layout), c.compute_dtype)
    empty_1p = jnp.zeros((1, p), jnp.int32)
    empty = KVCache(zeros(K_CACHE_LAYOUT), zeros(V_CACHE_LAYOUT), empty_1p, empty_1p, jnp.zeros((), jnp.int32))
    h, cache = model.hidden_states(tokens, segments, cache=empty, layers=layers)
    logits = model.logits(jax.lax.dynamic_slice_in_dim(h, length - 1, 1, axis=1))[0, 0]
    rows = i * n + jnp.arange(n, dtype=jnp.int32)
    first, logprobs = _draw(values, jnp.broadcast_to(logits, (n, logits.shape[0])), rows, jnp.zeros_like(rows))
    return Buffer(cache.k, cache.v, length, first, logprobs, i, jnp.zeros((), jnp.int32))


def _place(state: Engine, values: DecodeValues, n: int) -> Engine:
    """The buffered prompt's waiting samples take free slots (lowest slot first, samples in order):
    each takes the prompt's cache into its row and records its first token."""
    s, b = state.slots, state.buffer
    free = s.row < 0
    rank = jnp.cumsum(free) - 1
    take = free & (rank < n - b.taken)
    sample_j = jnp.clip(b.taken + rank, 0, n - 1)
    row = jnp.where(take, b.prompt * n + sample_j, s.row)
    first, logprobs = b.tokens[sample_j], b.logprobs[sample_j]

    cache = place(s.cache, take, b.k, b.v, b.length)
    zero = jnp.zeros_like(s.step)
    out = _record(state.out, row, zero, first, logprobs, take)
    row = jnp.where(take & _ends(values, first, zero), -1, row)
    slots = Slots(cache, row, jnp.where(take, 1, s.step), jnp.where(take, first, s.last))
    buffer = dataclasses.replace(b, taken=b.taken + jnp.sum(take, dtype=jnp.int32))
    return dataclasses.replace(state, slots=slots, buffer=buffer, out=out)


def _decode_turn(model: Decoder, layers, state: Engine, values: DecodeValues) -> Engine:
    """One token for every slot; busy slots record theirs, and a row that ends frees its slot.
    layers: `decoder.decode_layers(model)`."""
    s, lm = state.slots, model.mesh
    busy = s.row >= 0
    ones = jnp.ones((s.row.shape[0], 1), jnp.int32)
    h, cache = model.hidden_states(s.last[:, None], ones, s.cache.lengths[:, None], cache=s.cache, layers=layers)
    logits = constrain(lm, model.logits(h)[:, 0], ("batch", "vocab"))
    tokens, logprobs = _draw(values, logits, jnp.maximum(s.row, 0), s.step)
    out = _record(state.out, s.row, s.step, tokens, logprobs, busy)
    row = jnp.where(busy & _ends(values, tokens, s.step), -1, s.row)
    cache = dataclasses.replace(cache, lengths=jnp.where(row >= 0, cache.lengths, 0))  # free: nothing to read
    slots = Slots(cache, row, s.step + busy, tokens)
    out = dataclasses.replace(out, decode_turns=out.decode_turns + 1, slot_steps=out.slot_steps + s.row.shape[0])
    return dataclasses.replace(state, slots=slots, out=out)


def _constrain_slots(lm: LogicalMesh | None, s: Slots) -> Slots:
    rows = lambda x: constrain(lm, x, ("batch",))
    cache = RowCache(
        constrain(lm, s.cache.k, cache_axes(K_CACHE_LAYOUT)),
        constrain(lm, s.cache.v, cache_axes(V_CACHE_LAYOUT)),
        rows(s.cache.lengths),
        s.cache.index,
    )
    return Slots(cache, rows(s.row), rows(s.step), rows(s.last))


def queue_empty(state: Engine, num_prompts, n: int):
    return (state.buffer.taken >= n) & (state.next_prompt >= num_prompts)


# The state is donated: its cache is updated in place, never held twice.
@functools.partial(jax.jit, static_argnames=("graphdef", "n", "hand_back_at"), donate_argnames=("state",))
def _run(graphdef, params, state: Engine, prompts_bp, lengths_b, num_prompts, values, *, n: int, hand_back_at: int):
    """Refill and decode turns until the queue is empty and at most `hand_back_at` slots are busy
    on every batch shard (the shrink that follows keeps each shard's rows on it)."""
    model = nnx.merge(graphdef, params)
    lm = model.mesh
    shards = data_parallel_size(lm)
    layers = decode_layers(model)

    def refill(state):  # the next prompt into the buffer when it is used up, then its samples placed
        buffer = jax.lax.cond(  # only the small buffer passes through the cond, never the cache
            state.buffer.taken >= n,
            lambda b, i: _prefill_next(model, layers, i, prompts_bp, lengths_b, values, n),
            lambda b, i: b,
            state.buffer,
            state.next_prompt,
        )
        next_prompt = state.next_prompt + (state.buffer.taken >= n)
        state = dataclasses.replace(state, buffer=buffer, next_prompt=next_prompt)
        return _place(state, values, n)

    def decode(state):
        state = dataclasses.replace(state, slots=_constrain_slots(lm, state.slots))
        return _decode_turn(model, layers, state, values)

    def can_refill(state):
        return jnp.any(state.slots.row < 0) & ~queue_empty(state, num_prompts, n)

    def going(state):
        busy = jnp.max(jnp.sum(by_shard(state.slots.row >= 0, shards), axis=1))
        return ~(queue_empty(state, num_prompts, n) & (busy <= hand_back_at))

    def phases(state):  # fill every free slot the queue can, then decode until one frees with pairs waiting
        state = jax.lax.while_loop(can_refill, refill, state)
        return jax.lax.while_loop(lambda st: going(st) & ~can_refill(st), decode, state)

    return jax.lax.while_loop(going, phases, state)


def halved(slots: int, shards: int) -> int:
    """The slot count after the next halving of `slots` over `shards` batch shards, or 0 where the
    engine stops halving (under MIN_SLOTS_PER_SHARD a shard, or not splitting evenly)."""
    half = slots // 2
    return half if half >= MIN_SLOTS_PER_SHARD * shards and half % shards == 0 else 0


def by_shard(x, shards: int, axis: int = 0):
    """[..., R, ...] -> [..., shards, R / shards, ...]: the slots of each batch shard on one row
    (the slots axis splits over the batch axes in blocks, so this moves nothing between devices)."""
    return x.reshape(*x.shape[:axis], shards, x.shape[axis] // shards, *x.shape[axis + 1 :])


@functools.partial(jax.jit, static_argnames=("slots", "shards"))
def _shrink(state: Engine, *, slots: int, shards: int = 1) -> Engine:
    """Keeps `slots` slots, `slots / shards` on each batch shard: its busy ones first (in slot
    order). Each shard keeps its own rows, so the cache never crosses devices (a gather across the
    sharded axis made the compiler hold the whole cache on every device)."""
    local = slots // shards
    keep = jnp.argsort(by_shard(state.slots.row < 0, shards), axis=1, stable=True)[:, :local]  # [shards, local]

    def pick(x, axis=0):
        taken = jax.vmap(lambda block, k: jnp.take(block, k, axis=axis), in_axes=(axis, 0), out_axes=axis)
        out = taken(by_shard(x, shards, axis), keep)
        return out.reshape(*x.shape[:axis], slots, *x.shape[axis + 1 :])

    s = state.slots
    cache = RowCache(pick(s.cache.k, 1), pick(s.cache.v, 1), pick(s.cache.lengths), s.cache.index)
    return dataclasses.replace(state, slots=Slots(cache, pick(s.row), pick(s.step), pick(s.last)))


@functools.partial(jax.jit, static_argnums=tuple(range(9)))
def _start(c, lm, slots: int, capacity: int, prompt_slots: int, prompts: int, new_bucket: int, pad_id: int, n: int):
    """An engine with every slot free and nothing buffered (c: the ModelConfig, lm: the mesh or
    None); capacity: cache slots per row; outputs for prompts x n completions, `pad_id` at first."""
    rows = prompts * n
    zeros = lambda batch, s, layout: jnp.zeros(cache_shape(c, batch, s, layout), c.compute_dtype)
    int_r = lambda value: jnp.full((slots,), value, jnp.int32)
    zero = jnp.zeros((), jnp.int32)
    cache = RowCache(zeros(slots, capacity, K_CACHE_LAYOUT), zeros(slots, capacity, V_CACHE_LAYOUT), int_r(0), zero)
    buffer = Buffer(
        zeros(1, prompt_slots, K_CACHE_LAYOUT),
        zeros(1, prompt_slots, V_CACHE_LAYOUT),
        zero,
        jnp.zeros((n,), jnp.int32),
        jnp.zeros((n,), jnp.float32),
        zero,
        jnp.full((), n, jnp.int32),
    )
    out = Output(
        jnp.full((rows, new_bucket), pad_id, jnp.int32),
        jnp.zeros((rows, new_bucket), jnp.float32),
        jnp.zeros((rows,), jnp.int32),
        zero,
        zero,
    )
    return Engine(_constrain_slots(lm, Slots(cache, int_r(-1), int_r(0), int_r(0))), buffer, zero, out)


def right_padded(prompt_ids: Sequence[Sequence[int]], vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Prompts right-padded into their bucket: tokens int32 [B, P], lengths int32 [B] (0 for the
    bucket's extra rows); checks the token ids."""
    rows = checked_prompts(prompt_ids, vocab_size)
    tokens = np.zeros((bucket(len(rows), 1), bucket(max(r.size for r in rows))), np.int32)
    lengths = np.zeros((tokens.shape[0],), np.int32)
    for i, row in enumerate(rows):
        tokens[i, : row.size], lengths[i] = row, row.size
    return tokens, lengths


def slot_count(requested: int, completions: int, mesh: LogicalMesh | None) -> int:
    """The slots to decode on: `requested` (0: one per completion), at most one per completion,
    rounded up to split evenly over the mesh's batch axes."""
    if requested < 0:
        raise JaxrlError(f"slots={requested} must be >= 0 (0 = one per completion)")
    shards = data_parallel_size(mesh)
    wanted = min(requested or completions, completions)
    return -(-wanted // shards) * shards


def engine_inputs(model: Decoder, prompt_ids, config: SamplingConfig, eos, pad_id: int, slots: int):
    """(the engine's first state, the other arguments of `_run`, its slot count) on `model.mesh`."""
    n, lm = config.num_samples, model.mesh
    tokens, lengths = right_padded(prompt_ids, model.config.vocab_size)
    if lm is not None:
        tokens, lengths = put(tokens, lm.replicated()), put(lengths, lm.replicated())
    new_bucket = bucket(config.max_new_tokens)
    r = slot_count(slots, len(prompt_ids) * n, lm)
    p = tokens.shape[1]
    state = _start(model.config, lm, r, p + new_bucket, p, tokens.shape[0], new_bucket, pad_id, n)
    graphdef, params = nnx.split(model)
    values = DecodeValues.of(config, eos, pad_id)
    return state, (graphdef, params, tokens, lengths, jnp.int32(len(prompt_ids)), values), r


def decode_continuously(
    model: Decoder,
    prompt_ids: Sequence[Sequence[int]],
    config: SamplingConfig,
    eos: Sequence[int],
    pad_id: int,
    slots: int,
) -> tuple[Output, int]:
    """Runs the engine on `model.mesh`; returns (the device output, the number of prompts)."""
    state, (graphdef, params, *inputs), r = engine_inputs(model, prompt_ids, config, eos, pad_id, slots)
    shards = data_parallel_size(model.mesh)
    while True:
        smaller = halved(r, shards)
        state = _run(graphdef, params, state, *inputs, n=config.num_samples, hand_back_at=smaller // shards)
        if smaller == 0 or int(jnp.sum(state.slots.row >= 0)) == 0:
            return state.out, len(prompt_ids)
        r = smaller
        state = _shrink(state, slots=r, shards=shards)


def lowered_run(model: Decoder, prompt_ids, config: SamplingConfig, slots: int, eos=(), pad_id: int = 0):
    """(the engine's loop lowered for these inputs, its slot count), to read its compiled program."""
    state, (graphdef, params, *inputs), r = engine_inputs(model, prompt_ids, config, eos, pad_id, slots)
    return _run.lower(graphdef, params, state, *inputs, n=config.num_samples, hand_back_at=0), r
