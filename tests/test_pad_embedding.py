"""HF's `nn.Embedding(padding_idx=pad_token_id)`: the embedding lookup gives the pad row no
gradient. With the pad id as a real token of the batch, our gradients equal transformers' (a
tied lm_head still trains the row); with the rule off, the pad row's gradient differs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from hf_models import build_hf_model
from jaxrl.models.config import PRESETS, ModelConfig
from jaxrl.models.hf_io import load_hf

PAD = 7


def batch(vocab: int):
    """tokens [2, 12] with the pad id inside the text (row 0) and as padding (row 1, segment 0)."""
    rng = np.random.default_rng(0)
    tokens = rng.integers(8, vocab, (2, 12)).astype(np.int32)
    tokens[0, [2, 5, 6]] = PAD
    segments = np.ones_like(tokens)
    tokens[1, 9:], segments[1, 9:] = PAD, 0
    return tokens, segments


def torch_embed_grad(directory, tokens, segments) -> np.ndarray:
    model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    t = torch.as_tensor(tokens, dtype=torch.long)
    logits = model(input_ids=t, attention_mask=torch.as_tensor(segments)).logits[:, :-1]
    nll = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), t[:, 1:].reshape(-1), reduction="none"
    )
    mask = torch.as_tensor(segments[:, 1:], dtype=torch.float32).reshape(-1)
    ((nll * mask).sum() / mask.sum()).backward()
    return model.get_input_embeddings().weight.grad.numpy()


def jax_embed_grad(model, tokens, segments) -> np.ndarray:
    graphdef, state = nnx.split(model)

    def loss(state):
        logits = nnx.merge(graphdef, state)(jnp.asarray(tokens), jnp.asarray(segments))[:, :-1]
        logp = jax.nn.log_softmax(logits)
        nll = -jnp.take_along_axis(logp, jnp.asarray(tokens)[:, 1:, None], axis=-1)[..., 0]
        mask = jnp.asarray(segments[:, 1:], jnp.float32)
        return jnp.sum(nll * mask) / jnp.sum(mask)

    return np.asarray(jax.jit(jax.grad(loss))(state)["embed"][...])


@pytest.mark.parametrize("name", ["tiny-olmo2", "tiny-qwen2"])  # untied and tied embeddings
def test_pad_row_gradient_matches_transformers(tmp_path, name):
    config = PRESETS[name].replace(pad_token_id=PAD)
    build_hf_model(config, tmp_path)
    tokens, segments = batch(config.vocab_size)
    expected = torch_embed_grad(tmp_path, tokens, segments)
    model = load_hf(tmp_path, attention="xla")  # quicker to compile than blockwise
    assert model.config.freeze_pad_embedding and model.config.frozen_embedding_row == PAD
    ours = jax_embed_grad(model, tokens, segments)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(ours, expected, atol=1e-5 * scale, rtol=0)
    if config.tie_word_embeddings:  # the output projection still trains the row
        assert np.abs(expected[PAD]).max() > 1e-3 * scale
        return
    assert not expected[PAD].any()
    trained = jax_embed_grad(load_hf(tmp_path, freeze_pad_embedding=False, attention="xla"), tokens, segments)
    assert np.abs(trained[PAD]).max() > 1e-2 * scale  # the rule is what made them equal
    np.testing.assert_array_equal(np.delete(trained, PAD, 0), np.delete(ours, PAD, 0))


def test_flag_comes_from_the_hf_config_and_is_not_exported():
    hf = PRESETS["tiny-llama"].replace(pad_token_id=PAD).to_hf_config()
    config = ModelConfig.from_hf_config(hf)
    assert config.freeze_pad_embedding and config.frozen_embedding_row == PAD
    assert config.to_hf_config() == hf  # the HF config has no such key: HF always does it
    assert config.replace(pad_token_id=None).frozen_embedding_row is None
    assert config.replace(pad_token_id=-1).frozen_embedding_row == config.vocab_size - 1  # as torch reads it
    assert config.replace(freeze_pad_embedding=False).frozen_embedding_row is None
