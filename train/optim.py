"""AdamW with global-norm clipping and the HF learning-rate schedules, in optax.

The schedule is indexed by the number of updates already applied, as HF's LambdaLR is: with
warmup the first update uses lr 0. Frozen parameters get `set_to_zero` through
`optax.multi_transform`, so they carry no optimizer state at all.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import optax
from jaxrl.train.config import OptimizerConfig

TRAIN, FROZEN = "train", "frozen"


def make_schedule(config: OptimizerConfig, total_steps: int) -> optax.Schedule:
    """lr(count) for count = updates applied so far; warmup is linear from 0."""
    peak = config.learning_rate
    warmup = config.num_warmup_steps(total_steps)
    kind = config.lr_scheduler_type
    decay_steps = max(1, total_steps - warmup)

    def schedule(count):
        count = jnp.asarray(count, jnp.float32)
        ramp = jnp.where(warmup > 0, count / max(1, warmup), 1.0)
        progress = jnp.clip((count - warmup) / decay_steps, 0.0, 1.0)
        if kind == "linear":
            after = 1.0 - progress
        elif kind == "cosine":
            after = 0.5 * (1.0 + jnp.cos(math.pi * progress))
        elif kind == "constant":
            return jnp.full((), peak, jnp.float32)
        else:
            after = jnp.ones(())
        return peak * jnp.where(count < warmup, ramp, after)

    return schedule


def adamw_direction(config: OptimizerConfig, labels=None) -> optax.GradientTransformation:
    """clip_by_global_norm -> Adam moments -> + weight_decay * param: AdamW's update before the
    factor -lr. `labels`: a tree of TRAIN / FROZEN like the params (FROZEN: zero, no state)."""
    parts = []
    if config.max_grad_norm is not None and config.max_grad_norm > 0:
        parts.append(optax.clip_by_global_norm(config.max_grad_norm))
    parts.append(optax.scale_by_adam(b1=config.adam_beta1, b2=config.adam_beta2, eps=config.adam_epsilon))
    if config.weight_decay:
        parts.append(optax.add_decayed_weights(config.weight_decay))
    direction = optax.chain(*parts)
    if labels is None:
        return direction
    return optax.multi_transform({TRAIN: direction, FROZEN: optax.set_to_zero()}, labels)
