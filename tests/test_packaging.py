"""The package list in pyproject.toml covers every package in the tree, and the CLI starts."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOP = {"jaxrl": "jaxrl", "models": "jaxrl.models", "train": "jaxrl.train", "eval": "jaxrl.eval"}


def test_every_package_is_listed():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = set()
    for folder, name in TOP.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            parts = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((name, *parts)))
    assert found - listed == set(), "add these to [tool.setuptools] packages"
    assert listed - found == set(), "these listed packages have no __init__.py (the install fails)"


def test_cli_lists_commands_and_rejects_bad_preset(tmp_path):
    out = subprocess.run([sys.executable, "-m", "jaxrl.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "convert" in out.stdout
    out = subprocess.run(
        [sys.executable, "-m", "jaxrl.cli", "tiny", str(tmp_path), "--preset", "huge"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "unknown preset" in out.stderr
