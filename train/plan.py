"""`jaxrl plan`: per-device memory of a recipe's training step, before renting the chips.

    jaxrl plan --recipe train/recipes/sft_3ep.yaml --mesh fsdp=32 --devices 32 --chip v5p

The real training step (`Trainer.abstract(...).lower(...)`: the jitted step with the recipe's loss,
optimizer, freezing and gradient accumulation) is lowered and compiled ahead of time for a mesh of
`--devices` emulated CPU devices, on `jax.ShapeDtypeStruct`s that carry their shardings: no
parameter is ever created, so a 7B plan needs a few GB of host memory. The report, per device:

    params      sharded parameter bytes (computed from the shardings)
    opt_state   sharded optimizer-state bytes (AdamW moments; frozen tensors have none)
    batch       this device's share of the step's batch
    outputs     bytes the step returns that do not reuse a donated input (metrics)
    temporaries XLA's temporary buffers: activations kept for the backward pass, gradients,
                logits, collectives' buffers
    peak        arguments + outputs - aliased + temporaries, from `memory_analysis()`

The numbers come from the CPU compiler's buffer assignment for the per-device SPMD program. A TPU
or GPU compile fuses and schedules differently, so temporaries there can differ (typically by tens
of percent); the parameter and optimizer figures are exact. `fits` leaves 10% of the chip free
for the runtime, and a GRPO run also needs room for sampling (see `kv_cache_bytes`).

The model's shape comes from `--model` (a preset such as olmo2-1124-7b, or a HF directory whose
config.json is read; no weights) or else from the recipe's `model.path`. `--devices` needs a
process whose JAX has not started yet: the CLI runs the plan in a fresh Python process with
XLA_FLAGS set, so it works from anywhere.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from jaxrl.train.chips import CHIPS

from jaxrl.errors import JaxrlError

# Memory per device in GB (10^9 bytes, as vendors count), from the one chip table (train/chips.py).
CHIP_MEMORY_GB = {name: c.memory_gb for name, c in CHIPS.items()}
HEADROOM = 0.10  # runtime, program and fragmentation reserve
GIB = 1024**3


def chip_capacity(chip: str) -> int:
    if chip.lower() not in CHIP_MEMORY_GB:
        raise JaxrlError(f"unknown chip {chip!r}; choose one of {', '.join(CHIP_MEMORY_GB)}")
    return int(CHIP_MEMORY_GB[chip.lower()] * 1e9)


def recipe_method(recipe: str | None, method: str | None) -> str:
    """sft or grpo: given, or the recipe's own top-level section."""
    if method:
        if method not in ("sft", "grpo"):
            raise JaxrlError(f"--method {method!r}: choose sft or grpo")
        return method
    if recipe:
        import yaml

        try:
            data = yaml.safe_load(Path(recipe).read_text()) if Path(recipe).is_file() else None
        except yaml.YAMLError:
            data = None  # the recipe loader reports it properly
        for name in ("grpo", "sft"):
            if isinstance(data, dict) and name in data:
                return name
    raise JaxrlError("cannot tell whether the recipe is SFT or GRPO; pass --method sft or --method grpo")


# ---------------------------------------------------------------------------------------------
# Compiling on abstract shapes (runs in a process whose JAX sees the emulated devices)


def model_config_of(model: str | None, source) -> Any:
    """The ModelConfig to plan: --model (preset or HF dir), else the recipe's model.path."""
    from jaxrl.models.compiled import config_of

    name = model or source.path
    if not name:
        raise JaxrlError("no model: pass --model PRESET_OR_DIR or set model.path in the recipe")
    config = config_of(name)
    changes = {"dtype": source.dtype, "remat": source.remat, "attention": source.attention}
    if source.param_dtype:
        changes["param_dtype"] = source.param_dtype
    return config.replace(**changes)


def sharded_bytes(tree) -> int:
    """Bytes one device holds of a tree of ShapeDtypeStructs/arrays with shardings (the largest shard)."""
    import jax
    import numpy as np

    total = 0
    for x in jax.tree.leaves(tree):
        shard = x.sharding.shard_shape(x.shape)
        total += int(np.prod(shard, dtype=np.int64)) * np.dtype(x.dtype).itemsize
    return total


