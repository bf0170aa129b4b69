"""The map between Hugging Face tensor names and our parameters.

Each entry names one HF tensor (per layer where `{i}` appears), the path of our parameter, and the
two layout changes. HF linear weights are [out, in]; ours are [in, out] with heads split out:
q: HF [H*E, D] <-> ours [D, H, E]; o: HF [D, H*E] <-> ours [H, E, D]; mlp: transposed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
from jaxrl.models.config import ModelConfig

Transform = Callable[[np.ndarray], np.ndarray]


@dataclasses.dataclass(frozen=True)
class TensorMap:
    hf_name: str  # "model.layers.{i}.self_attn.q_proj.weight" for per-layer tensors
    path: tuple[str, ...]  # ("layers", "q")
    hf_shape: tuple[int, ...]  # of one layer
    to_ours: Transform
    to_hf: Transform

    @property
    def per_layer(self) -> bool:
        return "{i}" in self.hf_name


def _identity() -> tuple[Transform, Transform]:
    return (lambda w: w), (lambda w: w)


def _transpose() -> tuple[Transform, Transform]:
    return (lambda w: w.T), (lambda w: w.T)


def _in_proj(heads: int, head_dim: int) -> tuple[Transform, Transform]:
    """HF [heads*head_dim, D] <-> ours [D, heads, head_dim]."""
    return (
        lambda w: w.T.reshape(w.shape[1], heads, head_dim),
        lambda w: w.reshape(w.shape[0], heads * head_dim).T,
    )


def _out_proj(heads: int, head_dim: int) -> tuple[Transform, Transform]:
    """HF [D, heads*head_dim] <-> ours [heads, head_dim, D]."""
    return (
        lambda w: w.T.reshape(heads, head_dim, w.shape[0]),
        lambda w: w.reshape(heads * head_dim, w.shape[-1]).T,
    )


def _split_heads(heads: int, head_dim: int) -> tuple[Transform, Transform]:
    """HF [heads*head_dim] <-> ours [heads, head_dim]."""
    return (lambda w: w.reshape(heads, head_dim)), (lambda w: w.reshape(heads * head_dim))


def hf_key_map(c: ModelConfig) -> list[TensorMap]:
    """Every tensor of the HF checkpoint for `c`, in checkpoint order."""
    D, F, H, K, E, V = (
        c.hidden_size,
        c.intermediate_size,
        c.num_heads,
        c.num_kv_heads,
        c.head_dim,
        c.vocab_size,
    )
    layer = "model.layers.{i}."
    if c.post_norm:  # OLMo-2 names its norms by what they follow
        norms = [("post_attention_layernorm", "attn_norm"), ("post_feedforward_layernorm", "mlp_norm")]
    else:
        norms = [("input_layernorm", "attn_norm"), ("post_attention_layernorm", "mlp_norm")]
    entries = [TensorMap("model.embed_tokens.weight", ("embed",), (V, D), *_identity())]
    entries += [
        TensorMap(layer + "self_attn.q_proj.weight", ("layers", "q"), (H * E, D), *_in_proj(H, E)),
        TensorMap(layer + "self_attn.k_proj.weight", ("layers", "k"), (K * E, D), *_in_proj(K, E)),
        TensorMap(layer + "self_attn.v_proj.weight", ("layers", "v"), (K * E, D), *_in_proj(K, E)),
        TensorMap(layer + "self_attn.o_proj.weight", ("layers", "o"), (D, H * E), *_out_proj(H, E)),
    ]
    if c.qkv_bias:
        entries += [
            TensorMap(layer + f"self_attn.{n}_proj.bias", ("layers", f"{n}_bias"), (h * E,), *_split_heads(h, E))
            for n, h in (("q", H), ("k", K), ("v", K))
        ]
    if c.o_bias:
        entries.append(TensorMap(layer + "self_attn.o_proj.bias", ("layers", "o_bias"), (D,), *_identity()))
    if c.qk_norm:
        entries += [
            TensorMap(layer + "self_attn.q_norm.weight", ("layers", "q_norm"), (H * E,), *_split_heads(H, E)),
            TensorMap(layer + "self_attn.k_norm.weight", ("layers", "k_norm"), (K * E,), *_split_heads(K, E)),
        ]
    entries += [
        TensorMap(layer + "mlp.gate_proj.weight", ("layers", "gate"), (F, D), *_transpose()),
        TensorMap(layer + "mlp.up_proj.weight", ("layers", "up"), (F, D), *_transpose()),
        TensorMap(layer + "mlp.down_proj.weight", ("layers", "down"), (D, F), *_transpose()),
    ]
    entries += [TensorMap(layer + f"{hf}.weight", ("layers", ours), (D,), *_identity()) for hf, ours in norms]
    entries.append(TensorMap("model.norm.weight", ("final_norm",), (D,), *_identity()))
    if not c.tie_word_embeddings:
        entries.append(TensorMap("lm_head.weight", ("lm_head",), (V, D), *_transpose()))
    return entries


def hf_names(c: ModelConfig) -> list[tuple[str, TensorMap, int | None]]:
    """(HF name, entry, layer index or None) for every tensor, per-layer entries expanded."""
    out = []
    for entry in hf_key_map(c):
        if entry.per_layer:
            out += [(entry.hf_name.format(i=i), entry, i) for i in range(c.num_layers)]
        else:
            out.append((entry.hf_name, entry, None))
    return out


def key_map_of_hf_config(hf_config: dict) -> tuple[list[TensorMap], int]:
    """(key map, number of layers) of the model a HF config.json describes: what
    `jaxrl.analysis.analyze` needs to name and lay out each tensor of a checkpoint."""
    config = ModelConfig.from_hf_config(hf_config)
    return hf_key_map(config), config.num_layers
