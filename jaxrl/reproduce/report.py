"""The reproduction's report: `report.md`, `metrics.json` and `figures/`, from the stages' outputs.

Every number is read back from what the evaluation and the analysis wrote; the findings are the
study's claims, each checked against those numbers with the rule stated beside it (findings.py).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np

from jaxrl.analysis.grouping import checkpoints_of, depth_thirds, module_means
from jaxrl.reproduce.arms import Arm, frozen_check
from jaxrl.reproduce.diagnose import first_loss, module_scales, solution_anatomy
from jaxrl.reproduce.findings import (
    FROZEN_MLP,
    MODULES,
    QK_ONLY,
    ROWS,
    STUDY_ROLE,
    STUDY_SECTION4,
    Measured,
    findings,
)
from jaxrl.synthetic import HASTY

SECTION4 = ("base", "SFT", FROZEN_MLP, QK_ONLY)


def _results(out: Path, part: str, names: list[str]) -> dict[str, dict]:
    """{name: {task: metrics}} of one evaluation (the pipeline labels each model by its name)."""
    report = json.loads((out / "eval" / part / "results.json").read_text())
    by_name = {}
    for name in names:
        by_name[name] = dict(report["results"][name])
        if report.get("kl") and name in report["kl"]:
            by_name[name]["kl_to_base"] = report["kl"][name]
    return by_name


def _samples(out: Path, name: str) -> Path:
    return out / "eval" / "maths" / "samples" / name / "math500.jsonl"


def _guess_share(out: Path, names: list[str]) -> dict[str, float]:
    """{name: share of the in-domain completions that are hasty guesses}, from the evaluation's samples."""
    shares = {}
    for name in names:
        texts = [t for line in _samples(out, name).read_text().splitlines() for t in json.loads(line)["completions"]]
        shares[name] = sum(HASTY in t for t in texts) / max(len(texts), 1)
    return shares


def _value(results: dict, task: str, metric: str) -> tuple[float, float | None]:
    r = results.get(task, {})
    v, e = r.get(metric), r.get(metric + "_stderr")
    return (float(v) if v is not None else math.nan), (float(e) if e is not None else None)


def _rows(out: Path, sub: str = "") -> list[dict]:
    return json.loads((out / "analysis" / sub / "changes.json").read_text())["rows"]


def _weights(rows: list[dict], runs: list[str]) -> tuple[dict, dict, dict]:
    """Per run: module means at the last checkpoint, depth thirds there, and the share of the final
    mean change (over the study's modules) already reached at the first checkpoint."""
    changes, depth, early = {}, {}, {}
    for run in runs:
        ckpts = checkpoints_of(rows, run)
        first, last = ckpts[0][0], ckpts[-1][0]
        changes[run] = {m: v for m, v in module_means(rows, run, last).items() if m in MODULES}
        depth[run] = depth_thirds(rows, run, last)
        at_first = np.mean([v for m, v in module_means(rows, run, first).items() if m in MODULES])
        early[run] = float(at_first / np.mean(list(changes[run].values())))
    return changes, depth, early


def _cell(value, err=None) -> str:
    return "-" if not math.isfinite(value) else f"{value:.3f}" + (f" ± {err:.3f}" if err is not None else "")


def _study_cell(x) -> str:
    return "-" if x is None else x if isinstance(x, str) else f"{x:.3f}"


