"""A tiny random HF model with its own tokenizer, made on the spot (nothing is downloaded).

`build_tiny_model` writes a complete HF directory (config.json, model.safetensors, tokenizer
files) through the same exporter a real model takes, so tests and CPU runs load it through the
path a user's checkpoint takes.
"""

from __future__ import annotations

from pathlib import Path

from jaxrl.models.config import preset as get_preset
from jaxrl.models.hf_io import export_hf
from jaxrl.models.params import init_decoder

from jaxrl.destinations import check_destination
from jaxrl.tiny import EOS, PAD, build_tokenizer


def build_tiny_model(
    directory: str | Path, preset: str = "tiny-olmo2", seed: int = 0, corpus: list[str] | None = None
) -> Path:
    """A complete HF model directory with random weights and a tokenizer of the preset's vocab."""
    directory = check_destination(directory, "directory", "destination")
    config = get_preset(preset)
    tokenizer = build_tokenizer(directory, corpus, config.vocab_size)
    eos = tokenizer.convert_tokens_to_ids(EOS)
    config = config.replace(bos_token_id=eos, eos_token_ids=(eos,), pad_token_id=tokenizer.convert_tokens_to_ids(PAD))
    export_hf(init_decoder(config, seed=seed), directory)
    return directory
