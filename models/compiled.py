"""Programs compiled ahead of time on shapes only, and what their compiler says of them.

    program, executable = measure("engine", jitted.lower(*shape_dtype_structs))

`measure` compiles a lowered program for its mesh's devices (emulated CPU devices, or a TPU
topology's on any host: `jaxrl.topology`) and keeps the compiler's own figures: per-device memory
(arguments, outputs, aliased, temporaries, peak), FLOPs and bytes where it reports them, the
collectives in its HLO and its Mosaic (Pallas TPU) kernels. A program the compiler refuses as too
large for the device is reported with the compiler's message instead of raised. `engine_programs`
lowers the sampler's continuous-batching programs on abstract inputs, as `sample(slots=N)` runs
them; training (`jaxrl.train.plan_programs`) and evaluation (`jaxrl.eval.plan`) plan with both.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from jaxrl.errors import JaxrlError

GIB = 1024**3
MOSAIC = 'custom_call_target="tpu_custom_call"'


@dataclasses.dataclass
class Program:
    """One compiled program's per-device bytes (see `MemoryPlan` for what each means); refused:
    the compiler's message when it would not compile the program (then the figures are 0)."""

    name: str
    arguments: int = 0
    outputs: int = 0
    aliased: int = 0
    temporaries: int = 0
    peak: int = 0
    code: int = 0
    flops: float | None = None
    bytes_accessed: float | None = None
    collectives: dict[str, int] | None = None
    mosaic_kernels: int = 0
    refused: str | None = None


def config_of(name: str):
    """The ModelConfig a plan compiles: a preset's, or a HF directory's config.json (no weights)."""
    from pathlib import Path

    from jaxrl.models.config import PRESETS, ModelConfig

    from jaxrl.model_files import find_config

    if name in PRESETS:
        return PRESETS[name]
    path = Path(name).expanduser()
    if not path.exists():
        raise JaxrlError(f"model {name!r} is neither a preset ({', '.join(PRESETS)}) nor an existing path")
    return ModelConfig.from_hf_dir(find_config(path).parent)


def out_of_memory(error: Exception) -> str | None:
    """The compiler's first line when `error` says the program does not fit the device."""
    text = str(error)
    if "RESOURCE_EXHAUSTED" not in text and "Ran out of memory" not in text:
        return None
    return next(line.strip() for line in text.splitlines() if line.strip())


def measure(name: str, lowered, rows: int | None = None) -> tuple[Program, Any]:
    """(the figures of `lowered` compiled, the executable or None when refused). rows: the decode
    rows, to tell weight all-gathers from the rows' own (see `count_collectives`)."""
    from jaxrl.models.sampler import count_collectives

    try:
        compiled = lowered.compile()
    except Exception as e:  # XLA raises one runtime error type for every failure
        message = out_of_memory(e)
        if message is None:
            raise JaxrlError(f"compiling the {name} program failed: {str(e).splitlines()[0]}") from None
        return Program(name, refused=message), None
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis() or {}
    cost = cost[0] if isinstance(cost, list) else cost
    hlo = compiled.as_text()
    collectives = count_collectives(hlo, rows or 0)
    if rows is None:  # only a decode loop tells weight gathers from its rows'
        del collectives["weight all-gather"]
    peak = mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes + mem.temp_size_in_bytes
    program = Program(
        name,
        arguments=mem.argument_size_in_bytes,
        outputs=mem.output_size_in_bytes,
        aliased=mem.alias_size_in_bytes,
        temporaries=mem.temp_size_in_bytes,
        peak=peak,
        code=mem.generated_code_size_in_bytes,
        flops=cost.get("flops"),
        bytes_accessed=cost.get("bytes accessed"),
        collectives=collectives,
        mosaic_kernels=hlo.count(MOSAIC),
    )
    return program, compiled


def abstract(tree, shardings=None):
    """ShapeDtypeStructs of `tree`'s leaves, with `shardings` (a matching tree) or their own."""
    import jax

    if shardings is None:
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def engine_programs(model_config, sampling_mesh, params, prompts: int, prompt_len: int, sampling, slots: int):
    """[engine loop, engine shrink] of `prompts` prompts of `prompt_len` tokens, `sampling`'s
    samples and new tokens, on `slots` decode slots of `sampling_mesh`."""
    import jax
    import jax.numpy as jnp
    from flax import nnx
    from jaxrl.models import engine
    from jaxrl.models.params import abstract_decoder
    from jaxrl.models.sampler import DecodeValues

    from jaxrl.shapes import bucket
    from jaxrl.sharding import data_parallel_size

    graphdef = nnx.graphdef(abstract_decoder(model_config, sampling_mesh))
    n, new_bucket = sampling.num_samples, bucket(sampling.max_new_tokens)
    p, b = bucket(prompt_len), bucket(prompts, 1)
    start_args = (model_config, sampling_mesh, slots, p + new_bucket, p, b, new_bucket, 0, n)
    shapes = jax.eval_shape(lambda: engine._start(*start_args))
    state = abstract(shapes, engine._start.lower(*start_args).compile().output_shardings)
    replicated = sampling_mesh.replicated()
    values = DecodeValues.of(sampling, (0,), 0)
    as_replicated = lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x), sharding=replicated)
    values = jax.tree.map(as_replicated, values)
    tokens = jax.ShapeDtypeStruct((b, p), jnp.int32, sharding=replicated)
    lengths = jax.ShapeDtypeStruct((b,), jnp.int32, sharding=replicated)
    count = jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated)
    loop = engine._run.lower(graphdef, params, state, tokens, lengths, count, values, n=n, hand_back_at=0)
    run, _ = measure("engine", loop, rows=slots)
    shards = data_parallel_size(sampling_mesh)
    half = engine.halved(slots, shards)
    if not half:
        return [run]  # the engine never halves these slots
    shrink, _ = measure("engine shrink", engine._shrink.lower(state, slots=half, shards=shards))
    return [run, shrink]


def _collective(name: str, value: int) -> str:
    if name != "all-gather bytes":
        return f"{name} {value}"
    return f"gathering {value / 1024**2:.1f} MiB" if value >= 1024**2 else f"gathering {value / 1024:.1f} KiB"


def program_lines(programs: list[dict[str, Any]], mib: bool = False) -> list[str]:
    """The per-program table (`Program`s as dicts), in GiB (MiB for tiny models)."""
    scale, unit = (1024**2, "MiB") if mib else (GIB, "GiB")
    g = lambda n: f"{n / scale:8.2f}"
    lines = [f"programs, per device ({unit}):    arguments  outputs  aliased temporaries   peak  collectives"]
    for p in programs:
        if p["refused"]:
            lines.append(f"  {p['name']:<26} does not fit: {p['refused']}")
            continue
        coll = ", ".join(_collective(k, v) for k, v in (p["collectives"] or {}).items() if v) or "none"
        lines.append(
            f"  {p['name']:<26}{g(p['arguments'])} {g(p['outputs'])} {g(p['aliased'])}    {g(p['temporaries'])} "
            f"{g(p['peak'])}  {coll}"
        )
    largest = max((p for p in programs if not p["refused"]), key=lambda p: p["peak"], default=None)
    if largest:
        lines.append(f"  largest: {largest['name']} ({largest['peak'] / GIB:.2f} GiB)")
    return lines
