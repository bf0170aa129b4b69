"""Two processes on localhost, one mesh: SFT steps, an Orbax checkpoint, a resume, the same numbers.

The reference is one process with 4 CPU devices running 4 SFT steps of a tiny model on the mesh
data=2,fsdp=2. The multi-host run is 2 processes x 2 CPU devices on the same mesh, started the way
tpu_scripts/launch.sh starts TPU workers (`jaxrl train ...` with JAXRL_COORDINATOR,
JAXRL_NUM_PROCESSES, JAXRL_PROCESS_ID; gloo collectives on CPU): first to step 2 (checkpoint), then
again to step 4, which restores step 2 in both processes and continues. Each host feeds only its
own rows of every batch. Losses, gradient norms, both checkpoints and the weight-change analysis
agree with the reference; metrics are written once (by process 0).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from jaxrl.models.checkpoint import load_model
from jaxrl.models.tiny import build_tiny_model

from jaxrl.analysis import diff_trees
from tests.runs import model_params, run_metrics, run_processes

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests/fixtures/data/openr1_math_sample.jsonl"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    root = tmp_path_factory.mktemp("multihost")
    model = build_tiny_model(root / "tiny")
    path = root / "sft.yaml"
    path.write_text(
        f"model:\n  path: {model}\n"
        f"data:\n  dataset_name: {DATA}\n"
        "sft:\n  batch_size: 4\n  max_length: 1024\n"
        "optimizer:\n  learning_rate: 1.0e-3\n  lr_scheduler_type: constant\n  max_grad_norm: 1.0\n"
        "checkpoint:\n  save_steps: 2\n  async_save: false\n"
        "loop:\n  mesh: data=2,fsdp=2\n  seed: 3\n"
    )
    return root, path, model


def _train(recipe_path: Path, run_dir: Path, max_steps: int, processes: int) -> list[str]:
    """`jaxrl train sft` in `processes` processes that together hold 4 devices; returns their logs."""
    argv = [sys.executable, "-m", "jaxrl.cli", "train", "sft", "--recipe", str(recipe_path),
            f"loop.output_dir={run_dir}", f"loop.max_steps={max_steps}"]  # fmt: skip
    return run_processes(argv, processes)


def test_two_processes_match_one(recipe, tmp_path):
    root, recipe_path, model = recipe
    single, multi = tmp_path / "single", tmp_path / "multi"
    _train(recipe_path, single, 4, processes=1)
    _train(recipe_path, multi, 2, processes=2)
    logs = _train(recipe_path, multi, 4, processes=2)
    assert "resumed from checkpoint step 2" in logs[0]

    ref, got = run_metrics(single), run_metrics(multi)
    assert [r["step"] for r in got] == [1, 2, 3, 4], "every step logged exactly once, by process 0"
    for r, g in zip(ref, got, strict=True):
        for key in ("loss", "grad_norm", "lr", "loss_denominator"):
            assert g[key] == pytest.approx(r[key], rel=1e-5, abs=1e-7), (r["step"], key)
    assert ref[-1]["loss"] < ref[0]["loss"]

    for step in (2, 4):
        a, b = model_params(single / f"checkpoints/{step}"), model_params(multi / f"checkpoints/{step}")
        assert a.keys() == b.keys()
        for name in a:
            # Adam's step is about lr * g / |g| for a tiny gradient g, so the order of the cross-process
            # gradient sums can move such an element by a fraction of lr (1e-3): allow 1% of lr.
            np.testing.assert_allclose(b[name], a[name], rtol=1e-5, atol=1e-5, err_msg=f"step {step}: {name}")

    base = load_model(model)
    changes = {run: diff_trees(base, load_model(run / "checkpoints/4"), modules="default") for run in (single, multi)}
    rel = {run: np.array([c.rel_change for c in cs]) for run, cs in changes.items()}
    assert (rel[single] > 0).all()
    np.testing.assert_allclose(rel[multi], rel[single], rtol=1e-4)


def test_train_host_flags_reach_distributed_init(tmp_path, monkeypatch, capsys):
    """`--num-processes/--process-id` are checked by the distributed init before anything compiles."""
    from jaxrl.models.tiny import build_tiny_model

    from jaxrl.cli import main

    for name in ("JAXRL_COORDINATOR", "JAXRL_NUM_PROCESSES", "JAXRL_PROCESS_ID"):
        monkeypatch.setenv(name, "")  # restored after the test, whatever the command sets
    model = build_tiny_model(tmp_path / "tiny")
    out = tmp_path / "run"
    code = main(["train", "sft", "--num-processes", "2", "--process-id", "5", f"model.path={model}",
                 f"loop.output_dir={out}"])  # fmt: skip
    assert code == 2
    assert "process id 5 is not in [0, 2)" in capsys.readouterr().err
    assert not out.exists()
