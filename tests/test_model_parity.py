"""fp32 logits of our decoder equal transformers' PyTorch logits, unsharded and on meshes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hf_models import FAMILY_CASES, build_hf_model
from jaxrl.models.hf_io import load_hf

from jaxrl.sharding import LogicalMesh, make_mesh


def padded_batch(vocab: int, seed: int = 0):
    """Tokens, a mask with right padding (row 1) and left padding (row 2), and positions."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab, (3, 12))
    mask = np.ones((3, 12), np.int64)
    mask[1, 8:] = 0
    mask[2, :5] = 0
    positions = np.maximum(np.cumsum(mask, 1) - 1, 0)
    return tokens, mask, positions


def torch_logits(model, tokens, mask, positions):
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(tokens),
            attention_mask=torch.tensor(mask),
            position_ids=torch.tensor(positions),
        )
    return out.logits.numpy()


@pytest.fixture(scope="module", params=list(FAMILY_CASES))
def family(request, tmp_path_factory):
    config = FAMILY_CASES[request.param]
    directory = tmp_path_factory.mktemp(request.param)
    reference = build_hf_model(config, directory)
    tokens, mask, positions = padded_batch(config.vocab_size)
    return directory, tokens, mask, torch_logits(reference, tokens, mask, positions)


@pytest.mark.parametrize(
    "mesh_spec",
    ["data=1,fsdp=1,tensor=1", "data=1,fsdp=2,tensor=4", "data=1,fsdp=8,tensor=1", "data=2,fsdp=1,tensor=4"],
)
def test_logits_match_transformers(family, mesh_spec):
    directory, tokens, mask, expected = family
    spec_devices = int(np.prod([int(p.split("=")[1]) for p in mesh_spec.split(",")]))
    mesh = LogicalMesh(make_mesh(mesh_spec, jax.devices()[:spec_devices]))
    model = load_hf(directory, mesh)
    logits = np.asarray(jax.jit(lambda t, m: model(t, m))(jnp.asarray(tokens), jnp.asarray(mask)))
    valid = mask.astype(bool)
    assert np.abs(logits - expected)[valid].max() <= 1e-4


def test_params_are_sharded_as_declared(family):
    directory = family[0]
    mesh = LogicalMesh(make_mesh("data=1,fsdp=2,tensor=4"))
    model = load_hf(directory, mesh)
    q = model.layers.q[...]
    assert q.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor", None)
    # each device holds 1/8 of q: embed over fsdp=2, heads over tensor=4
    assert q.addressable_shards[0].data.size == q.size // 8


def test_packed_segments_do_not_attend_across(family):
    """Two sequences packed into one row give the logits each gives alone."""
    directory, tokens, _, _ = family
    model = load_hf(directory, LogicalMesh(make_mesh("data=1,fsdp=1,tensor=1", jax.devices()[:1])))
    a, b = tokens[0, :5], tokens[1, :7]
    packed = jnp.asarray(np.concatenate([a, b])[None])
    segments = jnp.asarray([[1] * 5 + [2] * 7])
    positions = jnp.asarray([list(range(5)) + list(range(7))])
    together = np.asarray(model(packed, segments, positions))[0]
    alone_a = np.asarray(model(jnp.asarray(a[None])))[0]
    alone_b = np.asarray(model(jnp.asarray(b[None])))[0]
    np.testing.assert_allclose(together[:5], alone_a, atol=1e-5)
    np.testing.assert_allclose(together[5:], alone_b, atol=1e-5)
