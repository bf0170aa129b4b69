"""Model configs: presets, HF config round trips, and the study's 7B shapes."""

import jax
import numpy as np
import pytest
import transformers
from jaxrl.models import PRESETS, ModelConfig, abstract_decoder, count_params, preset
from jaxrl.models.keymap import hf_names

from jaxrl.errors import JaxrlError


def hf_shapes_from_our_params(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Our abstract params mapped through the key map (zero-memory views carry the shapes)."""
    state = abstract_decoder(config)
    shapes = {}
    for name, entry, layer in hf_names(config):
        leaf = state
        for key in entry.path:
            leaf = getattr(leaf, key)
        shape = leaf.shape[1:] if layer is not None else leaf.shape
        shapes[name] = entry.to_hf(np.broadcast_to(np.float32(0), shape)).shape
    return shapes


def test_olmo2_7b_matches_the_real_checkpoint():
    config = preset("olmo2-1124-7b")
    assert count_params(abstract_decoder(config)) == config.num_params() == 7_298_617_344
    expected = {"model.embed_tokens.weight": (100352, 4096), "model.norm.weight": (4096,),
                "lm_head.weight": (100352, 4096)}  # fmt: skip
    for i in range(32):
        p = f"model.layers.{i}."
        for proj in "qkvo":
            expected[p + f"self_attn.{proj}_proj.weight"] = (4096, 4096)
        expected[p + "self_attn.q_norm.weight"] = (4096,)
        expected[p + "self_attn.k_norm.weight"] = (4096,)
        expected[p + "mlp.gate_proj.weight"] = (11008, 4096)
        expected[p + "mlp.up_proj.weight"] = (11008, 4096)
        expected[p + "mlp.down_proj.weight"] = (4096, 11008)
        expected[p + "post_attention_layernorm.weight"] = (4096,)
        expected[p + "post_feedforward_layernorm.weight"] = (4096,)
    assert hf_shapes_from_our_params(config) == expected


@pytest.mark.parametrize("name", [n for n in PRESETS if not n.startswith("tiny")])
def test_presets_round_trip_through_transformers_configs(name):
    config = PRESETS[name]
    hf = transformers.AutoConfig.for_model(**config.to_hf_config())
    assert ModelConfig.from_hf_config(hf.to_dict()) == config
    assert type(hf).__name__.lower().startswith(config.family)


@pytest.mark.parametrize(
    "name, billions", [("olmo2-1124-13b", 13.7), ("olmo2-0425-1b", 1.48), ("qwen2.5-0.5b", 0.49),
                       ("qwen2.5-7b", 7.62), ("llama3.2-1b", 1.24), ("llama3.1-8b", 8.03)]
)  # fmt: skip
def test_preset_sizes(name, billions):
    assert PRESETS[name].num_params() / 1e9 == pytest.approx(billions, rel=0.01)


def test_legacy_rope_scaling_key_is_read():
    hf = PRESETS["llama3.1-8b"].to_hf_config()
    hf.pop("rope_parameters")
    assert ModelConfig.from_hf_config(hf).rope_scaling == PRESETS["llama3.1-8b"].rope_scaling


@pytest.mark.parametrize(
    "change, message",
    [({"model_type": "mistral"}, "unsupported model_type 'mistral'"),
     ({"hidden_act": "gelu"}, "hidden_act"),
     ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0}}, "rope type 'yarn'"),
     ({"num_key_value_heads": 3}, "not a multiple")],
)  # fmt: skip
def test_bad_hf_configs(change, message):
    with pytest.raises(JaxrlError, match=message):
        ModelConfig.from_hf_config({**PRESETS["tiny-llama"].to_hf_config(), **change})


def test_unknown_preset():
    with pytest.raises(JaxrlError, match="unknown model preset"):
        preset("gpt-5")


def test_abstract_decoder_allocates_nothing():
    leaves = jax.tree.leaves(abstract_decoder(preset("olmo2-1124-13b")))
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)
