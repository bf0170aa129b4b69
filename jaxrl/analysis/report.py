"""The files `jaxrl analyze` writes: changes.csv/json, PNG figures, summary.md.

- changes.csv / changes.json: one row per (run, checkpoint, module, layer);
- heatmap_<run>_<checkpoint>.png: layer x module relative change (log colour scale);
- trajectory_<module>.png: mean (band: min..max) over layers against step, one line per run;
- compare_runs.png: the final checkpoint of each run, mean over layers per module, log scale;
- summary.md: which modules moved most, ratios between runs, where in depth.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from jaxrl.analysis.grouping import checkpoints_of, depth_thirds, layer_grid, module_means, ordered, trajectories

BASE_COLUMNS = ("run", "checkpoint", "step", "module", "layer", "tensor")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "x"


def write_tables(rows: Sequence[dict], out: Path, meta: dict) -> list[Path]:
    columns = list(BASE_COLUMNS) + [k for k in ordered(k for r in rows for k in r) if k not in BASE_COLUMNS]
    with open(out / "changes.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, columns, restval="")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in r.items()})
    clean = [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()} for r in rows]
    (out / "changes.json").write_text(json.dumps({**meta, "rows": clean}, indent=1))
    return [out / "changes.csv", out / "changes.json"]


def _positive_range(values) -> tuple[float, float] | None:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x) and x > 0])
    return (float(v.min()), float(v.max())) if v.size else None


def plot_heatmaps(rows: Sequence[dict], out: Path) -> list[Path]:
    from matplotlib.colors import LogNorm

    plt, written = _pyplot(), []
    for run in ordered(r["run"] for r in rows):
        span = _positive_range(r["rel_change"] for r in rows if r["run"] == run and r["layer"] is not None)
        for ckpt, step in checkpoints_of(rows, run):
            modules, layers, grid = layer_grid(rows, run, ckpt)
            if not layers:
                continue
            fig, ax = plt.subplots(figsize=(1.0 + 0.6 * len(modules), 1.5 + 0.18 * len(layers)))
            norm = LogNorm(*span) if span and span[0] < span[1] else None
            image = ax.imshow(
                np.where(grid > 0, grid, np.nan), aspect="auto", cmap="viridis", norm=norm, origin="lower"
            )
            ax.set_xticks(range(len(modules)), modules)
            ax.set_yticks(range(len(layers))[:: max(1, len(layers) // 16)], layers[:: max(1, len(layers) // 16)])
            ax.set_xlabel("module")
            ax.set_ylabel("layer")
            ax.set_title(f"{run} @ {ckpt}" + (f" (step {step})" if step is not None else ""), fontsize=9)
            fig.colorbar(image, ax=ax, label="||W - W0|| / ||W0||")
            fig.tight_layout()
            path = out / f"heatmap_{_safe(run)}_{_safe(ckpt)}.png"
            fig.savefig(path, dpi=100)
            plt.close(fig)
            written.append(path)
    return written


def plot_trajectories(rows: Sequence[dict], out: Path) -> list[Path]:
    plt, written = _pyplot(), []
    trajs = trajectories(rows)
    for module in ordered(t.module for t in trajs):
        fig, ax = plt.subplots(figsize=(6, 4))
        for t in (t for t in trajs if t.module == module):
            ax.plot(t.x, t.mean, marker="o", markersize=3, label=t.run)
            ax.fill_between(t.x, t.low, t.high, alpha=0.2)
        if _positive_range(v for t in trajs if t.module == module for v in t.mean):
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("||W - W0|| / ||W0|| (mean over layers)")
        ax.set_title(f"{module}: change over training", fontsize=10)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out / f"trajectory_{_safe(module)}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def final_means(rows: Sequence[dict]) -> dict[str, dict[str, float]]:
    """run -> module -> mean rel_change over layers at the run's last checkpoint."""
    return {run: module_means(rows, run, checkpoints_of(rows, run)[-1][0]) for run in ordered(r["run"] for r in rows)}


