"""How parameter trees are laid out in Orbax checkpoints: one stored chunk per layer, uncompressed.

Orbax stores each array as zarr chunks, by default one chunk per device shard and zstd
compressed. For a stacked tensor [L, ...] that chunk spans every layer, so reading one layer (as
the analysis of a checkpoint does, tensor by tensor) decodes all of them. Here a leaf under
`layers` is written with its layer axis split into chunks of one layer (`SaveArgs.shard_axes`,
still inside each device's shard, so multi-host saves are unchanged), and compression is off
unless asked for: zstd saves about a fifth of a bf16 checkpoint (1.21 -> 0.94 GB on
`bench/analysis.py`'s model) but reading it layer by layer then took 0.79 s instead of 0.37 s on 2
cores, paid on every restore and every analysis pass of a run's trajectory. Any Orbax reader
restores these checkpoints as usual (`ocp.StandardCheckpointer().restore(path)`).
"""

from __future__ import annotations

from typing import Any

import jax
import orbax.checkpoint as ocp

STACKED = "layers"


def _is_stacked(path) -> bool:
    return any(getattr(k, "key", None) == STACKED for k in path)


def layer_chunked(tree) -> Any:
    """SaveArgs per leaf: one chunk per layer for leaves under `layers` (layer axis first)."""

    def args(path, leaf):
        stacked = _is_stacked(path) and getattr(leaf, "ndim", 0) >= 1
        return ocp.SaveArgs(shard_axes=(0,)) if stacked else ocp.SaveArgs()

    return jax.tree_util.tree_map_with_path(args, tree)


def handler(compression: bool = False) -> ocp.PyTreeCheckpointHandler:
    return ocp.PyTreeCheckpointHandler(use_compression=compression)


def save_args(tree) -> ocp.args.PyTreeSave:
    return ocp.args.PyTreeSave(tree, save_args=layer_chunked(tree))


def restore_args(abstract) -> ocp.args.PyTreeRestore:
    """Restores into the shapes, dtypes and shardings of `abstract` (ShapeDtypeStructs)."""
    return ocp.args.PyTreeRestore(abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract))


def save_tree(directory, tree, compression: bool = False) -> None:
    """Writes `tree` (nested dicts of arrays) as an Orbax PyTree checkpoint; call on every host."""
    ocp.Checkpointer(handler(compression)).save(directory, args=save_args(tree), force=True)  # synchronous
