"""`jaxrl analyze BASE RUN [RUN ...] --out DIR`: every checkpoint of every run against a base.

The caller supplies `key_map(hf_config) -> (entries, num_layers)` (the model's HF key map), so
this module names tensors without importing the model package. Every checkpoint is streamed block
by block against the base, which is read once for all of them; host memory holds a few blocks.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from jaxrl.analysis.grouping import module_means, rows_from_changes
from jaxrl.analysis.naming import TensorSpec, parse_modules, select, specs_from_key_map
from jaxrl.analysis.report import write_report
from jaxrl.analysis.runs import Checkpoint, model_checkpoint, run_checkpoints, unique_run_names
from jaxrl.analysis.stream import diff_many, tensor_bytes
from jaxrl.destinations import check_destination
from jaxrl.errors import JaxrlError

KeyMap = Callable[[dict], tuple[Sequence, int]]


class Progress:
    """Bytes analysed out of a total, with rate and ETA: one rewritten line on a terminal, and a
    last line when done."""

    def __init__(self, total: int, stream=None, enabled: bool = True):
        self.total, self.done, self.start = max(total, 1), 0, time.perf_counter()
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.label, self._last = "", 0.0

    def line(self) -> str:
        elapsed = time.perf_counter() - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        eta_text = time.strftime("%H:%M:%S", time.gmtime(eta)) if eta == eta else "?"
        unit, scale = ("GB", 1e9) if self.total >= 1e9 else ("MB", 1e6)
        return (
            f"analyze {self.label}: {self.done / scale:.2f}/{self.total / scale:.2f} {unit} "
            f"({100 * self.done / self.total:.0f}%), {rate / scale:.2f} {unit}/s, ETA {eta_text}"
        )

    def __call__(self, nbytes: int) -> None:
        self.done += nbytes
        now = time.perf_counter()
        if self.tty and now - self._last > 0.2:
            print("\r" + self.line(), end="", file=self.stream, flush=True)
            self._last = now

    def done_line(self) -> None:
        if self.enabled:
            print(("\r" if self.tty else "") + self.line(), file=self.stream, flush=True)


def _specs(ckpt: Checkpoint, key_map: KeyMap) -> list[TensorSpec]:
    entries, num_layers = key_map(ckpt.config())
    return specs_from_key_map(entries, num_layers)


def _check_same_model(base: list[TensorSpec], other: list[TensorSpec], ckpt: Checkpoint) -> None:
    theirs = {s.path: s.shape for s in other}
    for s in base:
        if s.path not in theirs:
            raise JaxrlError(f"{ckpt.path} has no {s.name!r} (its config.json differs from the base's)")
        if theirs[s.path] != s.shape:
            raise JaxrlError(
                f"{ckpt.path}: {s.name} has shape {list(theirs[s.path])} but {list(s.shape)} in the base "
                "(the configs differ; analyse checkpoints of one model)"
            )


def analyze(
    base: str | Path,
    runs: Sequence[str | Path],
    out: str | Path,
    key_map: KeyMap,
    *,
    modules: str | Sequence[str] | None = None,
    svd: int = 0,
    progress: bool = True,
) -> list[dict]:
    """Analyses every checkpoint of `runs` against `base`, writes the report to `out`; returns rows."""
    if not runs:
        raise JaxrlError("no runs to analyse; pass at least one run directory or checkpoint")
    if svd < 0:
        raise JaxrlError(f"--svd must be >= 0, got {svd}")
    out = check_destination(out, "directory", "--out")
    base_ckpt = model_checkpoint(base)
    base_specs = select(_specs(base_ckpt, key_map), parse_modules(modules))
    checkpoints = [
        c for path, name in zip(runs, unique_run_names(list(runs)), strict=True) for c in run_checkpoints(path, name)
    ]
    for ckpt in checkpoints:
        _check_same_model(base_specs, _specs(ckpt, key_map), ckpt)
    base_source = base_ckpt.open()
    sources = [c.open() for c in checkpoints]
    total = sum(tensor_bytes(s, base_source, src) for src in sources for s in base_specs)
    meter = Progress(total, enabled=progress)
    meter.label = f"{len(checkpoints)} checkpoint(s)"
    all_changes = diff_many(base_source, sources, base_specs, svd=svd, progress=meter)
    meter.done_line()
    out.mkdir(parents=True, exist_ok=True)  # only now: a checkpoint that cannot be read leaves --out as it was
    rows: list[dict] = []
    with open(out / "metrics.jsonl", "w") as metrics:
        for ckpt, changes in zip(checkpoints, all_changes, strict=True):
            new = rows_from_changes(changes, ckpt.run, ckpt.name, ckpt.step)
            rows += new
            means = module_means(new, ckpt.run, ckpt.name)
            metrics.write(
                json.dumps({"run": ckpt.run, "checkpoint": ckpt.name, "step": ckpt.step, "rel_change": means}) + "\n"
            )
    meta = {
        "base": str(base),
        "runs": [str(r) for r in runs],
        "modules": sorted({s.module for s in base_specs}),
        "svd": svd,
        "checkpoints": [{"run": c.run, "checkpoint": c.name, "step": c.step, "path": str(c.path)} for c in checkpoints],
    }
    write_report(rows, out, meta)
    return rows
