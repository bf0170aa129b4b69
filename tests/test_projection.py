"""The decoder's projections (`project`): one 2-D matmul over all tokens on CPU, the einsum
elsewhere; both compute the same product, values and gradients, and the CPU backward pass
contracts a single token dimension."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jaxrl.models.decoder import project


@pytest.mark.parametrize("shapes", [((3, 5, 8), (8, 4, 6), 1), ((3, 5, 4, 6), (4, 6, 8), 2), ((2, 7, 8), (8, 16), 1)])
def test_flat_and_einsum_agree_with_numpy(shapes):
    x_shape, w_shape, contracted = shapes
    x = jax.random.normal(jax.random.key(0), x_shape)
    w = jax.random.normal(jax.random.key(1), w_shape)
    want = np.tensordot(np.asarray(x), np.asarray(w), axes=contracted)
    for flat in (False, True):
        got = project(x, w, contracted, flat)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)

    def loss(flat):
        return lambda x, w: jnp.sum(jnp.sin(project(x, w, contracted, flat)))

    g_flat = jax.grad(loss(True), argnums=(0, 1))(x, w)
    g_einsum = jax.grad(loss(False), argnums=(0, 1))(x, w)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), g_flat, g_einsum)


def _contractions(flat: bool) -> list[int]:
    """Contracting dims per dot_general of an MLP-like layer's gradient, as traced."""
    x = jnp.ones((2, 6, 8))
    w = jnp.ones((8, 16))
    loss = lambda w: jnp.sum(jax.nn.silu(project(x, w, 1, flat)) ** 2)
    jaxpr = jax.make_jaxpr(jax.grad(loss))(w)
    return [len(e.params["dimension_numbers"][0][0]) for e in jaxpr.eqns if e.primitive.name == "dot_general"]


def test_the_flat_weight_gradient_contracts_one_token_dim():
    assert _contractions(True) == [1, 1]  # forward, weight gradient: one dim each
    assert max(_contractions(False)) == 2  # the einsum's weight gradient contracts (b, t)
