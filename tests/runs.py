"""Running `jaxrl` commands in child processes and reading back what their runs wrote.

`run_processes` starts a command as several processes on localhost that form one mesh, the way
tpu_scripts/launch.sh starts TPU workers (JAXRL_COORDINATOR, JAXRL_NUM_PROCESSES,
JAXRL_PROCESS_ID; gloo collectives on CPU)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from jaxrl.models.checkpoint import load_model

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_env(devices: int, pythonpath: Path | None = None, **extra) -> dict[str, str]:
    """This environment without JAXRL_* settings, on `devices` emulated CPU devices, offline."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAXRL_")}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", **extra)  # fmt: skip
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pythonpath), os.environ.get("PYTHONPATH")]))
    return env


def run_processes(argv: list[str], processes: int, devices: int = 4, pythonpath: Path | None = None) -> list[str]:
    """Runs `argv` in `processes` processes that together hold `devices` devices; returns their logs."""
    if processes == 1:
        envs = [process_env(devices, pythonpath)]
    else:
        coordinator = f"127.0.0.1:{free_port()}"
        envs = [process_env(devices // processes, pythonpath, JAXRL_COORDINATOR=coordinator,
                            JAXRL_NUM_PROCESSES=str(processes), JAXRL_PROCESS_ID=str(i))
                for i in range(processes)]  # fmt: skip
    procs = [
        subprocess.Popen(argv, env=e, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for e in envs
    ]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=420)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for i, (p, log) in enumerate(zip(procs, logs, strict=True)):
        assert p.returncode == 0, f"process {i} failed:\n{log[-4000:]}"
    return logs


def run_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def model_params(path: Path) -> dict[str, np.ndarray]:
    """A model's parameters by '/'-joined path."""
    state = nnx.to_pure_dict(nnx.state(load_model(path), nnx.Param))
    return {"/".join(map(str, k)): np.asarray(v) for k, v in _flat(state)}


def _flat(tree, prefix=()):
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _flat(v, (*prefix, k))
        else:
            yield (*prefix, k), v


def final_params(run: Path, step: int) -> dict[str, np.ndarray]:
    """The params of a run's checkpoint `step`, read with Orbax alone, by '.'-joined path."""
    restored = ocp.StandardCheckpointer().restore((run / "checkpoints" / str(step) / "params").absolute())
    out = {}

    def walk(prefix, node):
        for k, v in node.items():
            walk(f"{prefix}.{k}", v) if isinstance(v, dict) else out.__setitem__(f"{prefix}.{k}", np.asarray(v))

    walk("", restored)
    return out
