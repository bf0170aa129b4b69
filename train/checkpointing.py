"""Training checkpoints: an Orbax CheckpointManager at RUN/checkpoints/<step>/.

Each step directory holds three items:

    params/       the parameter tree as plain nested dicts, exactly what `save_model` writes (one
                  stored chunk per layer, uncompressed unless `checkpoint.compression`), so
                  `load_model(RUN/checkpoints/<step>)` and `StandardCheckpointer().restore(...)` work
    opt_state/    the optax state as nested dicts named by its key paths, e.g. for the default
                  chain (clip, Adam): {"1": {"count": i32[], "mu": {params}, "nu": {params}}}
    train_state/  JSON: {"step", "data" (iterator position), "rng" (uint32 key data),
                  "skipped_updates", "time"}

Orbax writes a step into a temporary directory and renames it when complete (or, on gs://,
marks it committed), so a step directory is complete or not listed. A step whose files are
damaged afterwards fails to restore: `restore_latest` says so, moves it to
RUN/checkpoints.corrupt/, and falls back to the previous step (when no step restores, it raises
instead and moves nothing).
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jaxrl.train.config import CheckpointConfig

from jaxrl import orbax_io
from jaxrl.errors import JaxrlError

PARAMS, OPT_STATE, TRAIN_STATE = "params", "opt_state", "train_state"


def _names(path) -> list[str]:
    """A key path as plain names: dict keys, attribute names, sequence indices."""
    return [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]


def _nested(tree) -> dict[str, Any]:
    """An optax state as nested dicts named by its key paths (empty states vanish):
    e.g. {"1": {"count": [], "mu": {params tree}, "nu": {params tree}}} for clip -> adam."""
    out: dict[str, Any] = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        *parents, last = _names(path)
        node = out
        for name in parents:
            node = node.setdefault(name, {})
        node[last] = leaf
    return out


def _from_nested(like, nested: dict[str, Any]):
    def take(path, _):
        node = nested
        for name in _names(path):
            node = node[name]
        return node

    return jax.tree_util.tree_map_with_path(take, like)


class Checkpoints:
    """Save and restore (params, optimizer state, train state) at RUN/checkpoints/<step>/."""

    def __init__(self, directory: str | Path, config: CheckpointConfig | None = None):
        self.directory = epath.Path(directory)
        self.config = config or CheckpointConfig()
        self.manager = self._open()

    def _open(self) -> ocp.CheckpointManager:
        options = ocp.CheckpointManagerOptions(
            max_to_keep=self.config.save_total_limit,
            enable_async_checkpointing=self.config.async_save,
            create=True,
        )
        arrays = orbax_io.handler(self.config.compression)
        handlers = {PARAMS: arrays, OPT_STATE: arrays, TRAIN_STATE: ocp.JsonCheckpointHandler()}
        return ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, params, opt_state, train_state: dict[str, Any]) -> None:
        """Starts writing step `step` (returns once device arrays are copied out when async)."""
        if step in self.manager.all_steps():
            return
        train_state = {**train_state, "step": int(step), "time": time.time()}
        self.manager.save(
            step,
            args=ocp.args.Composite(
                **{
                    PARAMS: orbax_io.save_args(params),
                    OPT_STATE: orbax_io.save_args(_nested(opt_state)),
                    TRAIN_STATE: ocp.args.JsonSave(train_state),
                }
            ),
            force=True,
        )

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

    def restore(self, step: int, abstract_params, abstract_opt_state):
        """(params, opt_state, train_state) of `step`, placed with the abstract trees' shardings."""
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                **{
                    PARAMS: orbax_io.restore_args(abstract_params),
                    OPT_STATE: orbax_io.restore_args(_nested(abstract_opt_state)),
                    TRAIN_STATE: ocp.args.JsonRestore(),
                }
            ),
        )
        train_state = dict(restored[TRAIN_STATE])
        if train_state.get("step") != step:
            raise ValueError(f"train_state says step {train_state.get('step')}, directory says {step}")
        opt_state = _from_nested(abstract_opt_state, restored[OPT_STATE])
        return restored[PARAMS], opt_state, train_state

    def restore_latest(self, abstract_params, abstract_opt_state, warn=None):
        """The newest step that restores, or None when there is no checkpoint.

        Newer steps that fail to restore (damaged files) are moved aside with a warning once an
        older one restores. When none restores, nothing is moved and a JaxrlError says why: the
        usual cause is a recipe that no longer matches the run (another model, freeze or optimizer).
        """
        warn = warn or (lambda text: warnings.warn(text, stacklevel=3))
        failures = []
        for step in reversed(self.steps()):
            try:
                restored = self.restore(step, abstract_params, abstract_opt_state)
            except Exception as e:  # any failure to read a step makes it unusable
                text = str(e).strip()
                failures.append((step, (text.splitlines()[0] if text else type(e).__name__)[:200]))
                continue
            for bad, reason in failures:
                aside = self._move_aside(bad)
                warn(
                    f"checkpoint step {bad} in {self.directory} cannot be restored ({reason}); moved it to "
                    f"{aside}; resuming from step {step}"
                )
            return restored
        if failures:
            step, reason = failures[0]
            raise JaxrlError(
                f"no checkpoint in {self.directory} can be restored (newest, step {step}: {reason}); if the recipe "
                "changed, use the run's recipe.yaml or a new output_dir; if the files are damaged, move them away"
            )
        return None

    def _move_aside(self, step: int) -> epath.Path:
        src = self.directory / str(step)
        dst_dir = self.directory.parent / (self.directory.name + ".corrupt")
        dst_dir.mkdir(parents=True, exist_ok=True)
        dst = dst_dir / f"{step}-{int(time.time())}"
        if jax.process_index() == 0:
            src.rename(dst)
        self.manager.reload()
        return dst


def rng_to_json(key: jax.Array) -> list[int]:
    return np.asarray(jax.random.key_data(key)).astype(np.uint32).tolist()


def rng_from_json(data: list[int]) -> jax.Array:
    return jax.random.wrap_key_data(np.asarray(data, np.uint32))
