"""Finding checkpoints: a base model, and each run's checkpoints in step order.

A path given to `jaxrl analyze` is one of
- an Orbax model checkpoint: a directory with `params/` (config.json beside or up to two above);
- a HF model directory: `config.json` and `*.safetensors`;
- a run directory: our training runs keep `checkpoints/<step>/params` (config.json at the run
  root); TRL runs keep HF directories named `checkpoint-<step>`.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from jaxrl import model_files
from jaxrl.analysis.sources import HFSource, OrbaxSource, Source
from jaxrl.errors import JaxrlError
from jaxrl.model_files import PARAMS_DIR, read_config, read_json_object

TRL_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    run: str  # the run's name in reports
    name: str  # the checkpoint's name in reports
    step: int | None
    path: Path  # the model directory (Orbax: the one holding params/)
    kind: str  # "orbax" | "hf"

    def config(self) -> dict:
        """The HF config.json of this checkpoint's model."""
        return read_json_object(self.path / "config.json") if self.kind == "hf" else read_config(self.path)

    def open(self) -> Source:
        return OrbaxSource(self.path / PARAMS_DIR) if self.kind == "orbax" else HFSource(self.path)


def _kind(path: Path) -> str | None:
    if (path / PARAMS_DIR / "_METADATA").is_file():
        return "orbax"
    if (path / "config.json").is_file() and any(path.glob("*.safetensors")):
        return "hf"
    return None


def _step(name: str) -> int | None:
    match = TRL_CHECKPOINT.match(name) or re.fullmatch(r"(\d+)", name)
    return int(match.group(1)) if match else None


def model_checkpoint(path: str | Path, run: str = "base") -> Checkpoint:
    """A single model (HF directory or Orbax checkpoint); raises if `path` is neither."""
    path = Path(path)
    if not path.exists():
        raise JaxrlError(f"{path} does not exist")
    kind = _kind(path)
    if kind is None:
        raise JaxrlError(
            f"{path} is neither a HF model directory (config.json + *.safetensors) "
            f"nor an Orbax model checkpoint ({PARAMS_DIR}/ inside)"
        )
    return Checkpoint(run, path.name, _step(path.name), path, kind)


def run_checkpoints(path: str | Path, run: str | None = None) -> list[Checkpoint]:
    """The checkpoints of a run directory in step order, or the one model `path` is."""
    path = Path(path)
    if not path.exists():
        raise JaxrlError(f"run {path} does not exist")
    run = run or path.resolve().name
    if _kind(path) is not None:
        return [dataclasses.replace(model_checkpoint(path), run=run)]
    found = [(int(d.name), d, "orbax") for d in model_files.run_checkpoints(path) if _kind(d) == "orbax"]
    for d in path.iterdir() if path.is_dir() else ():
        step = _step(d.name) if d.name.startswith("checkpoint-") else None
        if step is not None and _kind(d) == "hf":
            found.append((step, d, "hf"))
    if not found:
        raise JaxrlError(
            f"no checkpoints in {path}: expected checkpoints/<step>/{PARAMS_DIR}, checkpoint-<step>/ "
            "HF directories, or a model directory"
        )
    found.sort(key=lambda t: t[0])
    return [Checkpoint(run, d.name, step, d, kind) for step, d, kind in found]


def unique_run_names(paths: list[str | Path]) -> list[str]:
    """Directory names, made unique with the parent's name (or a number) where two collide."""
    names = [Path(p).resolve().name for p in paths]
    for i, p in enumerate(paths):
        if names.count(names[i]) > 1:
            names[i] = f"{Path(p).resolve().parent.name}/{names[i]}"
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:
            names[i] = f"{name}#{seen[name]}"
    return names
