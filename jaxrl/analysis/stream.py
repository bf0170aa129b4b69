"""Diffing two checkpoints on disk, one block at a time.

Blocks follow `sources.block_plan`: one layer of a stacked tensor from HF directories, one
stored chunk from Orbax checkpoints. Two HF directories are compared in their own layout, each
tensor read as stored (the metrics do not depend on the layout). Only the current block of each side is in host memory,
and each block is reduced by the same jitted kernel as in-memory trees.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

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


class _Pair:
    """Reads the same block from both sides, the base on a helper thread (file reads, copies and
    decompression release the GIL), into the two reused buffers."""

    def __init__(self, base: Source, other: Source, pool: ThreadPoolExecutor):
        self.base, self.other, self.pool = base, other, pool
        buffers = Buffers()
        self.slots = (buffers, 0), (buffers, 1)

    def read(self, spec: TensorSpec, index=None, layer=None, hf=False):
        def one(source, slot):
            return source.read_hf(spec, layer, slot) if hf else source.read(spec, index, slot)

        pending = self.pool.submit(one, self.base, self.slots[0])
        o = one(self.other, self.slots[1])
        return pending.result(), o


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
    out = []
    with ThreadPoolExecutor(1) as pool:
        pair = _Pair(base, other, pool)
        for spec in specs:
            check_shapes(spec, base, other)
            out += _diff_tensor(spec, pair, svd, progress, device)
    return out


def _diff_tensor(spec: TensorSpec, pair: _Pair, svd: int, progress, device) -> list[TensorChange]:
    layers = spec.shape[0] if spec.stacked else 1
    sums = [Sums() for _ in range(layers)]
    # Two HF directories: each tensor read as stored (HF layout, one layer at a time), no re-layout.
    hf = isinstance(pair.base, HFSource) and isinstance(pair.other, HFSource)
    if hf:
        blocks = [(i if spec.stacked else None, None) for i in range(layers)]
    else:
        blocks = [(None, index) for index in block_plan(spec, pair.base.chunks(spec), pair.other.chunks(spec))]
    for layer, index in blocks:
        b, o = (jax.device_put(x, device) for x in pair.read(spec, index, layer, hf))
        if hf:
            floats, changed = block_sums(b, o, per_layer=False)
            add_block(sums, floats[:, None], changed[None], True, layer or 0, b.size)
        else:
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
            index = ((slice(i, i + 1),) if spec.stacked else ()) + tuple(slice(0, n) for n in spec.layer_shape)
            b, o = pair.read(spec, index, layer, hf)
            if spec.stacked and not hf:
                b, o = b[0], o[0]
            rows = 1 if hf else spec.rows  # a HF tensor is already the matrix [out, in]
            spectra += spectrum(jax.device_put(b, device), jax.device_put(o, device), rows, svd)
    return changes_from_sums(spec, sums, spectra)
