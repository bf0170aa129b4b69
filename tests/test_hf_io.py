"""HF <-> Orbax conversion is exact, and bad checkpoints fail with one clear line."""

import json
import shutil

import numpy as np
import pytest
import torch
import transformers
from jaxrl.models.checkpoint import load_model
from jaxrl.models.hf_io import export_hf, load_hf
from jaxrl.models.tiny import build_tiny_model

from jaxrl.cli import main
from jaxrl.errors import JaxrlError
from jaxrl.tensorfiles import SafetensorsDir, write_safetensors


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", "tiny-qwen2", seed=3)


def tensors(directory) -> dict[str, np.ndarray]:
    files = SafetensorsDir(directory)
    return {name: files.read(name) for name in files.names()}


def test_hf_orbax_hf_round_trip_is_bitwise(tiny, tmp_path):
    assert main(["convert", str(tiny), str(tmp_path / "orbax"), "--mesh", "fsdp=2,tensor=4"]) == 0
    assert main(["convert", str(tmp_path / "orbax"), str(tmp_path / "hf")]) == 0
    before, after = tensors(tiny), tensors(tmp_path / "hf")
    assert before.keys() == after.keys()
    for name in before:
        assert before[name].dtype == after[name].dtype
        assert before[name].tobytes() == after[name].tobytes(), name
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32)
    assert sum(p.numel() for p in reloaded.parameters()) == sum(v.size for v in before.values())
    assert transformers.AutoTokenizer.from_pretrained(tmp_path / "hf").chat_template


def test_bf16_export_and_multi_shard_index(tiny, tmp_path):
    model = load_model(tiny)
    export_hf(model, tmp_path / "bf16", dtype="bfloat16", max_shard_bytes=20_000)
    index = json.loads((tmp_path / "bf16" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    again = load_hf(tmp_path / "bf16", param_dtype="bfloat16")
    assert again.layers.q[...].dtype.name == "bfloat16"
    np.testing.assert_array_equal(
        np.asarray(again.layers.q[...], np.float32),
        np.asarray(model.layers.q[...].astype("bfloat16"), np.float32),
    )
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "bf16")
    assert next(hf.parameters()).dtype == torch.bfloat16


def copy_of(tiny, tmp_path):
    target = tmp_path / "broken"
    shutil.copytree(tiny, target)
    return target


def rewrite(directory, change):
    """Rewrites model.safetensors with `change(dict of arrays)` applied."""
    arrays = change(tensors(directory))
    specs = [(n, a.shape, a.dtype) for n, a in arrays.items()]
    write_safetensors(directory, specs, arrays.__getitem__)


def test_unknown_model_type(tiny, tmp_path, capsys):
    broken = copy_of(tiny, tmp_path)
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    assert main(["convert", str(broken), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "'gpt2'" in err and "olmo2, qwen2, llama" in err


def test_missing_shard_file(tiny, tmp_path):
    broken = tmp_path / "sharded"
    export_hf(load_model(tiny), broken, max_shard_bytes=20_000)
    (broken / "model-00002-of-{:05d}.safetensors".format(len(list(broken.glob("model-*"))))).unlink()
    with pytest.raises(JaxrlError, match="missing safetensors file .*model-00002"):
        load_hf(broken)


def test_missing_tensor(tiny, tmp_path):
    broken = copy_of(tiny, tmp_path)
    rewrite(broken, lambda t: {k: v for k, v in t.items() if k != "model.layers.1.mlp.up_proj.weight"})
    with pytest.raises(JaxrlError, match="missing tensor 'model.layers.1.mlp.up_proj.weight'"):
        load_hf(broken)


def test_unexpected_tensor(tiny, tmp_path):
    broken = copy_of(tiny, tmp_path)
    rewrite(broken, lambda t: {**t, "model.layers.0.extra.weight": np.zeros(3, np.float32)})
    with pytest.raises(JaxrlError, match="unexpected tensor 'model.layers.0.extra.weight'"):
        load_hf(broken)


def test_wrong_shape_names_the_tensor(tiny, tmp_path):
    broken = copy_of(tiny, tmp_path)
    name = "model.layers.0.self_attn.k_proj.weight"
    rewrite(broken, lambda t: {**t, name: t[name][:-1]})
    with pytest.raises(JaxrlError, match=f"tensor '{name}' .* has shape \\[31, 64\\], expected \\[32, 64\\]"):
        load_hf(broken)


def test_truncated_file(tiny, tmp_path):
    broken = copy_of(tiny, tmp_path)
    path = broken / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(JaxrlError, match="truncated"):
        load_hf(broken)


def test_mesh_that_does_not_divide_devices(tiny, tmp_path, capsys):
    assert main(["convert", str(tiny), str(tmp_path / "out"), "--mesh", "tensor=3"]) == 2
    assert "mesh spec data=1,fsdp=-1,tensor=3 does not divide 8 devices" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_path_that_does_not_exist(tmp_path, capsys):
    assert main(["convert", str(tmp_path / "nope"), str(tmp_path / "out")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["compare", str(tmp_path / "nope")]) == 2


def test_compare_rejects_orbax_checkpoint(tiny, tmp_path, capsys):
    assert main(["convert", str(tiny), str(tmp_path / "orbax")]) == 0
    assert main(["compare", str(tmp_path / "orbax")]) == 2
    assert "is an Orbax checkpoint; `jaxrl convert` it" in capsys.readouterr().err


def test_tiny_command_builds_a_loadable_model(tmp_path):
    assert main(["tiny", str(tmp_path / "t"), "--preset", "tiny-qwen2"]) == 0
    model = load_model(tmp_path / "t")
    assert model.config.family == "qwen2" and model.config.tie_word_embeddings
    assert transformers.AutoTokenizer.from_pretrained(tmp_path / "t").eos_token == "<|endoftext|>"
