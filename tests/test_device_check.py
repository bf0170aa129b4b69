"""bench/device_check.sh, the one accelerator check, runs end to end on the CPU in its reduced
form (what a machine without a GPU or TPU runs) and writes a summary with every check passed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_reduced_device_check_passes_on_cpu(tmp_path):
    out = tmp_path / "device_check.json"
    env = {**os.environ, "JAXRL_DEVICE_PYTHON": sys.executable, "JAX_PLATFORMS": "cpu", "HF_HUB_OFFLINE": "1"}
    env.pop("XLA_FLAGS", None)  # one device, as on a machine of its own
    done = subprocess.run(["bash", str(REPO / "bench/device_check.sh"), str(out)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads(out.read_text())
    assert summary["reduced"] and summary["ok"], summary
    checks = summary["checks"]
    assert set(checks) == {"device", "compare", "attention", "sft", "grpo"}
    assert checks["compare"]["tiny-olmo2/float32"]["max_abs_logit_diff"] < 1e-4
    assert checks["attention"]["xla"]["max_abs_diff_grads"] < 0.1  # bf16 inputs
    assert checks["sft"]["steps"] == 3 and checks["grpo"]["steps"] == 2


def test_device_check_script_is_shellcheck_clean():
    shellcheck = Path(sys.executable).parent / "shellcheck"
    done = subprocess.run([str(shellcheck), str(REPO / "bench/device_check.sh")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout
