"""GRPO on the shared training loop: the recipe, rollouts, and `run(recipe_path, overrides) -> run dir`.

    jaxrl train grpo --recipe train/recipes/grpo.yaml model.path=/models/olmo2-7b-instruct

One generation batch: `prompts_per_step` prompts -> the sampler draws `num_generations`
completions of each with the current parameters -> rewards (weighted sum) -> group advantages ->
one forward pass of the trainer over prompt + completion (the "old" log-probs, the entropy and the
sampler-vs-trainer log-prob gap; the reference model's log-probs when beta > 0) -> the batch
trains `num_iterations` optimizer steps (the loss of `grpo_loss`). Each optimizer step is one step
of `fit`, so checkpoints, resume, SIGTERM and metrics are the loop's; a checkpoint taken inside a
generation batch carries that batch, so a resumed run continues exactly where it stopped.

On several hosts every host samples the same global batch of prompts and trains its own rows of it;
rewards, advantages and metrics are those of the global batch (see `Rollouts`), so a run gives the
numbers one process gives (tests/test_multihost_grpo.py).

Knobs keep TRL's names and defaults (`GRPOSettings`); `train/recipes/grpo-trl.yaml` spells TRL's
defaults out, `grpo.yaml` is the study's recipe.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import io
import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec
from jaxrl.models.checkpoint import load_model
from jaxrl.models.params import count_params
from jaxrl.models.sampler import SamplingConfig, sample
from jaxrl.train import rundir
from jaxrl.train.checkpointing import Checkpoints
from jaxrl.train.config import CheckpointConfig, FreezeConfig, LoopConfig, ModelSource, OptimizerConfig
from jaxrl.train.grpo_loss import (
    LOSS_TYPES,
    SCALE_REWARDS,
    LossSettings,
    completion_logprobs,
    group_advantages,
    make_loss_fn,
)
from jaxrl.train.loop import Trainer, check_batch_size, data_parallel_size, fit
from jaxrl.train.sft import total_steps_of

from jaxrl.data import ChatConfig, DataConfig, PromptBatches, load_prompts
from jaxrl.errors import JaxrlError
from jaxrl.metrics import MetricsLogger
from jaxrl.recipes import dump_recipe, load_recipe
from jaxrl.rewards import MathVerifier, RewardScorer
from jaxrl.sharding import LogicalMesh, put


@dataclasses.dataclass(frozen=True)
class GRPOSettings:
    """GRPO knobs, TRL's names and defaults (see the README's table for the study's values).

    prompts_per_step: prompts per optimizer step, all hosts together (completions per step =
      prompts_per_step x num_generations; the study: 16 x 28 = 448).
    num_generations: completions per prompt (G). num_iterations: optimizer steps per generation
      batch (mu); with mu > 1 the ratio uses the log-probs stored at generation time.
    beta: KL coefficient (k3 estimator) against the initial model, loaded only when beta > 0.
    epsilon / epsilon_high: clip range [1 - epsilon, 1 + epsilon_high] (None: epsilon).
    loss_type: grpo | bnpo | dr_grpo | dapo (see `grpo_loss`). scale_rewards: group | batch | none.
    mask_truncated_completions: completions that hit max_completion_length get no loss.
    max_prompt_length: longer prompts keep their last tokens. temperature / top_p / top_k: sampling;
      the loss's log-probs use logits / temperature.
    reward_funcs / reward_weights: registered names or "module:function"; weights default to 1.
    gold_column: the dataset column the accuracy reward reads (a solution with a boxed answer, or
      a bare answer). verifier_timeout_s: per-completion bound on math-verify.
    logprob_chunk_size: completion tokens per chunk of the log-prob computation (bounds the
      [rows, chunk, vocab] logits buffer); logprob_vocab_chunk_size > 0 also cuts the vocabulary
      (for a vocabulary not sharded over `tensor`).
    """

    prompts_per_step: int = 8
    num_generations: int = 8
    num_iterations: int = 1
    beta: float = 0.0
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

    def __post_init__(self):
        if self.num_generations < 2:
            raise JaxrlError(f"grpo.num_generations={self.num_generations}: group advantages need at least 2")
        if self.prompts_per_step < 1 or self.num_iterations < 1 or self.max_completion_length < 1:
            raise JaxrlError("grpo: prompts_per_step, num_iterations and max_completion_length must be >= 1")
        if self.loss_type not in LOSS_TYPES:
            raise JaxrlError(f"grpo.loss_type={self.loss_type!r}; choose one of {', '.join(LOSS_TYPES)}")
        if self.scale_rewards not in SCALE_REWARDS:
            raise JaxrlError(f"grpo.scale_rewards={self.scale_rewards!r}; choose one of {', '.join(SCALE_REWARDS)}")
        if self.temperature <= 0:
            raise JaxrlError("grpo.temperature must be > 0 (the loss divides the logits by it)")
        if self.reward_weights and len(self.reward_weights) != len(self.reward_funcs):
            raise JaxrlError(
                f"{len(self.reward_weights)} grpo.reward_weights for {len(self.reward_funcs)} reward_funcs"
            )

    def loss_settings(self) -> LossSettings:
        return LossSettings(
            loss_type=self.loss_type, epsilon=self.epsilon, epsilon_high=self.epsilon_high, beta=self.beta,
            max_completion_length=self.max_completion_length, temperature=self.temperature,
            logprob_chunk_size=self.logprob_chunk_size, logprob_vocab_chunk_size=self.logprob_vocab_chunk_size,
            use_old_logprobs=self.num_iterations > 1,
        )  # fmt: skip

    def sampling(self, seed: int) -> SamplingConfig:
        return SamplingConfig(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                              max_new_tokens=self.max_completion_length, num_samples=self.num_generations,
                              seed=seed)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
    model: ModelSource = ModelSource()
    data: DataConfig = DataConfig(prompt_column="problem")
    chat: ChatConfig = ChatConfig()
    grpo: GRPOSettings = GRPOSettings()
    optimizer: OptimizerConfig = OptimizerConfig(learning_rate=1e-6, lr_scheduler_type="linear")
    freeze: FreezeConfig = FreezeConfig()
    checkpoint: CheckpointConfig = CheckpointConfig(save_steps=500)
    loop: LoopConfig = LoopConfig(output_dir="runs/grpo")


def load_config(recipe_path: str | None, overrides=()) -> GRPOConfig:
    return load_recipe(GRPOConfig, recipe_path, list(overrides))


# -- one generation batch -------------------------------------------------------------------------


def loss_rows(prompt_ids: Sequence[Sequence[int]], completion_tokens: np.ndarray, lengths: np.ndarray,
              prompt_slots: int, num_generations: int, pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """tokens, segment_ids int32 [N, P + C]: each prompt left-padded into P slots, repeated for its
    G completions, followed by the completion right-padded into C = completion_tokens.shape[1]."""
    n, c = completion_tokens.shape
    tokens = np.full((n, prompt_slots + c), pad_id, np.int32)
    segments = np.zeros((n, prompt_slots + c), np.int32)
    for row in range(n):
        prompt = prompt_ids[row // num_generations]
        tokens[row, prompt_slots - len(prompt) : prompt_slots] = prompt
        segments[row, prompt_slots - len(prompt) : prompt_slots + lengths[row]] = 1
        tokens[row, prompt_slots : prompt_slots + lengths[row]] = completion_tokens[row, : lengths[row]]
    return tokens, segments


@functools.lru_cache(maxsize=8)
def _score_fn(graphdef, temperature: float, chunk_size: int, vocab_chunk_size: int):
    """One jitted scorer per model structure and settings, so later runs in a process reuse it."""

    @jax.jit
    def score(params, tokens, segments, completion_mask):
        m = nnx.merge(graphdef, params)
        return completion_logprobs(m, tokens, segments, completion_mask.shape[1], temperature, chunk_size, True,
                                   vocab_chunk_size)  # fmt: skip

    return score


def make_scorer(model, temperature: float, chunk_size: int, vocab_chunk_size: int, mesh: LogicalMesh | None,
                micro_batches: int = 1):  # fmt: skip
    """(params, tokens, segments, completion_mask) -> (completion log-probs [N, C], entropy [N, C]):
    the forward pass the loss does, without gradients, `micro_batches` row slices at a time.
    The GLOBAL batch in (the same arrays on every host), the global results out on every host."""
    score = _score_fn(nnx.graphdef(model), temperature, chunk_size, vocab_chunk_size)

    def score_rows(params, arrays):
        if mesh is None:
            return tuple(np.asarray(x) for x in score(params, *arrays))
        rows = NamedSharding(mesh.mesh, PartitionSpec(mesh.spec(("batch",))[0], None))
        return tuple(_to_host(x) for x in score(params, *(put(np.asarray(a), rows) for a in arrays)))

    def run(params, tokens, segments, completion_mask):
        # one row slice per training micro-batch, so scoring needs no more memory than training
        pieces = []
        for rows in np.split(np.arange(len(tokens)), micro_batches):
            pieces.append(score_rows(params, (tokens[rows], segments[rows], completion_mask[rows])))
        logp, entropy = zip(*pieces, strict=True)
        return np.concatenate(logp), np.concatenate(entropy)

    return run


def rollout_metrics(scores, completion_mask: np.ndarray, lengths: np.ndarray, truncated: np.ndarray,
                    tied: np.ndarray, entropy: np.ndarray, gap: np.ndarray) -> dict[str, float]:  # fmt: skip
    """Host metrics of one generation batch (TRL's names where it has them)."""
    out = {}
    for name, r in scores.per_function.items():
        out[f"rewards/{name}/mean"] = float(np.nanmean(r)) if np.isfinite(r).any() else float("nan")
        out[f"rewards/{name}/std"] = float(np.nanstd(r)) if np.isfinite(r).any() else float("nan")
    out["reward"] = float(np.mean(scores.total))
    out["reward_std"] = float(np.std(scores.total))
    out["frac_reward_zero_std"] = float(np.mean(tied))
    out["completions/mean_length"] = float(np.mean(lengths))
    out["completions/min_length"] = float(np.min(lengths))
    out["completions/max_length"] = float(np.max(lengths))
    out["completions/clipped_ratio"] = float(np.mean(truncated))
    live = completion_mask > 0
    out["entropy"] = float(np.mean(entropy[live])) if live.any() else 0.0
    out["logprob_gap/mean"] = float(np.mean(gap[live])) if live.any() else 0.0
    out["logprob_gap/max"] = float(np.max(gap[live])) if live.any() else 0.0
    return out


# -- hosts: every host samples the global batch, scores rewards for its own rows, trains its own rows


def _to_host(x: jax.Array) -> np.ndarray:
    """The whole of a (possibly multi-host) array on this host."""
    return np.asarray(x) if x.is_fully_addressable else np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _gather_rows(x: np.ndarray) -> np.ndarray:
    """This host's rows [n, ...] -> every host's rows in host order [hosts * n, ...] (same n on all)."""
    return x if jax.process_count() == 1 else np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _gather_json(value: Any) -> list[Any]:
    """A JSON value from every host, in host order (values of any size)."""
    if jax.process_count() == 1:
        return [value]
    data = np.frombuffer(json.dumps(value).encode(), np.uint8).astype(np.int32)
    sizes = multihost_utils.process_allgather(np.array([data.size], np.int32), tiled=True)
    padded = np.zeros(int(sizes.max()), np.int32)
    padded[: data.size] = data
    everyone = multihost_utils.process_allgather(padded)  # [hosts, longest]
    return [json.loads(row[:n].astype(np.uint8).tobytes()) for row, n in zip(everyone, sizes, strict=True)]


def _host_rows(n: int) -> slice:
    """This host's block of a global prompt-major array of n rows (host h holds the h-th of equal blocks)."""
    per_host = n // jax.process_count()
    return slice(jax.process_index() * per_host, (jax.process_index() + 1) * per_host)


def _encode_arrays(arrays: Mapping[str, np.ndarray]) -> str:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _decode_arrays(text: str) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(base64.b64decode(text))) as data:
        return {k: data[k] for k in data.files}


