"""What `--model` may name: a HF directory, an Orbax model checkpoint, or a training run directory
(each of its checkpoints, `RUN/checkpoints/<step>`, in step order)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from jaxrl.errors import JaxrlError
from jaxrl.model_files import check_not_an_empty_run, is_orbax_model, run_checkpoints


@dataclasses.dataclass(frozen=True)
class ModelRef:
    """One model to evaluate: a short label for tables, and its path."""

    label: str
    path: Path


def _is_model(path: Path) -> bool:
    return is_orbax_model(path) or (path / "config.json").is_file()


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
        check_not_an_empty_run(path)
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
