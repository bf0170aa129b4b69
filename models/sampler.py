"""Batched sampling with a KV cache: one prefill per prompt, then a jitted decode loop.

    completions = sample(model, [[1, 5, 9], [1, 7]], SamplingConfig(temperature=0.7, num_samples=4))

How a call runs:
1. Prompts are LEFT-padded into a bucket (below) so that every row's next token goes to the same
   cache slot; padding is segment 0, so it is never attended to and positions start at 0 on the
   first real token of each row.
2. Prefill runs each prompt once; its cache rows are then repeated `num_samples` times (GRPO's G
   generations share the prompt's prefill) into a cache of `prompt bucket + new-token bucket` slots.
3. A `lax.while_loop` decodes one token per step for all rows and stops as soon as every row has
   finished (EOS or `max_new_tokens`), all inside one jitted program.

Buckets (so a run does not recompile for every batch): prompt length -> the next power of two
>= 16; `max_new_tokens` -> the next power of two >= 16 (the exact value is a traced argument);
number of prompts -> the next power of two, raised to a multiple that lets the rows
(`prompts x num_samples`) split evenly over the mesh's batch axes (data x fsdp). Extra rows are
dummies that start finished. Compiled programs are cached by jax per (graphdef, bucket, greedy,
truncating), and parameters are arguments, so new parameters (a GRPO step) never recompile.

Sampling values (temperature, top-k, top-p, seed, EOS ids) are traced too. Each row draws with its
own key, `fold_in(fold_in(seed, row), step)` where row = prompt_index * num_samples + sample, so
a given seed gives the same completions whatever the batch bucket or the mesh.

Returned log-probs are `log_softmax(logits / temperature)` of the emitted token, taken BEFORE
top-k / top-p truncation (greedy: `log_softmax(logits)`), in fp32.

Stop strings are matched on the host after decoding: a row whose decoded text contains one is cut
after the first token that completes it (the stop string stays in the completion) and gets the
finish reason 'stop'. Decoding itself only stops early on EOS, so stop strings save no compute.
An EOS token is kept in the completion and counted in its length.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Sequence
from typing import ClassVar

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
from jaxrl.models.sampling import choose_tokens

from jaxrl.errors import JaxrlError
from jaxrl.knobs import check_knobs
from jaxrl.shapes import bucket
from jaxrl.sharding import LogicalMesh, constrain, data_parallel_size, put, to_host


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How to sample. temperature 0 = greedy; top_k 0 and top_p 1 = no truncation."""

    DOMAINS: ClassVar[dict[str, str]] = {  # jaxrl.knobs
        "temperature": ">= 0; 0 = greedy", "top_p": "(0, 1]", "top_k": ">= 0; 0 = off", "max_new_tokens": ">= 1",
        "num_samples": ">= 1", "seed": ">= 0",
    }  # fmt: skip

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 256
    num_samples: int = 1
    seed: int = 0
    stop_strings: tuple[str, ...] = ()

    def __post_init__(self):
        check_knobs(self)
        if isinstance(self.stop_strings, str):  # a lone string would be split into characters
            object.__setattr__(self, "stop_strings", (self.stop_strings,))
        object.__setattr__(self, "stop_strings", tuple(s for s in self.stop_strings if s))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def truncates(self) -> bool:
        return not self.greedy and (self.top_k > 0 or self.top_p < 1)


@dataclasses.dataclass
class Completions:
    """N = len(prompts) * num_samples completions, prompt-major (prompt i -> rows i*n .. i*n+n-1).

    tokens: int32 [N, max_new_tokens], new tokens only, padded after `lengths` with the model's
      pad id (0 when it has none); logprobs: fp32 [N, max_new_tokens], 0 after `lengths`;
    lengths: int32 [N] (an EOS or stop-string token counts); finish_reasons: 'eos' | 'length' |
    'stop' per row; prompt_index: int32 [N]. decode_steps: the decoder calls of one token per row
    that ran; slot_steps: the rows those calls carried, summed (per useful token: the work spent).
    """

    tokens: np.ndarray
    logprobs: np.ndarray
    lengths: np.ndarray
    finish_reasons: list[str]
    prompt_index: np.ndarray
    decode_steps: int = 0
    slot_steps: int = 0

    def slot_steps_per_token(self) -> float:
        """Slot-steps per generated token (1.0: no slot ever idle); the first token of each
        completion comes from its prefill."""
        return self.slot_steps / max(int(self.lengths.sum()) - len(self.lengths), 1)

    def token_lists(self) -> list[list[int]]:
        return [row[:n].tolist() for row, n in zip(self.tokens, self.lengths, strict=True)]

    def texts(self, tokenizer, skip_special_tokens: bool = True) -> list[str]:
        return [tokenizer.decode(t, skip_special_tokens=skip_special_tokens) for t in self.token_lists()]


