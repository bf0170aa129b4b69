"""The GRPO objective: group advantages and every TRL loss variant (log-probs: `models.logprobs`).

Shapes: N completions (= prompts x G), P prompt slots (left-padded), C = max_completion_length
completion slots (right-padded), D hidden, V vocab.

Per completion token t of completion i, with r = exp(logp - old_logp) and A_i the advantage:

    loss_it = -min(r * A_i, clip(r, 1 - epsilon, 1 + epsilon_high) * A_i) + beta * w_it * kl_it
    kl_it   = exp(ref_logp - logp) - (ref_logp - logp) - 1          (k3 estimator, beta > 0 only)
    w_it    = r with use_bias_correction_kl (TRL's default), else 1

The weight r makes the KL's gradient the unbiased reverse-KL gradient (TRL 1.16, after
DeepSeek-V3.2). r is differentiable, so even where its value is 1 it adds beta * kl * d logp to the
gradient; with the weight off the gradient is beta * d kl alone (TRL before the knob).

reduced by `loss_type` (TRL's meanings) into a numerator and a denominator that the training loop
sums over micro-batches and divides once:

    grpo     mean over completions of (token mean within the completion)      num: sum_i mean_t, den: N
    bnpo     token mean within each micro-batch, averaged over micro-batches  num: mean_it,      den: 1
    dr_grpo  token sum / (completions x max_completion_length)                num: sum_it,       den: N x C
    dapo     token mean over the whole optimizer batch                        num: sum_it,       den: tokens

With one update per generation batch (num_iterations = 1) the old log-probs are the current ones
without gradient, so r = 1 and the gradient is the plain policy gradient, as in TRL.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
from jaxrl.models.logprobs import completion_logprobs, shared_prompt_rows

from jaxrl.errors import JaxrlError
from jaxrl.knobs import check_knobs
from jaxrl.sharding import data_parallel_size, target_platform

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")
SCALE_REWARDS = ("group", "batch", "none")
STD_EPS = 1e-4  # TRL's: advantages / (std + 1e-4)


def group_advantages(rewards_n: jax.Array, num_generations: int, scale_rewards: str = "group"):
    """Advantages [N] float32 and a tied-group flag [N / G] bool, as TRL computes them.

    rewards_n: float [N], prompt-major (rows i*G .. i*G+G-1 share a prompt).
    scale_rewards: "group" divides by the group's std (unbiased, + 1e-4), "batch" by the std of all N
    rewards, "none" leaves reward - group mean (Dr. GRPO, the study's choice).
    A group whose rewards all tie has advantage 0 for all of its completions.
    """
    if scale_rewards not in SCALE_REWARDS:
        raise JaxrlError(f"scale_rewards={scale_rewards!r}; choose one of {', '.join(SCALE_REWARDS)}")
    r = jnp.asarray(rewards_n, jnp.float32)
    if num_generations < 2 or r.shape[0] % num_generations:
        raise JaxrlError(f"{r.shape[0]} rewards do not form groups of num_generations={num_generations} (>= 2)")
    groups = r.reshape(-1, num_generations)
    mean = jnp.mean(groups, axis=1, keepdims=True)
    std = jnp.std(groups, axis=1, ddof=1, keepdims=True)
    advantages = groups - mean
    if scale_rewards == "group":
        advantages = advantages / (std + STD_EPS)
    elif scale_rewards == "batch":
        advantages = advantages / (jnp.std(r, ddof=1) + STD_EPS)
    tied = jnp.isclose(std[:, 0], 0.0)
    return advantages.reshape(-1), tied


@dataclasses.dataclass(frozen=True)
class LossSettings:
    """The knobs the objective reads (a subset of GRPOSettings, TRL's names)."""

    DOMAINS: ClassVar[dict[str, str]] = {  # jaxrl.knobs
        "epsilon": ">= 0", "epsilon_high": ">= 0", "beta": ">= 0", "max_completion_length": ">= 1",
        "temperature": "> 0; the loss divides the logits by it", "logprob_chunk_size": ">= 1",
        "logprob_vocab_chunk_size": ">= 0", "num_generations": ">= 1",
    }  # fmt: skip

    loss_type: str = "dapo"
    epsilon: float = 0.2
    epsilon_high: float | None = None  # None: epsilon
    beta: float = 0.0
    max_completion_length: int = 256
    temperature: float = 1.0
    logprob_chunk_size: int = 256
    logprob_vocab_chunk_size: int = 0  # 0: the whole vocabulary per chunk
    use_old_logprobs: bool = False  # True when num_iterations > 1: r uses the stored old log-probs
    use_bias_correction_kl: bool = True  # the KL term weighted by r (TRL's default)
    num_generations: int = 1  # consecutive rows that share a prompt
    share_prompt_pass: bool | None = None  # None: on CPU (`prompt_group`)

    def __post_init__(self):
        check_knobs(self)
        if self.loss_type not in LOSS_TYPES:
            raise JaxrlError(f"loss_type={self.loss_type!r}; choose one of {', '.join(LOSS_TYPES)}")


def _clip_like_torch(x, low, high):
    """clip with torch.clamp's gradient: 1 inside [low, high] boundaries included, 0 outside
    (jnp.clip splits the gradient at a boundary)."""
    return jnp.where(x < low, low, jnp.where(x > high, high, x))


def per_token_objective(logp, old_logp, ref_logp, advantages_n, mask, s: LossSettings):
    """Token losses [N, C] and token counts for the clip and KL statistics (sums over the mask).

    logp, old_logp, ref_logp (None unless beta > 0): float32 [N, C]; advantages_n [N]; mask [N, C]
    (1 for completion tokens that train).
    """
    m = mask.astype(jnp.float32)
    live = m > 0
    if old_logp is None:
        old_logp = jax.lax.stop_gradient(logp)
    log_ratio = jnp.where(live, logp - old_logp, 0.0)  # padding must not overflow exp
    ratio = jnp.exp(log_ratio)
    eps_low, eps_high = s.epsilon, s.epsilon if s.epsilon_high is None else s.epsilon_high
    a = advantages_n[:, None].astype(jnp.float32)
    unclipped = ratio * a
    clipped = _clip_like_torch(ratio, 1.0 - eps_low, 1.0 + eps_high) * a
    loss = -jnp.minimum(unclipped, clipped)
    stats = {
        "clip_low_tokens": jnp.sum(((ratio < 1.0 - eps_low) & (a < 0)) * m),
        "clip_high_tokens": jnp.sum(((ratio > 1.0 + eps_high) & (a > 0)) * m),
        "mask_tokens": jnp.sum(m),
    }
    if s.beta > 0:
        delta = jnp.where(live, ref_logp - logp, 0.0)
        kl = jnp.exp(delta) - delta - 1.0
        if s.use_bias_correction_kl:
            kl = kl * ratio  # TRL's unclipped ratio; TRL logs this weighted KL too
        loss = loss + s.beta * kl
        stats["kl_sum"] = jnp.sum(kl * m)
    return loss * m, stats


def reduce_loss(token_loss, mask, s: LossSettings):
    """(numerator, denominator) of one micro-batch for `s.loss_type` (see the module docstring)."""
    m = mask.astype(jnp.float32)
    n = jnp.asarray(token_loss.shape[0], jnp.float32)
    if s.loss_type == "grpo":
        per_seq = jnp.sum(token_loss, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1.0)
        return jnp.sum(per_seq), n
    if s.loss_type == "bnpo":
        return jnp.sum(token_loss) / jnp.maximum(jnp.sum(m), 1.0), jnp.ones((), jnp.float32)
    if s.loss_type == "dr_grpo":
        return jnp.sum(token_loss), n * s.max_completion_length
    return jnp.sum(token_loss), jnp.sum(m)  # dapo


def prompt_group(s: LossSettings, mesh, rows: int) -> int:
    """Rows per prompt pass in a micro-batch of `rows` rows: `num_generations` when the loss runs
    each group's shared prompt once (`completion_logprobs(prompt_group=...)`), else 1.

    share_prompt_pass None takes the platform's default: shared on CPU, where a group of 8 64-token
    completions of a 21-token prompt trained ~20% faster (`bench/grpo_step.py`); per row on TPU and
    GPU, where the shared pass's queries and keys differ in length and so leave splash and cuDNN
    attention for the blockwise kernel. Shared needs every batch shard to hold whole groups."""
    g = s.num_generations
    if g <= 1 or s.share_prompt_pass is False:
        return 1
    whole = rows % (g * data_parallel_size(mesh)) == 0
    if s.share_prompt_pass is None:
        return g if whole and target_platform(mesh) == "cpu" else 1
    if not whole:
        raise JaxrlError(
            f"grpo.share_prompt_pass needs whole groups of {g} rows on every batch shard; a micro-batch of "
            f"{rows} rows over {data_parallel_size(mesh)} shards has none (set it to false or null)"
        )
    return g


def make_loss_fn(s: LossSettings):
    """The training loop's loss function for GRPO batches.

    batch: tokens, segment_ids int32 [B, P + C]; completion_mask float32 [B, C] (truncated
    completions already zeroed when masked); advantages float32 [B]; old_logprobs [B, C] when
    `s.use_old_logprobs`; ref_logprobs [B, C] when beta > 0; sampler_logprobs [B, C] when the
    rollout did not score the batch itself (`sampled_token_stats`).
    """

    def loss_fn(model, batch):
        mask = batch["completion_mask"]
        sampled = "sampler_logprobs" in batch
        out = completion_logprobs(
            model,
            batch["tokens"],
            batch["segment_ids"],
            mask.shape[1],
            s.temperature,
            s.logprob_chunk_size,
            with_entropy=sampled,
            vocab_chunk_size=s.logprob_vocab_chunk_size,
            prompt_group=prompt_group(s, model.mesh, mask.shape[0]),
        )
        logp = out[0] if sampled else out
        old = batch["old_logprobs"] if s.use_old_logprobs else None
        token_loss, stats = per_token_objective(logp, old, batch.get("ref_logprobs"), batch["advantages"], mask, s)
        num, den = reduce_loss(token_loss, mask, s)
        if sampled:
            live = batch["segment_ids"][:, -mask.shape[1] :] > 0
            stats.update(sampled_token_stats(jax.lax.stop_gradient(logp), out[1], batch["sampler_logprobs"], live))
        return num, den, stats

    def check_batch(batch, mesh, micro_rows: int) -> None:
        """Where the loss shares each group's prompt pass (micro-batches of `micro_rows` rows on
        `mesh`), a host batch's rows must come in groups sharing a prompt."""
        tokens, completions = batch["tokens"], batch["completion_mask"].shape[1]
        group = prompt_group(s, mesh, micro_rows)
        if not shared_prompt_rows(tokens, completions, group):
            raise JaxrlError(
                f"the GRPO batch's rows do not come in groups of num_generations={s.num_generations} sharing "
                "a prompt; set grpo.share_prompt_pass=false to train such a batch"
            )

    loss_fn.check_batch = check_batch  # the Trainer calls it on every host batch
    loss_fn.settings = s
    return loss_fn


def sampled_token_stats(logp, entropy, sampler_logp, live) -> dict:
    """Sums over every sampled token (`live`, bool [B, C]; truncated completions included) of the
    policy's entropy and of |logp - sampler_logp|, the sampler-vs-trainer gap, and the gap's max:
    what the rollout's own scoring pass reports, from the loss's forward pass (float32 [B, C] in).
    `GRPOTrainer.step` turns them into `entropy` and `logprob_gap/{mean,max}`; a key ending in
    `_max` is reduced over micro-batches by max (`Trainer`)."""
    gap = jnp.abs(logp - sampler_logp)
    m = live.astype(jnp.float32)
    return {
        "sampled_tokens": jnp.sum(m),
        "entropy_sum": jnp.sum(entropy * m),
        "logprob_gap_sum": jnp.sum(gap * m),
        "logprob_gap_max": jnp.max(jnp.where(live, gap, 0.0)),
    }
