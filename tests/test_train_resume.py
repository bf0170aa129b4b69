"""`jaxrl train sft` in subprocesses: killed with SIGKILL, then stopped with SIGTERM, then resumed,
a run ends bitwise identical to the same run uninterrupted; SIGTERM writes a checkpoint first."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from jaxrl.models.tiny import build_tiny_model

from tests.runs import final_params

TOTAL_STEPS = 40


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    model = build_tiny_model(root / "model", "tiny-olmo2", seed=0)
    rows = [
        {"messages": [{"role": "user", "content": f"What is {a} + {b}?"},
                      {"role": "assistant", "content": f"<think>\n{a} plus {b} is {a + b}.\n</think>\n"
                                                       f"<answer>\n\\boxed{{{a + b}}}\n</answer>"}]}
        for a in range(6) for b in range(4)
    ]  # fmt: skip
    data = root / "sums.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root, model, data


def command(setup, run_dir: Path) -> list[str]:
    root, model, data = setup
    return [
        sys.executable, "-m", "jaxrl.cli", "train", "sft", "--recipe", "train/recipes/sft-tiny.yaml",
        f"model.path={model}", f"data.dataset_name={data}", f"loop.output_dir={run_dir}",
        "sft.batch_size=4", "sft.max_length=64", "sft.pad_to_multiple_of=64", "chat.system_prompt=null",
        f"loop.max_steps={TOTAL_STEPS}", "checkpoint.save_steps=4", "checkpoint.save_total_limit=2",
        "loop.mesh=data=1,fsdp=2,tensor=1",
    ]  # fmt: skip


def env() -> dict[str, str]:
    out = dict(os.environ)
    out.update(XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")  # fmt: skip
    return out


def last_step(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return 0
    steps = [json.loads(line)["step"] for line in path.read_text().splitlines() if line.endswith("}")]
    return max(steps, default=0)


def start(setup, run_dir: Path) -> subprocess.Popen:
    return subprocess.Popen(command(setup, run_dir), cwd=Path(__file__).parents[1], env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def run_until(setup, run_dir: Path, at_step: int | None, sig: int | None) -> tuple[int, str, int | None]:
    """Runs `jaxrl train sft`; once it logged `at_step`, sends `sig`. Returns (returncode, stderr, step seen)."""
    proc = start(setup, run_dir)
    seen = None
    if sig is not None:
        deadline = time.time() + 120
        while proc.poll() is None and time.time() < deadline:
            seen = last_step(run_dir)
            if seen >= at_step:
                proc.send_signal(sig)
                break
            time.sleep(0.005)
        assert seen is not None and seen >= at_step, f"the run ended before step {at_step}: {proc.communicate()}"
    _, stderr = proc.communicate(timeout=180)
    return proc.returncode, stderr, seen


@pytest.mark.slow
def test_sigkill_and_sigterm_then_resume_is_bitwise_identical(setup, tmp_path):
    straight = start(setup, tmp_path / "straight")  # beside the interrupted runs (two cores)
    run = tmp_path / "interrupted"
    code, _, killed_at = run_until(setup, run, 9, signal.SIGKILL)
    assert code == -signal.SIGKILL and killed_at < TOTAL_STEPS

    code, stderr, term_at = run_until(setup, run, 21, signal.SIGTERM)
    assert code == 0, stderr
    assert "resumed from checkpoint step" in stderr
    saved = sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())
    assert "SIGTERM: saved checkpoint step" in stderr and saved[-1] >= term_at, (stderr, saved)
    assert saved[-1] < TOTAL_STEPS

    code, stderr, _ = run_until(setup, run, None, None)
    assert code == 0, stderr
    assert f"resumed from checkpoint step {saved[-1]}" in stderr
    _, stderr = straight.communicate(timeout=180)
    assert straight.returncode == 0, stderr
    expected = final_params(tmp_path / "straight", TOTAL_STEPS)
    got = final_params(run, TOTAL_STEPS)
    assert got.keys() == expected.keys()
    for name in expected:
        assert np.array_equal(got[name], expected[name]), name
    # the metrics file tells one story: every step once, in order
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, TOTAL_STEPS + 1))