class Rollouts:
    """The batch source `fit` iterates: a new generation batch every `num_iterations` steps.

    On several hosts each host draws its own slice of the prompts; the hosts swap prompt ids so
    that every host samples the same global batch (the sampler places its inputs as global arrays),
    each scores the rewards of its own completions, and the rewards are gathered so that advantages,
    the batch std and the metrics are those of the global batch. `batch` is the global batch (the
    same on every host); `__next__` hands the loop this host's block of its rows.

    `state()` holds the prompt order, the generation count and, inside a generation batch, the
    batch itself (so a resumed run reuses exactly the completions and old log-probs it had; it is
    global, so process 0's copy, the one a checkpoint keeps, serves every host).
    After each `__next__`, `metrics` holds that generation batch's metrics, over all hosts.
    """

    def __init__(self, trainer: Trainer, prompts: PromptBatches, tokenizer, scorer: RewardScorer,
                 settings: GRPOSettings, *, ref_params=None, mesh: LogicalMesh | None = None,
                 eos_token_ids: Sequence[int] | None = None, seed: int = 0):  # fmt: skip
        self.trainer, self.prompts, self.tokenizer, self.scorer = trainer, prompts, tokenizer, scorer
        self.s, self.ref_params, self.mesh, self.seed = settings, ref_params, mesh, seed
        self.eos_token_ids = eos_token_ids
        self.score = make_scorer(trainer.model, settings.temperature, settings.logprob_chunk_size,
                                 settings.logprob_vocab_chunk_size, mesh, trainer.accumulation)  # fmt: skip
        self.pad_id = trainer.config.pad_token_id or 0
        self.generation = 0  # generation batches drawn so far
        self.used = 0  # optimizer steps already taken on the current batch
        self.batch: dict[str, np.ndarray] | None = None
        self.metrics: dict[str, float] = {}

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self.batch is None or self.used >= self.s.num_iterations:
            self.batch, self.metrics = self.generate(next(self.prompts), self.generation)
            self.generation += 1
            self.used = 0
        self.used += 1
        self.metrics["iteration"] = float(self.used)
        return {k: v[_host_rows(len(v))] for k, v in self.batch.items()}

    def sampling_seed(self, generation: int) -> int:
        return int(jax.random.randint(jax.random.fold_in(jax.random.key(self.seed), generation), (), 0, 2**31 - 1))

    def generate(self, prompt_batch, generation: int) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        """The global generation batch (tokens, segment_ids, completion_mask, advantages, and old /
        reference log-probs when used; [N, ...] with N = all hosts' prompts x G) and its metrics,
        from this host's prompts."""
        s, G = self.s, self.s.num_generations
        # every host samples the same global prompt list, host order (host h's prompts are block h)
        prompt_ids = [p for host in _gather_json([list(map(int, p)) for p in prompt_batch.prompt_ids]) for p in host]
        out = sample(self.trainer.model, prompt_ids, s.sampling(self.sampling_seed(generation)),
                     eos_token_ids=self.eos_token_ids, tokenizer=self.tokenizer, mesh=self.mesh)  # fmt: skip
        lengths = np.asarray(out.lengths)

        # rewards of this host's completions (its own prompts' rows), then gathered: global [N]
        mine = _host_rows(len(lengths))
        first_prompt = _host_rows(len(prompt_ids)).start
        local_index = np.asarray(out.prompt_index)[mine] - first_prompt
        token_lists = out.token_lists()[mine]
        texts = [self.tokenizer.decode(t, skip_special_tokens=True) for t in token_lists]
        rows = [prompt_batch.rows[i] for i in local_index]
        prompt_texts = [self.tokenizer.decode(prompt_batch.prompt_ids[i]) for i in local_index]
        verdicts_before, errors_before = Counter(self.scorer.verdict_counts), Counter(self.scorer.errors)
        scores = self.scorer(prompt_texts, texts, rows)
        per_function = {k: _gather_rows(v) for k, v in scores.per_function.items()}
        scores = dataclasses.replace(scores, total=_gather_rows(scores.total), per_function=per_function)
        advantages, tied = group_advantages(scores.total, G, s.scale_rewards)  # groups and batch std: global

        prompt_slots = s.max_prompt_length or max(len(p) for p in prompt_ids)
        prompt_slots = max(prompt_slots, max(len(p) for p in prompt_ids))
        tokens, segments = loss_rows(prompt_ids, np.asarray(out.tokens), lengths, prompt_slots, G, self.pad_id)
        c = s.max_completion_length
        token_mask = (np.arange(c)[None, :] < lengths[:, None]).astype(np.float32)
        truncated = np.array([r == "length" for r in out.finish_reasons])
        logp, entropy = self.score(self.trainer.params, tokens, segments, token_mask)
        gap = np.abs(logp - np.asarray(out.logprobs, np.float32))
        completion_mask = token_mask * (~truncated[:, None] if s.mask_truncated_completions else 1.0)
        batch = {
            "tokens": tokens, "segment_ids": segments, "completion_mask": completion_mask.astype(np.float32),
            "advantages": np.asarray(advantages, np.float32),
        }  # fmt: skip
        if s.num_iterations > 1:
            batch["old_logprobs"] = logp
        if s.beta > 0:
            batch["ref_logprobs"] = self.score(self.ref_params, tokens, segments, token_mask)[0]
        metrics = rollout_metrics(scores, token_mask, lengths, truncated, np.asarray(tied), entropy, gap)
        # this batch's completions the verifier could not judge, by verdict, and reward functions that
        # raised, summed over hosts
        counts = _gather_json([dict(self.scorer.verdict_counts - verdicts_before),
                               dict(self.scorer.errors - errors_before)])  # fmt: skip
        verdicts, errors = Counter(), Counter()
        for host_verdicts, host_errors in counts:
            verdicts.update(host_verdicts)
            errors.update(host_errors)
        for verdict, count in verdicts.items():
            if verdict not in ("correct", "wrong"):
                metrics[f"verifier/{verdict}"] = float(count)
        for name, count in errors.items():
            metrics[f"rewards/{name}/errors"] = float(count)
        return batch, metrics

    def state(self) -> dict[str, Any]:
        state = {"prompts": self.prompts.state(), "generation": self.generation, "used": self.used}
        if self.batch is not None and self.used < self.s.num_iterations:
            state["batch"] = _encode_arrays(self.batch)
            state["metrics"] = {k: v for k, v in self.metrics.items() if math.isfinite(v)}  # JSON
        return state

    def restore(self, state: Mapping[str, Any]) -> None:
        self.prompts.restore(state["prompts"])
        self.generation, self.used = int(state["generation"]), int(state["used"])
        self.batch = _decode_arrays(state["batch"]) if "batch" in state else None
        self.metrics = dict(state.get("metrics", {}))


