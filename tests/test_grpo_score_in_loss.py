"""A GRPO step whose loss pass stands in for the rollout's scoring pass (num_iterations 1, beta 0)
gives the update, the completions and the entropy / sampler-vs-trainer gap metrics of the step that
scores the batch separately, with two micro-batches (the gap's max reduced by max over them)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from jaxrl.models.checkpoint import load_model
from jaxrl.models.tiny import build_tiny_model
from jaxrl.train.config import OptimizerConfig
from jaxrl.train.grpo import GRPOSettings, GRPOTrainer
from jaxrl.train.grpo_loss import make_loss_fn
from jaxrl.train.grpo_rollout import Rollout, generation_batch

from jaxrl.data import ChatConfig, PromptBatch, encode_prompts
from jaxrl.model_files import load_tokenizer
from jaxrl.rewards import RewardScorer, register_reward
from jaxrl.sharding import LogicalMesh, make_mesh


def _digit_share(prompts, completions, **columns):
    return [sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]


register_reward("test_score_in_loss_digits", _digit_share)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "olmo2", "tiny-olmo2", seed=0)


def _step(model_dir, score_in_loss: bool, beta: float = 0.0):
    """(batch, metrics of the generation batch, metrics of the step, params after) of one step."""
    mesh = LogicalMesh(make_mesh("", jax.devices()[:1]))
    tokenizer = load_tokenizer(model_dir)
    s = GRPOSettings(prompts_per_step=2, num_generations=4, max_completion_length=8, max_prompt_length=16,
                     beta=beta, reward_funcs=("test_score_in_loss_digits",))  # fmt: skip
    trainer = GRPOTrainer(load_model(model_dir, mesh, "float32"), make_loss_fn(s.loss),
                          OptimizerConfig(learning_rate=1e-2, adam_epsilon=1e-4), 4, accumulation=2,
                          mesh=mesh)  # fmt: skip
    ref = trainer.params if beta > 0 else None
    rollout = Rollout(trainer.graphdef, tokenizer, RewardScorer(s.reward_funcs), s, mesh=mesh, micro_batches=2,
                      pad_id=trainer.config.pad_token_id, ref_params=ref, seed=3,
                      score_in_loss=score_in_loss)  # fmt: skip
    encoded = encode_prompts([{"problem": "2+3="}, {"problem": "4+1="}], tokenizer, ChatConfig(system_prompt=None))
    prompts = PromptBatch(encoded.prompt_ids, [{}, {}])
    batch, metrics, _ = generation_batch(trainer.params, prompts, rollout, 0)
    step = {k: float(v) for k, v in jax.device_get(trainer.step(batch, 0)).items()}
    return batch, metrics, step, jax.device_get(trainer.params)


def test_the_loss_pass_scores_as_the_scoring_pass_does(model_dir):
    batch0, gen0, step0, params0 = _step(model_dir, score_in_loss=False)
    batch1, gen1, step1, params1 = _step(model_dir, score_in_loss=True)
    np.testing.assert_array_equal(batch0["tokens"], batch1["tokens"])  # the same completions
    assert "sampler_logprobs" in batch1 and "sampler_logprobs" not in batch0
    assert not {"entropy", "logprob_gap/mean", "logprob_gap/max"} & set(gen1)  # left to the step
    for key in ("loss", "grad_norm"):
        np.testing.assert_allclose(step1[key], step0[key], rtol=1e-6, err_msg=key)
    for key in ("entropy", "logprob_gap/mean", "logprob_gap/max"):
        np.testing.assert_allclose(step1[key], gen0[key], rtol=1e-4, atol=1e-6, err_msg=key)
    assert step1["entropy"] > 1.0 and step1["logprob_gap/max"] < 1e-4  # a random model; the sampler agrees
    assert not {"sampled_tokens", "entropy_sum", "logprob_gap_sum", "logprob_gap_max"} & set(step1)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), params0, params1)


def test_a_batch_with_kl_is_still_scored_by_the_rollout(model_dir):
    batch, gen, step, _ = _step(model_dir, score_in_loss=True, beta=0.04)
    assert "ref_logprobs" in batch and "sampler_logprobs" not in batch
    assert {"entropy", "logprob_gap/max"} <= set(gen) and "entropy" not in step
