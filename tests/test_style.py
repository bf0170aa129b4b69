"""The tree passes the linter configured in pyproject.toml (what a reviewer would run first)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_is_clean():
    command = [sys.executable, "-m", "ruff", "check", "--no-cache", str(ROOT)]
    out = subprocess.run(command, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:]


def test_ruff_format_is_clean():
    command = [sys.executable, "-m", "ruff", "format", "--check", "--no-cache", str(ROOT)]
    out = subprocess.run(command, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:]