class GRPOTrainer(Trainer):
    """The loop's Trainer, whose step also reports the rollout's metrics and turns the loss's
    token sums into ratios (clip ratios, KL)."""

    rollouts: Rollouts | None = None

    def step(self, batch, step: int) -> dict[str, Any]:
        m = dict(super().step(batch, step))
        tokens = jnp.maximum(m.pop("mask_tokens"), 1.0)
        low, high = m.pop("clip_low_tokens"), m.pop("clip_high_tokens")
        m["clip_ratio/low_mean"], m["clip_ratio/high_mean"] = low / tokens, high / tokens
        m["clip_ratio/region_mean"] = (low + high) / tokens
        if "kl_sum" in m:
            m["kl"] = m.pop("kl_sum") / tokens
        if self.rollouts is not None:
            extra = self.rollouts.metrics
            if self.rollouts.used > 1:  # the gap compares the sampler with the params it sampled from
                extra = {k: v for k, v in extra.items() if not k.startswith("logprob_gap/")}
            m.update({k: np.float32(v) for k, v in extra.items()})
        return m


# -- the run --------------------------------------------------------------------------------------


def run(recipe_path: str | None, overrides=()) -> str:
    """Trains (or resumes) the GRPO run the recipe describes; returns the run directory."""
    config = load_config(recipe_path, overrides)
    s, loop = config.grpo, config.loop
    run_dir = rundir.check_output_dir(loop.output_dir)
    checkpoint_dir = rundir.checkpoint_dir(run_dir, config.checkpoint.directory)
    model_path = rundir.check_model_path(config.model.path)
    mesh = rundir.training_mesh(loop.mesh)
    k, dp = loop.gradient_accumulation_steps, data_parallel_size(mesh)
    if s.prompts_per_step % jax.process_count():
        raise JaxrlError(f"grpo.prompts_per_step={s.prompts_per_step} must divide over {jax.process_count()} hosts")
    check_batch_size(s.prompts_per_step * s.num_generations, k, dp, "completions per step (prompts x generations)")
    tokenizer = rundir.load_tokenizer(model_path)
    prompts = load_prompts(config.data, tokenizer, config.chat, s.max_prompt_length)
    prompt_batches = PromptBatches(prompts, s.prompts_per_step, seed=loop.seed, shuffle=s.shuffle,
                                   process_index=jax.process_index(), process_count=jax.process_count())  # fmt: skip
    # max_steps, else epochs of prompts; each generation batch trains num_iterations steps
    total_steps = total_steps_of(loop, prompt_batches.steps_per_epoch * s.num_iterations)
    load = lambda: load_model(model_path, mesh, config.model.param_dtype, dtype=config.model.dtype,
                              remat=config.model.remat)  # fmt: skip
    verifier = MathVerifier(num_workers=s.verifier_workers or None, timeout_s=s.verifier_timeout_s)
    scorer = RewardScorer(s.reward_funcs, s.reward_weights, gold_column=s.gold_column, verifier=verifier)
    model = load()
    ref_params = nnx.to_pure_dict(nnx.state(load())) if s.beta > 0 else None  # frozen: never updated
    trainer = GRPOTrainer(model, make_loss_fn(s.loss_settings()), config.optimizer, total_steps,
                          freeze=config.freeze, accumulation=k, mesh=mesh, seed=loop.seed)  # fmt: skip
    # Written only once every check has passed, so a rejected recipe leaves nothing behind.
    rundir.write_run_files(run_dir, model.config, rundir.tokenizer_dir(model_path), dump_recipe(config))
    del model
    rollouts = Rollouts(trainer, prompt_batches, tokenizer, scorer, s, ref_params=ref_params, mesh=mesh,
                        seed=loop.seed)  # fmt: skip
    trainer.rollouts = rollouts
    checkpoints = Checkpoints(checkpoint_dir, config.checkpoint)
    logger = MetricsLogger(run_dir, total_steps)
    logger.message(
        f"grpo: {len(prompts)} prompts ({', '.join(f'{k_}={v}' for k_, v in prompts.counts.items())}); "
        f"{s.prompts_per_step} x {s.num_generations} completions per generation, {s.num_iterations} update(s) "
        f"each; {total_steps} steps; {count_params(trainer.model) / 1e6:.1f}M parameters; {trainer.plan.summary()}"
    )
    try:
        result = fit(
            trainer, rollouts, total_steps, checkpoints, logger,
            save_interval=config.checkpoint.interval(total_steps), resume=config.checkpoint.resume,
            max_nonfinite_steps=loop.max_nonfinite_steps, logging_steps=loop.logging_steps,
            peak_flops_per_device=loop.peak_flops_per_device or None,
        )  # fmt: skip
    finally:
        checkpoints.close()
        logger.close()
        verifier.close()
    if not result.preempted:
        logger.message(f"grpo: done, {result.step} steps; checkpoints in {checkpoints.directory}")
    return str(run_dir)
