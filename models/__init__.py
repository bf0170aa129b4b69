"""Flax ports of Hugging Face decoders: config, model, weights in and out, sampling."""

from jaxrl.models.checkpoint import load_model, save_model
from jaxrl.models.config import PRESETS, ModelConfig, RopeScaling, preset
from jaxrl.models.decoder import Decoder, KVCache, init_cache
from jaxrl.models.params import abstract_decoder, count_params, init_decoder, state_shardings
from jaxrl.models.sampler import Completions, SamplingConfig, sample

__all__ = [
    "load_model",
    "save_model",
    "PRESETS",
    "ModelConfig",
    "RopeScaling",
    "preset",
    "Decoder",
    "KVCache",
    "init_cache",
    "abstract_decoder",
    "count_params",
    "init_decoder",
    "state_shardings",
    "Completions",
    "SamplingConfig",
    "sample",
]
