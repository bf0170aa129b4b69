"""The study's findings, each checked against the miniature's numbers by a stated rule.

A finding's verdict is "reproduced" (the rule holds), "not reproduced" (it does not) or
"differs" (the rule's premise does not hold here, so the finding cannot be read the study's way,
e.g. keeping an in-domain gain that the miniature's SFT never made). The study's numbers are
PAPER.md's (base / GRPO / SFT 3 epochs) and, for the freezing arms of its section 4, the ones it
reports (MATH-500, GSM8K, GPQA-Diamond, IFEval; MMLU and MMLU-Pro only as "lower").
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

INDOMAIN = "in-domain: word problems (pass@1)"
KNOWLEDGE = "knowledge: invented facts, closed-book recall (pass@1)"
PROMPT_IF = "instructions: prompt-level strict"
INST_IF = "instructions: instruction-level strict"
ROWS = (  # (row label, results file, task, metric)
    (INDOMAIN, "maths", "math500", "pass@1"),
    (KNOWLEDGE, "probes", "triviaqa", "pass@1"),
    (PROMPT_IF, "probes", "ifeval", "pass@1"),
    (INST_IF, "probes", "ifeval", "inst_strict"),
)
MODULES = ("q", "k", "v", "o", "gate", "up", "down")
FROZEN_MLP, QK_ONLY = "SFT-frozen-MLP", "SFT-qk-only"
# the study's numbers for the four models of its section 4 (None: not reported; text: reported only so)
STUDY_SECTION4 = {
    "MATH-500": {"base": 0.352, "SFT": 0.422, FROZEN_MLP: 0.418, QK_ONLY: 0.344},
    "GSM8K": {"base": 0.800, "SFT": 0.560, FROZEN_MLP: 0.638, QK_ONLY: None},
    "GPQA-Diamond": {"base": 0.273, "SFT": 0.248, FROZEN_MLP: 0.364, QK_ONLY: None},
    "MMLU": {"base": 0.618, "SFT": 0.579, FROZEN_MLP: None, QK_ONLY: "lower"},
    "MMLU-Pro": {"base": 0.176, "SFT": 0.183, FROZEN_MLP: "lower", QK_ONLY: "lower"},
    "IFEval prompt": {"base": 0.682, "SFT": 0.333, FROZEN_MLP: None, QK_ONLY: 0.259},
}
STUDY_ROLE = {INDOMAIN: "MATH-500", KNOWLEDGE: "MMLU", PROMPT_IF: "IFEval prompt"}  # whose role each row plays


@dataclasses.dataclass(frozen=True)
class Measured:
    """What the findings read: table[row][model] = (value, stderr or None); kl[model];
    changes[run][module] (last checkpoint, mean over layers); depth[run] = {early, middle, late};
    early_share[run] = mean change at the first checkpoint / at the last."""

    table: dict
    kl: dict
    changes: dict
    depth: dict
    early_share: dict


def _verdict(holds: bool) -> str:
    return "reproduced" if holds else "not reproduced"


@dataclasses.dataclass(frozen=True)
class _Scores:
    """Reads the results table: a value, the standard error of a difference, an out-of-domain drop."""

    table: dict

    def v(self, row: str, name: str) -> float:
        return self.table[row][name][0]

    def se(self, row: str, *names: str) -> float:
        """Standard error of a difference of independent means (0 where a model has none)."""
        return math.sqrt(sum((self.table[row][n][1] or 0.0) ** 2 for n in names))

    def drop(self, name: str) -> float:
        """Knowledge + prompt-level instruction loss against the base."""
        v = self.v
        return (v(KNOWLEDGE, "base") - v(KNOWLEDGE, name)) + (v(PROMPT_IF, "base") - v(PROMPT_IF, name))


def findings(m: Measured) -> list[dict]:
    """Every finding of the study with the miniature's measurement, the rule and the verdict."""
    scores = _Scores(m.table)
    v, se, drop = scores.v, scores.se, scores.drop
    grpo, sft = m.changes["grpo"], m.changes["sft"]
    ratio = float(np.mean([sft[k] / grpo[k] for k in MODULES if grpo.get(k, 0) > 0] or [math.nan]))
    moved = all(x > 0 for run in ("grpo", "sft") for x in m.changes[run].values())
    top = {run: sorted(MODULES, key=m.changes[run].get, reverse=True)[:2] for run in ("grpo", "sft")}
    spread = max(grpo[k] for k in MODULES) / max(min(grpo[k] for k in MODULES), 1e-30)
    d = m.depth["sft"]
    sft_gain = v(INDOMAIN, "SFT") - v(INDOMAIN, "base")
    sft_gained = sft_gain > se(INDOMAIN, "SFT")
    out = [
        (
            "results",
            "GRPO improves in-domain accuracy (MATH-500 0.352 -> 0.402)",
            f"{v(INDOMAIN, 'base'):.3f} -> {v(INDOMAIN, 'GRPO'):.3f}",
            "GRPO - base > one standard error",
            _verdict(v(INDOMAIN, "GRPO") - v(INDOMAIN, "base") > se(INDOMAIN, "GRPO")),
        ),
        (
            "results",
            "SFT improves in-domain accuracy too (MATH-500 0.352 -> 0.422 after 3 epochs)",
            f"{v(INDOMAIN, 'base'):.3f} -> {v(INDOMAIN, 'SFT'):.3f}",
            "SFT - base > one standard error",
            _verdict(sft_gained),
        ),
        (
            "results",
            "GRPO costs some instruction following (IFEval prompt 0.682 -> 0.466)",
            f"{v(PROMPT_IF, 'base'):.3f} -> {v(PROMPT_IF, 'GRPO'):.3f}",
            "base - GRPO > one standard error (prompt-level)",
            _verdict(v(PROMPT_IF, "base") - v(PROMPT_IF, "GRPO") > se(PROMPT_IF, "GRPO")),
        ),
        (
            "results",
            "SFT costs more out-of-domain ability than GRPO (IFEval 0.682 -> 0.466 GRPO, 0.333 SFT)",
            f"knowledge + instruction drop: GRPO {drop('GRPO'):.3f}, SFT {drop('SFT'):.3f}",
            "SFT's summed drop > GRPO's",
            _verdict(drop("SFT") > drop("GRPO")),
        ),
        (
            "KL",
            "SFT moves far from the base in KL, GRPO barely (0.43 vs 4.7 at the end)",
            f"KL(base || GRPO) {m.kl.get('GRPO', math.nan):.4g}, KL(base || SFT) {m.kl.get('SFT', math.nan):.4g}",
            "KL(SFT) > 5 x KL(GRPO)",
            _verdict(m.kl.get("SFT", 0) > 5 * m.kl.get("GRPO", math.inf)),
        ),
        (
            "KL",
            "SFT jumps away early and plateaus, GRPO drifts slowly (KL 3.9 of 4.7 at SFT's 5%; "
            "GRPO 0.0007 of 0.43 at its 5%)",
            f"share of the final weight change reached at the first checkpoint: GRPO "
            f"{m.early_share['grpo']:.2f}, SFT {m.early_share['sft']:.2f} (weights, not KL: the miniature "
            "evaluates KL on the final models only)",
            "SFT's share > GRPO's",
            _verdict(m.early_share["sft"] > m.early_share["grpo"]),
        ),
        (
            "parameters",
            "SFT changes the weights 35-50x more than GRPO",
            f"mean ratio over modules of relative change: {ratio:.1f}x",
            "ratio > 5",
            _verdict(ratio > 5),
        ),
        (
            "parameters",
            "GRPO changes every module by about the same (1.1e-3 to 1.3e-3)",
            f"GRPO largest / smallest module: {spread:.2f}",
            "largest / smallest < 1.5",
            _verdict(spread < 1.5),
        ),
        (
            "parameters",
            "both methods move q and k most",
            f"largest: GRPO {', '.join(top['grpo'])}; SFT {', '.join(top['sft'])}",
            "q and k are the top two in both runs (and both runs moved)",
            _verdict(set(top["grpo"]) == {"q", "k"} and set(top["sft"]) == {"q", "k"} and moved),
        ),
        (
            "parameters",
            "SFT's changes are larger in middle and late layers",
            f"SFT mean change by depth: early {d.get('early', math.nan):.3g}, middle {d.get('middle', math.nan):.3g}, "
            f"late {d.get('late', math.nan):.3g}",
            "middle and late > early",
            _verdict(d.get("middle", 0) > d.get("early", math.inf) and d.get("late", 0) > d.get("early", math.inf)),
        ),
    ]
    out += section4(scores, sft_gained)
    keys = ("section", "claim", "measured", "rule", "verdict")
    return [dict(zip(keys, f, strict=True)) for f in out]