def plot_comparison(rows: Sequence[dict], out: Path) -> Path:
    plt = _pyplot()
    finals = final_means(rows)
    modules = ordered(m for means in finals.values() for m in means)
    fig, ax = plt.subplots(figsize=(1.5 + 0.8 * len(modules), 4))
    width = 0.8 / max(1, len(finals))
    for j, (run, means) in enumerate(finals.items()):
        x = np.arange(len(modules)) + (j - (len(finals) - 1) / 2) * width
        ax.bar(x, [means.get(m, np.nan) for m in modules], width, label=run)
    span = _positive_range(v for means in finals.values() for v in means.values())
    if span:
        ax.set_yscale("log")
        ax.set_ylim(bottom=span[0] / 3)  # so the smallest bar is still seen
    ax.set_xticks(range(len(modules)), modules)
    ax.set_ylabel("||W - W0|| / ||W0|| (mean over layers)")
    ax.set_title("final checkpoint of each run", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "compare_runs.png", dpi=100)
    plt.close(fig)
    return out / "compare_runs.png"


def _fmt(x: float) -> str:
    return "nan" if not np.isfinite(x) else f"{x:.3g}"


def summary(rows: Sequence[dict], meta: dict) -> str:
    """Markdown: per run the final checkpoint's modules ranked, depth profile, ratios to the first run."""
    finals = final_means(rows)
    runs = list(finals)
    lines = [
        "# Weight-change summary",
        "",
        f"Base: `{meta['base']}`. Metric: ||W - W0||_F / ||W0||_F in fp32, "
        "mean over layers at each run's last checkpoint.",
        "",
    ]
    for run in runs:
        ckpts = checkpoints_of(rows, run)
        ckpt, step = ckpts[-1]
        ranked = sorted(finals[run].items(), key=lambda kv: -kv[1] if np.isfinite(kv[1]) else math.inf)
        lines += [
            f"## {run}",
            "",
            f"{len(ckpts)} checkpoint(s); last: `{ckpt}`" + (f" (step {step})" if step is not None else "") + ".",
            "",
        ]
        if ranked:
            top = ranked[0]
            lines.append(f"Moved most: **{top[0]}** ({_fmt(top[1])}); least: {ranked[-1][0]} ({_fmt(ranked[-1][1])}).")
            lines += ["", "| module | mean rel. change | max over layers | layer of max |", "|---|---|---|---|"]
            for module, mean in ranked:
                per_layer = [
                    (r["rel_change"], r["layer"])
                    for r in rows
                    if r["run"] == run and r["checkpoint"] == ckpt and r["module"] == module
                ]
                peak, at = max(per_layer, key=lambda t: t[0] if np.isfinite(t[0]) else -math.inf)
                lines.append(f"| {module} | {_fmt(mean)} | {_fmt(peak)} | {'-' if at is None else at} |")
        thirds = depth_thirds(rows, run, ckpt)
        if thirds:
            deepest = max(thirds, key=lambda k: thirds[k] if np.isfinite(thirds[k]) else -math.inf)
            lines += [
                "",
                "Depth (mean over modules): "
                + ", ".join(f"{k} {_fmt(v)}" for k, v in thirds.items())
                + f"; largest in the **{deepest}** layers.",
                "",
            ]
        lines.append("")
    if len(runs) > 1:
        ref = runs[0]
        modules = ordered(m for run in runs for m in finals[run])
        lines += [
            f"## Ratios to {ref}",
            "",
            "| module | " + " | ".join(runs[1:]) + " |",
            "|---|" + "---|" * (len(runs) - 1),
        ]
        for m in modules:
            cells = []
            for run in runs[1:]:
                a, b = finals[run].get(m, np.nan), finals[ref].get(m, np.nan)
                cells.append(_fmt(a / b) if b and np.isfinite(b) and b > 0 else "-")
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def write_report(rows: Sequence[dict], out: Path, meta: dict) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = write_tables(rows, out, meta)
    if rows:
        written += plot_heatmaps(rows, out) + plot_trajectories(rows, out) + [plot_comparison(rows, out)]
        (out / "summary.md").write_text(summary(rows, meta))
        written.append(out / "summary.md")
    return written
