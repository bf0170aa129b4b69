"""The report of `jaxrl compare-step`: relative differences per tensor, grouped by module and
layer, and the text a person reads. A relative difference is max|a - b| / max(max|a|, max|b|)."""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
from jaxrl.train.trl_step import StepRecord

from jaxrl.errors import JaxrlError

# The default limits, above the largest differences measured on a CPU with tiny OLMo-2 and Qwen2
# models over SFT and every GRPO loss type (docs/compare-step.md has the measurements). bfloat16
# matmuls round differently in XLA and in torch's autocast, so their gradients agree far less.
TOLERANCES = {
    "float32": {"loss": 1e-5, "grad": 1e-4, "update": 1e-4},
    "bfloat16": {"loss": 1e-2, "grad": 2e-1, "update": 1e-2},
}


def rel_diff(a, b, slack=0.0) -> float:
    """max(|a - b| - slack) / max(max|a|, max|b|), 0 when both are zero (scalars or arrays)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = max(np.abs(a).max(initial=0.0), np.abs(b).max(initial=0.0))
    return float(np.maximum(np.abs(a - b) - slack, 0.0).max(initial=0.0) / scale) if scale > 0 else 0.0


def last_place(params: np.ndarray, dtype: str) -> np.ndarray:
    """A bound on one unit in the last place of each parameter stored in `dtype`: the rounding an
    update suffers when it is added, whichever stack adds it."""
    bits = {"float32": 23, "bfloat16": 7, "float16": 10}[dtype]
    return np.abs(params.astype(np.float64)) * 2.0**-bits


def module_of(name: str) -> tuple[str, int | None]:
    """("self_attn.q_proj.weight", 3) for "model.layers.3.self_attn.q_proj.weight"."""
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", name)
    if m:
        return m.group(2), int(m.group(1))
    return name.removeprefix("model."), None


def compare_records(ours: StepRecord, theirs: StepRecord, crossed, param_dtype="float32") -> dict[str, Any]:
    """Loss, norm, lr and per-tensor relative differences grouped by module: `grad` (the
    gradients), `update` (jaxrl's optimizer on TRL's gradients beside TRL's update: the optimizer's
    translation) and `own_update` (each side's update of its own gradients). An update difference
    within one unit in the last place of the parameter counts as none. GRPO's loss at ratio 1 is a
    sum of advantages that cancels within groups: its difference is measured against the largest
    advantage where that is larger than the loss."""
    missing = set(ours.grads) ^ set(theirs.grads)
    if missing:
        raise JaxrlError(f"the two models' tensors differ: {sorted(missing)[:4]}")
    report: dict[str, Any] = {}
    floor = 0.0
    if ours.advantages is not None and theirs.advantages is not None:
        report["advantages_max_abs_diff"] = float(np.abs(ours.advantages - theirs.advantages).max(initial=0.0))
        floor = float(np.abs(theirs.advantages).max(initial=0.0))
    for key in ("loss", "grad_norm", "lr"):
        a, b = getattr(ours, key), getattr(theirs, key)
        scale = max(abs(a), abs(b), floor if key == "loss" else 0.0)
        report[key] = {"jaxrl": a, "trl": b, "rel_diff": abs(a - b) / scale if scale else 0.0}
    modules: dict[str, dict[str, list]] = {}
    slack = {n: last_place(p, param_dtype) for n, p in ours.params.items()}
    for kind, mine, other in (
        ("grad", ours.grads, theirs.grads),
        ("update", crossed, theirs.updates),
        ("own_update", ours.updates, theirs.updates),
    ):
        diffs = {n: rel_diff(mine[n], other[n], slack[n] if kind != "grad" else 0.0) for n in mine}
        worst = max(diffs, key=diffs.get)
        report[f"{kind}_max_rel_diff"] = diffs[worst]
        report[f"worst_{kind}"] = {"tensor": worst, "rel_diff": diffs[worst]}
        for name, d in diffs.items():
            module, layer = module_of(name)
            values = modules.setdefault(module, {"grad": [], "update": [], "own_update": []})[kind]
            if layer is None:
                values.append(d)
            else:
                values.extend([math.nan] * (layer + 1 - len(values)))
                values[layer] = d
    report["modules"] = modules
    return report


def format_report(r: dict[str, Any]) -> str:
    """The report as a person reads it: scalars, the worst tensors, then module x layer tables."""
    dtype = f"{r['dtype']['compute']} compute, {r['dtype']['params']} params"
    lines = [f"compare-step {r['method']}: jaxrl beside trl {r['trl_version']} on {r['model']} ({dtype})"]
    lines.append(f"{'':12}{'jaxrl':>16}{'trl':>16}{'rel diff':>12}")
    for key in ("loss", "grad_norm", "lr"):
        v = r[key]
        lines.append(f"{key:12}{v['jaxrl']:>16.8g}{v['trl']:>16.8g}{v['rel_diff']:>12.2e}")
    if "advantages_max_abs_diff" in r:
        lines.append(f"advantages: max abs diff {r['advantages_max_abs_diff']:.2e}")
    if r.get("pad_tokens"):
        lines.append(f"the pad id is a real token {r['pad_tokens']} times (its embedding row: HF's padding_idx rule)")
    names = {"grad": "gradients", "update": "updates (same gradients)", "own_update": "updates (own gradients)"}
    for kind, title in names.items():
        worst = r[f"worst_{kind}"]
        lines.append(f"{title}: max rel diff {worst['rel_diff']:.2e} ({worst['tensor']})")
    if r["lr"]["jaxrl"] == 0 and r["lr"]["trl"] == 0:
        lines.append("lr is 0 at this step (warmup): no update to compare; set optimizer.warmup_ratio=0 for one")
    layers = max((len(m["grad"]) for m in r["modules"].values()), default=0)
    lines.append(f"max rel diff per module, layers 0-{max(layers - 1, 0)} (grad; update of the same gradients):")
    width = max(len(m) for m in r["modules"])
    for module, values in r["modules"].items():
        for kind in ("grad", "update"):
            cells = " ".join(f"{v:.1e}" for v in values[kind])
            lines.append(f"  {module if kind == 'grad' else '':{width}}  {kind:6} {cells}")
    lines.append("translated: " + "; ".join(r["translated"]))
    lines += [f"not translated: {k}: {v}" for k, v in r["not_translated"].items()]
    lines += [f"set on TRL's side only: {k}={v}" for k, v in r["trl_only"].items()]
    lines += [f"note: {d}" for d in r["differences"]]
    verdict = "agree" if r["ok"] else "DIFFER (" + ", ".join(r["failed"]) + ")"
    tol = r["tolerance"]
    lines.append(f"{verdict}: tolerance loss {tol['loss']:g}, grads {tol['grad']:g}, updates {tol['update']:g}")
    return "\n".join(lines)
