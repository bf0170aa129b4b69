"""The layer scan's unroll (`ModelConfig.scan_unroll`): every setting computes the same hidden states
and gradients as the rolled scan, and 0 takes the platform's default (all layers on CPU)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxrl.models.config import preset
from jaxrl.models.decoder import layer_unroll
from jaxrl.models.params import init_decoder

from jaxrl.sharding import LogicalMesh, make_mesh


def _loss_and_grads(config, tokens):
    graphdef, params = nnx.split(init_decoder(config, seed=0))

    def loss(p):
        h, _ = nnx.merge(graphdef, p).hidden_states(tokens)
        return jnp.sum(h * h), h

    (_, h), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return h, grads


def test_every_unroll_computes_what_the_rolled_scan_does():
    config = preset("tiny-olmo2", num_layers=4)
    tokens = jax.random.randint(jax.random.key(0), (2, 12), 0, config.vocab_size)
    h1, g1 = _loss_and_grads(config.replace(scan_unroll=1), tokens)
    for changes in ({"scan_unroll": 0}, {"scan_unroll": 3}, {"scan_unroll": 9}, {"scan_unroll": 4, "remat": True}):
        h, g = _loss_and_grads(config.replace(**changes), tokens)
        np.testing.assert_allclose(h, h1, rtol=1e-5, atol=1e-5)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), g, g1)


def test_zero_takes_the_platform_default():
    config = preset("tiny-olmo2", num_layers=4)
    cpu = LogicalMesh(make_mesh("", jax.devices("cpu")[:1]))
    assert layer_unroll(config, cpu) == 4  # CPU: all layers
    assert layer_unroll(config.replace(scan_unroll=2), cpu) == 2
    assert layer_unroll(config.replace(scan_unroll=9), cpu) == 4
    assert layer_unroll(config.replace(remat=True), cpu) == 1  # the scan keeps remat's savings
