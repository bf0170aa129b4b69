"""Per-tensor change metrics from four sums, reduced on the devices that hold the tensors.

For a base tensor W0 and a changed tensor W (any dtype, any sharding) the kernel returns, per
layer of a stacked tensor or once for a plain one, the fp32 sums

    base_sq = sum(W0^2), other_sq = sum(W^2), delta_sq = sum((W - W0)^2), dot = sum(W W0),
    changed = #(W != W0)

computed after casting both to fp32 (exact for bf16/f16), so only a handful of scalars leave the
devices. Sums of blocks add up (streamed checkpoints are reduced block by block); `finish` turns
them into the reported metrics. For small changes the cosine comes from ||W - W0||^2 rather than
the dot product: for the tiny changes of RL fine-tuning (1 - cos ~ 1e-7) a fp32 dot product cannot
resolve the difference; for large ones (||W - W0|| ~ ||W||) the dot product is the accurate one.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec


@dataclasses.dataclass
class Sums:
    """Running sums for one tensor (or one layer of a stacked tensor), in float64 on the host."""

    base_sq: float = 0.0
    other_sq: float = 0.0
    delta_sq: float = 0.0
    dot: float = 0.0
    changed: int = 0
    size: int = 0

    def add(self, base_sq: float, other_sq: float, delta_sq: float, dot: float, changed: int, size: int) -> None:
        self.base_sq += float(base_sq)
        self.other_sq += float(other_sq)
        self.delta_sq += float(delta_sq)
        self.dot += float(dot)
        self.changed += int(changed)
        self.size += int(size)


def finish(s: Sums) -> dict[str, float]:
    """rel_change, delta_norm, base_norm, norm, cosine(W, W0), frac_changed from the sums."""
    base_norm, norm, delta_norm = math.sqrt(s.base_sq), math.sqrt(s.other_sq), math.sqrt(s.delta_sq)
    if base_norm > 0 and norm > 0:
        if s.delta_sq < norm * base_norm:
            # 1 - cos = (||W - W0||^2 - (||W|| - ||W0||)^2) / (2 ||W|| ||W0||): no cancellation near 1
            cosine = 1.0 - (s.delta_sq - (norm - base_norm) ** 2) / (2 * norm * base_norm)
        else:
            cosine = s.dot / (norm * base_norm)
        cosine = min(1.0, max(-1.0, cosine))
    else:
        cosine = float("nan")
    return {
        "rel_change": delta_norm / base_norm if base_norm > 0 else float("nan"),
        "delta_norm": delta_norm,
        "base_norm": base_norm,
        "norm": norm,
        "cosine": cosine,
        "frac_changed": s.changed / s.size if s.size else float("nan"),
    }


_BITS = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}


def _changed(base, other):
    """Elements whose stored bits differ (bf16/f16/fp32 compared as integers: exact and fast)."""
    if base.dtype == other.dtype and base.dtype.itemsize in _BITS:
        bits = _BITS[base.dtype.itemsize]
        return jax.lax.bitcast_convert_type(base, bits) != jax.lax.bitcast_convert_type(other, bits)
    return base.astype(jnp.float32) != other.astype(jnp.float32)


def _sums(base, other, per_layer: bool):
    """[4] or [4, L] fp32 sums, and the int32 count of changed elements ([] or [L]).

    For arrays sharded on a mesh: one XLA reduction per sum (each accurate to fp32 rounding).
    """
    w0 = base.astype(jnp.float32)
    w = other.astype(jnp.float32)
    axes = tuple(range(1, w.ndim)) if per_layer else None
    floats = jnp.stack(
        [jnp.sum(w0 * w0, axes), jnp.sum(w * w, axes), jnp.sum(jnp.square(w - w0), axes), jnp.sum(w * w0, axes)]
    )
    changed = jnp.sum(_changed(base, other), axes, dtype=jnp.int32)
    return floats, changed


ROW = 512  # elements summed per row in the first level of the streaming kernel


def _row_sums(base, other, per_layer: bool):
    """`_sums` for a block on one device, in one pass over the data.

    The block is viewed as [L, rows, ROW]; one variadic reduction sums the five terms along each
    row (a single fused loop, no temporaries), then the row sums are added up per layer. Two
    short levels keep fp32 sums accurate (~1e-7 relative) however long the tensor.
    """
    lead = base.shape[0] if per_layer and base.ndim else 1
    n = base.size // lead
    row = math.gcd(n, ROW) or 1
    b, o = base.reshape(lead, n // row, row), other.reshape(lead, n // row, row)
    w0, w = b.astype(jnp.float32), o.astype(jnp.float32)
    d = w - w0
    terms = (w0 * w0, w * w, d * d, w * w0, _changed(b, o).astype(jnp.int32))
    zeros = (jnp.float32(0),) * 4 + (jnp.int32(0),)
    parts = jax.lax.reduce(terms, zeros, lambda x, y: tuple(p + q for p, q in zip(x, y, strict=True)), (2,))
    floats = jnp.stack([jnp.sum(p, 1) for p in parts[:4]])
    changed = jnp.sum(parts[4], 1)
    return (floats, changed) if per_layer else (floats[:, 0], changed[0])


# XLA's CPU backend keeps a variadic reduction's floating-point adds in source order, so the loop
# above runs one scalar add chain per term; letting it reassociate the adds vectorises the loop
# (~7x faster on bench/analysis.py's blocks, and no less accurate: more partial sums). NaN and
# infinity are still honoured, so a broken checkpoint still reads as NaN. The options are XLA's
# CPU compiler's.
REASSOCIATE = {
    "xla_cpu_enable_fast_math": True,
    "xla_cpu_fast_math_honor_nans": True,
    "xla_cpu_fast_math_honor_infs": True,
    "xla_cpu_fast_math_honor_division": True,
    "xla_cpu_fast_math_honor_functions": True,
}
_sums_jit = jax.jit(_row_sums, static_argnums=2, compiler_options=REASSOCIATE)


@functools.cache
def _replicated_sums(mesh, per_layer: bool):
    out = NamedSharding(mesh, PartitionSpec())
    return jax.jit(functools.partial(_sums, per_layer=per_layer), out_shardings=(out, out))


def block_sums(base, other, per_layer: bool) -> tuple[np.ndarray, np.ndarray]:
    """Sums of one tensor or block: ([4] or [4, L] float64 (base_sq, other_sq, delta_sq, dot), changed).

    `base` and `other` are numpy arrays or jax Arrays of one shape, sharded alike or not. With a
    NamedSharding the outputs are replicated, so every host of a multi-host mesh reads its own
    copy of the scalars (no cross-host fetch of data).
    """
    if base.shape != other.shape:
        raise ValueError(f"shapes differ: {base.shape} vs {other.shape}")
    sharding = getattr(other, "sharding", None)
    if isinstance(sharding, NamedSharding):
        floats, changed = _replicated_sums(sharding.mesh, per_layer)(base, other)
        floats, changed = floats.addressable_data(0), changed.addressable_data(0)
    else:
        floats, changed = _sums_jit(base, other, per_layer)
    return np.asarray(floats, np.float64), np.asarray(changed, np.int64)


def _spectrum(base, other, rows: int, k: int, stacked: bool):
    lead = base.shape[:1] if stacked else ()
    m = math.prod(base.shape[len(lead) : len(lead) + rows])
    delta = other.astype(jnp.float32).reshape(*lead, m, -1) - base.astype(jnp.float32).reshape(*lead, m, -1)
    s = jnp.linalg.svd(delta, compute_uv=False)  # batched over layers when stacked
    return s[..., :k], jnp.sum(jnp.square(s), axis=-1)


@functools.cache
def _spectrum_jit(mesh, rows: int, k: int, stacked: bool):
    out = None if mesh is None else (NamedSharding(mesh, PartitionSpec()),) * 2
    return jax.jit(functools.partial(_spectrum, rows=rows, k=k, stacked=stacked), out_shardings=out)


def spectrum(base, other, rows: int, k: int, stacked: bool = False) -> list[tuple[list[float], float]]:
    """Top-k singular values of W - W0 viewed as a matrix, and its stable rank ||D||_F^2 / s_1^2.

    `rows`: how many leading axes (of one layer) form the matrix rows (q [D, H, E] -> 1;
    o [H, E, D] -> 2). Returns one (values, stable rank) per layer when `stacked`, else one.
    """
    sharding = getattr(other, "sharding", None)
    mesh = sharding.mesh if isinstance(sharding, NamedSharding) else None
    top, fro_sq = _spectrum_jit(mesh, rows, k, stacked)(base, other)
    if mesh is not None:
        top, fro_sq = top.addressable_data(0), fro_sq.addressable_data(0)
    top, fro_sq = np.asarray(top, np.float64).reshape(-1, top.shape[-1]), np.asarray(fro_sq, np.float64).reshape(-1)
    return [
        ([float(x) for x in t], float(f) / t[0] ** 2 if t.size and t[0] > 0 else 0.0)
        for t, f in zip(top, fro_sq, strict=True)
    ]