def plot_section4(table: dict, path: Path) -> Path:
    """Bars of base / SFT / frozen MLP / q/k only: the miniature's three measures, the study's numbers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (mine, study) = plt.subplots(1, 2, figsize=(11, 3.8))
    width = 0.8 / len(SECTION4)
    rows = [r for r, *_ in ROWS[:3]]
    benches = [b for b in STUDY_SECTION4]
    for i, name in enumerate(SECTION4):
        mine.bar(
            np.arange(len(rows)) + i * width,
            [table[r][name][0] for r in rows],
            width,
            yerr=[table[r][name][1] or 0.0 for r in rows],
            label=name,
        )
        values = [STUDY_SECTION4[b][name] for b in benches]
        study.bar(
            np.arange(len(benches)) + i * width,
            [v if isinstance(v, float) else 0.0 for v in values],
            width,
            label=name,
        )
        for j, v in enumerate(values):  # a value the study gave only in words (or not at all)
            if not isinstance(v, float):
                study.text(j + i * width, 0.01, "lower" if v else "n/a", rotation=90, ha="center", fontsize=7)
    mine.set_xticks(np.arange(len(rows)) + 0.4 - width / 2, ["in-domain", "knowledge", "instructions"])
    study.set_xticks(np.arange(len(benches)) + 0.4 - width / 2, benches, fontsize=8)
    mine.set_title("the miniature", fontsize=10)
    study.set_title("the study (OLMo-2-7B-Instruct)", fontsize=10)
    for ax in (mine, study):
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("score")
    mine.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(out: Path, preset, models: dict[str, Path], runs: dict[str, Path], arms, timings: dict) -> Path:
    names = list(models)
    results = {part: _results(out, part, names) for part in ("maths", "probes")}
    table = {label: {n: _value(results[part][n], task, metric) for n in names} for label, part, task, metric in ROWS}
    kl = {n: results["maths"][n]["kl_to_base"]["kl"] for n in names if "kl_to_base" in results["maths"][n]}
    rows = _rows(out)
    changes, depth, early = _weights(rows, list(runs))
    checks = findings(Measured(table, kl, changes, depth, early))
    anatomy = {n: solution_anatomy(_samples(out, n)) for n in names}
    guesses = _guess_share(out, names)
    scales = module_scales(rows, MODULES)
    losses = {run: first_loss(path) for run, path in runs.items()}
    all_rows = _rows(out, "all-tensors") if (out / "analysis" / "all-tensors").is_dir() else []
    num_layers = 1 + max(r["layer"] for r in rows if r["layer"] is not None)
    frozen = [frozen_check(all_rows, a, num_layers) for a in arms if a.freeze or a.train_only]

    figures = out / "figures"
    figures.mkdir(exist_ok=True)
    for png in [*(out / "eval").glob("*/results.png"), *(out / "analysis").glob("*.png")]:
        name = f"eval_{png.parent.name}.png" if png.name == "results.png" else png.name
        shutil.copy2(png, figures / name)
    if all(n in names for n in SECTION4):
        plot_section4(table, figures / "freezing.png")

    lines = [
        f"# The study in miniature (preset `{preset.name}`)",
        "",
        "A 1M-parameter OLMo-2-shaped model, pre-trained on an invented world (facts, arithmetic word problems, "
        "instructions), trained on the same word problems with GRPO (its own samples, accuracy + format rewards) "
        "and with SFT (a teacher's solutions in another style), and with SFT twice more under the study's two "
        "freezing settings, through the same code paths a TPU run takes.",
        "",
        "## Results",
        "",
        "| benchmark | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
        *[f"| {label} | " + " | ".join(_cell(*table[label][n]) for n in names) + " |" for label, *_ in ROWS],
        "| KL(base ‖ model), per token, on the test solutions | "
        + " | ".join(f"{kl[n]:.4g}" if n in kl else "-" for n in names)
        + " |",
        "| in-domain answers that are hasty guesses (share) | " + " | ".join(f"{guesses[n]:.3f}" for n in names) + " |",
        "",
        "The base has two habits on word problems: working the sum out and a hasty guess without working. "
        "The last row shows which one each model uses; the measurements at the end show how often each is right.",
        "",
        *_parameter_lines(changes),
        *_section4_lines(table, arms, frozen),
        "## The study's findings here",
        "",
        "| section | finding (the study) | measured here | rule | verdict |",
        "|---|---|---|---|---|",
        *[f"| {c['section']} | {c['claim']} | {c['measured']} | {c['rule']} | {c['verdict']} |" for c in checks],
        "",
        *_diagnosis_lines(names, anatomy, losses, scales, list(runs)),
        "Figures in `figures/`: benchmark bars (`eval_*.png`), the freezing arms beside the study (`freezing.png`), "
        "layer x module heatmaps per checkpoint, per-module trajectories, and the log-scale comparison of the runs "
        "(`compare_runs.png`). Details: `eval/*/results.md`, `analysis/summary.md`, every tensor of the freezing "
        "arms in `analysis/all-tensors/`; checkpoints under `runs/`.",
        "",
        "Stage times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()) + ".",
    ]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    metrics = {
        "preset": preset.name,
        "models": {n: str(p) for n, p in models.items()},
        "runs": {k: str(v) for k, v in runs.items()},
        "arms": {a.name: {"label": a.label, "freeze": list(a.freeze), "train_only": list(a.train_only)} for a in arms},
        "results": {
            label: {n: {"value": table[label][n][0], "stderr": table[label][n][1]} for n in names} for label, *_ in ROWS
        },
        "kl_to_base": kl,
        "guess_share": guesses,
        "solution_anatomy": anatomy,
        "first_step_loss": losses,
        "param_change": changes,
        "param_change_by_depth": depth,
        "early_share_of_change": early,
        "module_scales": scales,
        "frozen_check": frozen,
        "findings": checks,
        "timings_s": timings,
    }
    (out / "metrics.json").write_text(json.dumps(_finite(metrics), indent=2, allow_nan=False))
    return out / "report.md"


def _parameter_lines(changes: dict) -> list[str]:
    runs = list(changes)
    return [
        "## Parameter change at the last checkpoint (mean over layers of ‖W − W₀‖ / ‖W₀‖)",
        "",
        "| run | " + " | ".join(MODULES) + " |",
        "|---|" + "---|" * len(MODULES),
        *[
            f"| {run} | " + " | ".join(f"{changes[run][m]:.3g}" if m in changes[run] else "-" for m in MODULES) + " |"
            for run in runs
        ],  # fmt: skip
        "| SFT / GRPO | "
        + " | ".join(f"{changes['sft'][m] / changes['grpo'][m]:.1f}x" if changes["grpo"][m] else "-" for m in MODULES)
        + " |",
        "",
        "A frozen module's change is exactly 0 (in the frozen arms' rows, a 0 is a frozen tensor).",
        "",
    ]


def _study_line(bench: str) -> str:
    return f"| study: {bench} | " + " | ".join(_study_cell(STUDY_SECTION4[bench][n]) for n in SECTION4) + " |"


def _section4_lines(table: dict, arms, frozen: list[dict]) -> list[str]:
    """The study's section 4 (freezing) beside the miniature, and the check that freezing held."""
    if not all(n in table[ROWS[0][0]] for n in SECTION4):
        return []
    lines = [
        "## Freezing (the study's section 4)",
        "",
        "Does SFT's out-of-domain loss come from its changes to mid-layer MLPs? The study trained SFT twice more on "
        "the same data and settings; so does the miniature:",
        "",
        *[f"- `{a.label}`: {a.describe()}." for a in arms if isinstance(a, Arm) and (a.freeze or a.train_only)],
        "",
        "The mid-layer span is the study's fraction of depth: a layer is frozen when its centre, (i + 0.5) / L, "
        "lies in [19/32, 26/32), which gives the study's layers 19-25 at L = 32 and layer 2 (of 0-3) here.",
        "",
        "| measure | " + " | ".join(SECTION4) + " |",
        "|---|" + "---|" * len(SECTION4),
    ]
    for label, *_ in ROWS[:3]:
        lines.append(f"| miniature: {label} | " + " | ".join(_cell(*table[label][n]) for n in SECTION4) + " |")
        lines.append(_study_line(STUDY_ROLE[label]))
    lines += [_study_line(bench) for bench in ("GSM8K", "GPQA-Diamond", "MMLU-Pro")]
    lines += [
        "",
        '("lower": the study reports it lower without a number; "-": not reported.) '
        "Figure: `figures/freezing.png`. "
        "The study's own answer was inconclusive; its four readings are checked in the findings table below "
        '(section "freezing").',
        "",
        "The freezing's check, from the analysis of every tensor (embeddings, norms, lm_head included) at every "
        "checkpoint of the frozen arms:",
        "",
        "| arm | frozen (tensor, layer) cells | largest change of a frozen one | elements changed | trainable cells "
        "| smallest change of a trainable one | holds |",
        "|---|---|---|---|---|---|---|",
        *[
            f"| {c['arm']} | {c['frozen_cells']} | {c['max_frozen_rel_change']:.3g} | {c['frozen_elements_changed']} | "
            f"{c['trainable_cells']} | {c['min_trainable_rel_change']:.3g} | {'yes' if c['ok'] else 'NO'} |"
            for c in frozen
        ],
        "",
    ]
    return lines


