"""What `--model` may name: a HF directory, an Orbax model checkpoint, or a training run directory
(each of its checkpoints, `RUN/checkpoints/<step>`, in step order)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from jaxrl.errors import JaxrlError

TOKENIZER_MARKERS = ("tokenizer.json", "tokenizer_config.json")


@dataclasses.dataclass(frozen=True)
class ModelRef:
    """One model to evaluate: a short label for tables, and its path."""

    label: str
    path: Path


def _is_model(path: Path) -> bool:
    return (path / "params").is_dir() or (path / "config.json").is_file()


def run_checkpoints(run: Path) -> list[Path]:
    """The model checkpoints of a run directory, by step; [] when `run` has none."""
    root = run / "checkpoints"
    if not root.is_dir():
        return []
    steps = [p for p in root.iterdir() if p.name.isdigit() and (p / "params").is_dir()]
    return sorted(steps, key=lambda p: int(p.name))


def expand_models(paths: list[str]) -> list[ModelRef]:
    """ModelRefs for every `--model` argument, a run expanded to its checkpoints; labels unique.

    An argument `LABEL=PATH` names the model in tables (LABEL@step for a run's checkpoints);
    otherwise the label is the directory's name."""
    refs = []
    for text in paths:
        label, sep, rest = text.partition("=")
        if not sep or not label or Path(text).exists():
            label, rest = "", text
        path = Path(rest)
        if not path.exists():
            raise JaxrlError(f"model path {path} does not exist")
        checkpoints = run_checkpoints(path)
        if checkpoints:
            refs += [ModelRef(f"{label or path.resolve().name}@{c.name}", c) for c in checkpoints]
        elif _is_model(path):
            refs.append(ModelRef(label or path.resolve().name, path))
        else:
            raise JaxrlError(
                f"{path} is not a HF model directory, an Orbax checkpoint (params/) or a run directory "
                "(checkpoints/<step>/params)"
            )
    seen: dict[str, int] = {}
    out = []
    for ref in refs:
        seen[ref.label] = seen.get(ref.label, 0) + 1
        label = ref.label if seen[ref.label] == 1 else f"{ref.label}#{seen[ref.label]}"
        out.append(ModelRef(label, ref.path))
    return out


def find_tokenizer_dir(path: Path) -> Path | None:
    """The nearest of `path` and its two parents holding tokenizer files (a run keeps them at its root)."""
    path = Path(path).resolve()
    for directory in (path, path.parent, path.parent.parent):
        if any((directory / m).is_file() for m in TOKENIZER_MARKERS):
            return directory
    return None


def load_tokenizer(model_path: Path, tokenizer: str | None = None):
    """The tokenizer given, else the one beside or above the model."""
    from transformers import AutoTokenizer

    directory = Path(tokenizer) if tokenizer else find_tokenizer_dir(model_path)
    if directory is None:
        raise JaxrlError(f"no tokenizer files in {model_path} or the two directories above it; pass --tokenizer DIR")
    try:
        return AutoTokenizer.from_pretrained(str(directory))
    except (OSError, ValueError) as e:
        raise JaxrlError(f"cannot load a tokenizer from {directory}: {str(e).splitlines()[0]}") from None
