"""The training run directory, shared by SFT and GRPO:

    RUN/config.json          the model's HF config (so `find_config` works for the checkpoints)
    RUN/tokenizer*.json ...  the tokenizer files, copied from the model source
    RUN/recipe.yaml          the resolved recipe (every field, overrides applied)
    RUN/metrics.jsonl        one JSON object per logged step
    RUN/tb/                  TensorBoard events (with loop.report_to)
    RUN/wandb/, wandb_run_id the W&B run's local files and id (loop.report_to: [wandb])
    RUN/completions.jsonl    GRPO with grpo.log_completions: each logging step's completions
    RUN/checkpoints/<step>/  params/, opt_state/, train_state/ (see checkpointing.py)

Only process 0 writes the files; every process takes part in checkpoints.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import yaml
from jaxrl.models.config import ModelConfig
from jaxrl.models.hf_io import TOKENIZER_FILES

from jaxrl.destinations import check_destination
from jaxrl.errors import JaxrlError
from jaxrl.model_files import check_not_an_empty_run, is_orbax_model
from jaxrl.sharding import LogicalMesh, MeshSpec, init_distributed, make_mesh


def training_mesh(spec: str) -> LogicalMesh:
    """Starts multi-host JAX when needed and builds the mesh (errors before anything compiles)."""
    init_distributed()
    parsed = MeshSpec.parse(spec)
    parsed.resolve(jax.device_count())
    return LogicalMesh(make_mesh(parsed))


def check_model_path(path: str) -> Path:
    if not path:
        raise JaxrlError("no model: set model.path to a HF model directory or an Orbax checkpoint")
    p = Path(path).expanduser()
    if not p.exists():
        raise JaxrlError(f"model.path {path} does not exist")
    if not ((p / "config.json").is_file() or is_orbax_model(p)):
        raise JaxrlError(f"model.path {path} is neither a HF model directory (config.json) nor an Orbax checkpoint")
    check_not_an_empty_run(p)  # a run stopped before its first checkpoint is said to be one
    ModelConfig.from_model_path(p)  # a config.json that is not an object, or a key missing or wrong, fails here
    return p


def sequence_lengths(config) -> list[tuple[str, int]]:
    """(recipe keys, tokens) of the longest sequences a recipe trains on: SFT's max_length, GRPO's
    prompt plus completion (the completion alone when prompts are not truncated)."""
    if hasattr(config, "sft"):
        return [("sft.max_length", config.sft.max_length)]
    s = config.grpo
    if s.max_prompt_length is None:
        return [("grpo.max_completion_length", s.max_completion_length)]
    return [("grpo.max_prompt_length + max_completion_length", s.max_prompt_length + s.max_completion_length)]


def check_sequence_lengths(config, model_path: Path) -> None:
    """A recipe whose sequences pass the model's max_position_embeddings fails here, at load: the
    positions past it are ones the model never trained on."""
    positions = ModelConfig.from_model_path(model_path).max_position_embeddings
    for keys, length in sequence_lengths(config):
        if length > positions:
            raise JaxrlError(
                f"{keys} = {length} tokens pass the model's max_position_embeddings={positions} ({model_path}); "
                "lower them"
            )


def check_output_dir(output_dir: str) -> Path:
    if "://" in output_dir:
        raise JaxrlError(
            f"output_dir {output_dir!r} must be a local directory; put checkpoints on GCS with "
            "checkpoint.directory=gs://bucket/path"
        )
    if not output_dir:
        raise JaxrlError("loop.output_dir is empty; name a directory for the run")
    return check_destination(output_dir, "directory", "loop.output_dir")


def changed_keys(old_yaml: str, new_yaml: str) -> list[str]:
    """Dotted keys whose values differ between two resolved recipes."""

    def flat(node, prefix=""):
        if isinstance(node, dict):
            return {k: v for key, value in node.items() for k, v in flat(value, f"{prefix}{key}.").items()}
        return {prefix[:-1]: node}

    old, new = flat(yaml.safe_load(old_yaml) or {}), flat(yaml.safe_load(new_yaml) or {})
    return sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))


def write_run_files(run_dir: Path, config: ModelConfig, tokenizer_from: Path, recipe_yaml: str) -> list[str]:
    """config.json, tokenizer files and recipe.yaml in `run_dir` (process 0 only). Returns the
    recipe keys that differ from the recipe.yaml already there (a resumed run whose recipe changed)."""
    if jax.process_index() != 0:
        return []
    run_dir.mkdir(parents=True, exist_ok=True)
    previous = run_dir / "recipe.yaml"
    changed = changed_keys(previous.read_text(), recipe_yaml) if previous.is_file() else []
    (run_dir / "config.json").write_text(json.dumps(config.to_hf_config(), indent=2))
    for name in TOKENIZER_FILES:
        if (tokenizer_from / name).is_file() and name != "config.json":
            if (tokenizer_from / name).resolve() != (run_dir / name).resolve():
                shutil.copy2(tokenizer_from / name, run_dir / name)
    (run_dir / "recipe.yaml").write_text(recipe_yaml)
    return changed


def checkpoint_dir(run_dir: Path, override: str) -> str:
    """RUN/checkpoints, or the configured directory (local or gs://)."""
    if override and "://" in override and not override.startswith("gs://"):
        raise JaxrlError(f"checkpoint.directory {override!r}: only local paths and gs:// are supported")
    if override and "://" not in override:
        check_destination(override, "directory", "checkpoint.directory")
    return override or str((run_dir / "checkpoints").absolute())
