"""The reproduction's report: `report.md`, `metrics.json` and `figures/`, from the stages' outputs.

Every number is read back from what the evaluation and the analysis wrote; the findings are the
study's claims, each checked against those numbers with the rule stated beside it.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np

NAMES = ("base", "GRPO", "SFT")
ROWS = (  # (row label, results file, task, metric)
    ("in-domain: word problems (pass@1)", "maths", "math500", "pass@1"),
    ("knowledge: invented facts, closed-book recall (pass@1)", "probes", "triviaqa", "pass@1"),
    ("instructions: prompt-level strict", "probes", "ifeval", "pass@1"),
    ("instructions: instruction-level strict", "probes", "ifeval", "inst_strict"),
)


def _report(out: Path, part: str, models: list[Path]) -> tuple[dict, dict[str, str]]:
    """One evaluation's results.json and {name: its label there} for base / GRPO / SFT."""
    report = json.loads((out / "eval" / part / "results.json").read_text())
    label_of = {m["path"]: m["label"] for m in report["models"]}
    return report, {name: label_of[str(path)] for name, path in zip(NAMES, models, strict=True)}


def _results(out: Path, part: str, models: list[Path]) -> dict[str, dict]:
    """{name: {task: metrics}} of one evaluation, with the models renamed base / GRPO / SFT."""
    report, labels = _report(out, part, models)
    by_name = {}
    for name, label in labels.items():
        by_name[name] = dict(report["results"][label])
        if report.get("kl") and label in report["kl"]:
            by_name[name]["kl_to_base"] = report["kl"][label]
    return by_name


def _guess_share(out: Path, models: list[Path]) -> dict[str, float]:
    """{name: share of the in-domain completions that are hasty guesses}, from the evaluation's samples."""
    from jaxrl.synthetic import HASTY

    shares = {}
    for name, label in _report(out, "maths", models)[1].items():
        samples = out / "eval" / "maths" / "samples" / label / "math500.jsonl"
        texts = [t for line in samples.read_text().splitlines() for t in json.loads(line)["completions"]]
        shares[name] = sum(HASTY in t for t in texts) / max(len(texts), 1)
    return shares


def _value(results: dict, task: str, metric: str) -> tuple[float, float | None]:
    r = results.get(task, {})
    v, e = r.get(metric), r.get(metric + "_stderr")
    return (float(v) if v is not None else math.nan), (float(e) if e is not None else None)


def _final_changes(out: Path) -> dict[str, dict[str, float]]:
    """{run: {module: mean over layers of rel_change}} at each run's last checkpoint."""
    rows = json.loads((out / "analysis" / "changes.json").read_text())["rows"]
    finals = {}
    for run in ("grpo", "sft"):
        mine = [r for r in rows if r["run"] == run]
        last = max(r["step"] for r in mine)
        per_module: dict[str, list[float]] = {}
        for r in mine:
            if r["step"] == last and r["rel_change"] is not None:
                per_module.setdefault(r["module"], []).append(r["rel_change"])
        finals[run] = {m: float(np.mean(v)) for m, v in per_module.items()}
    return finals


def findings(table: dict[str, dict[str, tuple]], kl: dict[str, float], changes: dict) -> list[dict]:
    """The study's claims, each with what the miniature measured and whether it agrees."""

    def v(row, name):
        return table[row][name][0]

    def gap(row, name):  # change from the base, with a one-standard-error allowance when known
        value, err = table[row][name]
        return value - v(row, "base"), (err or 0.0)

    indomain, knowledge, prompt_if = ROWS[0][0], ROWS[1][0], ROWS[2][0]
    grpo_gain, grpo_err = gap(indomain, "GRPO")
    sft_gain, sft_err = gap(indomain, "SFT")
    ratio = {m: changes["sft"][m] / changes["grpo"][m] for m in changes["grpo"] if changes["grpo"][m] > 0}
    mean_ratio = float(np.mean(list(ratio.values()))) if ratio else math.nan
    moved = all(v > 0 for run in changes.values() for v in run.values())
    top_grpo = sorted(changes["grpo"], key=changes["grpo"].get, reverse=True)[:2]
    top_sft = sorted(changes["sft"], key=changes["sft"].get, reverse=True)[:2]
    forget = {
        n: (v(knowledge, "base") - v(knowledge, n)) + (v(prompt_if, "base") - v(prompt_if, n)) for n in ("GRPO", "SFT")
    }
    return [
        {
            "claim": "GRPO improves in-domain accuracy (MATH-500 0.352 -> 0.402)",
            "measured": f"{v(indomain, 'base'):.3f} -> {v(indomain, 'GRPO'):.3f}",
            "rule": "GRPO - base > one standard error",
            "reproduced": bool(grpo_gain > grpo_err),
        },
        {
            "claim": "SFT improves in-domain accuracy too (MATH-500 0.352 -> 0.422 after 3 epochs)",
            "measured": f"{v(indomain, 'base'):.3f} -> {v(indomain, 'SFT'):.3f}",
            "rule": "SFT - base > one standard error",
            "reproduced": bool(sft_gain > sft_err),
        },
        {
            "claim": "SFT costs more out-of-domain ability than GRPO (IFEval 0.682 -> 0.466 GRPO, 0.333 SFT)",
            "measured": f"knowledge + instruction drop: GRPO {forget['GRPO']:.3f}, SFT {forget['SFT']:.3f}",
            "rule": "SFT's summed drop > GRPO's",
            "reproduced": bool(forget["SFT"] > forget["GRPO"]),
        },
        {
            "claim": "SFT moves far from the base in KL, GRPO barely (0.43 vs 4.7 at the end)",
            "measured": (
                f"KL(base || GRPO) {kl.get('GRPO', math.nan):.4g}, KL(base || SFT) {kl.get('SFT', math.nan):.4g}"
            ),
            "rule": "KL(SFT) > 5 x KL(GRPO)",
            "reproduced": bool(kl.get("SFT", 0) > 5 * kl.get("GRPO", math.inf)),
        },
        {
            "claim": "SFT changes the weights 35-50x more than GRPO",
            "measured": f"mean ratio over modules of relative change: {mean_ratio:.1f}x",
            "rule": "ratio > 5",
            "reproduced": bool(mean_ratio > 5),
        },
        {
            "claim": "both methods move q and k most",
            "measured": f"largest: GRPO {', '.join(top_grpo)}; SFT {', '.join(top_sft)}",
            "rule": "q and k are the top two in both runs (and both runs moved)",
            "reproduced": bool(set(top_grpo) == {"q", "k"} and set(top_sft) == {"q", "k"} and moved),
        },
    ]