@dataclasses.dataclass
class MemoryPlan:
    """Per-device bytes of one training step (see the module docstring)."""

    method: str
    model: str
    num_params: int
    mesh: str
    devices: int
    rows: int
    seq_len: int
    accumulation: int
    params: int
    opt_state: int
    batch: int
    arguments: int
    outputs: int
    aliased: int
    temporaries: int
    code: int
    peak: int
    chip: str | None = None
    capacity: int | None = None
    kv_cache_bytes: int | None = None  # GRPO: sampling cache per device, not part of the step
    decode_slots: int | None = None  # GRPO: the rows that cache holds (rollout.slots)
    sampling_copy_bytes: int | None = None  # GRPO: the params in the sampling layout (rollout.rules)
    time_plan: dict[str, Any] | None = None  # with a chip: `timeplan.TimePlan`'s fields, chip and mfu
    target: dict[str, Any] | None = None  # the compiler: platform, libtpu, topology, attention compiled
    programs: list[dict[str, Any]] | None = None  # every program of the run (`plan_programs.Program`)
    reference: int = 0  # GRPO with beta > 0: the frozen initial params (training layout), held all run

    @property
    def sampling(self) -> int | None:
        """GRPO generation: params + optimizer state (+ the reference params) stay resident beside
        the KV cache and the params' sampling copy (the step's temporaries are free then); the
        sampler's own small buffers are not counted."""
        if self.kv_cache_bytes is None:
            return None
        resident = self.params + self.opt_state + self.reference
        return resident + self.kv_cache_bytes + (self.sampling_copy_bytes or 0)

    @property
    def need(self) -> int:
        """The most a device holds at once: the step's peak (+ the reference params), or generation
        when that is larger.
        With every program compiled: the largest program's peak, beside the training state that
        stays resident while a generation program runs."""
        if self.programs:
            return max(p["peak"] + self.resident_beside(p["name"]) for p in self.programs)
        return max(self.peak + self.reference, self.sampling or 0)

    def resident_beside(self, program: str) -> int:
        """Training state held while `program` runs but not among its arguments: the step takes it
        all; the reshard and the scoring pass take the params; the engine takes neither. The
        reference params (beta > 0) are held beside every program (the scoring pass of the
        reference takes them and leaves the policy's, which weigh the same)."""
        state = {"train step": 0, "reshard": self.opt_state, "scoring": self.opt_state}.get(
            program, self.params + self.opt_state
        )
        return state + self.reference

    @property
    def refused(self) -> list[str]:
        """The programs the compiler refused as too large for the device."""
        return [p["name"] for p in self.programs or () if p["refused"]]

    @property
    def fits(self) -> bool | None:
        if self.refused:
            return False
        if self.capacity is None:
            return None
        # the TPU compiler's capacity is what it lets a program use: no headroom on top
        headroom = 0 if self.target and self.target.get("platform") == "tpu" else HEADROOM
        return self.need <= self.capacity * (1 - headroom)

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "need": self.need, "fits": self.fits, "refused": self.refused}

    def program_lines(self) -> list[str]:
        """The per-program table of a topology plan."""
        from jaxrl.models.compiled import program_lines

        head = (
            f"compiled by {self.target['compiler']} for {self.target['topology']}; attention "
            f"{self.target['attention']} ({self.target['mosaic_kernels']} Mosaic kernels)"
        )
        return [head, *program_lines(self.programs, mib=self.params < GIB // 64)]

    def table(self) -> str:
        g = lambda n: f"{n / GIB:9.2f} GiB" if n >= GIB else f"{n / 1024**2:9.1f} MiB"
        lines = [
            f"{self.method} step of {self.model} ({self.num_params / 1e6:,.1f}M parameters) on mesh {self.mesh} "
            f"({self.devices} devices)",
            f"batch: {self.rows} rows x {self.seq_len} tokens, {self.accumulation} micro-batches of "
            f"{self.rows // self.accumulation} rows",
            "per device:",
            f"  params       {g(self.params)}",
            f"  opt_state    {g(self.opt_state)}",
            f"  batch        {g(self.batch)}",
            f"  outputs      {g(self.outputs - self.aliased)}  (not reusing donated inputs)",
            f"  temporaries  {g(self.temporaries)}  (activations, gradients, logits, buffers)",
            f"  peak         {g(self.peak)}  (arguments + outputs - aliased + temporaries)",
        ]
        if self.kv_cache_bytes is not None:
            lines.append(
                f"  KV cache     {g(self.kv_cache_bytes)}  (GRPO generation: {self.decode_slots} decode slots of "
                f"{self.rows} completions)"
            )
            if self.sampling_copy_bytes:
                lines.append(f"  sampling copy{g(self.sampling_copy_bytes)}  (the params in the rollout layout)")
            if self.reference:
                lines.append(f"  reference    {g(self.reference)}  (beta > 0: the frozen initial params, held all run)")
            extra = " + reference" if self.reference else ""
            lines.append(f"  generation   {g(self.sampling)}  (params + opt_state + KV cache + sampling copy{extra})")
        if self.time_plan is not None:
            from jaxrl.train.timeplan import TimePlan

            t = dict(self.time_plan)
            chip, mfu, assumed = t.pop("chip"), t.pop("mfu"), t.pop("assumed")
            lines += TimePlan(**t).lines(chip, mfu) + [f"  ({a})" for a in assumed]
        if self.programs:
            lines += self.program_lines()
        if self.refused:
            lines.append(f"{self.chip}: the compiler refused {', '.join(self.refused)} -> does NOT fit")
        elif self.capacity is not None and self.target and self.target.get("platform") == "tpu":
            verdict = "fits" if self.fits else "does NOT fit"
            lines.append(
                f"{self.chip}: {self.capacity / GIB:.2f} GiB per device as the TPU compiler counts it; needs "
                f"{self.need / GIB:.2f} GiB (the largest program beside the resident training state) -> {verdict}"
            )
        elif self.capacity is not None:
            verdict = "fits" if self.fits else "does NOT fit"
            lines.append(
                f"{self.chip}: {self.capacity / 1e9:.0f} GB per device; needs {self.need / 1e9:.1f} GB -> {verdict} "
                f"(keeping {HEADROOM:.0%} free)"
            )
        return "\n".join(lines)


def sft_inputs(config, rows: int | None):
    """(loss_fn, host batch shapes, accumulation) of an SFT recipe.

    Rows: `sft.batch_size` one-example rows of `sft.max_length` tokens, the worst case of both the
    padded and the padding-free layout (packing only ever needs fewer rows).
    """
    import jax
    import jax.numpy as jnp

    rows = rows or config.sft.batch_size
    t = config.sft.max_length
    ints = ("tokens", "segment_ids", "positions", "targets")
    batch = {name: jax.ShapeDtypeStruct((rows, t), jnp.int32) for name in ints}
    batch["loss_mask"] = jax.ShapeDtypeStruct((rows, t), jnp.float32)
    return config.sft.loss_fn(), batch


def grpo_inputs(config, rows: int | None):
    """(loss_fn, host batch shapes) of a GRPO recipe: prompts_per_step x num_generations rows of
    max_prompt_length prompt slots + max_completion_length completion slots (what the rollouts build)."""
    import jax
    import jax.numpy as jnp
    from jaxrl.train.grpo_loss import make_loss_fn

    s = config.grpo
    if not s.max_prompt_length:
        raise JaxrlError("grpo.max_prompt_length is not set; the plan needs a prompt length")
    n = rows or s.prompts_per_step * s.num_generations
    p, c = s.max_prompt_length, s.max_completion_length
    batch = {
        "tokens": jax.ShapeDtypeStruct((n, p + c), jnp.int32),
        "segment_ids": jax.ShapeDtypeStruct((n, p + c), jnp.int32),
        "completion_mask": jax.ShapeDtypeStruct((n, c), jnp.float32),
        "advantages": jax.ShapeDtypeStruct((n,), jnp.float32),
    }
    settings = s.loss
    if settings.share_prompt_pass is None:  # a plan is for TPUs and GPUs, where the default is off,
        settings = dataclasses.replace(settings, share_prompt_pass=False)  # also as a CPU estimate
    if settings.use_old_logprobs:
        batch["old_logprobs"] = jax.ShapeDtypeStruct((n, c), jnp.float32)
    if s.beta > 0:
        batch["ref_logprobs"] = jax.ShapeDtypeStruct((n, c), jnp.float32)
    return make_loss_fn(settings), batch


def sampling_copy_bytes(model_config, mesh) -> int:
    """Per-device bytes of the params' sampling copy: compute dtype, `mesh`'s (rollout) layout."""
    import jax
    from flax import nnx
    from jaxrl.models.params import abstract_decoder, state_shardings

    state = nnx.state(abstract_decoder(model_config, mesh))
    shapes, shardings = nnx.to_pure_dict(state), nnx.to_pure_dict(state_shardings(state, mesh))
    as_copy = lambda x, s: jax.ShapeDtypeStruct(x.shape, model_config.compute_dtype, sharding=s)
    return sharded_bytes(jax.tree.map(as_copy, shapes, shardings))


def time_plan(
    config, method, model_config, lm, rows, seq_len, chip_name, mfu, steps, lengths, devices=None
) -> dict[str, Any]:
    """The time estimate of `jaxrl plan --chip` (see `jaxrl.train.timeplan`), as a JSON-able dict;
    devices: a topology's, for the rollout's own mesh spec."""
    from jaxrl.models.engine import slot_count
    from jaxrl.train import timeplan
    from jaxrl.train.chips import chip

    from jaxrl.sharding import data_parallel_size

    assumed = []
    if steps is None:
        steps = config.loop.max_steps if config.loop.max_steps > 0 else 1
        if config.loop.max_steps <= 0:
            assumed.append("the recipe counts epochs: one step planned; pass --steps N for the run")
    if mfu <= 0 or mfu > 1:
        raise JaxrlError(f"--mfu {mfu}: a fraction in (0, 1]")
    if method == "sft":
        layout = timeplan.Layout(lm.mesh.size, data_parallel_size(lm), lm.mesh.shape["tensor"])
        plan = timeplan.sft_plan(model_config, rows, seq_len, steps, chip(chip_name), layout, mfu)
    else:
        s = config.grpo
        sampling = sampling_mesh_of(config.rollout, lm, devices) or lm
        layout = timeplan.Layout(sampling.mesh.size, data_parallel_size(sampling), sampling.mesh.shape["tensor"])
        if lengths is None:
            measured = timeplan.Lengths(s.max_completion_length / 2, s.max_completion_length)
            assumed.append(f"completions: mean {measured.mean:g}, longest {measured.longest:g} tokens (assumed)")
        elif "," in lengths and not Path(lengths).exists():
            try:
                measured = timeplan.Lengths(*map(float, lengths.split(",")))
            except (TypeError, ValueError):
                raise JaxrlError(f"--lengths {lengths!r}: MEAN,LONGEST completion tokens, or a GRPO run") from None
            if not all(math.isfinite(x) and x > 0 for x in (measured.mean, measured.longest)):
                raise JaxrlError(f"--lengths {lengths!r}: MEAN and LONGEST must be finite token counts > 0")
        else:
            measured = timeplan.lengths_from_run(lengths)
            assumed.append(
                f"completions measured in {lengths}: mean {measured.mean:.0f}, longest {measured.longest:.0f}"
            )
        slots = slot_count(config.rollout.slots, s.prompts_per_step * s.num_generations, sampling)
        plan = timeplan.grpo_plan(model_config, s, steps, chip(chip_name), layout, mfu, measured, slots)
    return {**dataclasses.asdict(plan), "chip": chip_name, "mfu": mfu, "assumed": assumed}


def kv_cache_bytes(model_config, rows: int, slots: int, mesh) -> int:
    """Per-device bytes of the engine's KV cache (`RowCache`: keys, values, each row's length) for
    `rows` decode slots of `slots` positions."""
    import jax
    import numpy as np

    shape = (model_config.num_layers, rows, slots, model_config.num_kv_heads, model_config.head_dim)
    kv = jax.ShapeDtypeStruct(
        shape, model_config.compute_dtype, sharding=mesh.sharding(("layers", "batch", "seq", "kv_heads", None), shape)
    )
    lengths = jax.ShapeDtypeStruct((rows,), np.int32, sharding=mesh.sharding(("batch",), (rows,)))
    return sharded_bytes([kv, kv, lengths])


def make_plan(
    recipe: str | None,
    mesh: str,
    *,
    overrides=(),
    method: str | None = None,
    model: str | None = None,
    rows: int | None = None,
    chip: str | None = None,
    mfu: float = 0.4,
    steps: int | None = None,
    lengths: str | None = None,
    topology: str | None = None,
    slices: int = 1,
) -> MemoryPlan:
    """Compiles the recipe's step for `mesh` over this process's devices and measures it; with a
    chip, also estimates the steps' and the run's time (`timeplan`; steps: default loop.max_steps;
    lengths: "MEAN,LONGEST" completion tokens or a GRPO run whose metrics measured them).
    topology: a TPU pod type (`jaxrl.topology`): every program of the run is compiled by the TPU
    compiler for that pod's devices instead (`slices` of it), and it judges the fit."""
    import jax
    from jaxrl.train import plan_programs
    from jaxrl.train.loop import Trainer, check_batch_size, flops_per_token

    from jaxrl.sharding import LogicalMesh, MeshSpec, data_parallel_size, make_mesh

    method = recipe_method(recipe, method)
    pod = devices = None
    if topology:
        from jaxrl.topology import topology_devices, tpu_pod

        pod = tpu_pod(topology, slices)
        devices = topology_devices(pod)
        chip = pod.name
    time_chip = pod.generation.name if pod else chip  # the time plan's chip figures (train/chips.py)
    capacity = pod.hbm_bytes if pod else chip_capacity(chip) if chip else None
    if method == "sft":
        from jaxrl.train.sft import load_config

        config = load_config(recipe, overrides)
        loss_fn, host_batch = sft_inputs(config, rows)
    else:
        from jaxrl.train.grpo import load_config

        config = load_config(recipe, overrides)
        loss_fn, host_batch = grpo_inputs(config, rows)
    spec = MeshSpec.parse(mesh or config.loop.mesh)
    lm = LogicalMesh(make_mesh(spec, devices))
    k = config.loop.gradient_accumulation_steps
    num_rows, seq_len = next(iter(host_batch.values())).shape
    check_batch_size(num_rows, k, data_parallel_size(lm), "batch rows")
    model_config = model_config_of(model, config.model)
    total_steps = config.loop.max_steps if config.loop.max_steps > 0 else 1000
    trainer = Trainer.abstract(
        model_config, loss_fn, config.optimizer, total_steps, freeze=config.freeze, accumulation=k, mesh=lm
    )
    lowered, batch = trainer.lower(host_batch)
    params_bytes = sharded_bytes(trainer.params)
    step, _ = plan_programs.measure("train step", lowered)
    kv = copy = slots = None
    programs = [step] if pod else None
    if method == "grpo":
        from jaxrl.models.engine import slot_count

        sampling_mesh = sampling_mesh_of(config.rollout, lm, devices)
        slots = slot_count(config.rollout.slots, num_rows, sampling_mesh or lm)
        length = config.grpo.max_prompt_length + config.grpo.max_completion_length
        kv = kv_cache_bytes(model_config, slots, length, sampling_mesh or lm)
        copy = 0 if sampling_mesh is None else sampling_copy_bytes(model_config, sampling_mesh)
        if pod:
            programs += plan_programs.grpo_programs(config, trainer, sampling_mesh, num_rows, slots)
    if pod:
        from jaxrl.models.attention import resolve

        from jaxrl.topology import libtpu_version

        target = {
            "platform": "tpu",
            "compiler": f"the TPU compiler (libtpu {libtpu_version()}, jax {jax.__version__})",
            "topology": f"{pod.name} ({pod.topology}, {pod.devices} devices"
            + (f", {pod.slices} slices)" if pod.slices > 1 else ")"),
            "attention": resolve(model_config.attention, seq_len, seq_len, "tpu"),
            "mosaic_kernels": sum(p.mosaic_kernels for p in programs),
            # the time plan's count (6 x matmul params + attention per token) beside the compiler's
            # cost analysis, which counts each loop body once (the layer scan: one layer of L) and
            # nothing inside a Mosaic kernel
            "step_flops_per_device": {
                "time plan": flops_per_token(model_config, seq_len) * num_rows * seq_len / len(devices),
                "compiler": step.flops,
            },
        }
    else:
        target = {"platform": "cpu", "compiler": f"the CPU compiler (jax {jax.__version__}; an estimate of a chip's)"}
    return MemoryPlan(
        method=method,
        model=model or config.model.path,
        num_params=model_config.num_params(),
        mesh=str(spec),
        devices=len(devices) if devices else jax.device_count(),
        rows=num_rows,
        seq_len=seq_len,
        accumulation=k,
        params=params_bytes,
        opt_state=sharded_bytes(trainer.opt_state),
        batch=sharded_bytes(batch),
        arguments=step.arguments,
        outputs=step.outputs,
        aliased=step.aliased,
        temporaries=step.temporaries,
        code=step.code,
        peak=step.peak,
        chip=chip,
        capacity=capacity,
        kv_cache_bytes=kv,
        decode_slots=slots,
        sampling_copy_bytes=copy,
        time_plan=None
        if time_chip is None
        else time_plan(config, method, model_config, lm, num_rows, seq_len, time_chip, mfu, steps, lengths, devices),
        target=target,
        programs=None if programs is None else [dataclasses.asdict(p) for p in programs],
        reference=params_bytes if method == "grpo" and config.grpo.beta > 0 else 0,  # the initial params
    )


def sampling_mesh_of(rollout, lm, devices):
    """`rollout.sampling_mesh(lm)`, its own mesh spec laid over `devices` (a topology's) when given."""
    from jaxrl.sharding import LogicalMesh, make_mesh, rules_preset

    if devices is None or not rollout.mesh:
        return rollout.sampling_mesh(lm)
    return LogicalMesh(make_mesh(rollout.mesh, devices), rules_preset(rollout.rules))


# ---------------------------------------------------------------------------------------------
# The command: a fresh process with the emulated devices


def device_env(devices: int, env: dict[str, str] | None = None) -> dict[str, str]:
    """`env` with JAX on CPU and `devices` emulated devices (any earlier device count replaced)."""
    env = dict(os.environ if env is None else env)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={devices}"])
    env["JAX_PLATFORMS"] = "cpu"
    return env


def topology_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """`env` for a process that compiles for a TPU topology: JAX itself on the CPU (the host has
    no chip), libtpu loaded only as the compiler (`jaxrl.topology.SHARED_LIBTPU`)."""
    from jaxrl.topology import SHARED_LIBTPU

    env = {**SHARED_LIBTPU, **dict(os.environ if env is None else env)}
    env["JAX_PLATFORMS"] = "cpu"
    return env


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", default=None, help="YAML recipe (train/recipes/*.yaml)")
    p.add_argument("--mesh", default="", help="mesh spec, e.g. fsdp=64 or data=2,fsdp=16,tensor=2 (default: recipe's)")
    p.add_argument("--devices", type=int, default=None, help="devices to plan for (emulated on CPU: an estimate)")
    p.add_argument(
        "--topology", default=None, help="a TPU pod type, e.g. v5p-64, v4-64, v6e-16: compiled by the TPU compiler"
    )
    p.add_argument("--slices", type=int, default=1, help="with --topology: identical slices (multi-slice)")
    p.add_argument("--chip", default=None, help=f"check the fit on one of: {', '.join(CHIP_MEMORY_GB)}")
    p.add_argument("--model", default=None, help="preset name or HF directory (config.json only); default model.path")
    p.add_argument("--method", default=None, help="sft, grpo (default: from the recipe) or eval (--topology only)")
    p.add_argument("--rows", type=int, default=None, help="rows per step (default: the worst case of the recipe)")
    p.add_argument("--json", default=None, help="also write the plan as JSON to this file")
    p.add_argument("--mfu", type=float, default=0.4, help="with --chip: the training MFU the time estimate assumes")
    p.add_argument(
        "--steps", type=int, default=None, help="with --chip: optimizer steps of the run (default max_steps)"
    )
    p.add_argument("--lengths", default=None, help="with --chip, GRPO: MEAN,LONGEST completion tokens, or a run dir")
    p.add_argument("overrides", nargs="*", help="dotted recipe overrides, e.g. loop.gradient_accumulation_steps=8")


# The command's options that the planning process passes on to `make_plan` by name.
PLAN_OPTIONS = ("method", "model", "rows", "chip", "mfu", "steps", "lengths", "topology", "slices")


def plan_cli(args: argparse.Namespace) -> MemoryPlan:
    """Runs the plan in a fresh process (`--devices` emulated CPU devices, or the TPU compiler for
    `--topology`); prints the table."""
    if (args.devices is None) == (args.topology is None):
        raise JaxrlError("pass --topology POD (the TPU compiler) or --devices N (emulated CPU devices), not both")
    if args.topology and args.chip:
        raise JaxrlError("--chip goes with --devices; with --topology the pod names the chip")
    if args.topology:
        from jaxrl.topology import libtpu_version, tpu_pod

        devices, env = tpu_pod(args.topology, args.slices).devices, topology_env()
        libtpu_version()
    else:
        if args.devices < 1:
            raise JaxrlError(f"--devices {args.devices}: must be at least 1")
        devices, env = args.devices, device_env(args.devices)
    if args.chip:
        chip_capacity(args.chip)
    recipe_method(args.recipe, args.method)
    if args.mesh:
        from jaxrl.sharding import MeshSpec

        MeshSpec.parse(args.mesh).resolve(devices)  # a mismatch fails here, before a process starts
    argv = [sys.executable, "-m", "jaxrl.train.plan", "--mesh", args.mesh]
    for flag in ("recipe", "devices", *PLAN_OPTIONS):
        if getattr(args, flag) is not None:
            argv.append(f"--{flag}={getattr(args, flag)}")  # one word: a value may start with "-"
    argv += ["--emit-json", *args.overrides]
    result = subprocess.run(argv, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        errors = [line for line in result.stderr.splitlines() if line.startswith("jaxrl plan: error: ")]
        if errors:
            raise JaxrlError(errors[-1].removeprefix("jaxrl plan: error: "))
        raise JaxrlError(f"the planning process ended with status {result.returncode} and no error of its own")
    fields = {f.name for f in dataclasses.fields(MemoryPlan)}
    plan = MemoryPlan(**{k: v for k, v in json.loads(result.stdout.strip().splitlines()[-1]).items() if k in fields})
    print(plan.table())
    if args.json:
        Path(args.json).write_text(json.dumps(plan.to_json(), indent=2) + "\n")
    return plan


def main(argv: list[str] | None = None) -> int:
    """The planning process: compiles and prints the plan as one JSON line (errors: one line, status 2)."""
    p = argparse.ArgumentParser(prog="python -m jaxrl.train.plan")
    add_arguments(p)
    p.add_argument("--emit-json", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    try:
        import jax

        if args.topology is None and jax.device_count() != args.devices:
            raise JaxrlError(
                f"this process has {jax.device_count()} devices, not {args.devices}; use `jaxrl plan`, which "
                "starts a process with the emulated devices"
            )
        options = {name: getattr(args, name) for name in PLAN_OPTIONS}
        plan = make_plan(args.recipe, args.mesh, overrides=args.overrides, **options)
    except JaxrlError as e:
        print(f"jaxrl plan: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # a bug: the traceback first, then one line the command can show
        import traceback

        traceback.print_exc()
        print(f"jaxrl plan: error: the planning process failed ({type(e).__name__}: {e}); its traceback: "
              f"python -m jaxrl.train.plan {' '.join(argv or sys.argv[1:])}", file=sys.stderr)  # fmt: skip
        return 2
    if args.emit_json:
        print(json.dumps(plan.to_json()))
    else:
        print(plan.table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
