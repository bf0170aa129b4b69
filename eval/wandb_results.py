"""An evaluation's results in W&B (`jaxrl eval --report-to wandb`), beside the training runs.

One W&B run per evaluation (job type `eval`, named after the output directory, in the project
$WANDB_PROJECT or "jaxrl", the same default as training runs), holding two tables and the
evaluation's settings as its config:

    eval/table     the study's table: a row per benchmark, a column per model (results.md's cells)
    eval/results   one row per model, task and metric, with its value (results.json's numbers)
"""

from __future__ import annotations

import math
from pathlib import Path

import jax
from jaxrl.eval.report import table_rows

from jaxrl.errors import JaxrlError
from jaxrl.tracking import WandbRun, WandbSettings, check_report_to


def wants_wandb(report_to: str) -> bool:
    """Whether `--report-to` (a comma list: wandb or none) asks for W&B; a one-line error for
    anything else, or for wandb when it is not installed."""
    names = check_report_to([n.strip() for n in report_to.split(",") if n.strip()], "--report-to")
    if "tensorboard" in names:
        raise JaxrlError("--report-to: an evaluation logs a results table, which TensorBoard has not; use wandb")
    return "wandb" in names


def result_rows(report: dict) -> list[list]:
    """[model, task, metric, value] for every finite number of results.json (the KL as task "kl")."""
    rows = []
    for model, tasks in report["results"].items():
        for task, metrics in tasks.items():
            for metric, value in metrics.items():
                if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
                    rows.append([model, task, metric, float(value)])
    for model, kl in (report.get("kl") or {}).items():
        rows.extend([model, "kl", metric, float(v)] for metric, v in kl.items() if isinstance(v, int | float))
    return rows


def log_results(report: dict, out: str | Path) -> str | None:
    """Logs the report of `jaxrl eval` to a new W&B run (files under OUT/wandb); returns its id
    (None on processes other than 0, which log nothing)."""
    if jax.process_index() != 0:
        return None
    run = WandbRun.open(out, WandbSettings(job_type="eval"), config=report["config"], continue_run=False)
    try:
        labels = [m["label"] for m in report["models"]]
        run.table("eval/table", ["benchmark", *labels], [[name, *cells] for name, cells in table_rows(report)])
        run.table("eval/results", ["model", "task", "metric", "value"], result_rows(report))
    finally:
        run.finish()
    return run.id
