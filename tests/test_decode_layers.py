"""How a decode loop runs the layers (`ModelConfig.decode_layers`, `decoder.decode_layers`): on weights
split once before the loop or by scanning the stacked ones, the same completions either way, and
auto picks the split on CPU only."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from jaxrl.models import decoder
from jaxrl.models.config import preset
from jaxrl.models.params import init_decoder
from jaxrl.models.sampler import SamplingConfig, sample

from jaxrl.errors import JaxrlError
from jaxrl.sharding import LogicalMesh, make_mesh

PROMPTS = [[1, 5, 9, 2], [3, 7], [11, 12, 13, 14, 15, 16]]
SAMPLED = SamplingConfig(temperature=0.9, max_new_tokens=10, num_samples=3, seed=11)


def _model(decode_layers: str, mesh=None):
    return init_decoder(preset("tiny-qwen2", decode_layers=decode_layers), mesh, seed=4)


def test_split_holds_each_layers_weights_and_scan_holds_none():
    split = decoder.decode_layers(_model("split"))
    stacked = _model("scan").layers.arrays()
    assert decoder.decode_layers(_model("scan")) is None
    assert len(split) == preset("tiny-qwen2").num_layers
    for i, layer in enumerate(split):
        assert layer.keys() == stacked.keys()
        for name, array in layer.items():
            np.testing.assert_array_equal(array, stacked[name][i])


def test_auto_splits_on_cpu_only(monkeypatch):
    assert decoder.decode_layers(_model("auto")) is not None  # these tests run on CPU
    monkeypatch.setattr(decoder, "target_platform", lambda mesh: "tpu")
    assert decoder.decode_layers(_model("auto")) is None
    assert decoder.decode_layers(_model("split")) is not None  # asked for, on any platform


@pytest.mark.parametrize("slots", [None, 4])  # the static loop, and the engine's
def test_split_and_scanned_layers_draw_the_same_completions(slots):
    eos = tuple(range(3, preset("tiny-qwen2").vocab_size, 7))  # completions end at different steps
    want = sample(_model("scan"), PROMPTS, SAMPLED, eos_token_ids=eos, slots=slots)
    got = sample(_model("split"), PROMPTS, SAMPLED, eos_token_ids=eos, slots=slots)
    np.testing.assert_array_equal(got.tokens, want.tokens)
    np.testing.assert_allclose(got.logprobs, want.logprobs, atol=1e-5)
    np.testing.assert_array_equal(got.lengths, want.lengths)
    assert len(set(want.lengths.tolist())) > 1


def test_split_layers_on_a_mesh_draw_the_single_device_completions():
    mesh = LogicalMesh(make_mesh("data=2,fsdp=2,tensor=2"))
    want = sample(_model("scan"), PROMPTS, SAMPLED, slots=6)
    got = sample(_model("split", mesh), PROMPTS, SAMPLED, slots=6)
    np.testing.assert_array_equal(got.tokens, want.tokens)
    np.testing.assert_allclose(got.logprobs, want.logprobs, atol=1e-5)


def test_an_unknown_setting_is_refused():
    with pytest.raises(JaxrlError, match="decode_layers='unrolled'; choose one of auto, scan, split"):
        dataclasses.replace(preset("tiny-qwen2"), decode_layers="unrolled")
