"""Every program a GRPO run executes besides its training step, compiled on shapes only.

A GRPO generation batch runs, in order: the params' copy into the sampling layout (`reshard`),
the engine's loop (`engine`: refill and decode turns in one program, `models.engine._run`) and its
halving of the slots (`engine shrink`, where the engine halves them), and the scoring pass that
gives the old / reference log-probs (`scoring`, one training micro-batch of rows; only where the
run scores: num_iterations > 1 or beta > 0, as `jaxrl train grpo` decides). Each is lowered exactly as the run lowers
it, on `jax.ShapeDtypeStruct`s with their shardings, and measured by `jaxrl.models.compiled.measure`
(the compiler's memory figures, FLOPs, collectives and Mosaic kernels, or its refusal).
"""

from __future__ import annotations

from typing import Any

from jaxrl.models.compiled import Program, abstract, engine_programs, measure


def reshard_program(trainer, sampling_mesh) -> tuple[Program, Any]:
    """(the params' copy into the sampling layout, the copy's abstract params): `sampling_copy`'s
    one jitted program, cast to the compute dtype."""
    import jax
    from jaxrl.models.params import sampling_layout

    _, shardings, copy = sampling_layout(trainer.config, sampling_mesh)
    program, _ = measure("reshard", copy.lower(trainer.params))
    return program, abstract(jax.eval_shape(copy, trainer.params), shardings)


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
    if s.num_iterations > 1 or s.beta > 0:  # else the loss's forward pass gives the log-probs (no scoring pass)
        micro_rows = rows // config.loop.gradient_accumulation_steps
        programs.append(scoring_program(trainer, micro_rows, s.max_prompt_length, s.max_completion_length, s.loss))
    return programs
