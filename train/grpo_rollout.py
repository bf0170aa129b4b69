"""GRPO's generation batch, in one function:

    batch, metrics, samples = generation_batch(params, prompts, rollout, generation)

This host's prompts -> every host's prompts (all hosts sample the same global batch) -> the
sampler draws G = num_generations completions of each with `params` -> rewards of this host's
completions, gathered -> group advantages (global) -> one forward pass of the policy over
prompt + completion (the "old" log-probs, the entropy, the sampler-vs-trainer log-prob gap; the
reference model's log-probs when beta > 0) -> the training batch. With `score_in_loss` and one
update per batch without KL (num_iterations 1, beta 0) that pass is skipped: nothing reads the old
log-probs, and the loss's own forward pass reports the entropy and the gap, its metrics and, with
`log_completions`, this host's completions beside their rewards and advantages. Shapes: N =
all hosts' prompts x G rows, P prompt slots (left-padded), C = max_completion_length.

`Rollouts` is the batch source `fit` iterates: every `num_iterations` steps it draws a new
generation batch with the policy's current params, and hands the loop this host's rows of it.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import io
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec
from jaxrl.models.logprobs import completion_logprobs
from jaxrl.models.params import sampling_copy
from jaxrl.models.sampler import sample
from jaxrl.train.grpo_loss import group_advantages

from jaxrl.data import PromptBatch, PromptBatches
from jaxrl.rewards import RewardScorer
from jaxrl.sharding import LogicalMesh, gather_json, gather_rows, host_rows, put, to_host

if TYPE_CHECKING:
    from jaxrl.train.grpo import GRPOSettings


@dataclasses.dataclass(frozen=True)
class Rollout:
    """Everything a generation batch needs besides the params and the prompts, set up once per run.

    graphdef: the policy's structure (params come with each call). ref_params: the frozen initial
    model (beta > 0 only). micro_batches: scoring runs that many row slices, as training does.
    seed: the run's; generation g samples with a seed drawn from (seed, g). sampling_mesh: when
    given, each generation batch samples from a copy of the params in that mesh's layout
    (`models.params.sampling_copy`: cast to the compute dtype and resharded once, device to
    device; e.g. the tensor_parallel rules, so decoding gathers no weight), dropped afterwards.
    slots: the sampler's decode slots (continuous batching; 0 = one per completion).
    score_in_loss: with num_iterations 1 and beta 0, skip the scoring pass; the batch carries the
    sampler's log-probs and the loss's forward pass (the same log-probs) reports the entropy and
    the sampler-vs-trainer gap (`grpo_loss.sampled_token_stats`, turned into metrics by
    `GRPOTrainer.step`). `grpo.run` turns it on; off, the batch's metrics carry them.
    """

    graphdef: Any
    tokenizer: Any
    scorer: RewardScorer
    settings: GRPOSettings
    mesh: LogicalMesh | None = None
    sampling_mesh: LogicalMesh | None = None
    pad_id: int = 0
    eos_token_ids: Sequence[int] | None = None
    ref_params: Any = None
    micro_batches: int = 1
    seed: int = 0
    slots: int = 0
    score_in_loss: bool = False

    @property
    def scores_in_loss(self) -> bool:
        """True when the loss's forward pass stands in for the scoring pass (see the docstring)."""
        return self.score_in_loss and self.settings.num_iterations == 1 and self.settings.beta == 0

    def policy(self, params):
        """The decoder to sample from: `params` as they are, or their copy in the sampling layout."""
        policy = nnx.merge(self.graphdef, params)
        if self.sampling_mesh is None:
            return policy
        return sampling_copy(params, policy.config, self.sampling_mesh)

    def sampling_seed(self, generation: int) -> int:
        return int(jax.random.randint(jax.random.fold_in(jax.random.key(self.seed), generation), (), 0, 2**31 - 1))

    def score(self, params, tokens, segments, completion_mask) -> tuple[np.ndarray, np.ndarray]:
        """(completion log-probs [N, C], entropy [N, C]) under `params`: the loss's forward pass
        without gradients, one training micro-batch of rows at a time (so it needs no more memory).
        The GLOBAL batch in (the same arrays on every host), the global results out on every host."""
        loss = self.settings.loss
        score = _score_fn(self.graphdef, loss.temperature, loss.logprob_chunk_size, loss.logprob_vocab_chunk_size)
        pieces = []
        for rows in np.split(np.arange(len(tokens)), self.micro_batches):
            arrays = (tokens[rows], segments[rows], completion_mask[rows])
            if self.mesh is None:
                pieces.append(tuple(np.asarray(x) for x in score(params, *arrays)))
                continue
            by_rows = NamedSharding(self.mesh.mesh, PartitionSpec(self.mesh.spec(("batch",))[0], None))
            pieces.append(tuple(to_host(x) for x in score(params, *(put(np.asarray(a), by_rows) for a in arrays))))
        logp, entropy = zip(*pieces, strict=True)
        return np.concatenate(logp), np.concatenate(entropy)


