#!/usr/bin/env bash
# Every accelerator check of jaxrl in one run (see bench/device_check.py), one JSON summary.
#
#   bash bench/device_check.sh [OUT.json]    # default OUT: device_check.json
#
# On a machine with an NVIDIA GPU or a TPU it makes its own venv (.venv-device) with jaxrl's
# `test` extra and the matching accelerator extra (`cuda`: jax[cuda12]; `tpu`: jax[tpu]) and runs
# the full checks (under 10 minutes on one H100). Without an accelerator it runs the reduced
# checks on the CPU with the Python it is given (a smoke test, under a minute on 2 cores).
# JAXRL_DEVICE_PYTHON=/path/to/python skips the install and uses that interpreter (a machine that
# cannot reach a package registry, or a venv made already).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-device_check.json}"

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  EXTRA=cuda
elif [[ -e /dev/accel0 || -e /dev/vfio/0 || -n "${TPU_ACCELERATOR_TYPE:-}" ]]; then
  EXTRA=tpu
else
  EXTRA=""
fi

REDUCED=()
if [[ -n "${JAXRL_DEVICE_PYTHON:-}" ]]; then
  PY="$JAXRL_DEVICE_PYTHON"
elif [[ -n "$EXTRA" ]]; then
  python3 -m venv .venv-device
  .venv-device/bin/pip install -q -e ".[test,$EXTRA]"
  PY=.venv-device/bin/python
else
  PY="${PYTHON:-python3}"
fi
if [[ -z "$EXTRA" ]]; then
  REDUCED=(--reduced)
  echo "no GPU or TPU found: reduced checks on the CPU"
fi

"$PY" -c 'import jax; print("device:", jax.default_backend(), jax.devices())'
exec "$PY" bench/device_check.py "$OUT" "${REDUCED[@]+"${REDUCED[@]}"}"
