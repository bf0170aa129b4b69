"""GRPO on the shared training loop: the recipe and `run(recipe_path, overrides) -> run dir`.

    jaxrl train grpo --recipe train/recipes/grpo.yaml model.path=/models/olmo2-7b-instruct

A GRPO step is two functions, each in its own module:
- `grpo_rollout.generation_batch(params, prompts, rollout, generation)`: the sampler draws
  `num_generations` completions of each prompt with the current params -> rewards -> group
  advantages -> the policy's (and, when beta > 0, the reference's) log-probs -> a training batch;
- the loop's `Trainer.step(batch, step)` with the loss of `grpo_loss.make_loss_fn`, run
  `num_iterations` times on each generation batch.
Each optimizer step is one step of `fit`, so checkpoints, resume, SIGTERM and metrics are the
loop's; a checkpoint taken inside a generation batch carries that batch, so a resumed run
continues exactly where it stopped.

On several hosts every host samples the same global batch of prompts and trains its own rows of it;
rewards, advantages and metrics are those of the global batch, so a run gives the numbers one
process gives (tests/test_multihost_grpo.py).

Knobs keep TRL's names and defaults (`GRPOSettings`); `train/recipes/grpo-trl.yaml` spells TRL's
defaults out, `grpo.yaml` is the study's recipe.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import nnx
from jaxrl.models.sampler import SamplingConfig
from jaxrl.train import session
from jaxrl.train.config import CheckpointConfig, FreezeConfig, LoopConfig, ModelSource, OptimizerConfig
from jaxrl.train.grpo_loss import SCALE_REWARDS, LossSettings, make_loss_fn
from jaxrl.train.grpo_rollout import Rollout, Rollouts
from jaxrl.train.loop import Trainer, check_batch_size

from jaxrl.data import ChatConfig, DataConfig, PromptBatches, load_prompts
from jaxrl.errors import JaxrlError
from jaxrl.knobs import check_knobs
from jaxrl.recipes import load_recipe
from jaxrl.rewards import MathVerifier, RewardScorer
from jaxrl.sharding import LogicalMesh, make_mesh, rules_preset


@dataclasses.dataclass(frozen=True)
class GRPOSettings:
    """GRPO knobs, TRL's names and defaults (see the README's table for the study's values).

    prompts_per_step: prompts per optimizer step, all hosts together (completions per step =
      prompts_per_step x num_generations; the study: 16 x 28 = 448).
    num_generations: completions per prompt (G). num_iterations: optimizer steps per generation
      batch (mu); with mu > 1 the ratio uses the log-probs stored at generation time.
    beta: KL coefficient (k3 estimator) against the initial model, loaded only when beta > 0.
    use_bias_correction_kl: weight the KL term by the ratio r (TRL 1.16's default; changes the
      gradient whenever beta > 0, even at r = 1; see `grpo_loss`).
    epsilon / epsilon_high: clip range [1 - epsilon, 1 + epsilon_high] (None: epsilon).
    loss_type: grpo | bnpo | dr_grpo | dapo (see `grpo_loss`). scale_rewards: group | batch | none.
    mask_truncated_completions: completions that hit max_completion_length get no loss.
    max_prompt_length: longer prompts keep their last tokens. temperature / top_p / top_k: sampling;
      the loss's log-probs use logits / temperature.
    reward_funcs / reward_weights: registered names or "module:function"; weights default to 1.
    gold_column: the dataset column the accuracy reward reads (a solution with a boxed answer, or
      a bare answer). verifier_timeout_s: per-completion bound on math-verify.
    log_completions: at every logging step, write the current generation batch's completions (this
      host's prompts) with each reward function's score, the advantage and the finish reason to
      RUN/completions.jsonl, and as W&B's `completions` table where W&B is on (TRL's name).
    share_prompt_pass: run each prompt once for its G completions in the loss's forward and backward
      pass (its keys and values shared by the group's rows) instead of once per completion; the
      same log-probs and gradients. null: the platform's default (on for CPU; `grpo_loss.prompt_group`).
    logprob_chunk_size: completion tokens per chunk of the log-prob computation (bounds the
      [rows, chunk, vocab] logits buffer); logprob_vocab_chunk_size > 0 also cuts the vocabulary
      (for a vocabulary not sharded over `tensor`).
    """

    DOMAINS: ClassVar[dict[str, str]] = {  # jaxrl.knobs
        "prompts_per_step": ">= 1", "num_generations": ">= 2; group advantages need two", "num_iterations": ">= 1",
        "beta": ">= 0", "epsilon": ">= 0", "epsilon_high": ">= 0", "max_prompt_length": ">= 1",
        "max_completion_length": ">= 1", "temperature": "> 0; the loss divides the logits by it", "top_p": "(0, 1]",
        "top_k": ">= 0", "reward_weights": "any",
        "verifier_timeout_s": "> 0", "verifier_workers": ">= 0", "logprob_chunk_size": ">= 1",
        "logprob_vocab_chunk_size": ">= 0",
    }  # fmt: skip

    prompts_per_step: int = 8
    num_generations: int = 8
    num_iterations: int = 1
    beta: float = 0.0
    use_bias_correction_kl: bool = True
    epsilon: float = 0.2
    epsilon_high: float | None = None
    loss_type: str = "dapo"
    scale_rewards: str = "group"
    mask_truncated_completions: bool = False
    max_prompt_length: int | None = 512
    max_completion_length: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    reward_funcs: tuple[str, ...] = ("accuracy", "format")
    reward_weights: tuple[float, ...] = ()
    gold_column: str = "solution"
    verifier_timeout_s: float = 5.0
    verifier_workers: int = 0  # 0: min(4, CPU count)
    logprob_chunk_size: int = 256
    logprob_vocab_chunk_size: int = 0
    shuffle: bool = True
    log_completions: bool = False
    share_prompt_pass: bool | None = None

    def __post_init__(self):
        check_knobs(self, "grpo.")
        if self.scale_rewards not in SCALE_REWARDS:
            raise JaxrlError(f"grpo.scale_rewards={self.scale_rewards!r}; choose one of {', '.join(SCALE_REWARDS)}")
        if self.reward_weights and len(self.reward_weights) != len(self.reward_funcs):
            raise JaxrlError(
                f"{len(self.reward_weights)} grpo.reward_weights for {len(self.reward_funcs)} reward_funcs"
            )
        # The loss's and the sampler's settings are built (and checked) here, once: `loss`, `sampling`.
        try:
            loss = LossSettings(**_same_named(LossSettings, self), use_old_logprobs=self.num_iterations > 1)
            sampling = SamplingConfig(
                **_same_named(SamplingConfig, self),
                max_new_tokens=self.max_completion_length,
                num_samples=self.num_generations,
            )
        except JaxrlError as e:
            raise JaxrlError(f"grpo.{e}") from None
        object.__setattr__(self, "_loss", loss)
        object.__setattr__(self, "_sampling", sampling)

    @property
    def loss(self) -> LossSettings:
        """What the objective reads (TRL's names)."""
        return self._loss

    @property
    def sampling(self) -> SamplingConfig:
        """How completions are drawn (the seed is set per generation batch)."""
        return self._sampling


def _same_named(settings_class, settings) -> dict[str, Any]:
    """The fields of `settings_class` that `settings` carries under the same (TRL) name."""
    return {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings_class) if hasattr(settings, f.name)}


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
    """Where generation runs. rules: the layout of the params' sampling copy, made once per
    generation batch (`tensor_parallel`: weights split only over `tensor`, rows and the KV cache over
    data x fsdp, so a decode step reads weights from local memory; `fsdp`: sample from the training
    layout itself, no copy, every weight gathered for every token). mesh: a mesh spec over the same
    devices for sampling ("" = the training mesh), e.g. `data=-1,tensor=4`. slots: completions
    decoded at once with continuous batching (`jaxrl.models.engine`; 0 = all of a generation
    batch's); a slot freed by a finished completion takes the next waiting one. 224, half the
    study's 448 completions: on 8 H100s the KV cache of all 448 (55 GiB per GPU) does not fit beside
    the sampling copy and the training state, and a v5p-64, where all 448 fit, plans a generation
    batch ~18% slower (`jaxrl plan`). A v4-64 needs 128: with 224 the TPU compiler's engine needs
    31.7 of its 30.75 GiB beside the training state (`jaxrl plan --topology v4-64`, docs/tpu.md)."""

    DOMAINS: ClassVar[dict[str, str]] = {"slots": ">= 0; 0 = all completions at once"}  # jaxrl.knobs

    rules: str = "tensor_parallel"
    mesh: str = ""
    slots: int = 224

    def __post_init__(self):
        check_knobs(self, "rollout.")
        rules_preset(self.rules)  # a clear error for an unknown name, at load time

    def sampling_mesh(self, training: LogicalMesh) -> LogicalMesh | None:
        """The mesh and rules to sample on, or None to sample from the training layout."""
        if self.rules == "fsdp" and not self.mesh:
            return None
        mesh = make_mesh(self.mesh) if self.mesh else training.mesh
        return LogicalMesh(mesh, rules_preset(self.rules))


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
    model: ModelSource = ModelSource()
    data: DataConfig = DataConfig(prompt_column="problem")
    chat: ChatConfig = ChatConfig()
    grpo: GRPOSettings = GRPOSettings()
    rollout: RolloutConfig = RolloutConfig()
    optimizer: OptimizerConfig = OptimizerConfig(learning_rate=1e-6, lr_scheduler_type="linear")
    freeze: FreezeConfig = FreezeConfig()
    checkpoint: CheckpointConfig = CheckpointConfig(save_steps=500)
    loop: LoopConfig = LoopConfig(output_dir="runs/grpo")


def load_config(recipe_path: str | None, overrides=()) -> GRPOConfig:
    return load_recipe(GRPOConfig, recipe_path, list(overrides))


class GRPOTrainer(Trainer):
    """The loop's Trainer, whose step turns the loss's token sums into ratios (clip ratios, KL, and
    the entropy and sampler-vs-trainer gap when the loss's pass scored the batch)."""

    def step(self, batch, step: int) -> dict[str, Any]:
        m = dict(super().step(batch, step))
        tokens = jnp.maximum(m.pop("mask_tokens"), 1.0)
        low, high = m.pop("clip_low_tokens"), m.pop("clip_high_tokens")
        m["clip_ratio/low_mean"], m["clip_ratio/high_mean"] = low / tokens, high / tokens
        m["clip_ratio/region_mean"] = (low + high) / tokens
        if "kl_sum" in m:
            m["kl"] = m.pop("kl_sum") / tokens
        if "sampled_tokens" in m:  # the rollout left the entropy and the gap to the loss's pass
            sampled = m.pop("sampled_tokens")
            every = jnp.maximum(sampled, 1.0)
            m["entropy"] = m.pop("entropy_sum") / every
            m["logprob_gap/mean"] = m.pop("logprob_gap_sum") / every
            m["logprob_gap/max"] = jnp.where(sampled > 0, m.pop("logprob_gap_max"), 0.0)
        return m


# -- the run --------------------------------------------------------------------------------------


def run(recipe_path: str | None, overrides=()) -> str:
    """Trains (or resumes) the GRPO run the recipe describes; returns the run directory."""
    config = load_config(recipe_path, overrides)
    s, loop = config.grpo, config.loop

    def check_batch(dp: int) -> None:
        if s.prompts_per_step % jax.process_count():
            raise JaxrlError(f"grpo.prompts_per_step={s.prompts_per_step} must divide over {jax.process_count()} hosts")
        completions = s.prompts_per_step * s.num_generations
        check_batch_size(
            completions, loop.gradient_accumulation_steps, dp, "completions per step (prompts x generations)"
        )

    setup = session.prepare(config, check_batch)
    prompts = load_prompts(config.data, setup.tokenizer, config.chat, s.max_prompt_length, setup.vocab_size)
    prompt_batches = PromptBatches(
        prompts,
        s.prompts_per_step,
        seed=loop.seed,
        shuffle=s.shuffle,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    # max_steps, else epochs of prompts; each generation batch trains num_iterations steps
    total_steps = loop.total_steps(prompt_batches.steps_per_epoch * s.num_iterations)
    verifier = MathVerifier(num_workers=s.verifier_workers or None, timeout_s=s.verifier_timeout_s)
    scorer = RewardScorer(s.reward_funcs, s.reward_weights, gold_column=s.gold_column, verifier=verifier)
    trainer = session.build_trainer(
        config, setup.model_path, setup.mesh, make_loss_fn(s.loss), total_steps, GRPOTrainer
    )
    # the reference model: the initial weights, frozen (loaded only when the loss reads it)
    ref_params = (
        nnx.to_pure_dict(nnx.state(session.load_policy(config, setup.model_path, setup.mesh))) if s.beta > 0 else None
    )
    rollout = Rollout(
        trainer.graphdef,
        setup.tokenizer,
        scorer,
        s,
        mesh=setup.mesh,
        sampling_mesh=config.rollout.sampling_mesh(setup.mesh),
        slots=config.rollout.slots,
        pad_id=trainer.config.pad_token_id or 0,
        ref_params=ref_params,
        micro_batches=loop.gradient_accumulation_steps,
        seed=loop.seed,
        score_in_loss=True,
    )
    rollouts = Rollouts(lambda: trainer.params, prompt_batches, rollout)
    counts = ", ".join(f"{name}={n}" for name, n in prompts.counts.items())
    summary = (
        f"{len(prompts)} prompts ({counts}); {s.prompts_per_step} x {s.num_generations} completions per "
        f"generation, {s.num_iterations} update(s) each"
    )
    return session.train(config, setup, trainer, rollouts, total_steps, "grpo", summary, close=(verifier.close,))
