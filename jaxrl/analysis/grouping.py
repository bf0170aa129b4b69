"""Rows of changes grouped by module kind x layer, across checkpoints and across runs.

A row is a flat dict: run, checkpoint, step, module, layer (None for unstacked tensors), tensor,
and the metrics of `TensorChange` (singular values as sv1..svK). Means are over layers.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Iterable, Sequence

import numpy as np

from jaxrl.analysis.tree_diff import TensorChange

METRICS = ("rel_change", "delta_norm", "frac_changed", "cosine", "base_norm", "norm", "num_changed", "size")


def rows_from_changes(changes: Iterable[TensorChange], run: str, checkpoint: str, step: int | None) -> list[dict]:
    rows = []
    for c in changes:
        row = {
            "run": run,
            "checkpoint": checkpoint,
            "step": step,
            "module": c.module,
            "layer": c.layer,
            "tensor": c.tensor,
        }
        row.update({m: getattr(c, m) for m in METRICS})
        if c.singular_values is not None:
            row["stable_rank"] = c.stable_rank
            row.update({f"sv{j + 1}": s for j, s in enumerate(c.singular_values)})
        rows.append(row)
    return rows


def ordered(values: Iterable) -> list:
    """Distinct values in first-seen order."""
    return list(dict.fromkeys(values))


def checkpoints_of(rows: Sequence[dict], run: str) -> list[tuple[str, int | None]]:
    """(checkpoint, step) of a run in the order analysed (step order)."""
    return ordered((r["checkpoint"], r["step"]) for r in rows if r["run"] == run)


def module_means(rows: Sequence[dict], run: str, checkpoint: str, metric: str = "rel_change") -> dict[str, float]:
    """Mean of `metric` over layers, per module, for one checkpoint."""
    groups = defaultdict(list)
    for r in rows:
        if r["run"] == run and r["checkpoint"] == checkpoint:
            groups[r["module"]].append(r[metric])
    return {m: float(np.mean(v)) for m, v in groups.items()}


def layer_grid(rows: Sequence[dict], run: str, checkpoint: str, metric: str = "rel_change"):
    """(modules, layers, [layers, modules] array) of a stacked-tensor metric for one checkpoint."""
    picked = [r for r in rows if r["run"] == run and r["checkpoint"] == checkpoint and r["layer"] is not None]
    modules = ordered(r["module"] for r in picked)
    layers = sorted(ordered(r["layer"] for r in picked))
    grid = np.full((len(layers), len(modules)), np.nan)
    for r in picked:
        grid[layers.index(r["layer"]), modules.index(r["module"])] = r[metric]
    return modules, layers, grid


@dataclasses.dataclass(frozen=True)
class Trajectory:
    """One module of one run over its checkpoints: x (step, or position when unknown), mean, min, max."""

    run: str
    module: str
    x: list[float]
    mean: list[float]
    low: list[float]
    high: list[float]


def trajectories(rows: Sequence[dict], metric: str = "rel_change") -> list[Trajectory]:
    out = []
    for run in ordered(r["run"] for r in rows):
        ckpts = checkpoints_of(rows, run)
        for module in ordered(r["module"] for r in rows if r["run"] == run):
            x, mean, low, high = [], [], [], []
            for pos, (ckpt, step) in enumerate(ckpts):
                values = [
                    r[metric] for r in rows if r["run"] == run and r["checkpoint"] == ckpt and r["module"] == module
                ]
                if values:
                    x.append(step if step is not None else pos)
                    mean.append(float(np.mean(values)))
                    low.append(float(np.min(values)))
                    high.append(float(np.max(values)))
            out.append(Trajectory(run, module, x, mean, low, high))
    return out


def depth_thirds(rows: Sequence[dict], run: str, checkpoint: str, metric: str = "rel_change") -> dict[str, float]:
    """Mean of `metric` over modules and layers in the early, middle and late third of depth."""
    _, layers, grid = layer_grid(rows, run, checkpoint, metric)
    if not layers:
        return {}
    parts = np.array_split(np.arange(len(layers)), 3)
    return {
        name: float(np.nanmean(grid[p])) for name, p in zip(("early", "middle", "late"), parts, strict=True) if len(p)
    }
