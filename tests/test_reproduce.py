"""`jaxrl reproduce --preset fast` end to end: the report's files exist and its numbers are well-formed.

What the numbers say is the miniature's business (docs/reproduce-example); here they must only be
present, finite and in range, and a second call must resume from the markers without redoing work.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from jaxrl.reproduce.base import BaseSpec, shipped_base


@pytest.mark.slow
def test_fast_preset_writes_a_well_formed_report(tmp_path):
    assert shipped_base(BaseSpec()) is not None, "the package must ship the base model (jaxrl reproduce --rebuild-base)"
    out = tmp_path / "report"
    command = [sys.executable, "-m", "jaxrl.cli", "reproduce", "--preset", "fast", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["preset"] == "fast" and set(metrics["models"]) == {"base", "GRPO", "SFT"}
    for row in metrics["results"].values():
        for cell in row.values():
            assert 0.0 <= cell["value"] <= 1.0
            assert cell["stderr"] is None or 0.0 <= cell["stderr"] <= 0.5
    assert metrics["kl_to_base"]["base"] == pytest.approx(0.0, abs=1e-6)
    assert all(math.isfinite(v) and v >= 0 for v in metrics["kl_to_base"].values())
    assert set(metrics["guess_share"]) == {"base", "GRPO", "SFT"}
    assert all(0.0 <= v <= 1.0 for v in metrics["guess_share"].values())
    for run in ("grpo", "sft"):
        changes = metrics["param_change"][run]
        assert set(changes) == {"q", "k", "v", "o", "gate", "up", "down"}
        assert all(math.isfinite(v) and v >= 0 for v in changes.values())
    assert len(metrics["findings"]) == 6 and all(isinstance(f["reproduced"], bool) for f in metrics["findings"])

    report = (out / "report.md").read_text()
    for heading in ("## Results", "## Parameter change", "## The study's findings here"):
        assert heading in report
    figures = {p.name for p in (out / "figures").iterdir()}
    assert {"eval_maths.png", "eval_probes.png", "compare_runs.png", "trajectory_q.png"} <= figures
    assert any(name.startswith("heatmap_sft_") for name in figures)
    for run in ("grpo", "sft"):
        assert any((out / "runs" / run / "checkpoints").iterdir())

    again = subprocess.run(command, capture_output=True, text=True)
    assert again.returncode == 0 and again.stdout.count("done already") == 5, again.stdout
    assert json.loads((out / "metrics.json").read_text())["results"] == metrics["results"]
