"""Every program a GRPO run executes besides its training step, compiled on shapes only.

A GRPO generation batch runs, in order: the params' copy into the sampling layout (`reshard`),
the engine's loop (`engine`: refill and decode turns in one program, `models.engine._run`) and its
halving of the slots (`engine shrink`), and the scoring pass that gives the old / reference
log-probs (`scoring`, one training micro-batch of rows). Each is lowered exactly as the run lowers
it, on `jax.ShapeDtypeStruct`s with their shardings, and measured by `measure`: the compiler's own
memory figures, its FLOPs and bytes where it reports them, its collectives (for the engine, the
ones it runs on every decode turn) and its Mosaic kernels. A program the compiler refuses (a TPU
compiler judges HBM) is reported with the compiler's message instead of failing the plan.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from jaxrl.errors import JaxrlError

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


def _abstract(tree, shardings=None):
    """ShapeDtypeStructs of `tree`'s leaves, with `shardings` (a matching tree) or their own."""
    import jax

    if shardings is None:
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def reshard_program(trainer, sampling_mesh) -> tuple[Program, Any]:
    """(the params' copy into the sampling layout, the copy's abstract params): `sampling_copy`'s
    one jitted program, cast to the compute dtype."""
    import jax
    import jax.numpy as jnp
    from flax import nnx
    from jaxrl.models.params import abstract_decoder, state_shardings

    config = trainer.config
    state = nnx.state(abstract_decoder(config, sampling_mesh))
    shardings = nnx.to_pure_dict(state_shardings(state, sampling_mesh))
    cast = lambda x: x.astype(config.compute_dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x
    copy = jax.jit(lambda p: jax.tree.map(cast, p), out_shardings=shardings)
    program, _ = measure("reshard", copy.lower(trainer.params))
    return program, _abstract(jax.eval_shape(copy, trainer.params), shardings)


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

    graphdef = nnx.graphdef(abstract_decoder(model_config, sampling_mesh))
    n, new_bucket = sampling.num_samples, bucket(sampling.max_new_tokens)
    p, b = bucket(prompt_len), bucket(prompts, 1)
    start_args = (model_config, sampling_mesh, slots, p + new_bucket, p, b, new_bucket, 0, n)
    shapes = jax.eval_shape(lambda: engine._start(*start_args))
    state = _abstract(shapes, engine._start.lower(*start_args).compile().output_shardings)
    replicated = sampling_mesh.replicated()
    values = DecodeValues.of(sampling, (0,), 0)
    as_replicated = lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x), sharding=replicated)
    values = jax.tree.map(as_replicated, values)
    tokens = jax.ShapeDtypeStruct((b, p), jnp.int32, sharding=replicated)
    lengths = jax.ShapeDtypeStruct((b,), jnp.int32, sharding=replicated)
    count = jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated)
    loop = engine._run.lower(graphdef, params, state, tokens, lengths, count, values, n=n, hand_back_at=0)
    run, _ = measure("engine", loop, rows=slots)
    shrink, _ = measure("engine shrink", engine._shrink.lower(state, slots=max(slots // 2, 1)))
    return [run, shrink]


def scoring_program(trainer, rows: int, prompt_len: int, completion_len: int, loss) -> Program:
    """The scoring pass (old / reference log-probs and entropy) on one training micro-batch."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec
    from jaxrl.train.grpo_rollout import _score_fn

    lm = trainer.mesh
    by_rows = NamedSharding(lm.mesh, PartitionSpec(lm.spec(("batch",), (rows,))[0], None))
    shape = lambda t, dtype: jax.ShapeDtypeStruct((rows, t), dtype, sharding=by_rows)
    score = _score_fn(trainer.graphdef, loss.temperature, loss.logprob_chunk_size, loss.logprob_vocab_chunk_size)
    args = (shape(prompt_len + completion_len, jnp.int32),) * 2 + (shape(completion_len, jnp.float32),)
    return measure("scoring", score.lower(trainer.params, *args))[0]


def grpo_programs(config, trainer, sampling_mesh, rows: int, slots: int) -> list[Program]:
    """reshard, engine, engine shrink and scoring of a GRPO recipe's generation batch."""
    from jaxrl.models.sampler import SamplingConfig

    s = config.grpo
    if sampling_mesh is None:
        params, programs = trainer.params, []
        sampling_mesh = trainer.mesh
    else:
        reshard, params = reshard_program(trainer, sampling_mesh)
        programs = [reshard]
    sampling = SamplingConfig(
        temperature=s.temperature, max_new_tokens=s.max_completion_length, num_samples=s.num_generations
    )
    programs += engine_programs(
        trainer.config, sampling_mesh, params, s.prompts_per_step, s.max_prompt_length, sampling, slots
    )
    micro_rows = rows // config.loop.gradient_accumulation_steps
    programs.append(scoring_program(trainer, micro_rows, s.max_prompt_length, s.max_completion_length, s.loss))
    return programs


def refused_figures(message: str) -> tuple[float, float] | None:
    """(needed GiB, available GiB) from a TPU compiler's out-of-memory message, when it says both."""
    found = re.findall(r"\(([\d.]+)([KMGT])\)", message)
    scale = {"K": 2**-20, "M": 2**-10, "G": 1.0, "T": 1024.0}
    if len(found) < 2:
        return None
    (need, u1), (have, u2) = found[-2], found[-1]
    return float(need) * scale[u1], float(have) * scale[u2]
