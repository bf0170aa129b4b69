"""Two processes on localhost, one mesh: GRPO steps give the numbers one process gives.

The reference is one process with 4 CPU devices running 3 GRPO steps of train/recipes/grpo-tiny.yaml
on the mesh data=2,fsdp=2. The multi-host run is 2 processes x 2 CPU devices on the same mesh
(`jaxrl train grpo` with JAXRL_COORDINATOR, JAXRL_NUM_PROCESSES, JAXRL_PROCESS_ID; gloo collectives
on CPU), each drawing only its own prompt of every batch: first to step 1, a checkpoint in the middle
of a generation batch (num_iterations=2), then again to step 3, which restores that batch in both
processes and continues. What would go wrong if a host sampled only its own prompts (completions
paired with another host's prompts), kept a per-host batch std (scale_rewards=batch), per-host
metrics, or resumed with process 0's rows: the log-prob gap between sampler and trainer, the rewards
and the metrics, and the parameters all have to match the single process.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from jaxrl.models.tiny import build_tiny_model

from tests.runs import model_params, run_metrics, run_processes

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests/fixtures/data/openr1_math_sample.jsonl"
RECIPE = REPO / "train/recipes/grpo-tiny.yaml"
pytestmark = pytest.mark.slow

# A dense reward, so that groups rarely tie and every step has a gradient (a random model earns no
# accuracy). The subprocesses import it as `mh_rewards:distinct_share` from PYTHONPATH.
REWARD_MODULE = """
def distinct_share(prompts, completions, **columns):
    return [len(set(c)) / (len(c) + 1) for c in completions]
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("multihost_grpo")
    (root / "mh_rewards.py").write_text(REWARD_MODULE)
    return root, build_tiny_model(root / "tiny")


def _train(root: Path, model: Path, run_dir: Path, max_steps: int, processes: int) -> list[str]:
    """grpo-tiny for `max_steps` in `processes` processes that together hold 4 devices; their logs."""
    argv = [sys.executable, "-m", "jaxrl.cli", "train", "grpo", "--recipe", str(RECIPE),
            f"model.path={model}", f"data.dataset_name={DATA}", f"loop.output_dir={run_dir}",
            f"loop.max_steps={max_steps}", "loop.mesh=data=2,fsdp=2", "loop.seed=5",
            "grpo.scale_rewards=batch", "grpo.num_iterations=2",
            "grpo.reward_funcs=[accuracy,format,mh_rewards:distinct_share]", "grpo.reward_weights=[1.0,0.2,1.0]",
            # a constant rate, so the runs to step 1 and to step 3 share their schedule; an Adam
            # epsilon that keeps each update about its gradient, not about fp32 noise in a tiny one
            "optimizer.lr_scheduler_type=constant", "optimizer.adam_epsilon=1e-4",
            "checkpoint.async_save=false"]  # fmt: skip
    return run_processes(argv, processes, pythonpath=root)


def test_two_processes_match_one(setup, tmp_path):
    root, model = setup
    single, multi = tmp_path / "single", tmp_path / "multi"
    _train(root, model, single, 3, processes=1)
    _train(root, model, multi, 1, processes=2)
    logs = _train(root, model, multi, 3, processes=2)
    assert "resumed from checkpoint step 1" in logs[0]

    ref, got = run_metrics(single), run_metrics(multi)
    assert [r["step"] for r in got] == [1, 2, 3], "every step logged exactly once, by process 0"
    for r, g in zip(ref, got, strict=True):
        step = r["step"]
        # the same completions of the same prompts, scored and reduced over the global batch
        for key in ("completions/mean_length", "completions/max_length", "completions/clipped_ratio",
                    "frac_reward_zero_std", "rewards/format/mean"):  # fmt: skip
            assert g[key] == r[key], (step, key)
        for key in ("reward", "reward_std", "rewards/mh_rewards:distinct_share/std", "entropy", "loss",
                    "grad_norm", "clip_ratio/region_mean"):  # fmt: skip
            assert g[key] == pytest.approx(r[key], rel=1e-5, abs=1e-6), (step, key)
    for rows in (ref, got):
        generated = [r for r in rows if r["iteration"] == 1]  # the gap is logged where sampling happened
        assert [r["step"] for r in generated] == [1, 3]
        for r in generated:
            assert r["logprob_gap/max"] < 1e-4, (r["step"], r["logprob_gap/max"])  # sampler and trainer agree
        assert all(r["reward_std"] > 0 and r["grad_norm"] > 0 for r in rows)  # the steps learn something

    a, b = model_params(single / "checkpoints/3"), model_params(multi / "checkpoints/3")
    assert a.keys() == b.keys()
    base = model_params(model)
    assert any(not np.array_equal(a[name], base[name]) for name in a)
    for name in a:
        np.testing.assert_allclose(b[name], a[name], rtol=1e-5, atol=1e-5, err_msg=name)