def _diagnosis_lines(names, anatomy: dict, losses: dict, scales: dict, runs: list[str]) -> list[str]:
    """The measurements behind the findings that do not reproduce (see docs/reproduce.md)."""
    keys = (
        ("guess", "hasty guesses"),
        ("worked", "a worked sum"),
        ("copied", "the sum uses the question's numbers"),
        ("arithmetic", "the sum's arithmetic is right"),
        ("arithmetic_when_copied", "right arithmetic, of the sums on the question's numbers"),
        ("correct", "right answer"),
    )
    return [
        "## Measurements behind the differences",
        "",
        "What the in-domain completions do (shares of all completions):",
        "",
        "| | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
        *[f"| {text} | " + " | ".join(_cell(anatomy[n][k]) for n in names) + " |" for k, text in keys],
        "",
        "Loss per token at each run's first step, before any update (the base on that run's training text): "
        + ", ".join(f"{run} {loss:.3f}" for run, loss in losses.items())
        + ".",
        "",
        "Relative change = update RMS / weight RMS. Per module (means over layers), the base's weight RMS and each "
        "run's update RMS at its last checkpoint:",
        "",
        "| | " + " | ".join(MODULES) + " |",
        "|---|" + "---|" * len(MODULES),
        "| base weight RMS | " + " | ".join(f"{scales[m]['weight_rms']:.4f}" for m in MODULES) + " |",
        *[
            f"| {run} update RMS | " + " | ".join(f"{scales[m].get(run, math.nan):.2e}" for m in MODULES) + " |"
            for run in runs
        ],  # fmt: skip
        "",
        *_readings(anatomy, losses, scales),
    ]


