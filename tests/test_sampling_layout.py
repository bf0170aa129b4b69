"""Decoding on the sampling layout: the params copied once into the tensor_parallel rules (weights
whole on every data/fsdp shard), so the compiled decode loop gathers no weight, and the same
completions as sampling from the training layout."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx
from jaxrl.models.config import preset
from jaxrl.models.params import init_decoder, sampling_copy, sampling_layout
from jaxrl.models.sampler import SamplingConfig, decode_collectives, sample
from jaxrl.train.grpo import RolloutConfig

from jaxrl.errors import JaxrlError
from jaxrl.sharding import LogicalMesh, make_mesh, rules_preset

PROMPTS = [[1, 5, 9, 2], [3, 7], [11, 12, 13, 14, 15, 16], [4]]
SAMPLED = SamplingConfig(temperature=0.8, top_p=0.9, max_new_tokens=12, num_samples=2, seed=5)


@pytest.fixture(scope="module")
def on_fsdp8():
    """A tiny model on an emulated data=1,fsdp=8 mesh in the training layout, and its sampling copy."""
    mesh = make_mesh("data=1,fsdp=8,tensor=1")
    config = preset("tiny-olmo2")
    training = init_decoder(config, LogicalMesh(mesh), seed=3)
    params = nnx.to_pure_dict(nnx.state(training))
    return training, sampling_copy(params, config, LogicalMesh(mesh, rules_preset("tensor_parallel")))


def test_the_decode_loop_gathers_no_weight_on_the_sampling_layout(on_fsdp8):
    training, copy = on_fsdp8
    assert decode_collectives(training, PROMPTS, SAMPLED)["all-gather"] > 0  # every weight, every token
    assert decode_collectives(copy, PROMPTS, SAMPLED)["all-gather"] == 0
    leaf = copy.layers.q[...]
    assert leaf.sharding.shard_shape(leaf.shape) == leaf.shape  # whole on every device (tensor=1)


def test_the_engine_loop_gathers_no_weight_on_the_sampling_layout(on_fsdp8):
    training, copy = on_fsdp8
    six = dataclasses.replace(SAMPLED, num_samples=6)  # 24 slots: no weight dimension is 24
    assert decode_collectives(training, PROMPTS, six, slots=24)["weight all-gather"] > 0
    counts = decode_collectives(copy, PROMPTS, six, slots=24)
    assert counts["weight all-gather"] == 0
    assert counts["all-gather"] > 0  # what it does gather: the slots' new tokens, to record them


def test_continuous_batching_on_the_mesh_draws_the_single_device_completions(on_fsdp8):
    training, copy = on_fsdp8
    one_device = nnx.merge(nnx.graphdef(training), jax.device_get(nnx.state(training)))
    one_device.mesh = None
    want = sample(one_device, PROMPTS, SAMPLED)
    got = sample(copy, PROMPTS, SAMPLED, slots=8)  # one slot per batch shard
    np.testing.assert_array_equal(got.tokens, want.tokens)
    np.testing.assert_allclose(got.logprobs, want.logprobs, atol=1e-5)
    assert got.finish_reasons == want.finish_reasons


def test_the_sampling_copy_draws_the_same_completions(on_fsdp8):
    training, copy = on_fsdp8
    want, got = sample(training, PROMPTS, SAMPLED), sample(copy, PROMPTS, SAMPLED)
    np.testing.assert_array_equal(got.tokens, want.tokens)
    np.testing.assert_allclose(got.logprobs, want.logprobs, atol=1e-5)
    assert got.finish_reasons == want.finish_reasons


def test_rollout_config_names_its_rules():
    mesh = LogicalMesh(make_mesh("data=1,fsdp=8,tensor=1"))
    assert RolloutConfig(rules="fsdp").sampling_mesh(mesh) is None  # sample from the training layout
    sampling = RolloutConfig().sampling_mesh(mesh)
    assert sampling.mesh is mesh.mesh and dict(sampling.rules)["embed"] is None
    assert dict(RolloutConfig(mesh="data=2,fsdp=1,tensor=4").sampling_mesh(mesh).mesh.shape)["tensor"] == 4
    with pytest.raises(JaxrlError, match="unknown sharding rules 'zero3'"):
        RolloutConfig(rules="zero3")
    with pytest.raises(JaxrlError, match=r"rollout\.slots must be an integer >= 0 .*got -1"):
        RolloutConfig(slots=-1)
    assert jax.device_count() == 8


def test_the_sampling_copy_is_built_once_and_skipped_when_the_layout_is_already_there():
    mesh = LogicalMesh(make_mesh("data=1,fsdp=8,tensor=1"))
    config = preset("tiny-olmo2")
    params = nnx.to_pure_dict(nnx.state(init_decoder(config, mesh, seed=3)))
    sampling_layout.cache_clear()
    tensor_parallel = LogicalMesh(mesh.mesh, rules_preset("tensor_parallel"))
    copies = [nnx.to_pure_dict(nnx.state(sampling_copy(params, config, tensor_parallel))) for _ in range(3)]
    assert sampling_layout.cache_info().misses == 1  # traced and compiled once, not per batch
    assert copies[0]["layers"]["gate"] is not params["layers"]["gate"]  # resharded: a new array
    np.testing.assert_array_equal(copies[2]["layers"]["gate"], params["layers"]["gate"])
    same = nnx.to_pure_dict(nnx.state(sampling_copy(params, config, mesh)))  # the training layout
    assert same["layers"]["gate"] is params["layers"]["gate"]  # nothing to copy
    bf16 = nnx.to_pure_dict(nnx.state(sampling_copy(params, config.replace(dtype="bfloat16"), mesh)))
    assert bf16["layers"]["gate"].dtype == jax.numpy.bfloat16  # a cast is a copy