@dataclasses.dataclass(frozen=True)
class PromptBatch:
    """Prompts left-padded into their bucket. tokens/segments: int32 [B, P]; lengths: int32 [B]
    (0 for dummy rows); B and P are the batch and prompt buckets."""

    tokens: np.ndarray
    segments: np.ndarray
    lengths: np.ndarray
    num_prompts: int


def positions_warning(prompt_lengths: Sequence[int], max_new_tokens: int, max_positions: int) -> str | None:
    """One line when some prompt plus `max_new_tokens` passes the model's max_position_embeddings,
    else None. A warning, not an error: most completions end (EOS) long before the cap, and an
    evaluation's cap is often the model's whole window (the study's 4096 on OLMo-2's 4096); the
    positions past the window are RoPE extrapolation the model never trained on."""
    over = [n for n in prompt_lengths if n + max_new_tokens > max_positions]
    if not over:
        return None
    return (
        f"warning: {len(over)} of {len(prompt_lengths)} prompts plus max_new_tokens={max_new_tokens} pass the "
        f"model's max_position_embeddings={max_positions} (up to {max(over) + max_new_tokens} positions); tokens "
        "past it use positions the model was not trained on: lower the new tokens to stay inside"
    )


def checked_prompts(prompt_ids: Sequence[Sequence[int]], vocab_size: int) -> list[np.ndarray]:
    """The prompts as int64 arrays, after a clear error for none, an empty one or a token id
    outside the vocabulary."""
    if len(prompt_ids) == 0:
        raise JaxrlError("no prompts to sample from")
    rows = [np.asarray(p, np.int64).reshape(-1) for p in prompt_ids]
    for i, row in enumerate(rows):
        if row.size == 0:
            raise JaxrlError(f"prompt {i} is empty; every prompt needs at least one token")
        if row.min() < 0 or row.max() >= vocab_size:
            raise JaxrlError(f"prompt {i} has a token id outside the vocabulary [0, {vocab_size})")
    return rows


