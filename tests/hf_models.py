"""Tiny random Hugging Face models built with transformers (the independent reference)."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers
from jaxrl.models.config import PRESETS, ModelConfig


def build_hf_model(config: ModelConfig, directory: Path, seed: int = 0):
    """A transformers model of `config` with random weights (biases and norms non-trivial), saved."""
    hf_config = transformers.AutoConfig.for_model(**config.to_hf_config())
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.copy_(torch.randn_like(p) * 0.1 + (1.0 if "norm" in name else 0.0))
    model.eval()
    model.save_pretrained(directory)
    return model


FAMILY_CASES = {
    "olmo2": PRESETS["tiny-olmo2"],
    "qwen2-tied": PRESETS["tiny-qwen2"],
    "qwen2-untied": PRESETS["tiny-qwen2"].replace(tie_word_embeddings=False),
    "llama-gqa-rope-scaling": PRESETS["tiny-llama"],
    "llama-attention-bias": PRESETS["tiny-llama"].replace(qkv_bias=True, o_bias=True, rope_scaling=None),
}
