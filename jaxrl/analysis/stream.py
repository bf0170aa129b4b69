"""Diffing checkpoints on disk against one base, one block at a time.

Each block of the base is read once and compared with the same block of every checkpoint in
turn, so a run's whole trajectory costs one pass over the base. A block is one layer of a stacked
tensor, or a whole unstacked tensor. Sides stored in one layout are compared as stored (HF
directories [out, in], Orbax checkpoints in ours); otherwise both are read in ours, a HF matrix
transposed as it is read (`HFSource.read_ours`, once per block for the base). The base block and
the first checkpoint's are read side by side, one on a helper thread (file reads, copies and
decoding release the GIL).

Orbax arrays stored in chunks that span layers (written by other tools, or by jaxrl before it
stored a chunk per layer) cannot be read a layer at a time without decoding every layer; such a
tensor is read in blocks cut by the chunk grids (`sources.block_plan`), base and checkpoint in
pairs. Every block is reduced by the same jitted kernel as in-memory trees.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import jax
import numpy as np

from jaxrl.analysis.metrics import Sums, block_sums, spectrum
from jaxrl.analysis.naming import TensorSpec
from jaxrl.analysis.sources import Buffers, Source, block_plan
from jaxrl.analysis.tree_diff import TensorChange, add_block, changes_from_sums
from jaxrl.errors import JaxrlError

# Buffer slots: the base block as stored, the base in our layout, a checkpoint block.
BASE, BASE_OURS, OTHER = 0, 1, 2


def check_shapes(spec: TensorSpec, base: Source, other: Source) -> None:
    for source in (base, other):
        shape = source.shape(spec)
        if shape != spec.shape:
            raise JaxrlError(
                f"{spec.name} in {source.label} has shape {list(shape)}, expected {list(spec.shape)}; "
                "the checkpoints are not of the same model"
            )


def tensor_bytes(spec: TensorSpec, base: Source, other: Source) -> int:
    """Bytes of `spec` stored on both sides (what comparing it costs)."""
    n = int(np.prod(spec.shape, dtype=np.int64))
    return n * (base.dtype(spec).itemsize + other.dtype(spec).itemsize)


def diff_sources(base: Source, other: Source, specs: Sequence[TensorSpec], **kwargs) -> list[TensorChange]:
    """Per-tensor (per-layer) changes of checkpoint `other` relative to `base`, streamed."""
    return diff_many(base, [other], specs, **kwargs)[0]


def diff_many(
    base: Source,
    others: Sequence[Source],
    specs: Sequence[TensorSpec],
    *,
    svd: int = 0,
    progress: Callable[[int], None] | None = None,
    device: jax.Device | None = None,
) -> list[list[TensorChange]]:
    """Per-tensor (per-layer) changes of each of `others` relative to `base`, one list per other.

    progress(nbytes) is called after each block with the bytes read for it from both sides.
    """
    device = device or jax.local_devices()[0]
    out: list[list[TensorChange]] = [[] for _ in others]
    with ThreadPoolExecutor(1) as pool:
        reader = _Reader(pool, Buffers())
        for spec in specs:
            for other in others:
                check_shapes(spec, base, other)
            if all(s.layer_aligned(spec) for s in (base, *others)):
                changes = _by_layer(spec, base, others, reader, svd, progress, device)
            else:
                changes = [_by_chunk(spec, base, other, reader, svd, progress, device) for other in others]
            for mine, new in zip(out, changes, strict=True):
                mine += new
    return out


@dataclasses.dataclass(frozen=True)
class _Reader:
    """A helper thread to read one block while another is read or laid out, and reused buffers."""

    pool: ThreadPoolExecutor
    buffers: Buffers

    def slot(self, k: int) -> tuple[Buffers, int]:
        return self.buffers, k


def _sums(b, o, device, per_layer: bool = False) -> tuple[np.ndarray, np.ndarray]:
    b, o = jax.device_put(b, device), jax.device_put(o, device)
    floats, changed = block_sums(b, o, per_layer=per_layer)
    b.delete()  # block_sums has waited for the results: the buffers are free to reuse
    o.delete()
    return floats, changed


def _by_layer(spec, base: Source, others, reader: _Reader, svd, progress, device) -> list[list[TensorChange]]:
    layers = spec.shape[0] if spec.stacked else 1
    sums = [[Sums() for _ in range(layers)] for _ in others]
    spectra = [[] for _ in others] if svd and spec.rows is not None else None
    as_stored = any(other.layout == base.layout for other in others)
    as_ours = any(other.layout != base.layout for other in others)

    def read(source: Source, layer, slot) -> np.ndarray:  # a checkpoint as it is compared
        same = source.layout == base.layout
        return (source.read_layer if same else source.read_ours)(spec, layer, reader.slot(slot))

    for i in range(layers):
        layer = i if spec.stacked else None
        pending = reader.pool.submit(read, others[0], layer, OTHER)
        if base.layout == "ours":  # stored in our layout: one read serves both comparisons
            b = b_ours = base.read_layer(spec, layer, reader.slot(BASE))
        else:
            b = base.read_layer(spec, layer, reader.slot(BASE)) if as_stored else None
            b_ours = base.read_ours(spec, layer, reader.slot(BASE_OURS)) if as_ours else None
        for k, other in enumerate(others):
            o = pending.result() if k == 0 else read(other, layer, OTHER)
            layout, x = (base.layout, b) if other.layout == base.layout else ("ours", b_ours)
            floats, changed = _sums(x, o, device)
            sums[k][i].add(*floats, changed, x.size)
            if spectra is not None:
                rows = 1 if layout == "hf" else spec.rows  # a HF tensor is the matrix [out, in]
                spectra[k] += spectrum(jax.device_put(x, device), jax.device_put(o, device), rows, svd)
            if progress is not None:
                progress(x.nbytes + o.nbytes)
    return [changes_from_sums(spec, sums[k], spectra[k] if spectra else None) for k in range(len(others))]


def _by_chunk(spec, base: Source, other: Source, reader: _Reader, svd, progress, device) -> list[TensorChange]:
    """Blocks cut by the chunk grids of both sides, in our layout (each stored chunk decoded once)."""
    layers = spec.shape[0] if spec.stacked else 1
    sums = [Sums() for _ in range(layers)]

    def pair(index):
        pending = reader.pool.submit(base.read, spec, index, reader.slot(BASE))
        o = other.read(spec, index, reader.slot(OTHER))
        return pending.result(), o

    for index in block_plan(spec, base.chunks(spec), other.chunks(spec)):
        b, o = pair(index)
        floats, changed = _sums(b, o, device, per_layer=spec.stacked)
        add_block(sums, floats, changed, spec.stacked, index[0].start if spec.stacked else 0, b.size)
        if progress is not None:
            progress(b.nbytes + o.nbytes)
    spectra = None
    if svd and spec.rows is not None:
        spectra = []
        for i in range(layers):
            index = ((slice(i, i + 1),) if spec.stacked else ()) + tuple(slice(0, n) for n in spec.layer_shape)
            b, o = pair(index)
            b, o = (b[0], o[0]) if spec.stacked else (b, o)
            spectra += spectrum(jax.device_put(b, device), jax.device_put(o, device), spec.rows, svd)
    return changes_from_sums(spec, sums, spectra)
