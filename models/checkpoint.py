"""Model checkpoints in Orbax, and one loader for every kind of model path.

Finding a model's files (its config, its tokenizer, a run's checkpoints) is `jaxrl.model_files`.
A model checkpoint is a directory with `params/`, an Orbax PyTree checkpoint of the parameter
tree as plain nested dicts (`{"embed": [V, D], "layers": {"q": [L, D, H, E], ...}, ...}`, the
layout of `jaxrl.models.decoder`; stored one chunk per layer, see `jaxrl.orbax_io`), and a HF
`config.json` beside it, in its parent, or in its grandparent (a training run keeps one
`config.json` at the run root and its checkpoints under `checkpoints/<step>/params`). Restore it
without jaxrl:

    import orbax.checkpoint as ocp
    params = ocp.StandardCheckpointer().restore("ckpt/params")
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import orbax.checkpoint as ocp
from flax import nnx
from jaxrl.models.config import ModelConfig
from jaxrl.models.decoder import Decoder
from jaxrl.models.params import abstract_decoder, state_shardings

from jaxrl.errors import JaxrlError
from jaxrl.model_files import PARAMS_DIR, check_not_an_empty_run, is_hf_model, is_orbax_model, read_config
from jaxrl.orbax_io import save_tree
from jaxrl.sharding import LogicalMesh, make_mesh


def save_model(model: Decoder, directory: str | Path) -> Path:
    """Writes `model` as an Orbax model checkpoint (params/ and config.json). Call on every host."""
    directory = Path(directory)
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    save_tree((directory / PARAMS_DIR).absolute(), params)
    if jax.process_index() == 0:
        (directory / "config.json").write_text(json.dumps(model.config.to_hf_config(), indent=2))
    return directory


def load_orbax(
    directory: str | Path, mesh: LogicalMesh | None = None, param_dtype: str | None = None, **config
) -> Decoder:
    """Restores an Orbax model checkpoint straight into its sharded layout on `mesh`."""
    directory = Path(directory)
    if not is_orbax_model(directory):
        raise JaxrlError(f"{directory} is not an Orbax model checkpoint (no {PARAMS_DIR}/ inside)")
    if param_dtype is not None:
        config["param_dtype"] = param_dtype
    cfg = ModelConfig.from_hf_config(read_config(directory), **config)
    mesh = mesh or LogicalMesh(make_mesh())
    graphdef, state = nnx.split(abstract_decoder(cfg, mesh))
    shardings = nnx.to_pure_dict(state_shardings(state, mesh))
    abstract = jax.tree.map(
        lambda v, s: jax.ShapeDtypeStruct(v.shape, cfg.weight_dtype, sharding=s),
        nnx.to_pure_dict(state),
        shardings,
    )
    try:
        params = ocp.StandardCheckpointer().restore((directory / PARAMS_DIR).absolute(), abstract)
    except (ValueError, KeyError, FileNotFoundError) as e:
        raise JaxrlError(f"cannot restore {directory / PARAMS_DIR}: {str(e).splitlines()[0]}") from None
    nnx.replace_by_pure_dict(state, params)
    return nnx.merge(graphdef, state)


def load_model(path: str | Path, mesh: LogicalMesh | None = None, param_dtype: str | None = None, **config) -> Decoder:
    """A decoder from a HF directory or an Orbax model checkpoint."""
    from jaxrl.models.hf_io import load_hf

    path = Path(path)
    if not path.exists():
        raise JaxrlError(f"model path {path} does not exist")
    if is_orbax_model(path):
        return load_orbax(path, mesh, param_dtype, **config)
    check_not_an_empty_run(path)
    if is_hf_model(path):
        return load_hf(path, mesh, param_dtype, **config)
    raise JaxrlError(f"{path} is neither a HF model directory (config.json) nor an Orbax checkpoint")