@functools.lru_cache(maxsize=8)
def _score_fn(graphdef, temperature: float, chunk_size: int, vocab_chunk_size: int):
    """One jitted scorer per model structure and settings, so later runs in a process reuse it."""

    @jax.jit
    def score(params, tokens, segments, completion_mask):
        model = nnx.merge(graphdef, params)
        c = completion_mask.shape[1]
        return completion_logprobs(model, tokens, segments, c, temperature, chunk_size, True, vocab_chunk_size)

    return score


def generation_batch(params, prompts: PromptBatch, rollout: Rollout, generation: int):
    """One GRPO generation batch from this host's `prompts` and the policy's `params`.

    Returns (batch, metrics, samples). batch (global, the same on every host): tokens, segment_ids
    int32 [N, P + C]; completion_mask, advantages float32; old_logprobs [N, C] when num_iterations
    > 1; ref_logprobs [N, C] when beta > 0; sampler_logprobs [N, C] when the loss scores
    (`Rollout.scores_in_loss`; the metrics then leave out the entropy and the gap). metrics: floats
    over all hosts (TRL's names where it has them). samples (empty unless `log_completions`): one
    dict per completion of this host's prompts, prompt, completion, rewards (function -> score,
    None where it gave none), reward (the weighted sum the advantage came from), advantage and
    finish_reason (eos, length).
    """
    s, G = rollout.settings, rollout.settings.num_generations
    # every host samples the same global prompt list, host order (host h's prompts are block h)
    prompt_ids = [p for host in gather_json([list(map(int, p)) for p in prompts.prompt_ids]) for p in host]
    sampling = dataclasses.replace(s.sampling, seed=rollout.sampling_seed(generation))
    policy = rollout.policy(params)
    out = sample(
        policy,
        prompt_ids,
        sampling,
        eos_token_ids=rollout.eos_token_ids,
        tokenizer=rollout.tokenizer,
        slots=rollout.slots,
    )
    del policy  # a sampling-layout copy is dropped as soon as the completions are drawn
    lengths = np.asarray(out.lengths)

    # rewards of this host's completions (its own prompts' rows), then gathered: global [N]
    scorer, tokenizer = rollout.scorer, rollout.tokenizer
    mine = host_rows(len(lengths))
    local_index = np.asarray(out.prompt_index)[mine] - host_rows(len(prompt_ids)).start
    texts = [tokenizer.decode(t, skip_special_tokens=True) for t in out.token_lists()[mine]]
    rows = [prompts.rows[i] for i in local_index]
    prompt_texts = [tokenizer.decode(prompts.prompt_ids[i]) for i in local_index]
    verdicts_before, errors_before = Counter(scorer.verdict_counts), Counter(scorer.errors)
    scores = scorer(prompt_texts, texts, rows)
    per_function = {k: gather_rows(v) for k, v in scores.per_function.items()}
    scores = dataclasses.replace(scores, total=gather_rows(scores.total), per_function=per_function)
    advantages, tied = group_advantages(scores.total, G, s.scale_rewards)  # groups and batch std: global

    prompt_slots = max(s.max_prompt_length or 0, max(len(p) for p in prompt_ids))
    tokens, segments = loss_rows(prompt_ids, np.asarray(out.tokens), lengths, prompt_slots, G, rollout.pad_id)
    token_mask = (np.arange(s.max_completion_length)[None, :] < lengths[:, None]).astype(np.float32)
    truncated = np.array([r == "length" for r in out.finish_reasons])
    sampler_logp = np.asarray(out.logprobs, np.float32)
    if rollout.scores_in_loss:
        logp = entropy = gap = None
    else:
        logp, entropy = rollout.score(params, tokens, segments, token_mask)
        gap = np.abs(logp - sampler_logp)
    completion_mask = token_mask * (~truncated[:, None] if s.mask_truncated_completions else 1.0)
    batch = {
        "tokens": tokens,
        "segment_ids": segments,
        "completion_mask": completion_mask.astype(np.float32),
        "advantages": np.asarray(advantages, np.float32),
    }
    if rollout.scores_in_loss:
        batch["sampler_logprobs"] = sampler_logp
    if s.num_iterations > 1:
        batch["old_logprobs"] = logp
    if s.beta > 0:
        batch["ref_logprobs"] = rollout.score(rollout.ref_params, tokens, segments, token_mask)[0]
    metrics = rollout_metrics(scores, token_mask, lengths, truncated, np.asarray(tied), entropy, gap)
    metrics["completions/slot_steps_per_token"] = out.slot_steps_per_token()
    # completions the verifier could not judge (by verdict) and reward functions that raised, all hosts
    counts = gather_json([dict(scorer.verdict_counts - verdicts_before), dict(scorer.errors - errors_before)])
    verdicts, errors = Counter(), Counter()
    for host_verdicts, host_errors in counts:
        verdicts.update(host_verdicts)
        errors.update(host_errors)
    metrics.update({f"verifier/{v}": float(n) for v, n in verdicts.items() if v not in ("correct", "wrong")})
    metrics.update({f"rewards/{name}/errors": float(n) for name, n in errors.items()})
    samples = []
    if s.log_completions:
        finish = list(out.finish_reasons)[mine]
        for i, row in enumerate(range(len(lengths))[mine]):
            rewards = {k: float(v[row]) if np.isfinite(v[row]) else None for k, v in scores.per_function.items()}
            samples.append(
                {
                    "prompt": prompt_texts[i],
                    "completion": texts[i],
                    "rewards": rewards,
                    "reward": float(scores.total[row]),
                    "advantage": float(batch["advantages"][row]),
                    "finish_reason": finish[i],
                }
            )
    return batch, metrics, samples