def pad_prompts(
    prompt_ids: Sequence[Sequence[int]], vocab_size: int, num_samples: int, mesh: LogicalMesh | None = None
) -> PromptBatch:
    """Left-pads the prompts into the (batch, prompt length) bucket; checks the token ids."""
    rows = checked_prompts(prompt_ids, vocab_size)
    shards = data_parallel_size(mesh)
    unit = shards // math.gcd(shards, num_samples)  # prompts per step of evenly split rows
    b = -(-bucket(len(rows), 1) // unit) * unit
    p = bucket(max(r.size for r in rows))
    tokens = np.zeros((b, p), np.int32)
    segments = np.zeros((b, p), np.int32)
    lengths = np.zeros((b,), np.int32)
    segments[len(rows) :, -1] = 1  # dummy rows hold one token, so no query attends to nothing
    for i, row in enumerate(rows):
        tokens[i, p - row.size :], segments[i, p - row.size :], lengths[i] = row, 1, row.size
    return PromptBatch(tokens, segments, lengths, len(rows))


def _constrain_cache(lm: LogicalMesh | None, cache: KVCache) -> KVCache:
    return KVCache(
        constrain(lm, cache.k, cache_axes(K_CACHE_LAYOUT)),
        constrain(lm, cache.v, cache_axes(V_CACHE_LAYOUT)),
        constrain(lm, cache.segment_bs, ("batch", "seq")),
        constrain(lm, cache.position_bs, ("batch", "seq")),
        cache.index,
    )


@functools.partial(jax.jit, static_argnames=("graphdef", "num_samples", "slots"))
def _prefill(graphdef, state, tokens_bp, segments_bp, *, num_samples: int, slots: int):
    """Runs the prompts once; returns the decode cache ([L, B*n, slots, K, E], index P) and the
    fp32 logits [B*n, V] of each row's next token, rows repeated `num_samples` times."""
    model = nnx.merge(graphdef, state)
    c, lm = model.config, model.mesh
    b, p = tokens_bp.shape
    zeros_bp = jnp.zeros((b, p), jnp.int32)
    zeros = lambda layout: jnp.zeros(cache_shape(c, b, p, layout), c.compute_dtype)
    empty = KVCache(zeros(K_CACHE_LAYOUT), zeros(V_CACHE_LAYOUT), zeros_bp, zeros_bp, jnp.zeros((), jnp.int32))
    h, cache = model.hidden_states(tokens_bp, segments_bp, cache=_constrain_cache(lm, empty))
    logits_bv = model.logits(h[:, -1:])[:, 0]

    def grow(x, batch_axis, slot_axis):  # repeat each prompt's row n times, add the decode slots
        x = jnp.repeat(x, num_samples, axis=batch_axis)
        widths = [(0, 0)] * x.ndim
        widths[slot_axis] = (0, slots - p)
        return jnp.pad(x, widths)

    slot_axis = lambda layout: 1 + layout.index("s")
    cache = KVCache(
        grow(cache.k, 1, slot_axis(K_CACHE_LAYOUT)),
        grow(cache.v, 1, slot_axis(V_CACHE_LAYOUT)),
        grow(cache.segment_bs, 0, 1),
        grow(cache.position_bs, 0, 1),
        cache.index,
    )
    logits_rv = constrain(lm, jnp.repeat(logits_bv, num_samples, axis=0), ("batch", "vocab"))
    return _constrain_cache(lm, cache), logits_rv


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DecodeValues:
    """What the decode loop reads of a `SamplingConfig`: traced scalars, so a new seed, temperature,
    top-k/top-p, length or EOS set never recompiles, and the two switches that pick the program."""

    seed: jax.Array  # uint32 []
    eos_ids: jax.Array  # int32 [E] (-1 when there is none)
    max_new_tokens: jax.Array  # int32 []
    temperature: jax.Array  # fp32 [] (unused when greedy)
    top_k: jax.Array  # int32 []
    top_p: jax.Array  # fp32 []
    pad_id: jax.Array  # int32 [], written after a row ends
    greedy: bool = dataclasses.field(default=False, metadata=dict(static=True))
    truncate: bool = dataclasses.field(default=False, metadata=dict(static=True))

    @classmethod
    def of(cls, config: SamplingConfig, eos_ids: Sequence[int], pad_id: int) -> DecodeValues:
        return cls(
            seed=jnp.uint32(config.seed & 0xFFFFFFFF),
            eos_ids=jnp.asarray(tuple(eos_ids) or (-1,), jnp.int32),
            max_new_tokens=jnp.int32(config.max_new_tokens),
            temperature=jnp.float32(max(config.temperature, 1e-6)),
            top_k=jnp.int32(config.top_k),
            top_p=jnp.float32(config.top_p),
            pad_id=jnp.int32(pad_id),
            greedy=config.greedy,
            truncate=config.truncates,
        )


@functools.partial(jax.jit, static_argnames=("graphdef", "new_bucket"))
def _decode(
    graphdef, state, cache, logits_rv, positions_r, active_r, row_ids, values: DecodeValues, *, new_bucket: int
):
    """Samples up to `values.max_new_tokens` (<= new_bucket) tokens per row.

    positions_r: int32 [R], the position of each row's first new token (its prompt length).
    active_r: bool [R], False for dummy rows. row_ids: int32 [R], each row's number (its random
    stream is `fold_in(key(seed), row)`).
    Returns tokens int32 [R, new_bucket], logprobs fp32 [R, new_bucket], lengths int32 [R].
    """
    model = nnx.merge(graphdef, state)
    lm, v = model.mesh, values
    rows = logits_rv.shape[0]
    layers = decode_layers(model)
    row_keys = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.key(v.seed), row_ids)

    def choose(logits, step, done):
        keys = jax.vmap(jax.random.fold_in, (0, None))(row_keys, step)
        tokens, logprobs = choose_tokens(
            logits, keys, v.temperature, v.top_k, v.top_p, greedy=v.greedy, truncate=v.truncate
        )
        tokens, logprobs = jnp.where(done, v.pad_id, tokens), jnp.where(done, 0.0, logprobs)
        finished = done | jnp.isin(tokens, v.eos_ids) | (step + 1 >= v.max_new_tokens)
        return tokens, logprobs, finished

    tokens, logprobs, done = choose(logits_rv, 0, ~active_r)
    out_tokens = jnp.full((rows, new_bucket), v.pad_id, jnp.int32).at[:, 0].set(tokens)
    out_logprobs = jnp.zeros((rows, new_bucket), jnp.float32).at[:, 0].set(logprobs)
    lengths = active_r.astype(jnp.int32)

    def not_finished(carry):
        step, done = carry[0], carry[3]
        return (step < v.max_new_tokens) & ~jnp.all(done)

    def step_fn(carry):
        step, cache, last, done, out_tokens, out_logprobs, lengths = carry
        ones = jnp.ones((rows, 1), jnp.int32)
        positions = (positions_r + step - 1)[:, None]
        h, cache = model.hidden_states(last[:, None], ones, positions, cache=cache, layers=layers)
        logits = constrain(lm, model.logits(h)[:, 0], ("batch", "vocab"))
        tokens, logprobs, finished = choose(logits, step, done)
        out_tokens = jax.lax.dynamic_update_slice_in_dim(out_tokens, tokens[:, None], step, axis=1)
        out_logprobs = jax.lax.dynamic_update_slice_in_dim(out_logprobs, logprobs[:, None], step, axis=1)
        lengths = lengths + (~done).astype(jnp.int32)
        return step + 1, _constrain_cache(lm, cache), tokens, finished, out_tokens, out_logprobs, lengths

    carry = (jnp.ones((), jnp.int32), cache, tokens, done, out_tokens, out_logprobs, lengths)
    carry = jax.lax.while_loop(not_finished, step_fn, carry)
    return carry[4], carry[5], carry[6]


