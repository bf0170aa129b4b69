"""Where a model's files are: its config, its tokenizer, and a training run's checkpoints.

A model path is a HF directory (`config.json` and safetensors) or an Orbax model checkpoint (a
directory with `params/`). A training run keeps one `config.json` and the tokenizer files at its
root and its checkpoints under `checkpoints/<step>/`, so a checkpoint's config and tokenizer are
found in it, its parent or its grandparent. Every command finds them through this module.
"""

from __future__ import annotations

import json
from pathlib import Path

from jaxrl.errors import JaxrlError

PARAMS_DIR = "params"
TOKENIZER_MARKERS = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


def is_orbax_model(path: str | Path) -> bool:
    return (Path(path) / PARAMS_DIR).is_dir()


def is_hf_model(path: str | Path) -> bool:
    return (Path(path) / "config.json").is_file() and not is_orbax_model(path)


def _self_and_parents(path: str | Path) -> tuple[Path, Path, Path]:
    path = Path(path).resolve()
    return path, path.parent, path.parent.parent


def find_config(path: str | Path) -> Path:
    """The config.json of a model: in `path`, its parent or its grandparent."""
    for directory in _self_and_parents(path):
        if (directory / "config.json").is_file():
            return directory / "config.json"
    raise JaxrlError(f"no config.json in {Path(path).resolve()} or the two directories above it")


def read_config(path: str | Path) -> dict:
    """The model's config.json (found as `find_config` finds it), checked to be a JSON object."""
    return read_json_object(find_config(path))


class JsonObject(dict):
    """A JSON object read from `source`, so that a later check of its keys can name the file."""

    source: Path | None = None


def read_json_object(file: str | Path) -> JsonObject:
    """A JSON file that must hold an object ({...}), as a dict that remembers its file (`.source`);
    a JaxrlError naming the file otherwise."""
    try:
        value = json.loads(Path(file).read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise JaxrlError(f"{file} is not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise JaxrlError(f"{file} is not valid JSON ({e.msg}, line {e.lineno})") from None
    if not isinstance(value, dict):
        raise JaxrlError(
            f"{file} must be a JSON object ({{...}}), not a JSON {_json_kind(value)}; restore it from the model's "
            "source"
        )
    obj = JsonObject(value)
    obj.source = Path(file)
    return obj


def _json_kind(value) -> str:
    kinds = {list: "array", str: "string", bool: "boolean", int: "number", float: "number", type(None): "null"}
    return kinds.get(type(value), type(value).__name__)


def find_tokenizer_dir(path: str | Path) -> Path:
    """The nearest of `path`, its parent and its grandparent that holds tokenizer files."""
    for directory in _self_and_parents(path):
        if any((directory / name).is_file() for name in TOKENIZER_MARKERS):
            return directory
    raise JaxrlError(
        f"no tokenizer files next to {path} or in the two directories above it; copy them beside the model, "
        "or pass --tokenizer DIR (eval, generate)"
    )


def load_tokenizer(model_path: str | Path | None, tokenizer: str | Path | None = None):
    """The tokenizer in `tokenizer` when given, else the one beside or above `model_path`.

    Local files only: nothing is downloaded and no remote code runs."""
    from huggingface_hub.errors import StrictDataclassError
    from transformers import AutoTokenizer

    directory = Path(tokenizer) if tokenizer else find_tokenizer_dir(model_path)
    if (directory / "config.json").is_file():
        read_json_object(directory / "config.json")  # transformers reads it too, and fails on a non-object
    try:
        return AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError, StrictDataclassError) as e:
        # transformers checks the model's config.json too (a null hidden_size fails its strict dataclass)
        detail = " ".join(str(e).split())
        raise JaxrlError(f"cannot load a tokenizer from {directory}: {detail}") from None


def check_vocabulary(tokenizer, model_path: str | Path) -> int:
    """The model's vocab_size, after checking that every id of `tokenizer` is below it.

    A tokenizer larger than the embedding is an error: an id past the last row does not fail in
    JAX (a gather clamps it), it silently reads the wrong row. A smaller one is normal (embeddings
    are padded)."""
    config_file = find_config(model_path)
    vocab_size = read_json_object(config_file).get("vocab_size")
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size < 1:
        raise JaxrlError(f"{config_file}: vocab_size must be a positive integer, got {vocab_size!r}")
    size = max(len(tokenizer), max(tokenizer.get_vocab().values(), default=-1) + 1)
    if size > vocab_size:
        raise JaxrlError(
            f"the tokenizer in {tokenizer.name_or_path} has {len(tokenizer)} tokens (ids up to {size - 1}) but "
            f"the model's vocab_size is {vocab_size} ({config_file}); ids from {vocab_size} up have no embedding "
            "row: use the tokenizer the model was trained with"
        )
    return vocab_size


def is_run_dir(path: str | Path) -> bool:
    """A training run's directory: recipe.yaml or checkpoints/ at its root and no weights of its own."""
    p = Path(path)
    marked = (p / "recipe.yaml").is_file() or (p / "checkpoints").is_dir()
    return marked and not is_orbax_model(p) and not any(p.glob("*.safetensors"))


def check_not_an_empty_run(path: str | Path) -> None:
    """A JaxrlError when `path` is a training run with no checkpoint yet (its config.json would
    otherwise make it look like a HF model directory without weights)."""
    if is_run_dir(path) and not run_checkpoints(path):
        raise JaxrlError(
            f"run {path} has no checkpoint yet (expected checkpoints/<step>/{PARAMS_DIR}): it stopped before its "
            "first save; resume it, or name a model directory"
        )


def run_checkpoints(run: str | Path) -> list[Path]:
    """A training run's model checkpoints (`checkpoints/<step>/params`), by step; [] when it has none."""
    root = Path(run) / "checkpoints"
    if not root.is_dir():
        return []
    steps = [p for p in root.iterdir() if p.name.isdigit() and is_orbax_model(p)]
    return sorted(steps, key=lambda p: int(p.name))


def latest_checkpoint(run: str | Path) -> Path:
    """The newest model checkpoint of a training run."""
    found = run_checkpoints(run)
    if not found:
        raise JaxrlError(f"no checkpoint in {run} (expected checkpoints/<step>/{PARAMS_DIR})")
    return found[-1]