def loss_rows(
    prompt_ids: Sequence[Sequence[int]],
    completion_tokens: np.ndarray,
    lengths: np.ndarray,
    prompt_slots: int,
    num_generations: int,
    pad_id: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
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


def rollout_metrics(scores, completion_mask, lengths, truncated, tied, entropy, gap) -> dict[str, float]:
    """Host metrics of one generation batch (TRL's names where it has them).

    completion_mask, entropy, gap: [N, C] (entropy and gap None: left out); lengths, truncated:
    [N]; tied: [N / G]."""
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
    if entropy is None:
        return out
    live = completion_mask > 0
    out["entropy"] = float(np.mean(entropy[live])) if live.any() else 0.0
    out["logprob_gap/mean"] = float(np.mean(gap[live])) if live.any() else 0.0
    out["logprob_gap/max"] = float(np.max(gap[live])) if live.any() else 0.0
    return out


class Rollouts:
    """The batch source `fit` iterates: a new generation batch every `num_iterations` steps.

    params: returns the policy's current params when a new batch is drawn. Each host draws its own
    slice of the prompts (`PromptBatches`); `batch` is the global generation batch (the same on
    every host) and `__next__` hands the loop this host's block of its rows. `metrics` are those
    of the current batch, over all hosts, logged with each step.

    `state()` holds the prompt order, the generation count and, inside a generation batch, the
    batch itself (so a resumed run reuses exactly the completions and old log-probs it had; it is
    global, so process 0's copy, the one a checkpoint keeps, serves every host).
    """

    def __init__(self, params: Callable[[], Any], prompts: PromptBatches, rollout: Rollout):
        self.params, self.prompts, self.rollout = params, prompts, rollout
        self.generation = 0  # generation batches drawn so far
        self.used = 0  # optimizer steps already taken on the current batch
        self.batch: dict[str, np.ndarray] | None = None
        self.batch_metrics: dict[str, float] = {}
        self.samples: list[dict[str, Any]] = []  # the current batch's, with log_completions

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self.batch is None or self.used >= self.rollout.settings.num_iterations:
            prompts = next(self.prompts)
            self.batch, self.batch_metrics, self.samples = generation_batch(
                self.params(), prompts, self.rollout, self.generation
            )
            self.generation += 1
            self.used = 0
        self.used += 1
        return {k: v[host_rows(len(v))] for k, v in self.batch.items()}

    @property
    def metrics(self) -> dict[str, float]:
        """The current batch's metrics; the log-prob gap only on its first step (it compares the
        sampler with the params it sampled from)."""
        out = dict(self.batch_metrics)
        if self.used > 1:
            out = {k: v for k, v in out.items() if not k.startswith("logprob_gap/")}
        return {**out, "iteration": float(self.used)}

    def state(self) -> dict[str, Any]:
        state = {"prompts": self.prompts.state(), "generation": self.generation, "used": self.used}
        if self.batch is not None and self.used < self.rollout.settings.num_iterations:
            state["batch"] = _encode_arrays(self.batch)
            state["metrics"] = {k: v for k, v in self.batch_metrics.items() if math.isfinite(v)}  # JSON
        return state

    def restore(self, state: Mapping[str, Any]) -> None:
        self.prompts.restore(state["prompts"])
        self.generation, self.used = int(state["generation"]), int(state["used"])
        self.batch = _decode_arrays(state["batch"]) if "batch" in state else None
        self.batch_metrics = dict(state.get("metrics", {}))


def _encode_arrays(arrays: Mapping[str, np.ndarray]) -> str:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _decode_arrays(text: str) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(base64.b64decode(text))) as data:
        return {k: data[k] for k in data.files}