def prefill(model: Decoder, batch: PromptBatch, num_samples: int, new_bucket: int, mesh: LogicalMesh | None = None):
    """The decode cache and first-token logits for a padded batch (see `_prefill`)."""
    mesh = mesh or model.mesh
    tokens, segments = batch.tokens, batch.segments
    if mesh is not None:
        sharding = mesh.sharding(("batch", "seq"), tokens.shape)
        tokens, segments = put(tokens, sharding), put(segments, sharding)
    graphdef, state = nnx.split(model)
    slots = tokens.shape[1] + new_bucket
    return _prefill(graphdef, state, tokens, segments, num_samples=num_samples, slots=slots)


def default_eos_ids(model: Decoder, tokenizer=None) -> tuple[int, ...]:
    """The model config's EOS ids, else the tokenizer's EOS id, else none."""
    if model.config.eos_token_ids:
        return tuple(model.config.eos_token_ids)
    if tokenizer is not None and tokenizer.eos_token_id is not None:
        return (int(tokenizer.eos_token_id),)
    return ()


def decode_inputs(model: Decoder, batch: PromptBatch, config: SamplingConfig, eos, mesh: LogicalMesh | None):
    """(the arguments of `_decode` after the prefill, its keyword arguments) for a padded batch."""
    c, n = model.config, config.num_samples
    pad_id = c.pad_token_id if c.pad_token_id is not None else 0
    new_bucket = bucket(config.max_new_tokens)
    cache, logits = prefill(model, batch, n, new_bucket, mesh)
    rows = len(batch.lengths) * n
    row_ids = np.arange(rows, dtype=np.int32)
    positions = np.repeat(batch.lengths, n).astype(np.int32)
    active = row_ids < batch.num_prompts * n
    if mesh is not None:
        row_sharding = mesh.sharding(("batch",), (rows,))
        positions, active, row_ids = (put(x, row_sharding) for x in (positions, active, row_ids))
    graphdef, state = nnx.split(model)
    values = DecodeValues.of(config, eos, pad_id)
    return (graphdef, state, cache, logits, positions, active, row_ids, values), {"new_bucket": new_bucket}


def sample(
    model: Decoder,
    prompt_ids: Sequence[Sequence[int]],
    config: SamplingConfig = SamplingConfig(),
    *,
    eos_token_ids: Sequence[int] | None = None,
    tokenizer=None,
    mesh: LogicalMesh | None = None,
    slots: int | None = None,
) -> Completions:
    """Samples `config.num_samples` completions for each prompt (lists of token ids).

    eos_token_ids: ids that end a completion (default: `default_eos_ids`). tokenizer: needed only
    for stop strings. mesh: where to place the inputs (default: the model's mesh). slots: None
    decodes every completion at once until the longest ends (above); a number decodes on that
    many slots with continuous batching (`jaxrl.models.engine`; 0 = one per completion), the
    same completions either way.
    """
    c, n = model.config, config.num_samples
    mesh = mesh or model.mesh
    if config.stop_strings and tokenizer is None:
        raise JaxrlError("stop_strings need a tokenizer: pass tokenizer=... to sample()")
    eos = default_eos_ids(model, tokenizer) if eos_token_ids is None else tuple(eos_token_ids)
    pad_id = c.pad_token_id if c.pad_token_id is not None else 0
    if slots is not None:
        from jaxrl.models.engine import decode_continuously  # the engine builds on this module

        out, num_prompts = decode_continuously(model, prompt_ids, config, eos, pad_id, slots)
        tokens, logprobs, lengths = out.tokens, out.logprobs, out.lengths
        decode_steps, slot_steps = int(out.decode_turns), int(out.slot_steps)
    else:
        batch = pad_prompts(prompt_ids, c.vocab_size, n, mesh)
        args, kwargs = decode_inputs(model, batch, config, eos, mesh)
        tokens, logprobs, lengths = _decode(*args, **kwargs)
        num_prompts = batch.num_prompts

    real = num_prompts * n
    tokens = to_host(tokens)[:real, : config.max_new_tokens].copy()
    logprobs = to_host(logprobs)[:real, : config.max_new_tokens].copy()
    lengths = to_host(lengths)[:real].copy()
    if slots is None:  # the loop ran until the longest row ended, on every row of the bucket
        decode_steps = max(int(lengths.max()) - 1, 0)
        slot_steps = decode_steps * len(batch.lengths) * n
    last = tokens[np.arange(real), np.maximum(lengths - 1, 0)]
    reasons = ["eos" if t in eos else "length" for t in last.tolist()]
    completions = Completions(
        tokens, logprobs, lengths, reasons, np.repeat(np.arange(num_prompts), n), decode_steps, slot_steps
    )
    if config.stop_strings:
        cut_at_stop_strings(completions, config.stop_strings, tokenizer, pad_id)
    return completions


COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")


def count_collectives(hlo_text: str, rows: int) -> dict[str, int]:
    """How many of each collective a compiled program holds, and "weight all-gather": the
    all-gathers of floating-point arrays with no dimension of `rows` (the decode rows or slots,
    which a decode step does move; pick a row count that no weight dimension equals). Integer
    gathers are the rows' bookkeeping (slot indices, lengths), which a compiler may reshape.
    "all-gather bytes": what every all-gather's result holds, summed: weights gathered per token
    are megabytes; the rows' bookkeeping and a vocabulary-sharded choice's candidates are bytes."""
    counts = {name: len(re.findall(rf"\b{name}(?:-start)?\(", hlo_text)) for name in COLLECTIVES}
    shapes = re.findall(r"= \(?([a-z0-9]+)\[([0-9,]*)\][^ ]* all-gather(?:-start)?\(", hlo_text)
    floating = [dims for dtype, dims in shapes if dtype.startswith(("f", "bf"))]
    counts["weight all-gather"] = sum(str(rows) not in dims.split(",") for dims in floating)
    size = lambda dtype, dims: int(np.prod([int(d) for d in dims.split(",") if d])) * _BYTES.get(dtype, 4)
    counts["all-gather bytes"] = sum(size(dtype, dims) for dtype, dims in shapes)
    return counts


_BYTES = {"f64": 8, "s64": 8, "u64": 8, "f32": 4, "s32": 4, "u32": 4, "bf16": 2, "f16": 2, "s16": 2, "u16": 2}


def decode_collectives(
    model: Decoder, prompt_ids: Sequence[Sequence[int]], config: SamplingConfig, slots: int | None = None
) -> dict[str, int]:
    """The collectives of the compiled decode program (its loop runs them every step; see
    `count_collectives`), for `sample(..., slots=slots)`. On the training layout of an FSDP mesh
    every weight is gathered again for every token; on the tensor_parallel layout none is."""
    if slots is not None:
        from jaxrl.models.engine import lowered_run

        lowered, rows = lowered_run(model, prompt_ids, config, slots, default_eos_ids(model))
    else:
        batch = pad_prompts(prompt_ids, model.config.vocab_size, config.num_samples, model.mesh)
        args, kwargs = decode_inputs(model, batch, config, default_eos_ids(model), model.mesh)
        lowered, rows = _decode.lower(*args, **kwargs), len(batch.lengths) * config.num_samples
    return count_collectives(lowered.compile().as_text(), rows)


def cut_at_stop_strings(completions: Completions, stop_strings: Sequence[str], tokenizer, pad_id: int) -> None:
    """Cuts each row after the first token whose text completes a stop string (in place)."""

    def has_stop(row, k):
        text = tokenizer.decode(row[:k].tolist(), skip_special_tokens=False)
        return any(s in text for s in stop_strings)

    for i, (row, length) in enumerate(zip(completions.tokens, completions.lengths, strict=True)):
        if not has_stop(row, length):
            continue
        lo, hi = 1, int(length)  # the shortest prefix that contains a stop string
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if has_stop(row, mid) else (mid + 1, hi)
        completions.tokens[i, lo:] = pad_id
        completions.logprobs[i, lo:] = 0.0
        completions.lengths[i] = lo
        completions.finish_reasons[i] = "stop"
