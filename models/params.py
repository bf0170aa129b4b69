"""Creating a decoder directly in its sharded layout, and the shardings of its parameters."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jaxrl.models.config import ModelConfig
from jaxrl.models.decoder import Decoder

from jaxrl.sharding import LogicalMesh


def abstract_decoder(config: ModelConfig, mesh: LogicalMesh | None = None) -> Decoder:
    """A decoder whose parameters are `ShapeDtypeStruct`s: shapes without memory."""
    return nnx.eval_shape(lambda: Decoder(config, rngs=nnx.Rngs(0), mesh=mesh))


def state_shardings(state: nnx.State, mesh: LogicalMesh):
    """NamedShardings for a parameter state, from each Param's `axes` metadata."""
    return jax.tree.map(
        lambda v: mesh.sharding(v.get_metadata()["axes"], v.shape),
        state,
        is_leaf=lambda x: isinstance(x, nnx.Variable),
    )


def init_decoder(config: ModelConfig, mesh: LogicalMesh | None = None, seed: int = 0) -> Decoder:
    """A randomly initialised decoder, created on the devices already sharded (no host copy)."""
    if mesh is None:
        return Decoder(config, rngs=nnx.Rngs(seed))
    graphdef, abstract_state = nnx.split(abstract_decoder(config, mesh))

    def create():
        return nnx.state(Decoder(config, rngs=nnx.Rngs(seed), mesh=mesh))

    create = jax.jit(create, out_shardings=state_shardings(abstract_state, mesh))
    return nnx.merge(graphdef, create())


def count_params(model: Decoder) -> int:
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def sampling_copy(params, config: ModelConfig, mesh: LogicalMesh) -> Decoder:
    """The decoder of `config` with `params` (a pure dict, any layout), copied into `mesh`'s layout
    for decoding (e.g. its tensor_parallel rules): floating
    weights cast to the compute dtype where they are, then resharded device to device in one jitted
    program (never through a host). The copy is a new set of arrays; drop it after sampling."""
    graphdef_out, state = nnx.split(abstract_decoder(config, mesh))
    shardings = nnx.to_pure_dict(state_shardings(state, mesh))
    dtype = config.compute_dtype
    cast = lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x
    copied = jax.jit(lambda p: jax.tree.map(cast, p), out_shardings=shardings)(params)
    nnx.replace_by_pure_dict(state, copied)
    return nnx.merge(graphdef_out, state)
