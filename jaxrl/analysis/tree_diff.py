"""How much a parameter tree moved from a base tree, per tensor and per layer, on any mesh.

    changes = diff_trees(base_params, tuned_params)            # nested dicts (or nnx modules)
    [(c.tensor, c.layer, c.rel_change) for c in changes]

Both trees may be sharded on any mesh (each host holding only its shards): the reductions run
under jit on the devices, with replicated scalar outputs, so nothing but scalars reaches a host
and every host of a multi-host run gets the same numbers. Stacked layer tensors ([L, ...] under
"layers") are split per layer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from jaxrl.analysis.metrics import Sums, block_sums, finish, spectrum
from jaxrl.analysis.naming import TensorSpec, parse_modules, select, specs_from_tree
from jaxrl.errors import JaxrlError


@dataclasses.dataclass(frozen=True)
class TensorChange:
    """The change of one tensor, or one layer of a stacked tensor (layer None: not stacked).

    rel_change = ||W - W0||_F / ||W0||_F, delta_norm = ||W - W0||_F, cosine = cos(W, W0),
    frac_changed = fraction of elements whose stored value differs; singular_values/stable_rank
    of W - W0 (as a matrix) only when asked for.
    """

    tensor: str
    module: str
    layer: int | None
    shape: tuple[int, ...]
    rel_change: float
    delta_norm: float
    base_norm: float
    norm: float
    cosine: float
    frac_changed: float
    num_changed: int
    size: int
    singular_values: tuple[float, ...] | None = None
    stable_rank: float | None = None


def changes_from_sums(
    spec: TensorSpec, sums: Sequence[Sums], spectra: Sequence[tuple[list[float], float]] | None
) -> list[TensorChange]:
    out = []
    for j, s in enumerate(sums):
        top, stable = spectra[j] if spectra else (None, None)
        out.append(
            TensorChange(
                tensor=spec.name,
                module=spec.module,
                layer=j if spec.stacked else None,
                shape=spec.layer_shape,
                **finish(s),
                num_changed=s.changed,
                size=s.size,
                singular_values=None if top is None else tuple(top),
                stable_rank=stable,
            )
        )
    return out


def add_block(sums: Sequence[Sums], floats, changed, per_layer: bool, first_layer: int, block_size: int) -> None:
    """Adds one block's sums ([4] or [4, l] floats, changed) into the running per-layer sums."""
    if not per_layer:
        sums[0].add(*floats, changed, block_size)
        return
    per = block_size // len(changed)
    for j in range(len(changed)):
        sums[first_layer + j].add(*floats[:, j], changed[j], per)


def _as_tree(x):
    try:
        from flax import nnx

        if isinstance(x, nnx.Module):
            return nnx.to_pure_dict(nnx.state(x, nnx.Param))
        if isinstance(x, nnx.State):
            return nnx.to_pure_dict(x)
    except ImportError:  # pragma: no cover
        pass
    return x


def _leaf(tree, path: tuple[str, ...], what: str):
    node = tree
    for key in path:
        if not isinstance(node, dict) or key not in node:
            raise JaxrlError(f"{what} tree has no tensor {'.'.join(path)!r}")
        node = node[key]
    return node


def diff_trees(
    base,
    other,
    *,
    specs: Sequence[TensorSpec] | None = None,
    modules: str | Sequence[str] | None = "all",
    svd: int = 0,
    progress: Callable[[int], None] | None = None,
) -> list[TensorChange]:
    """Per-tensor (per-layer for stacked tensors) changes of `other` relative to `base`.

    base, other: nested dicts of arrays in our layout (jax Arrays on any mesh, or numpy), or nnx
    modules/states. specs: which tensors and how to view them (default: every array of `base`,
    stacked under "layers", 2-D layers are matrices). modules: e.g. "q,k,v" or "default,norms"
    ("all": every tensor). svd: how many top singular values of each matrix's change to compute.
    """
    base, other = _as_tree(base), _as_tree(other)
    specs = select(specs if specs is not None else specs_from_tree(base), parse_modules(modules))
    out = []
    for spec in specs:
        b, o = _leaf(base, spec.path, "base"), _leaf(other, spec.path, "other")
        if tuple(b.shape) != tuple(o.shape):
            raise JaxrlError(f"{spec.name}: shapes differ, base {list(b.shape)} vs {list(o.shape)}")
        layers = b.shape[0] if spec.stacked else 1
        sums = [Sums() for _ in range(layers)]
        floats, changed = block_sums(b, o, per_layer=spec.stacked)
        add_block(sums, floats, changed, spec.stacked, 0, b.size)
        spectra = None
        if svd and spec.rows is not None:
            spectra = spectrum(b, o, spec.rows, svd, stacked=spec.stacked)
        out += changes_from_sums(spec, sums, spectra)
        if progress is not None:
            progress(b.nbytes + o.nbytes)
    return out
