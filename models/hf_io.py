"""Hugging Face checkpoint directories in and out, one tensor at a time.

`load_hf` reads config.json and the safetensors shards straight into parameters sharded on a
mesh: each HF tensor is read through a memory map, laid out, and placed on its devices, and a
stacked tensor is filled one layer at a time in place, so host memory beyond the loaded model
stays near one tensor. `export_hf` streams the other way into safetensors shards that
transformers loads.
"""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec
from jaxrl.models.config import DTYPES, ModelConfig
from jaxrl.models.decoder import Decoder
from jaxrl.models.keymap import hf_key_map, hf_names
from jaxrl.models.params import abstract_decoder, state_shardings

from jaxrl.errors import JaxrlError
from jaxrl.sharding import LogicalMesh, make_mesh, put
from jaxrl.tensorfiles import SafetensorsDir, write_safetensors

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "chat_template.jinja",
    "chat_template.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
)
# Tensors some HF checkpoints carry that hold nothing to load.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def default_mesh() -> LogicalMesh:
    return LogicalMesh(make_mesh())


@functools.partial(jax.jit, donate_argnums=0)
def _set_layer(stacked, layer, i):
    return stacked.at[i].set(layer)


def _zeros(shape, dtype, sharding):
    return jax.jit(lambda: jax.numpy.zeros(shape, dtype), out_shardings=sharding)()


def check_tensor_names(config: ModelConfig, files: SafetensorsDir) -> None:
    """Raises naming the first missing or unexpected tensor."""
    expected = {name for name, _, _ in hf_names(config)}
    present = {n for n in files.names() if not n.endswith(IGNORED_SUFFIXES)}
    if config.tie_word_embeddings:
        present.discard("lm_head.weight")  # some tied checkpoints still store it
    if missing := sorted(expected - present):
        raise JaxrlError(f"missing tensor {missing[0]!r} in {files.directory} ({len(missing)} missing)")
    if unexpected := sorted(present - expected):
        raise JaxrlError(
            f"unexpected tensor {unexpected[0]!r} in {files.directory} "
            f"({len(unexpected)} not in a {config.family} model of this config)"
        )


def load_hf(
    directory: str | Path, mesh: LogicalMesh | None = None, param_dtype: str | None = None, **config
) -> Decoder:
    """A decoder with the weights of a local HF checkpoint directory, sharded on `mesh`.

    param_dtype: e.g. "float32" or "bfloat16" (default float32); `config` overrides other
    ModelConfig fields (dtype, remat).
    """
    mesh = mesh or default_mesh()
    if param_dtype is not None:
        config["param_dtype"] = param_dtype
    cfg = ModelConfig.from_hf_dir(directory, **config)
    files = SafetensorsDir(directory)
    check_tensor_names(cfg, files)
    graphdef, state = nnx.split(abstract_decoder(cfg, mesh))
    shardings = state_shardings(state, mesh)
    dtype = np.dtype(DTYPES[cfg.param_dtype])
    arrays = {}
    for entry in hf_key_map(cfg):
        target = _at(state, entry.path)
        sharding = _at(shardings, entry.path)
        if not entry.per_layer:
            arrays[entry.path] = put(_read(files, entry.hf_name, entry, dtype), sharding)
            continue
        layer_sharding = NamedSharding(sharding.mesh, PartitionSpec(*sharding.spec[1:]))
        stacked = _zeros(target.shape, dtype, sharding)
        for i in range(cfg.num_layers):
            layer = put(_read(files, entry.hf_name.format(i=i), entry, dtype), layer_sharding)
            stacked = _set_layer(stacked, layer, i)
        arrays[entry.path] = stacked
    for path, array in arrays.items():
        _at(state, path).set_value(array)
    return nnx.merge(graphdef, state)


def _at(tree, path: tuple[str, ...]):
    for key in path:
        tree = tree[key]
    return tree


def _read(files: SafetensorsDir, name: str, entry, dtype: np.dtype) -> np.ndarray:
    info = files.info(name)
    if info.shape != entry.hf_shape:
        raise JaxrlError(
            f"tensor {name!r} in {files.directory} has shape {list(info.shape)}, "
            f"expected {list(entry.hf_shape)} from config.json"
        )
    return np.ascontiguousarray(entry.to_ours(files.read(name)), dtype=dtype)


def export_hf(
    model: Decoder,
    directory: str | Path,
    tokenizer_from: str | Path | None = None,
    dtype: str | None = None,
    max_shard_bytes: int = 5 * 2**30,
) -> Path:
    """Writes `model` as a HF directory (config.json, safetensors, tokenizer files copied from
    `tokenizer_from`). All processes must call it; process 0 writes."""
    cfg = model.config
    out_dtype = np.dtype(DTYPES[dtype or cfg.param_dtype])
    directory = Path(directory)
    state = nnx.state(model, nnx.Param)
    names = hf_names(cfg)
    by_name = {name: (entry, i) for name, entry, i in names}
    writer = jax.process_index() == 0

    def produce(name: str) -> np.ndarray:
        entry, i = by_name[name]
        array = _at(state, entry.path)[...]
        array = array if i is None else array[i]
        host = np.asarray(multihost_utils.process_allgather(array, tiled=True))
        return entry.to_hf(host).astype(out_dtype)

    specs = [(name, entry.hf_shape, out_dtype) for name, entry, _ in names]
    if writer:
        directory.mkdir(parents=True, exist_ok=True)
        write_safetensors(directory, specs, produce, max_shard_bytes)
        hf = cfg.to_hf_config() | {"torch_dtype": str(out_dtype.name)}
        (directory / "config.json").write_text(json.dumps(hf, indent=2))
        if tokenizer_from is not None:
            for name in TOKENIZER_FILES:
                if (Path(tokenizer_from) / name).exists():
                    shutil.copy2(Path(tokenizer_from) / name, directory / name)
    else:  # take part in the gathers in the same order as process 0
        for name, _, _ in specs:
            produce(name)
    multihost_utils.sync_global_devices("jaxrl.export_hf")
    return directory
