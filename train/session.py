"""What an SFT run and a GRPO run do alike, before and around their own batches and loss.

    setup = prepare(config, check_batch)         # every check that needs no compile
    trainer = build_trainer(config, setup.model_path, setup.mesh, loss_fn, total_steps)
    return train(config, setup, trainer, batches, total_steps, "sft", summary)

`prepare` checks the output and checkpoint directories, the model path and the mesh, and loads
the tokenizer (checked against the model's vocabulary); `train` writes the run files (warning
when a resumed run's recipe changed), runs `fit` with the recipe's checkpoint and loop settings,
and closes what it opened.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from jaxrl.models.checkpoint import load_model
from jaxrl.models.decoder import Decoder
from jaxrl.models.params import count_params
from jaxrl.train import rundir
from jaxrl.train.checkpointing import Checkpoints
from jaxrl.train.loop import ResumableIterator, Trainer, fit

from jaxrl.metrics import MetricsLogger
from jaxrl.model_files import check_vocabulary, find_tokenizer_dir, load_tokenizer
from jaxrl.recipes import dump_recipe, recipe_to_dict
from jaxrl.sharding import LogicalMesh, data_parallel_size


@dataclasses.dataclass(frozen=True)
class RunSetup:
    run_dir: Path
    checkpoint_dir: str
    model_path: Path
    mesh: LogicalMesh
    tokenizer: Any
    vocab_size: int  # the model's; every id of the tokenizer is below it


def prepare(config, check_batch: Callable[[int], None]) -> RunSetup:
    """Checks what can be checked without compiling, in the order a user fixes it: the output
    and checkpoint directories, the model path and its config (the recipe's lengths within its
    positions), the mesh, then `check_batch(data-parallel size)`
    (the method's batch arithmetic, before anything is read), then the tokenizer and whether its
    ids fit the model's vocabulary."""
    run_dir = rundir.check_output_dir(config.loop.output_dir)
    checkpoint_dir = rundir.checkpoint_dir(run_dir, config.checkpoint.directory)
    model_path = rundir.check_model_path(config.model.path)
    rundir.check_sequence_lengths(config, model_path)
    mesh = rundir.training_mesh(config.loop.mesh)
    check_batch(data_parallel_size(mesh))
    tokenizer = load_tokenizer(model_path)
    vocab_size = check_vocabulary(tokenizer, model_path)
    return RunSetup(run_dir, checkpoint_dir, model_path, mesh, tokenizer, vocab_size)


def load_policy(config, model_path, mesh: LogicalMesh) -> Decoder:
    """The model to train, loaded straight into its sharded layout with the recipe's dtypes."""
    m = config.model
    return load_model(model_path, mesh, m.param_dtype, dtype=m.dtype, remat=m.remat, attention=m.attention)


def build_trainer(config, model_path, mesh: LogicalMesh, loss_fn, total_steps: int, trainer_class=Trainer) -> Trainer:
    """The recipe's Trainer (optimizer, freezing, accumulation, seed) of the policy on `mesh`."""
    loop = config.loop
    return trainer_class(
        load_policy(config, model_path, mesh),
        loss_fn,
        config.optimizer,
        total_steps,
        freeze=config.freeze,
        accumulation=loop.gradient_accumulation_steps,
        mesh=mesh,
        seed=loop.seed,
    )


def train(
    config,
    setup: RunSetup,
    trainer: Trainer,
    batches: ResumableIterator,
    total_steps: int,
    method: str,
    summary: str,
    close: Sequence[Callable[[], None]] = (),
) -> str:
    """Writes the run files, trains (or resumes) to `total_steps`; returns the run directory.

    summary: what the run trains on, for its first log line. close: called when the run ends,
    however it ends (e.g. a verifier's worker pool)."""
    # Written only once every check has passed, so a rejected recipe leaves nothing behind.
    tokenizer_dir = find_tokenizer_dir(setup.model_path)
    changed = rundir.write_run_files(setup.run_dir, trainer.config, tokenizer_dir, dump_recipe(config))
    checkpoints = Checkpoints(setup.checkpoint_dir, config.checkpoint)
    loop = config.loop
    logger = MetricsLogger(
        setup.run_dir,
        total_steps,
        tensorboard="tensorboard" in loop.report_to,
        wandb=loop.wandb_settings(),
        config=recipe_to_dict(config),
    )
    millions = count_params(trainer.model) / 1e6
    logger.message(f"{method}: {summary}; {total_steps} steps; {millions:.1f}M parameters; {trainer.plan.summary()}")
    if changed and checkpoints.steps() and config.checkpoint.resume:
        logger.message(f"warning: resuming with a recipe that differs from the run's in {', '.join(changed)}")
    try:
        result = fit(
            trainer,
            batches,
            total_steps,
            checkpoints,
            logger,
            save_interval=config.checkpoint.interval(total_steps),
            resume=config.checkpoint.resume,
            max_nonfinite_steps=loop.max_nonfinite_steps,
            logging_steps=loop.logging_steps,
            peak_flops_per_device=loop.peak_flops_per_device or None,
        )
    finally:
        checkpoints.close()
        logger.close()
        for closer in close:
            closer()
    if not result.preempted:
        logger.message(f"{method}: done, {result.step} steps; checkpoints in {checkpoints.directory}")
    return str(setup.run_dir)
