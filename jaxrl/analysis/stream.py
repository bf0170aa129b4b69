"""Diffing two checkpoints on disk, one block at a time.

Blocks follow `sources.block_plan`: one layer of a stacked tensor from HF directories, one
stored chunk from Orbax checkpoints. Two HF directories are compared in their own layout, each
tensor read as stored (the metrics do not depend on the layout). Only the current block of each side is in host memory,
and each block is reduced by the same jitted kernel as in-memory trees.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import numpy as np

from jaxrl.analysis.metrics import Sums, block_sums, spectrum
from jaxrl.analysis.naming import TensorSpec
from jaxrl.analysis.sources import Buffers, HFSource, Source, block_plan
from jaxrl.analysis.tree_diff import TensorChange, add_block, changes_from_sums
from jaxrl.errors import JaxrlError


def check_shapes(spec: TensorSpec, base: Source, other: Source) -> None:
    for source in (base, other):
        shape = source.shape(spec)
        if shape != spec.shape:
            raise JaxrlError(
                f"{spec.name} in {source.label} has shape {list(shape)}, expected {list(spec.shape)}; "
                "the checkpoints are not of the same model"
            )


def tensor_bytes(spec: TensorSpec, base: Source, other: Source) -> int:
    """Bytes of `spec` stored on both sides (what reading it costs)."""
    n = int(np.prod(spec.shape, dtype=np.int64))
    return n * (base.dtype(spec).itemsize + other.dtype(spec).itemsize)


def diff_sources(
    base: Source,
    other: Source,
    specs: Sequence[TensorSpec],
    *,
    svd: int = 0,
    progress: Callable[[int], None] | None = None,
    device: jax.Device | None = None,
) -> list[TensorChange]:
    """Per-tensor (per-layer) changes of checkpoint `other` relative to `base`, streamed.

    progress(nbytes) is called after each block with the bytes read from both sides.
    """
    device = device or jax.local_devices()[0]
    buffers = Buffers()  # slot 0: base block, slot 1: other block
    base_buf, other_buf = (buffers, 0), (buffers, 1)
    out = []
    for spec in specs:
        check_shapes(spec, base, other)
        layers = spec.shape[0] if spec.stacked else 1
        sums = [Sums() for _ in range(layers)]
        both_hf = isinstance(base, HFSource) and isinstance(other, HFSource)
        if both_hf:  # HF layout on both sides: read each tensor as stored, no re-layout
            blocks = [(i, None) for i in (range(layers) if spec.stacked else (None,))]
        else:
            blocks = [(None, index) for index in block_plan(spec, base.chunks(spec), other.chunks(spec))]
        for layer, index in blocks:
            if both_hf:
                b = jax.device_put(base.read_hf(spec, layer, base_buf), device)
                o = jax.device_put(other.read_hf(spec, layer, other_buf), device)
                floats, changed = block_sums(b, o, per_layer=False)
                add_block(sums, floats[:, None], changed[None], True, layer or 0, b.size)
            else:
                b = jax.device_put(base.read(spec, index, base_buf), device)
                o = jax.device_put(other.read(spec, index, other_buf), device)
                floats, changed = block_sums(b, o, per_layer=spec.stacked)
                add_block(sums, floats, changed, spec.stacked, index[0].start if spec.stacked else 0, b.size)
            nbytes = b.nbytes + o.nbytes
            b.delete()  # block_sums has waited for the results: the buffers are free to reuse
            o.delete()
            if progress is not None:
                progress(nbytes)
        spectra = None
        if svd and spec.rows is not None:
            spectra = []
            for i in range(layers):
                layer = i if spec.stacked else None
                if both_hf:  # the HF tensor is already the matrix [out, in]
                    b, o, rows = base.read_hf(spec, layer, base_buf), other.read_hf(spec, layer, other_buf), 1
                else:
                    index = ((slice(i, i + 1),) if spec.stacked else ()) + tuple(slice(0, n) for n in spec.layer_shape)
                    b, o, rows = base.read(spec, index, base_buf), other.read(spec, index, other_buf), spec.rows
                    if spec.stacked:
                        b, o = b[0], o[0]
                spectra += spectrum(jax.device_put(b, device), jax.device_put(o, device), rows, svd)
        out += changes_from_sums(spec, sums, spectra)
    return out