def write_report(out: Path, preset, models: list[Path], runs: dict[str, Path], timings: dict) -> Path:
    results = {part: _results(out, part, models) for part in ("maths", "probes")}
    table = {label: {n: _value(results[part][n], task, metric) for n in NAMES} for label, part, task, metric in ROWS}
    kl = {n: results["maths"][n]["kl_to_base"]["kl"] for n in NAMES if "kl_to_base" in results["maths"][n]}
    changes = _final_changes(out)
    guesses = _guess_share(out, models)
    checks = findings(table, kl, changes)
    figures = out / "figures"
    figures.mkdir(exist_ok=True)
    for png in [*(out / "eval").glob("*/results.png"), *(out / "analysis").glob("*.png")]:
        name = f"eval_{png.parent.name}.png" if png.name == "results.png" else png.name
        shutil.copy2(png, figures / name)

    def cell(value, err):
        return "-" if not math.isfinite(value) else f"{value:.3f}" + (f" ± {err:.3f}" if err is not None else "")

    modules = list(changes["grpo"])
    lines = [
        f"# The study in miniature (preset `{preset.name}`)",
        "",
        "A 1M-parameter OLMo-2-shaped model, pre-trained on an invented world (facts, arithmetic word problems, "
        "instructions), trained on the same word problems with GRPO (its own samples, accuracy + format rewards) "
        "and with SFT (a teacher's solutions in another style), through the same code paths a TPU run takes.",
        "",
        "## Results",
        "",
        "| benchmark | " + " | ".join(NAMES) + " |",
        "|---|---|---|---|",
        *[f"| {label} | " + " | ".join(cell(*table[label][n]) for n in NAMES) + " |" for label, *_ in ROWS],
        "| KL(base ‖ model), per token, on the test solutions | "
        + " | ".join(f"{kl[n]:.4g}" if n in kl else "-" for n in NAMES)
        + " |",
        "| in-domain answers that are hasty guesses (share) | " + " | ".join(f"{guesses[n]:.3f}" for n in NAMES) + " |",
        "",
        "The base has two habits on word problems: working the sum out (usually right) and a hasty guess "
        "(usually wrong). The last row shows which one each model uses.",
        "",
        "## Parameter change at the last checkpoint (mean over layers of ‖W − W₀‖ / ‖W₀‖)",
        "",
        "| run | " + " | ".join(modules) + " |",
        "|---|" + "---|" * len(modules),
        *[f"| {run} | " + " | ".join(f"{changes[run][m]:.3g}" for m in modules) + " |" for run in ("grpo", "sft")],
        "| SFT / GRPO | "
        + " | ".join(f"{changes['sft'][m] / changes['grpo'][m]:.1f}x" if changes["grpo"][m] else "-" for m in modules)
        + " |",
        "",
        "## The study's findings here",
        "",
        "| finding (the study) | measured here | rule | reproduced |",
        "|---|---|---|---|",
        *[f"| {c['claim']} | {c['measured']} | {c['rule']} | {'yes' if c['reproduced'] else 'no'} |" for c in checks],
        "",
        "Figures in `figures/`: benchmark bars (`eval_*.png`), layer x module heatmaps per checkpoint, per-module "
        "trajectories, and the log-scale comparison of the runs (`compare_runs.png`). Details: `eval/*/results.md`, "
        "`analysis/summary.md`; checkpoints under `runs/`.",
        "",
        "Stage times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()) + ".",
    ]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    metrics = {
        "preset": preset.name,
        "models": {n: str(p) for n, p in zip(NAMES, models, strict=True)},
        "runs": {k: str(v) for k, v in runs.items()},
        "results": {
            label: {n: {"value": table[label][n][0], "stderr": table[label][n][1]} for n in NAMES} for label, *_ in ROWS
        },
        "kl_to_base": kl,
        "guess_share": guesses,
        "param_change": changes,
        "findings": checks,
        "timings_s": timings,
    }
    (out / "metrics.json").write_text(json.dumps(_finite(metrics), indent=2, allow_nan=False))
    return out / "report.md"


def _finite(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    return x
