"""How long a recipe's steps take on a chip, and the whole run's chip-hours: arithmetic, no device.

A training step is its FLOPs (`flops_per_token`: 6 x matmul params + attention, per token) over
the devices' bf16 peak at a stated MFU. A GRPO generation batch (the continuous batching engine,
`jaxrl.models.engine`, on R = rollout.slots decode slots for its N completions) is
- the params' copy into the rollout layout: each device receives its shard over the interconnect;
- the prefill: 2 x params FLOPs per prompt token, each prompt once (its G samples share it);
- `decode steps` = N x mean / R (the completions packed into the slots) + longest - mean (the tail
  that drains after the queue is empty), at least the longest; each reads from HBM the device's
  share of the weights (compute dtype, split over `tensor`) and of R rows' KV cache up to the
  longest row's fill (on average prompt + half the longest), plus, with tensor > 1, two
  all-reduces of the rows' hidden states per layer. R = N is static batching's cost; the halving
  of slots as the queue drains is not counted (the estimate errs long);
- the scoring pass over prompt + completion (a forward: a third of a training step's FLOPs).
A run is `steps` optimizer steps and one generation batch per `num_iterations` of them.
Shapes: N rows (prompts x G), P prompt slots, C completion slots, L layers, K KV heads, E head_dim.
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
from jaxrl.train.chips import Chip
from jaxrl.train.loop import flops_per_token


@dataclasses.dataclass(frozen=True)
class Layout:
    """How the devices split the work: `batch` ways over rows (data x fsdp), `tensor` ways over heads."""

    devices: int
    batch: int
    tensor: int


@dataclasses.dataclass(frozen=True)
class Lengths:
    """Completion lengths in tokens: the batches' mean and longest (static batching decodes the
    longest). Measured from a run (`completions/mean_length`, `/max_length`) or given."""

    mean: float
    longest: float


@dataclasses.dataclass(frozen=True)
class TimePlan:
    train_step_s: float
    steps: int
    run_s: float
    chip_hours: float
    generation_s: float | None = None  # GRPO: one generation batch, scoring included
    decode_steps: int | None = None
    decode_step_s: float | None = None
    prefill_s: float | None = None
    reshard_s: float | None = None
    score_s: float | None = None
    slot_steps_per_token: float | None = None  # decode rows x steps per generated token

    def lines(self, chip: str, mfu: float) -> list[str]:
        out = [f"time on {chip} at MFU {mfu:.2f} (estimate; train/timeplan.py says how):"]
        if self.generation_s is not None:
            out.append(
                f"  generation   {self.generation_s:9.1f} s  (reshard {self.reshard_s:.2f} s, prefill "
                f"{self.prefill_s:.2f} s, {self.decode_steps} decode steps x {self.decode_step_s * 1e3:.2f} ms, "
                f"scoring {self.score_s:.2f} s; {self.slot_steps_per_token:.2f} slot-steps per token)"
            )
        out.append(f"  train step   {self.train_step_s:9.2f} s")
        out.append(
            f"  run          {self.run_s / 3600:9.2f} h for {self.steps} steps = {self.chip_hours:,.0f} chip-hours"
        )
        return out


def train_step_seconds(config, tokens: int, seq_len: int, chip: Chip, layout: Layout, mfu: float) -> float:
    return flops_per_token(config, seq_len) * tokens / (layout.devices * chip.bf16_flops * mfu)


def decode_step_seconds(config, rows: int, filled: float, chip: Chip, layout: Layout) -> float:
    """One decode step of `rows` rows whose caches hold `filled` slots: HBM reads, then collectives."""
    width = jnp.dtype(config.compute_dtype).itemsize
    weights = config.num_params() * width / layout.tensor
    kv_heads = config.num_kv_heads / min(layout.tensor, config.num_kv_heads)
    rows_here = rows / layout.batch
    kv = 2 * config.num_layers * kv_heads * config.head_dim * width * rows_here * filled
    seconds = (weights + kv) / chip.hbm_bytes_s
    if layout.tensor > 1:  # attention and MLP outputs summed over the tensor shards, every layer
        ring = 2 * (layout.tensor - 1) / layout.tensor
        seconds += 2 * config.num_layers * rows_here * config.hidden_size * width * ring / chip.link_bytes_s
    return seconds


def grpo_plan(
    config, s, steps: int, chip: Chip, layout: Layout, mfu: float, lengths: Lengths, slots: int = 0
) -> TimePlan:
    """`s`: the recipe's GRPOSettings; lengths: its completions' mean and longest; slots: the decode
    slots (0: one per completion)."""
    rows, prompts = s.prompts_per_step * s.num_generations, s.prompts_per_step
    p, c = s.max_prompt_length, s.max_completion_length
    slots = min(slots or rows, rows)
    longest = min(lengths.longest, c)
    decode_steps = int(math.ceil(max(longest, rows * lengths.mean / slots + longest - lengths.mean)))
    width = jnp.dtype(config.compute_dtype).itemsize
    reshard = config.num_params() * width / layout.tensor / chip.link_bytes_s
    prefill = 2 * config.num_params() * prompts * p / (layout.devices * chip.bf16_flops * mfu)
    step_s = decode_step_seconds(config, slots, p + math.ceil(longest) / 2, chip, layout)
    train = train_step_seconds(config, rows * (p + c), p + c, chip, layout, mfu)
    score = train / 3
    generation = reshard + prefill + decode_steps * step_s + score
    generations = math.ceil(steps / s.num_iterations)
    run = generations * generation + steps * train
    return TimePlan(
        train_step_s=train,
        steps=steps,
        run_s=run,
        chip_hours=run * layout.devices / 3600,
        generation_s=generation,
        decode_steps=decode_steps,
        decode_step_s=step_s,
        prefill_s=prefill,
        reshard_s=reshard,
        score_s=score,
        slot_steps_per_token=slots * decode_steps / max(rows * lengths.mean, 1e-9),
    )


def sft_plan(config, rows: int, seq_len: int, steps: int, chip: Chip, layout: Layout, mfu: float) -> TimePlan:
    train = train_step_seconds(config, rows * seq_len, seq_len, chip, layout, mfu)
    run = steps * train
    return TimePlan(train_step_s=train, steps=steps, run_s=run, chip_hours=run * layout.devices / 3600)


def lengths_from_run(metrics_jsonl: str) -> Lengths:
    """The mean of a run's logged `completions/mean_length` and `completions/max_length`."""
    import json
    from pathlib import Path

    from jaxrl.errors import JaxrlError

    path = Path(metrics_jsonl)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        raise JaxrlError(f"no metrics.jsonl at {path}; pass a GRPO run directory or its metrics.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "completions/mean_length" in r]
    if not rows:
        raise JaxrlError(f"{path} has no completions/mean_length: is it a GRPO run?")
    mean = sum(r["completions/mean_length"] for r in rows) / len(rows)
    longest = sum(r["completions/max_length"] for r in rows) / len(rows)
    return Lengths(mean, longest)
