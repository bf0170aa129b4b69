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


def table_rows(report: dict) -> list[tuple[str, list[str]]]:
    """(row label, one cell per model): each task's primary metric +- its standard error, IFEval's
    instruction-level accuracy, pass@k / maj@k at the largest k, and the KL to the base."""
    labels = [m["label"] for m in report["models"]]
    rows = []
    for task, info in report["tasks"].items():
        primary = info["primary"]
        per_model = [report["results"][m].get(task, {}) for m in labels]

        def cell(r, key, err=None):
            v = r.get(key)
            if v is None or (isinstance(v, float) and math.isnan(v)):
                return "-"
            e = r.get(err) if err else None
            return f"{v:.3f} ± {e:.3f}" if e is not None and r.get("num_samples", 0) * r.get("num_problems", 0) > 1 \
                else f"{v:.3f}"  # fmt: skip

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
        lines.append(f"- {task}: {info['num_problems']} problems from {info['source']}"
                     + (f"; skipped {skipped}" if skipped else ""))  # fmt: skip
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
            values.append(np.nan if v is None else v)
            errors.append(0.0 if e is None or (isinstance(e, float) and math.isnan(e)) else e)
        ax.bar(x + (i - (len(labels) - 1) / 2) * width, values, width, yerr=errors, capsize=2, label=label)
    ax.set_xticks(x, tasks, rotation=20)
    ax.set_ylabel("score (primary metric)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize="small", ncols=max(1, len(labels) // 8))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_reports(report: dict, out: Path) -> None:
    out = Path(out)
    (out / "results.json").write_text(json.dumps(_clean(report), indent=2, allow_nan=False))
    (out / "results.md").write_text(markdown(report))
    bar_chart(report, out / "results.png")
