"""Measurements that explain the miniature's results where they differ from the study's.

- `solution_anatomy`: what each model's in-domain completions do: a hasty guess, a worked sum that
  copies the question's own numbers, whether that sum's arithmetic is right, the answer's verdict.
- `first_loss`: a run's loss at its first step, before any update: the base's loss per token on
  the training data (for SFT: how foreign the teacher's text is to the base).
- `module_scales`: per module, the base weights' RMS and each run's update RMS, since the relative
  change the study reports is their ratio (so a module can move "most" by small weights or big updates).
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from pathlib import Path

import numpy as np

from jaxrl.synthetic import HASTY

_SUM = re.compile(r"(\d+) ([-+*]) (\d+) = (\d+)")
_QUESTION = re.compile(r"<\|user\|>\n?(.*?)\n<\|assistant\|>", re.S)
_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def anatomy_of(question: str, completion: str) -> dict[str, bool]:
    """guess: a hasty guess; worked: a sum `a op b = c` is written; copied: its operands are the
    question's two numbers in order; arithmetic: c = a op b as written."""
    found = _SUM.search(completion)
    numbers = [int(x) for x in re.findall(r"\d+", question)]
    if not found:
        return {"guess": HASTY in completion, "worked": False, "copied": False, "arithmetic": False}
    a, op, b, c = int(found[1]), found[2], int(found[3]), int(found[4])
    copied, right = numbers == [a, b], _OPS[op](a, b) == c
    return {"guess": HASTY in completion, "worked": True, "copied": copied, "arithmetic": right}


def solution_anatomy(samples: Path) -> dict[str, float]:
    """Shares of the completions in one evaluation samples file (math500.jsonl) that are guesses,
    worked sums, sums on the question's numbers, sums with right arithmetic, and right answers."""
    counts, total = defaultdict(int), 0
    for line in samples.read_text().splitlines():
        record = json.loads(line)
        found = _QUESTION.search(record["prompt"])
        question = found[1] if found else ""
        for text, right in zip(record["completions"], record["correct"], strict=True):
            total += 1
            parts = anatomy_of(question, text)
            for key, hit in parts.items():
                counts[key] += hit
            counts["right_when_copied"] += parts["copied"] and parts["arithmetic"]
            counts["correct"] += bool(right)
    shares = {k: counts[k] / max(total, 1) for k in ("guess", "worked", "copied", "arithmetic", "correct")}
    # of the sums written on the question's own numbers, the share worked out right
    shares["arithmetic_when_copied"] = counts["right_when_copied"] / counts["copied"] if counts["copied"] else math.nan
    return shares


def first_loss(run: Path) -> float:
    """The loss logged at a run's first step (before its first update: warmup starts at lr 0)."""
    with open(run / "metrics.jsonl") as f:
        for line in f:
            record = json.loads(line)
            if record.get("step") == 1 and "loss" in record:
                return float(record["loss"])
    return math.nan


def module_scales(rows: list[dict], modules) -> dict[str, dict[str, float]]:
    """{module: {"weight_rms": base RMS, <run>: update RMS at the run's last checkpoint}}, means over layers.

    rel_change = update RMS / weight RMS per tensor, so this splits the study's metric into its two parts.
    """
    last = {run: max(r["step"] for r in rows if r["run"] == run) for run in {r["run"] for r in rows}}
    out: dict[str, dict[str, list[float]]] = {m: defaultdict(list) for m in modules}
    for r in rows:
        if r["module"] not in out or r["step"] != last[r["run"]] or not r["size"]:
            continue
        cell = out[r["module"]]
        cell[r["run"]].append(r["delta_norm"] / math.sqrt(r["size"]))
        if r["run"] == next(iter(sorted(last))):  # the base is the same for every run: read it once
            cell["weight_rms"].append(r["base_norm"] / math.sqrt(r["size"]))
    return {m: {k: float(np.mean(v)) for k, v in cells.items()} for m, cells in out.items()}
