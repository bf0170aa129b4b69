"""The reports of an evaluation: results.json, results.md (a row per task, a column per model, as
in the study's table) and results.png (grouped bars with standard-error whiskers)."""

from __future__ import annotations

import json
import math
from pathlib import Path


def _clean(x):
    """NaN and infinities become null, so results.json is strict JSON."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    return x


def _number(x) -> float | None:
    return float(x) if isinstance(x, int | float) and math.isfinite(x) else None


def table_rows(report: dict) -> list[tuple[str, list[str]]]:
    """(row label, one cell per model): each task's primary metric +- its standard error, IFEval's
    instruction-level accuracy, pass@k / maj@k at the largest k, and the KL to the base."""
    labels = [m["label"] for m in report["models"]]
    rows = []
    for task, info in report["tasks"].items():
        primary = info["primary"]
        per_model = [report["results"][m].get(task, {}) for m in labels]

        def cell(r, key, err=None):
            v, e = _number(r.get(key)), _number(r.get(err)) if err else None
            if v is None:
                return "-"
            return f"{v:.3f} ± {e:.3f}" if e is not None else f"{v:.3f}"

        rows.append((f"{task} ({primary})", [cell(r, primary, primary + "_stderr") for r in per_model]))
        if any("inst_strict" in r for r in per_model):
            rows.append((f"{task} (inst_strict)", [cell(r, "inst_strict") for r in per_model]))
        n = max((r.get("num_samples", 1) for r in per_model), default=1)
        for key in [k for k in (f"pass@{n}", f"maj@{n}") if n > 1 and any(k in r for r in per_model)]:
            rows.append((f"{task} ({key})", [cell(r, key) for r in per_model]))
    if report.get("kl"):
        kl = report["kl"]
        rows.append(("KL(base ‖ model)", [f"{kl[m]['kl']:.4g}" if m in kl else "-" for m in labels]))
    return rows


def markdown(report: dict) -> str:
    labels = [m["label"] for m in report["models"]]
    c = report["config"]
    lines = [
        "| benchmark | " + " | ".join(labels) + " |",
        "|---|" + "---|" * len(labels),
        *[f"| {name} | " + " | ".join(cells) + " |" for name, cells in table_rows(report)],
        "",
        f"Decoding: temperature {c['temperature']}, top_p {c['top_p']}, up to {c['max_new_tokens']} new tokens, "
        f"{c['num_samples']} sample(s) per problem, seed {c['seed']}, chat template {c['chat_template']}, "
        f"system prompt {c['system_prompt'] if c['system_prompt'] in (None, 'study', 'none') else 'custom'}. "
        "Cells: mean ± standard error over problems.",
    ]
    for task, info in report["tasks"].items():
        skipped = ", ".join(f"{why}: {n}" for why, n in info["skipped"].items())
        lines.append(
            f"- {task}: {info['num_problems']} problems from {info['source']}"
            + (f"; skipped {skipped}" if skipped else "")
        )
    if report.get("kl_base"):
        lines.append(f"- KL: mean per token of KL(base ‖ model), teacher-forced, base {report['kl_base']}")
    return "\n".join(lines) + "\n"


def bar_chart(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    labels = [m["label"] for m in report["models"]]
    tasks = list(report["tasks"])
    width = 0.8 / max(len(labels), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(tasks) * max(1, len(labels) / 3)), 4))
    x = np.arange(len(tasks))
    for i, label in enumerate(labels):
        values, errors = [], []
        for t in tasks:
            r, primary = report["results"][label].get(t, {}), report["tasks"][t]["primary"]
            v, e = r.get(primary), r.get(primary + "_stderr")
            values.append(np.nan if _number(v) is None else v)
            errors.append(_number(e) or 0.0)
        ax.bar(x + (i - (len(labels) - 1) / 2) * width, values, width, yerr=errors, capsize=2, label=label)
    ax.set_xticks(x, tasks, rotation=20)
    ax.set_ylabel("score (primary metric)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize="small", ncols=max(1, len(labels) // 8))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_steps(report: dict) -> dict[str, list[tuple[int, str]]]:
    """Runs with at least two checkpoints evaluated: run name -> [(step, model label)] by step."""
    runs: dict[str, list[tuple[int, str]]] = {}
    for m in report["models"]:
        run, sep, step = m["label"].rpartition("@")
        if sep and step.isdigit():
            runs.setdefault(run, []).append((int(step), m["label"]))
    return {run: sorted(steps) for run, steps in runs.items() if len(steps) > 1}


def trajectories(report: dict, path: Path) -> bool:
    """Each task's primary metric (and the KL to the base) against the training step, a line per
    run; written only when some run has two or more checkpoints. Returns whether it was written."""
    runs = run_steps(report)
    if not runs:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(t, report["tasks"][t]["primary"]) for t in report["tasks"]] + (
        [("kl", "kl")] if report.get("kl") else []
    )
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3), squeeze=False)
    for ax, (task, key) in zip(axes[0], panels, strict=True):
        for run, steps in runs.items():
            source = report["kl"] if task == "kl" else {m: report["results"][m].get(task, {}) for _, m in steps}
            ys = [source.get(label, {}).get(key) for _, label in steps]
            ax.plot([s for s, _ in steps], [float("nan") if y is None else y for y in ys], marker="o", label=run)
        ax.set_title("KL(base ‖ model)" if task == "kl" else f"{task} ({key})", fontsize="small")
        ax.set_xlabel("step")
    axes[0][0].legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write_reports(report: dict, out: Path) -> None:
    """results.json, results.md, results.png, and steps.png when a run has several checkpoints."""
    out = Path(out)
    (out / "results.json").write_text(json.dumps(_clean(report), indent=2, allow_nan=False))
    (out / "results.md").write_text(markdown(report))
    bar_chart(report, out / "results.png")
    trajectories(report, out / "steps.png")
