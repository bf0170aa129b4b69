"""What each parameter of a checkpoint is: module kind, stacking, matrix view, Hugging Face name.

The analysis never imports the model package. Whoever knows the model (the `jaxrl analyze`
command) passes its Hugging Face key map in, and `specs_from_key_map` reads from each entry only
`hf_name` (with `{i}` for per-layer tensors), `path` (ours, e.g. ("layers", "q")), `hf_shape` (one
layer) and `to_ours` (HF layout -> ours). Stacked tensors (path under "layers") carry a leading
layer axis in our layout.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from jaxrl.errors import JaxrlError

STACKED_PREFIX = "layers"
DEFAULT_MODULES = ("q", "k", "v", "o", "gate", "up", "down")
MODULE_GROUPS = {
    "default": DEFAULT_MODULES,
    "attn": ("q", "k", "v", "o"),
    "mlp": ("gate", "up", "down"),
    "norms": ("attn_norm", "mlp_norm", "q_norm", "k_norm", "final_norm"),
    "biases": ("q_bias", "k_bias", "v_bias", "o_bias"),
    "embed": ("embed",),
    "lm_head": ("lm_head",),
}
ALL = "all"


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One parameter in our layout.

    shape: the full shape, [L, ...] when `stacked`. rows: how many leading axes of one layer form
    the rows of its matrix (None: not a matrix, no spectrum). hf_name/hf_shape/to_ours: where the
    tensor (per layer, `{i}`) lives in a Hugging Face directory and how to lay it out as ours.
    """

    path: tuple[str, ...]
    shape: tuple[int, ...]
    stacked: bool
    rows: int | None
    hf_name: str | None = None
    hf_shape: tuple[int, ...] | None = None
    to_ours: Callable[[np.ndarray], np.ndarray] | None = None

    @property
    def module(self) -> str:
        return self.path[-1]

    @property
    def name(self) -> str:
        return ".".join(self.path)

    @property
    def num_layers(self) -> int | None:
        return self.shape[0] if self.stacked else None

    @property
    def layer_shape(self) -> tuple[int, ...]:
        return self.shape[1:] if self.stacked else self.shape


def matrix_rows(ours: Sequence[int], hf: Sequence[int]) -> int | None:
    """Leading axes of `ours` that form one side of the 2-D HF matrix `hf` (None if not 2-D)."""
    if len(hf) != 2:
        return None
    for k in range(1, len(ours)):
        sides = (math.prod(ours[:k]), math.prod(ours[k:]))
        if sides in ((hf[0], hf[1]), (hf[1], hf[0])):
            return k
    return None


def specs_from_key_map(entries: Iterable, num_layers: int) -> list[TensorSpec]:
    """TensorSpecs from a HF key map (`jaxrl.models.keymap.hf_key_map(config)` entries)."""
    specs = []
    for e in entries:
        probe = np.broadcast_to(np.zeros((), np.float32), e.hf_shape)  # a shape without memory
        ours = tuple(e.to_ours(probe).shape)
        stacked = "{i}" in e.hf_name
        specs.append(
            TensorSpec(
                path=tuple(e.path),
                shape=((num_layers,) if stacked else ()) + ours,
                stacked=stacked,
                rows=matrix_rows(ours, e.hf_shape),
                hf_name=e.hf_name,
                hf_shape=tuple(e.hf_shape),
                to_ours=e.to_ours,
            )
        )
    return specs


def specs_from_tree(tree) -> list[TensorSpec]:
    """TensorSpecs for every array of a nested dict in our layout (2-D layers are matrices)."""
    specs = []

    def visit(node, path):
        if isinstance(node, dict):
            for key in node:
                visit(node[key], path + (str(key),))
        elif node is not None:
            stacked = path[0] == STACKED_PREFIX and len(path) > 1
            layer = tuple(node.shape[1:] if stacked else node.shape)
            specs.append(TensorSpec(path, tuple(node.shape), stacked, 1 if len(layer) == 2 else None))

    visit(tree, ())
    return specs


def parse_modules(text: str | Sequence[str] | None) -> frozenset[str] | None:
    """Module kinds from 'q,k,norms' (group names expand; 'all' -> None, meaning every tensor)."""
    if text is None:
        return frozenset(DEFAULT_MODULES)
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    if not names:
        raise JaxrlError("empty module list; name modules like 'q,k,v' or groups like 'default,norms'")
    if ALL in names:
        return None
    out = set()
    known = set(MODULE_GROUPS) | {m for group in MODULE_GROUPS.values() for m in group}
    for name in names:
        if name not in known:
            raise JaxrlError(f"unknown module {name!r}; choose from {', '.join(sorted(known))} or 'all'")
        out.update(MODULE_GROUPS.get(name, (name,)))
    return frozenset(out)


def select(specs: Iterable[TensorSpec], modules: frozenset[str] | None) -> list[TensorSpec]:
    return [s for s in specs if modules is None or s.module in modules]
