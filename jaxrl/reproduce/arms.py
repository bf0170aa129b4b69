"""The SFT arms of the miniature: plain SFT and the study's two freezing variants, and their check.

The study (section 4) trained SFT twice more: with the MLPs (gate/up/down) of layers 19-25 of 32
frozen, and with only q and k trainable (its code left the untied lm_head trainable too). The
miniature freezes the layers that sit at the same fraction of its depth (`mid_layers`), and the
analysis of each frozen arm is the check that the freezing held: every frozen tensor unchanged,
bit for bit, every trainable one moved (`frozen_check`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxrl.errors import JaxrlError

STUDY_DEPTH, STUDY_FROZEN_LAYERS = 32, (19, 25)  # the study froze the MLPs of layers 19..25 of 32


def mid_layers(num_layers: int) -> tuple[int, int]:
    """(first, last) layer, inclusive: those whose centre (i + 0.5) / L lies in the span of depth the
    study froze, [19/32, 26/32). 32 layers -> (19, 25); 16 -> (9, 12); 4 -> (2, 2)."""
    low, high = STUDY_FROZEN_LAYERS[0] / STUDY_DEPTH, (STUDY_FROZEN_LAYERS[1] + 1) / STUDY_DEPTH
    inside = [i for i in range(num_layers) if low <= (i + 0.5) / num_layers < high]
    if not inside:
        raise JaxrlError(f"a {num_layers}-layer model has no layer in the study's frozen span; use 2 layers or more")
    return inside[0], inside[-1]


@dataclasses.dataclass(frozen=True)
class Arm:
    """One SFT run: its run directory / stage name, its label in tables, its freeze settings."""

    name: str
    label: str
    freeze: tuple[str, ...] = ()
    train_only: tuple[str, ...] = ()

    def overrides(self) -> list[str]:
        """The `freeze.*` recipe overrides of this arm (none for plain SFT)."""
        out = []
        if self.freeze:
            out.append(f"freeze.freeze=[{','.join(self.freeze)}]")
        if self.train_only:
            out.append(f"freeze.train_only=[{','.join(self.train_only)}]")
        return out

    def describe(self) -> str:
        if self.train_only:
            return "trains only " + ", ".join(self.train_only)
        if self.freeze:
            return "freezes " + ", ".join(self.freeze)
        return "trains every parameter"


def sft_arms(num_layers: int) -> tuple[Arm, ...]:
    """Plain SFT, SFT with the mid-layer MLPs frozen, SFT with only q/k (and lm_head) trainable."""
    first, last = mid_layers(num_layers)
    return (
        Arm("sft", "SFT"),
        Arm("sft_frozen_mlp", "SFT-frozen-MLP", freeze=(f"mlp.{{gate,up,down}}@{first}-{last}",)),
        Arm("sft_only_qk", "SFT-qk-only", train_only=("attn.{q,k}", "lm_head")),
    )


def _expected(arm: Arm, tensors: list[str], num_layers: int) -> dict[str, np.ndarray]:
    """{tensor name: bool [L] or [] trainable}, by the training code's own freeze plan."""
    from jaxrl.train.config import FreezeConfig
    from jaxrl.train.freeze import FreezePlan

    tree: dict = {}
    for name in tensors:
        *parents, leaf = name.split(".")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = np.zeros((num_layers, 1) if parents[:1] == ["layers"] else (1,), np.float32)
    plan = FreezePlan.build(FreezeConfig(arm.freeze, arm.train_only), tree, num_layers)
    return {".".join(path): trainable for path, trainable in plan.trainable.items()}


def frozen_check(rows: list[dict], arm: Arm, num_layers: int) -> dict:
    """Checks an arm's analysis rows (every checkpoint, every tensor) against its freeze settings.

    Returns counts of frozen and trainable (tensor, layer) cells over all checkpoints, the largest
    relative change and changed-element count among the frozen ones (both must be exactly 0), the
    smallest relative change among the trainable ones at the last checkpoint (must be > 0), and
    `ok`, whether all of that holds.
    """
    mine = [r for r in rows if r["run"] == arm.name]
    if not mine:
        raise JaxrlError(f"the analysis has no rows of run {arm.name!r}; run the analysis stage again")
    expected = _expected(arm, sorted({r["tensor"] for r in mine}), num_layers)
    last = max(r["step"] for r in mine)
    frozen, trainable, frozen_names = [], [], set()
    for r in mine:
        flags = expected[r["tensor"]]
        if bool(flags if r["layer"] is None else flags[r["layer"]]):
            if r["step"] == last:
                trainable.append(r)
        else:
            frozen.append(r)
            frozen_names.add(r["tensor"] + ("" if r["layer"] is None else f"@{r['layer']}"))
    max_frozen = max((r["rel_change"] for r in frozen), default=0.0)
    changed = sum(r["num_changed"] for r in frozen)
    min_trainable = min((r["rel_change"] for r in trainable), default=float("nan"))
    return {
        "arm": arm.name,
        "frozen_cells": len(frozen_names),
        "frozen_rows": len(frozen),
        "trainable_cells": len(trainable),
        "max_frozen_rel_change": max_frozen,
        "frozen_elements_changed": changed,
        "min_trainable_rel_change": min_trainable,
        "ok": bool(frozen and trainable and max_frozen == 0.0 and changed == 0 and min_trainable > 0),
    }
