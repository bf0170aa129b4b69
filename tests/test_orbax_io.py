"""How parameter trees are stored: a chunk per layer and device shard, compressed only on request."""

from __future__ import annotations

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorstore as ts
from jax.sharding import NamedSharding, PartitionSpec
from jaxrl.train.checkpointing import Checkpoints
from jaxrl.train.config import CheckpointConfig

from jaxrl.orbax_io import save_tree
from jaxrl.sharding import make_mesh


def stored(params_dir, name: str) -> dict:
    """The zarr metadata of one stored array."""
    kvstore = {"driver": "ocdbt", "base": f"file://{params_dir}", "path": name + "/"}
    return ts.open({"driver": "zarr", "kvstore": kvstore}, open=True, read=True).result().spec().to_json()["metadata"]


@pytest.fixture(scope="module")
def tree():
    mesh = make_mesh("data=1,fsdp=8,tensor=1")
    rng = np.random.default_rng(0)
    q = rng.standard_normal((3, 16, 4, 8)).astype(np.float32)  # [L, D, H, E], D sharded 8 ways
    embed = rng.standard_normal((32, 16)).astype(np.float32)
    return {
        "embed": jax.device_put(embed, NamedSharding(mesh, PartitionSpec("fsdp", None))),
        "layers": {"q": jax.device_put(q, NamedSharding(mesh, PartitionSpec(None, "fsdp")))},
    }


def test_a_chunk_per_layer_and_shard_uncompressed(tree, tmp_path):
    save_tree((tmp_path / "params").absolute(), tree)
    q, embed = stored(tmp_path / "params", "layers.q"), stored(tmp_path / "params", "embed")
    assert q["chunks"] == [1, 2, 4, 8]  # one layer of one device's shard
    assert embed["chunks"] == [4, 16]  # one device's shard
    assert q["compressor"] is None and embed["compressor"] is None
    restored = ocp.StandardCheckpointer().restore((tmp_path / "params").absolute())  # any reader
    np.testing.assert_array_equal(restored["layers"]["q"], np.asarray(tree["layers"]["q"]))
    np.testing.assert_array_equal(restored["embed"], np.asarray(tree["embed"]))


@pytest.mark.parametrize("compression", [False, True])
def test_training_checkpoints_compress_on_request(tree, tmp_path, compression):
    ckpts = Checkpoints(tmp_path / "checkpoints", CheckpointConfig(compression=compression, async_save=False))
    opt_state = {"mu": tree, "count": jax.numpy.zeros((), jax.numpy.int32)}
    ckpts.save(5, tree, opt_state, {"data": 0})
    ckpts.wait()
    meta = stored(tmp_path / "checkpoints/5/params", "layers.q")
    assert meta["chunks"] == [1, 2, 4, 8]
    assert (meta["compressor"] is not None) == compression
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), (tree, opt_state))
    params, restored_opt, train_state = ckpts.restore(5, *abstract)
    ckpts.close()
    assert train_state["step"] == 5
    for got, want in zip(jax.tree.leaves((params, restored_opt)), jax.tree.leaves((tree, opt_state)), strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_checkpoints_in_orbax_default_layout_still_restore(tree, tmp_path):
    """A run saved with Orbax's standard handler (as jaxrl did before) resumes."""
    from jaxrl.train.checkpointing import OPT_STATE, PARAMS, TRAIN_STATE, _nested

    opt_state = {"mu": tree}
    options = ocp.CheckpointManagerOptions(create=True)
    old = ocp.CheckpointManager(tmp_path / "checkpoints", options=options, item_names=(PARAMS, OPT_STATE, TRAIN_STATE))
    old.save(3, args=ocp.args.Composite(**{
        PARAMS: ocp.args.StandardSave(tree), OPT_STATE: ocp.args.StandardSave(_nested(opt_state)),
        TRAIN_STATE: ocp.args.JsonSave({"step": 3}),
    }))  # fmt: skip
    old.wait_until_finished()
    old.close()
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), (tree, opt_state))
    params, _, train_state = Checkpoints(tmp_path / "checkpoints").restore(3, *abstract)
    assert train_state["step"] == 3
    np.testing.assert_array_equal(np.asarray(params["layers"]["q"]), np.asarray(tree["layers"]["q"]))