def _readings(anatomy: dict, losses: dict, scales: dict) -> list[str]:
    """The two findings that differ from the study, read off the measurements above."""
    heaviest = sorted(MODULES, key=lambda m: scales[m]["weight_rms"], reverse=True)[:2]
    lines = [
        f"- Which modules move most: the base's weights are largest in {', '.join(heaviest)}. Split into its two "
        "factors, q's relative change against the module that moved most (ratios q / that module):"
    ]
    for run in ("grpo", "sft"):
        top = max(MODULES, key=lambda m: scales[m][run] / scales[m]["weight_rms"])
        update = scales["q"][run] / scales[top][run]
        weight = scales["q"]["weight_rms"] / scales[top]["weight_rms"]
        ratio = update / weight
        lines.append(f"  - {run}: {ratio:.2f}x {top}'s = update RMS {update:.2f}x / weight RMS {weight:.2f}x.")
    right = {n: anatomy[n]["arithmetic_when_copied"] for n in ("base", "SFT")}
    return [
        *lines,
        "  - QK-norm leaves the scale of q and k to the optimiser (the post-norms that of v, o, up and down), so the "
        "weight factor is a property of the base's pre-training, not of the method (docs/reproduce.md: the same "
        "base with q and k halved, the same function, puts q and k on top in both runs).",
        f"- SFT's in-domain result: the base's loss on the teacher's text at SFT's first step is "
        f"{losses.get('sft', math.nan):.2f} per token (GRPO's, on its own samples, "
        f"{losses.get('grpo', math.nan):.2f}); of the sums written on the question's own numbers, the base works out "
        f"{_cell(right['base'])} right and SFT {_cell(right['SFT'])} (docs/reproduce.md: the teacher and "
        "learning-rate study).",
        "",
    ]


def _finite(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    return x
