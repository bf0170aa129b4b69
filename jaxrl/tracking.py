"""Experiment tracking in Weights & Biases, the way TRL reports there (`report_to`).

    check_report_to(("tensorboard", "wandb"))          # at recipe load: a one-line error without wandb
    run = WandbRun.open(run_dir, WandbSettings(project="math"), config=recipe_dict)
    run.log(step, {"loss": 0.7, "lr": 1e-6})          # train/loss, train/learning_rate at train/global_step
    run.table("completions", columns, rows)
    run.finish()

Names follow TRL's W&B runs, so a jaxrl run and a TRL run line up in one project: every training
metric is logged as `train/<name>` against the step metric `train/global_step`, with jaxrl's `lr`
under TRL's `learning_rate`; the completions table is `completions`. A run directory keeps its W&B
run id in `wandb_run_id`, so a resumed run continues the same W&B run. The W&B project is the
setting, else $WANDB_PROJECT, else "jaxrl"; the local files go to the setting's directory, else
$WANDB_DIR, else the run directory. $WANDB_MODE (offline, disabled) and the other WANDB_* variables
keep their meaning. Only process 0 opens a run (`MetricsLogger` decides).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from jaxrl.errors import JaxrlError

REPORT_TO = ("tensorboard", "wandb", "none")
RUN_ID_FILE = "wandb_run_id"
STEP_METRIC = "train/global_step"
TRL_NAMES = {"lr": "learning_rate"}  # jaxrl's metric name -> TRL's, where they differ
INSTALL = "pip install 'jaxrl[wandb]'"


def check_report_to(report_to: Sequence[str], key: str = "loop.report_to") -> tuple[str, ...]:
    """The backends, checked: known names, `none` alone, and wandb importable when asked for."""
    names = tuple(report_to)
    unknown = [n for n in names if n not in REPORT_TO]
    if unknown:
        raise JaxrlError(f"{key}: unknown backend {unknown[0]!r}; choose from {', '.join(REPORT_TO)}")
    if "none" in names and len(names) > 1:
        raise JaxrlError(f"{key}: 'none' cannot be combined with other backends")
    if "wandb" in names and importlib.util.find_spec("wandb") is None:
        raise JaxrlError(f"{key} asks for wandb, which is not installed: {INSTALL}")
    return names


def trl_name(name: str) -> str:
    """The W&B key of a training metric, as TRL's runs name it."""
    return f"train/{TRL_NAMES.get(name, name)}"


@dataclasses.dataclass(frozen=True)
class WandbSettings:
    """Where a W&B run goes. Empty strings defer to the WANDB_* variables, then to jaxrl's defaults:
    project "jaxrl", the run directory's name, the run directory."""

    project: str = ""
    name: str = ""
    directory: str = ""
    job_type: str = "train"


def _import_wandb():
    try:
        import wandb
    except ImportError:
        raise JaxrlError(f"W&B logging needs wandb: {INSTALL}") from None
    return wandb


def _scalar(value: Any) -> float | int | None:
    """A number W&B can chart (bools and strings are not), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value


class WandbRun:
    """One W&B run for one jaxrl run directory (or one evaluation's output directory)."""

    def __init__(self, run):
        self.run = run

    @classmethod
    def open(
        cls,
        run_dir: str | Path,
        settings: WandbSettings,
        config: Mapping[str, Any] | None = None,
        *,
        continue_run: bool = True,
    ) -> WandbRun:
        """Starts the run, or (continue_run) continues the one whose id `run_dir` keeps: a resumed
        training run. The new run's id is written to RUN/wandb_run_id either way."""
        wandb = _import_wandb()
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        id_file = run_dir / RUN_ID_FILE
        run_id = id_file.read_text().strip() if continue_run and id_file.is_file() else None  # else W&B's choice
        directory = Path(settings.directory or os.environ.get("WANDB_DIR") or run_dir)
        directory.mkdir(parents=True, exist_ok=True)
        run = wandb.init(
            project=settings.project or os.environ.get("WANDB_PROJECT") or "jaxrl",
            name=settings.name or run_dir.resolve().name,
            dir=str(directory),
            id=run_id or None,
            resume="allow",
            job_type=settings.job_type,
        )
        if config is not None:
            run.config.update(dict(config), allow_val_change=True)
        id_file.write_text(run.id + "\n")
        run.define_metric(STEP_METRIC)
        run.define_metric("*", step_metric=STEP_METRIC, step_sync=True)
        return cls(run)

    @property
    def id(self) -> str:
        return self.run.id

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        """The numeric metrics of `step` under TRL's names (NaN and infinities as they are)."""
        row = {trl_name(k): v for k, v in metrics.items() if _scalar(v) is not None}
        self.run.log({**row, STEP_METRIC: step})

    def table(self, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], step: int | None = None) -> None:
        """A table (e.g. TRL's `completions`), at `step` when given."""
        wandb = _import_wandb()
        data = [[None if isinstance(v, float) and not math.isfinite(v) else v for v in row] for row in rows]
        record: dict[str, Any] = {key: wandb.Table(columns=list(columns), data=data)}
        if step is not None:
            record[STEP_METRIC] = step
        self.run.log(record)

    def summary(self, values: Mapping[str, Any]) -> None:
        self.run.summary.update(dict(values))

    def finish(self) -> None:
        self.run.finish()
