"""`jaxrl reproduce --preset fast` end to end: the report's files exist and its numbers are well-formed,
and the analysis of the freezing arms shows their frozen tensors unchanged, bit for bit.

What the numbers say is the miniature's business (docs/reproduce-example); here they must only be
present, finite and in range, and a second call must resume from the markers without redoing work.
The cheap tests below check the pieces the report stands on (the mid-layer rule, the freezing
check, the anatomy of a completion, the verdicts).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from jaxrl.errors import JaxrlError
from jaxrl.reproduce.arms import Arm, frozen_check, mid_layers, sft_arms
from jaxrl.reproduce.base import BASE_SHAPE, BaseSpec, shipped_base
from jaxrl.reproduce.diagnose import anatomy_of
from jaxrl.reproduce.findings import FROZEN_MLP, INDOMAIN, KNOWLEDGE, PROMPT_IF, QK_ONLY, ROWS, Measured, findings

NAMES = {"base", "GRPO", "SFT", FROZEN_MLP, QK_ONLY}
STUDY_MODULES = {"q", "k", "v", "o", "gate", "up", "down"}


@pytest.mark.slow
def test_fast_preset_writes_a_well_formed_report(tmp_path):
    assert shipped_base(BaseSpec()) is not None, "the package must ship the base model (jaxrl reproduce --rebuild-base)"
    out = tmp_path / "report"
    command = [sys.executable, "-m", "jaxrl.cli", "reproduce", "--preset", "fast", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["preset"] == "fast" and set(metrics["models"]) == NAMES
    for row in metrics["results"].values():
        for cell in row.values():
            assert 0.0 <= cell["value"] <= 1.0
            assert cell["stderr"] is None or 0.0 <= cell["stderr"] <= 0.5
    assert metrics["kl_to_base"]["base"] == pytest.approx(0.0, abs=1e-6)
    assert all(math.isfinite(v) and v >= 0 for v in metrics["kl_to_base"].values())
    assert set(metrics["guess_share"]) == NAMES
    assert all(0.0 <= v <= 1.0 for v in metrics["guess_share"].values())
    for run in ("grpo", "sft", "sft_frozen_mlp", "sft_only_qk"):
        changes = metrics["param_change"][run]
        assert set(changes) == STUDY_MODULES
        assert all(math.isfinite(v) and v >= 0 for v in changes.values())
    verdicts = [f["verdict"] for f in metrics["findings"]]
    assert len(verdicts) >= 8 and set(verdicts) <= {"reproduced", "not reproduced", "differs"}
    assert {f["section"] for f in metrics["findings"]} >= {"results", "KL", "parameters", "freezing"}
    assert [c["ok"] for c in metrics["frozen_check"]] == [True, True]

    report = (out / "report.md").read_text()
    for heading in ("## Results", "## Parameter change", "## Freezing", "## The study's findings here"):
        assert heading in report
    figures = {p.name for p in (out / "figures").iterdir()}
    assert {"eval_maths.png", "eval_probes.png", "compare_runs.png", "trajectory_q.png", "freezing.png"} <= figures
    assert any(name.startswith("heatmap_sft_only_qk_") for name in figures)
    for run in ("grpo", "sft", "sft_frozen_mlp", "sft_only_qk"):
        assert any((out / "runs" / run / "checkpoints").iterdir())
    _frozen_tensors_did_not_move(json.loads((out / "analysis" / "all-tensors" / "changes.json").read_text())["rows"])

    again = subprocess.run(command, capture_output=True, text=True)
    assert again.returncode == 0 and again.stdout.count("done already") == 7, again.stdout
    assert json.loads((out / "metrics.json").read_text())["results"] == metrics["results"]


def _frozen_tensors_did_not_move(rows: list[dict]) -> None:
    """Every frozen tensor of both arms unchanged at every checkpoint; every trainable one moved.

    Which tensors are frozen is written out here from the study's two settings (not read from
    the freeze plan the training used), so a plan that froze the wrong tensors fails too.
    """
    first, last = mid_layers(BASE_SHAPE["num_layers"])

    def frozen_mlp(r):
        return r["module"] in ("gate", "up", "down") and first <= r["layer"] <= last

    def qk_only(r):
        return r["tensor"] not in ("layers.q", "layers.k", "lm_head")

    for run, is_frozen in (("sft_frozen_mlp", frozen_mlp), ("sft_only_qk", qk_only)):
        mine = [r for r in rows if r["run"] == run]
        assert {r["tensor"] for r in mine} >= {"embed", "lm_head", "final_norm", "layers.q_norm", "layers.attn_norm"}
        frozen = [r for r in mine if is_frozen(r)]
        final = max(r["step"] for r in mine)
        trainable = [r for r in mine if not is_frozen(r) and r["step"] == final]
        assert frozen and trainable
        assert all(r["rel_change"] == 0.0 and r["num_changed"] == 0 for r in frozen), run
        assert all(r["rel_change"] > 0.0 for r in trainable), run


def test_the_mid_layers_are_the_study_span_at_any_depth():
    assert mid_layers(32) == (19, 25)  # the study's layers
    assert mid_layers(4) == (2, 2)
    assert mid_layers(16) == (9, 12)
    with pytest.raises(JaxrlError, match="no layer"):
        mid_layers(1)
    frozen_mlp = sft_arms(32)[1]
    assert frozen_mlp.overrides() == ["freeze.freeze=[mlp.{gate,up,down}@19-25]"]


def _rows(run, frozen_change):
    rows = []
    for step, scale in ((1, 0.5), (2, 1.0)):
        cells = (("layers.gate", 0), ("layers.gate", 1), ("layers.q", 0), ("layers.q", 1), ("embed", None))
        for tensor, layer in cells:
            change = frozen_change if (tensor, layer) == ("layers.gate", 1) else scale * 0.1
            rows.append({"run": run, "step": step, "tensor": tensor, "layer": layer, "rel_change": change,
                         "num_changed": int(change > 0)})  # fmt: skip
    return rows


def test_the_freezing_check_fails_on_any_frozen_change():
    arm = Arm("a", "A", freeze=("mlp.gate@1",))
    assert frozen_check(_rows("a", 0.0), arm, 2)["ok"]
    moved = frozen_check(_rows("a", 1e-9), arm, 2)
    assert not moved["ok"] and moved["max_frozen_rel_change"] == 1e-9 and moved["frozen_elements_changed"] == 2
    still = [dict(r, rel_change=0.0, num_changed=0) if r["tensor"] == "layers.q" else r for r in _rows("a", 0.0)]
    assert not frozen_check(still, arm, 2)["ok"]  # a trainable tensor that never moved


def test_anatomy_of_a_completion():
    question = "Ana has 31 apples and gives away 3. How many apples are left?"
    assert anatomy_of(question, "<think>\n31 - 3 = 28\n</think>") == {
        "guess": False, "worked": True, "copied": True, "arithmetic": True,
    }  # fmt: skip
    assert anatomy_of(question, "<think>\n12 - 3 = 9\n</think>")["copied"] is False
    assert anatomy_of(question, "<think>\n31 - 3 = 27\n</think>")["arithmetic"] is False
    assert anatomy_of(question, "<think>\nThis one is easy, no need to work it out.\n</think>")["guess"]


def _measured(sft_indomain):
    values = {"base": (0.1, 0.02, 1.0, 1.0), "GRPO": (0.2, 0.02, 1.0, 1.0), "SFT": (sft_indomain, 0.02, 0.4, 0.3),
              FROZEN_MLP: (sft_indomain, 0.02, 0.6, 0.5), QK_ONLY: (0.1, 0.02, 0.3, 0.2)}  # fmt: skip
    table = {label: {} for label, *_ in ROWS}
    for name, (indomain, err, knowledge, prompt) in values.items():
        table[INDOMAIN][name] = (indomain, err)
        table[KNOWLEDGE][name] = (knowledge, None)
        table[PROMPT_IF][name] = table[ROWS[3][0]][name] = (prompt, None)
    modules = {"grpo": dict.fromkeys(STUDY_MODULES, 0.01) | {"q": 0.02, "k": 0.02},
               "sft": dict.fromkeys(STUDY_MODULES, 0.2) | {"q": 0.3, "k": 0.3}}  # fmt: skip
    depth = {"sft": {"early": 0.1, "middle": 0.2, "late": 0.3}}
    return Measured(table, {"GRPO": 0.1, "SFT": 4.0}, modules, depth, {"grpo": 0.1, "sft": 0.8})


def test_findings_verdicts_follow_their_rules():
    gained = {f["claim"]: f["verdict"] for f in findings(_measured(sft_indomain=0.3))}
    assert len(gained) == 14
    assert gained["SFT improves in-domain accuracy too (MATH-500 0.352 -> 0.422 after 3 epochs)"] == "reproduced"
    assert gained["both methods move q and k most"] == "reproduced"
    assert gained["GRPO changes every module by about the same (1.1e-3 to 1.3e-3)"] == "not reproduced"  # 2x
    keep = "freezing the mid-layer MLPs keeps SFT's in-domain gain (MATH-500 0.418 vs 0.422)"
    assert gained[keep] == "reproduced"
    fell = {f["claim"]: f["verdict"] for f in findings(_measured(sft_indomain=0.05))}
    assert fell[keep] == "differs"  # no gain to keep
    qk_most = [c for c in fell if c.startswith("training only q and k hurts")][0]
    assert fell[qk_most] == "reproduced"  # drop 1.5 >= SFT's 1.3


def test_a_stage_runs_once_unless_its_inputs_are_new(tmp_path):
    from jaxrl.reproduce.pipeline import stage

    calls = []
    for redo in (False, False, True):
        stage(tmp_path, "eval", lambda _: None, lambda: calls.append(1), redo=redo)
    assert len(calls) == 2 and (tmp_path / ".done" / "eval").exists()
