"""Run metrics: `metrics.jsonl` always, TensorBoard events under `tb/` and a W&B run where asked
for (`jaxrl.tracking`), a progress bar on a terminal.

    logger = MetricsLogger(run_dir, total_steps, wandb=WandbSettings(), config=recipe_dict)
    logger.start(step=0)                          # or the step a resumed run starts from
    logger.log(step, {"loss": 2.3, "lr": 1e-5})   # one JSON line, TB scalars, W&B, bar advanced
    logger.log_samples(step, samples)             # completions.jsonl, and W&B's `completions` table
    logger.message("saved checkpoint 10")         # printed without breaking the bar
    logger.close()

Only process 0 writes; the others keep the same interface and do nothing.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import jax

from jaxrl.tracking import WandbRun, WandbSettings

# Peak dense bf16 FLOP/s per device, for the MFU estimate when the recipe gives none.
PEAK_FLOPS = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v5": 459e12,
    "TPU v6 lite": 918e12,
    "TPU v6e": 918e12,
    "NVIDIA H100": 989e12,
    "NVIDIA H200": 989e12,
    "NVIDIA A100": 312e12,
}


def peak_flops_per_device(device: jax.Device | None = None) -> float | None:
    """A best guess at the device's peak FLOP/s (None when unknown, e.g. on CPU)."""
    kind = (device or jax.devices()[0]).device_kind
    for name in sorted(PEAK_FLOPS, key=len, reverse=True):
        if kind.startswith(name):
            return PEAK_FLOPS[name]
    return None


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/Inf; keep them readable
    return value


def _json_safe(value: Any) -> Any:
    """Nested data for a strict JSON line: NaN and infinities become null (a reward function's None)."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item"):
        value = value.item()
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _row_step(line: str) -> float:
    try:
        return json.loads(line).get("step", 0)
    except (ValueError, AttributeError):
        return float("inf")  # a line cut short by a crash: drop it


def _keep_rows_to(path: Path, step: int) -> None:
    """Drops the rows of a JSON-lines file past `step` (what an interrupted run logged after its
    last checkpoint), so a resumed run's files tell one story."""
    if path.exists():
        kept = [line for line in path.read_text(encoding="utf-8").splitlines() if _row_step(line) <= step]
        path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


def sample_table(samples: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """(columns, rows) of completion samples in TRL's table layout: prompt, completion, one column per
    reward function, advantage, then the rest (finish_reason, ...)."""
    names = list(dict.fromkeys(name for s in samples for name in s.get("rewards", {})))
    rest = list(
        dict.fromkeys(k for s in samples for k in s if k not in ("prompt", "completion", "rewards", "advantage"))
    )
    columns = ["prompt", "completion", *names, "advantage", *rest]
    rows = [
        [s.get("prompt"), s.get("completion"), *(s.get("rewards", {}).get(n) for n in names), s.get("advantage")]
        + [s.get(k) for k in rest]
        for s in samples
    ]
    return columns, rows


class MetricsLogger:
    """Appends one JSON object per logged step to RUN/metrics.jsonl and mirrors scalars to TensorBoard
    and W&B. wandb: the W&B run's settings (None: no W&B); config: the recipe, the run's W&B config."""

    def __init__(
        self,
        run_dir: str | Path,
        total_steps: int,
        *,
        tensorboard: bool = True,
        wandb: WandbSettings | None = None,
        config: dict[str, Any] | None = None,
        progress: bool | None = None,
        enabled: bool | None = None,
    ):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.run_dir, self.total_steps = Path(run_dir), total_steps
        self.tensorboard, self.wandb_settings, self.config = tensorboard, wandb, config
        self.progress = sys.stderr.isatty() if progress is None else progress
        self._file = self._tb = self._bar = self._wandb = None

    def start(self, step: int = 0) -> None:
        """Opens the outputs at `step` (0, or the checkpoint a run resumes from). Rows and events
        after `step` that an interrupted run left behind are dropped, so the files tell one story."""
        if not self.enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / "metrics.jsonl"
        _keep_rows_to(path, step)
        _keep_rows_to(self.run_dir / "completions.jsonl", step)
        self._file = open(path, "a", encoding="utf-8")
        if self.wandb_settings is not None:
            self._wandb = WandbRun.open(self.run_dir, self.wandb_settings, self.config)
        if self.tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(self.run_dir / "tb"), purge_step=step + 1 if step else None)
        if self.progress:
            from tqdm import tqdm

            self._bar = tqdm(total=self.total_steps, initial=step, unit="step", dynamic_ncols=True, file=sys.stderr)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        """Records the metrics of `step` (the number of updates done after it)."""
        if not self.enabled:
            return
        if self._file is None:
            self.start(0)
        row = {"step": step, **{k: _jsonable(v) for k, v in metrics.items()}, "time": time.time()}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._wandb is not None:
            self._wandb.log(step, {k: v.item() if hasattr(v, "item") else v for k, v in metrics.items()})
        if self._tb is not None:
            for name, value in row.items():
                if name not in ("step", "time") and isinstance(value, int | float):
                    self._tb.add_scalar(f"train/{name}", value, step)
        if self._bar is not None:
            self._bar.n = step
            shown = {k: row[k] for k in ("loss", "grad_norm", "lr") if isinstance(row.get(k), int | float)}
            self._bar.set_postfix({k: f"{v:.3g}" for k, v in shown.items()}, refresh=False)
            self._bar.refresh()

    def log_samples(self, step: int, samples: list[dict[str, Any]]) -> None:
        """Appends one JSON object per sample (e.g. a GRPO completion with its rewards) to
        RUN/completions.jsonl, and logs them as W&B's `completions` table where W&B is on."""
        if not self.enabled or not samples:
            return
        if self._file is None:
            self.start(0)
        with open(self.run_dir / "completions.jsonl", "a", encoding="utf-8") as f:
            for sample in samples:
                f.write(json.dumps({"step": step, **_json_safe(sample)}) + "\n")
        if self._wandb is not None:
            columns, rows = sample_table(samples)
            self._wandb.table("completions", ["step", *columns], [[step, *row] for row in rows], step)

    def message(self, text: str) -> None:
        """A line for the person watching (stderr), kept clear of the progress bar."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()
        if self._file is not None:
            self._file.close()
        if self._wandb is not None:
            self._wandb.finish()
        self._file = self._tb = self._bar = self._wandb = None
