"""The loss's shared prompt pass (`completion_logprobs(prompt_group=G)`, `grpo.share_prompt_pass`):
each group's prompt runs once and its G completions attend to its keys and values. Log-probs,
entropy and gradients equal the per-row pass for every family, on one device and on a mesh; the
compiled pass does less work; a batch whose groups do not share their prompt is refused."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jaxrl.models.config import preset
from jaxrl.models.logprobs import completion_logprobs, shared_prompt_rows
from jaxrl.models.params import init_decoder
from jaxrl.train.config import OptimizerConfig
from jaxrl.train.grpo import GRPOSettings
from jaxrl.train.grpo_loss import make_loss_fn, prompt_group
from jaxrl.train.loop import Trainer

from jaxrl.errors import JaxrlError
from jaxrl.sharding import LogicalMesh, make_mesh

G, C = 4, 9


def _batch(vocab: int, prompt_lengths=(7, 4, 2), p: int = 7, seed: int = 0) -> dict[str, np.ndarray]:
    """Left-padded prompts, each repeated for its G completions (right-padded, random lengths)."""
    rng = np.random.default_rng(seed)
    n = len(prompt_lengths)
    prompts = rng.integers(1, vocab, (n, p)) * (np.arange(p)[None] >= p - np.array(prompt_lengths)[:, None])
    lengths = rng.integers(1, C + 1, n * G)
    completion_mask = (np.arange(C)[None] < lengths[:, None]).astype(np.float32)
    completions = rng.integers(1, vocab, (n * G, C)) * completion_mask.astype(np.int64)
    tokens = np.concatenate([np.repeat(prompts, G, 0), completions], 1).astype(np.int32)
    segments = (np.concatenate([np.repeat(prompts, G, 0) > 0, completion_mask > 0], 1)).astype(np.int32)
    advantages = rng.normal(size=n * G).astype(np.float32)
    return {"tokens": tokens, "segment_ids": segments, "completion_mask": completion_mask, "advantages": advantages}


def _logprobs_and_grads(graphdef, params, batch, group: int):
    mask = jnp.asarray(batch["completion_mask"])

    def f(p):
        model = nnx.merge(graphdef, p)
        logp, entropy = completion_logprobs(
            model, batch["tokens"], batch["segment_ids"], C, 0.9, 4, True, prompt_group=group
        )
        return jnp.sum(jnp.sin(logp) * mask), (logp, entropy)

    (_, (logp, entropy)), grads = jax.jit(jax.value_and_grad(f, has_aux=True))(params)
    return logp * mask, entropy * mask, grads


@pytest.mark.parametrize("family", ["tiny-olmo2", "tiny-qwen2", "tiny-llama"])
def test_the_shared_pass_gives_the_per_row_logprobs_and_gradients(family):
    config = preset(family)
    graphdef, params = nnx.split(init_decoder(config, seed=1))
    batch = _batch(config.vocab_size)
    per_row = _logprobs_and_grads(graphdef, params, batch, 1)
    shared = _logprobs_and_grads(graphdef, params, batch, G)
    np.testing.assert_allclose(shared[0], per_row[0], atol=1e-5)
    np.testing.assert_allclose(shared[1], per_row[1], atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), shared[2], per_row[2])


def test_the_shared_pass_compiles_to_less_work():
    config = preset("tiny-olmo2")
    graphdef, params = nnx.split(init_decoder(config, seed=1))
    batch = _batch(config.vocab_size, prompt_lengths=(16, 16), p=16)

    def flops(group):
        f = lambda p: completion_logprobs(nnx.merge(graphdef, p), batch["tokens"], batch["segment_ids"], C,
                                          prompt_group=group)  # fmt: skip
        return jax.jit(f).lower(params).compile().cost_analysis()["flops"]

    # 8 rows of 16 prompt + 9 completion tokens against 2 prompts and 8 completions
    assert flops(G) < 0.75 * flops(1)


def test_the_loss_and_gradients_are_the_same_on_a_mesh():
    lm = LogicalMesh(make_mesh("data=2,fsdp=2,tensor=2"))
    config = preset("tiny-qwen2")
    batch = _batch(config.vocab_size, prompt_lengths=(5, 3, 7, 1))  # 16 rows: whole groups on 4 shards
    results = []
    for share in (False, True):
        s = GRPOSettings(num_generations=G, loss_type="grpo", share_prompt_pass=share).loss
        assert prompt_group(s, lm, 16) == (G if share else 1)
        trainer = Trainer(init_decoder(config, lm, seed=2), make_loss_fn(s), OptimizerConfig(), 4, mesh=lm)
        results.append(jax.device_get(trainer.gradients(batch)))
    (loss0, grads0), (loss1, grads1) = results
    np.testing.assert_allclose(loss1, loss0, rtol=1e-5, atol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), grads1, grads0)


def test_the_default_shares_on_cpu_where_every_shard_holds_whole_groups():
    loss = GRPOSettings(num_generations=G).loss
    one = LogicalMesh(make_mesh("", jax.devices()[:1]))
    eight = LogicalMesh(make_mesh("data=1,fsdp=8,tensor=1"))
    assert prompt_group(loss, one, 8) == G
    assert prompt_group(loss, one, 6) == 1  # not whole groups
    assert prompt_group(loss, eight, 32) == G and prompt_group(loss, eight, 16) == 1  # 2 rows a shard
    assert prompt_group(dataclasses.replace(loss, share_prompt_pass=False), one, 8) == 1
    forced = dataclasses.replace(loss, share_prompt_pass=True)
    with pytest.raises(JaxrlError, match="needs whole groups of 4 rows on every batch shard"):
        prompt_group(forced, eight, 16)


def test_a_batch_whose_groups_do_not_share_their_prompt_is_refused():
    batch = _batch(64)
    assert shared_prompt_rows(batch["tokens"], C, G)
    assert not shared_prompt_rows(batch["tokens"][:-1], C, G)  # rows not in whole groups
    other = dict(batch, tokens=batch["tokens"].copy())
    other["tokens"][1, 6] += 1  # the second completion of the first group, another prompt
    assert not shared_prompt_rows(other["tokens"], C, G)
    lm = LogicalMesh(make_mesh("", jax.devices()[:1]))
    s = GRPOSettings(num_generations=G).loss
    trainer = Trainer(init_decoder(preset("tiny-olmo2"), lm), make_loss_fn(s), OptimizerConfig(), 4, mesh=lm)
    with pytest.raises(JaxrlError, match="do not come in groups of num_generations=4 sharing a prompt"):
        trainer.gradients(other)
    two = LogicalMesh(make_mesh("data=1,fsdp=2,tensor=1", jax.devices()[:2]))
    make_loss_fn(s).check_batch(other, two, 12)  # 6 rows a shard: no whole groups, nothing shared
    per_row = make_loss_fn(dataclasses.replace(s, share_prompt_pass=False))
    off = Trainer(init_decoder(preset("tiny-olmo2"), lm), per_row, OptimizerConfig(), 4, mesh=lm)
    assert np.isfinite(jax.device_get(off.gradients(other)[0]))