def section4(scores: _Scores, sft_gained: bool) -> list[tuple]:
    """The study's reading of its freezing experiments (its section 4), rule by rule."""
    if FROZEN_MLP not in scores.table[INDOMAIN] or QK_ONLY not in scores.table[INDOMAIN]:
        return []
    v, se, drop = scores.v, scores.se, scores.drop
    keep = v(INDOMAIN, FROZEN_MLP) >= v(INDOMAIN, "SFT") - se(INDOMAIN, FROZEN_MLP, "SFT")
    return [
        (
            "freezing",
            "freezing the mid-layer MLPs keeps SFT's in-domain gain (MATH-500 0.418 vs 0.422)",
            f"SFT {v(INDOMAIN, 'SFT'):.3f}, frozen MLP {v(INDOMAIN, FROZEN_MLP):.3f} (base {v(INDOMAIN, 'base'):.3f})",
            "frozen >= SFT - one standard error of the difference, given SFT gained (else: differs)",
            _verdict(keep) if sft_gained else "differs",
        ),
        (
            "freezing",
            "freezing the mid-layer MLPs recovers part of SFT's out-of-domain loss "
            "(GSM8K 0.560 -> 0.638, GPQA-Diamond 0.248 -> 0.364; MMLU-Pro lower)",
            f"knowledge + instruction drop: SFT {drop('SFT'):.3f}, frozen MLP {drop(FROZEN_MLP):.3f}",
            "frozen's summed drop < SFT's",
            _verdict(drop(FROZEN_MLP) < drop("SFT")),
        ),
        (
            "freezing",
            "training only q and k (and lm_head) barely moves in-domain accuracy (MATH-500 0.352 -> 0.344)",
            f"base {v(INDOMAIN, 'base'):.3f}, q/k only {v(INDOMAIN, QK_ONLY):.3f}",
            "|q/k only - base| <= two standard errors of the difference",
            _verdict(abs(v(INDOMAIN, QK_ONLY) - v(INDOMAIN, "base")) <= 2 * se(INDOMAIN, QK_ONLY, "base")),
        ),
        (
            "freezing",
            "training only q and k hurts out-of-domain ability most (IFEval prompt 0.259 vs SFT 0.333; "
            "MMLU, MMLU-Pro lower)",
            f"knowledge + instruction drop: SFT {drop('SFT'):.3f}, q/k only {drop(QK_ONLY):.3f}",
            "q/k only's summed drop >= SFT's",
            _verdict(drop(QK_ONLY) >= drop("SFT")),
        ),
    ]
