"""Which parameters train: patterns over module kind and layer range.

A pattern is `KIND[@FIRST-LAST]` with shell wildcards and brace alternatives in KIND:
`mlp.{gate,up,down}@19-25` (layers 19..25, 0-indexed, inclusive), `attn.{q,k}`, `attn.*@0`,
`embed`, `lm_head`, `final_norm`, `norm.{attn,mlp}`. Kinds of the stacked layer weights are
`attn.{q,k,v,o,q_bias,k_bias,v_bias,o_bias,q_norm,k_norm}`, `mlp.{gate,up,down}`,
`norm.{attn,mlp}`.

The plan gives every parameter a per-layer boolean (trainable) vector, or one boolean for the
un-stacked ones. A tensor frozen in every layer is labelled FROZEN and gets no optimizer state;
a tensor frozen in some layers keeps its state, and the update is masked so those layers stay
bitwise unchanged.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re

import jax
import jax.numpy as jnp
import numpy as np
from jaxrl.train.config import FreezeConfig
from jaxrl.train.optim import FROZEN, TRAIN

from jaxrl.errors import JaxrlError

# our parameter name in `layers` -> its kind in patterns
LAYER_KINDS = {
    **{n: f"attn.{n}" for n in ("q", "k", "v", "o", "q_bias", "k_bias", "v_bias", "o_bias", "q_norm", "k_norm")},
    **{n: f"mlp.{n}" for n in ("gate", "up", "down")},
    "attn_norm": "norm.attn",
    "mlp_norm": "norm.mlp",
}
_PATTERN = re.compile(r"^(?P<kind>[\w.*?{},\[\]]+?)(?:@(?P<first>\d+)(?:-(?P<last>\d+))?)?$")


def expand_braces(text: str) -> list[str]:
    """`mlp.{gate,up}` -> ["mlp.gate", "mlp.up"] (one level of braces, several groups allowed)."""
    m = re.search(r"\{([^{}]*)\}", text)
    if not m:
        return [text]
    head, tail = text[: m.start()], text[m.end() :]
    return [x for alt in m.group(1).split(",") for x in expand_braces(head + alt.strip() + tail)]


@dataclasses.dataclass(frozen=True)
class Pattern:
    kinds: tuple[str, ...]
    layers: tuple[int, int] | None  # inclusive range, None: all layers

    @classmethod
    def parse(cls, text: str) -> Pattern:
        m = _PATTERN.match(text.replace(" ", ""))
        if not m:
            raise JaxrlError(f"bad freeze pattern {text!r}; expected e.g. 'mlp.{{gate,up,down}}@19-25' or 'attn.q'")
        layers = None
        if m.group("first") is not None:
            first = int(m.group("first"))
            last = int(m.group("last")) if m.group("last") is not None else first
            if last < first:
                raise JaxrlError(f"bad freeze pattern {text!r}: layer range {first}-{last} is empty")
            layers = (first, last)
        return cls(tuple(expand_braces(m.group("kind"))), layers)


def _kind(path: tuple[str, ...]) -> str:
    return LAYER_KINDS.get(path[1], f"layers.{path[1]}") if path[0] == "layers" else ".".join(path)


def _selection(patterns, params: dict, num_layers: int) -> dict[tuple[str, ...], np.ndarray]:
    """path -> bool [L] (stacked) or bool [] (others): what the patterns match."""
    flat = {tuple(k.key for k in path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(params)}
    out = {p: np.zeros((num_layers,) if p[0] == "layers" else (), bool) for p in flat}
    for text in patterns:
        pattern = Pattern.parse(text)
        matched = False
        for path in flat:
            if not any(fnmatch.fnmatchcase(_kind(path), k) for k in pattern.kinds):
                continue
            matched = True
            if path[0] != "layers":
                if pattern.layers is not None:
                    raise JaxrlError(f"freeze pattern {text!r}: {_kind(path)} has no layers to select")
                out[path] = np.ones((), bool)
                continue
            first, last = pattern.layers or (0, num_layers - 1)
            if last >= num_layers:
                raise JaxrlError(f"freeze pattern {text!r}: layer {last} does not exist (the model has {num_layers})")
            out[path][first : last + 1] = True
        if not matched:
            kinds = sorted({_kind(p) for p in flat})
            raise JaxrlError(f"freeze pattern {text!r} matches no parameter; kinds: {', '.join(kinds)}")
    return out


@dataclasses.dataclass(frozen=True)
class FreezePlan:
    """trainable[path]: bool [L] for stacked layer weights, bool [] otherwise."""

    trainable: dict[tuple[str, ...], np.ndarray]

    @classmethod
    def build(cls, config: FreezeConfig, params: dict, num_layers: int) -> FreezePlan:
        frozen = _selection(config.freeze, params, num_layers)
        if config.train_only:
            chosen = _selection(config.train_only, params, num_layers)
            trainable = {p: chosen[p] & ~frozen[p] for p in chosen}
        else:
            trainable = {p: ~frozen[p] for p in frozen}
        if not any(v.any() for v in trainable.values()):
            raise JaxrlError("the freeze settings leave no parameter trainable")
        return cls(trainable)

    @property
    def is_trivial(self) -> bool:
        return all(v.all() for v in self.trainable.values())

    def _tree(self, params, fn):
        return jax.tree_util.tree_map_with_path(lambda path, x: fn(tuple(k.key for k in path), x), params)

    def labels(self, params):
        """TRAIN / FROZEN per tensor, for `optax.multi_transform`."""
        return self._tree(params, lambda p, _: TRAIN if self.trainable[p].any() else FROZEN)

    def _mask(self, path, x):
        """Broadcastable bool for `x`, or None when the whole tensor trains."""
        t = self.trainable[path]
        if t.all():
            return None
        return jnp.asarray(t).reshape(t.shape + (1,) * (x.ndim - t.ndim))

    def mask_grads(self, grads):
        """Zeros the gradients of frozen values (so clipping and moments ignore them)."""

        def one(path, g):
            m = self._mask(path, g)
            return g if m is None else jnp.where(m, g, jnp.zeros_like(g))

        return self._tree(grads, one)

    def apply_updates(self, params, updates):
        """params + updates where trainable; frozen values are returned as they were (bitwise)."""

        def one(path, p):
            if not self.trainable[path].any():
                return p
            u = updates_flat[path]
            m = self._mask(path, p)
            new = (p.astype(jnp.float32) + u.astype(jnp.float32)).astype(p.dtype)
            return new if m is None else jnp.where(m, new, p)

        updates_flat = {tuple(k.key for k in path): u for path, u in jax.tree_util.tree_leaves_with_path(updates)}
        return self._tree(params, one)

    def summary(self) -> str:
        parts = []
        for path, t in self.trainable.items():
            name = ".".join(path)
            if not t.all():
                parts.append(f"{name}: {'frozen' if not t.any() else f'frozen layers {np.flatnonzero(~t).tolist()}'}")
        return "; ".join(parts) or "all parameters train"
