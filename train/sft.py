"""Supervised fine-tuning: the recipe, the loss, and `run(recipe_path, overrides) -> run dir`.

    jaxrl train sft --recipe train/recipes/sft_3ep.yaml model.path=/models/olmo2-7b-instruct

The loss is the token-level mean of the next-token cross-entropy over loss-masked tokens of the
whole optimizer batch (all micro-batches and devices): sum(nll * mask) / sum(mask). The study
trained on whole sequences; `sft.completion_only_loss=true` trains on the completion only.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import ClassVar

import jax
import jax.numpy as jnp
from jaxrl.models.logprobs import target_logprobs, token_logprobs
from jaxrl.train import session
from jaxrl.train.config import CheckpointConfig, FreezeConfig, LoopConfig, ModelSource, OptimizerConfig
from jaxrl.train.loop import check_batch_size

from jaxrl.data import ChatConfig, DataConfig, SFTBatches, load_sft_dataset
from jaxrl.errors import JaxrlError
from jaxrl.knobs import check_knobs
from jaxrl.recipes import load_recipe
from jaxrl.sharding import data_parallel_size


@dataclasses.dataclass(frozen=True)
class SFTSettings:
    """batch_size: examples per optimizer step (all devices and micro-batches together; the study: 448).
    max_length: longer examples are dropped and counted (the study: 4096).
    padding_free: pack the examples of a step into rows of max_length (segment ids keep them apart);
      False: one example per row, padded to the longest of the batch (a multiple of pad_to_multiple_of).
    """

    DOMAINS: ClassVar[dict[str, str]] = {  # jaxrl.knobs
        "batch_size": ">= 1", "max_length": ">= 2", "pad_to_multiple_of": ">= 1", "loss_chunk_size": ">= 0",
    }  # fmt: skip

    batch_size: int = 8
    max_length: int = 1024
    padding_free: bool = False
    completion_only_loss: bool = False
    pad_to_multiple_of: int = 64
    shuffle: bool = True
    loss_chunk_size: int = 0  # > 0: logits for this many positions at a time, recomputed in backward

    def __post_init__(self):
        check_knobs(self, "sft.")

    def batches(self, dataset, pad_id: int, **placement) -> SFTBatches:
        """This recipe's resumable batches of `dataset`; placement: seed, rows_multiple_of and the
        host's process_index / process_count (`SFTBatches`)."""
        return SFTBatches(
            dataset,
            self.batch_size,
            pad_id,
            max_length=self.max_length,
            padding_free=self.padding_free,
            pad_to_multiple_of=self.pad_to_multiple_of,
            completion_only_loss=self.completion_only_loss,
            shuffle=self.shuffle,
            **placement,
        )

    def loss_fn(self):
        """The training loop's loss function these settings describe (what runs and what `plan` measures)."""
        return functools.partial(sft_loss, chunk_size=self.loss_chunk_size)


@dataclasses.dataclass(frozen=True)
class SFTConfig:
    model: ModelSource = ModelSource()
    data: DataConfig = DataConfig()
    chat: ChatConfig = ChatConfig()
    sft: SFTSettings = SFTSettings()
    optimizer: OptimizerConfig = OptimizerConfig(learning_rate=2e-5)
    freeze: FreezeConfig = FreezeConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    loop: LoopConfig = LoopConfig()


def sft_loss(model, batch: dict[str, jax.Array], chunk_size: int = 0):
    """(sum of masked token NLL, number of masked tokens, aux) for one micro-batch.

    batch: tokens, segment_ids, positions, targets int32 [B, T]; loss_mask float32 [B, T], aligned
    with the logits (1 where the prediction at t of targets[t] is trained).
    chunk_size > 0: the [B, T, V] fp32 logits never exist at once; `chunk_size` positions at a
    time are projected and recomputed in the backward pass (what a 100k vocabulary at 4096
    tokens needs).
    """
    mask = batch["loss_mask"].astype(jnp.float32)
    if chunk_size:
        h_btd, _ = model.hidden_states(batch["tokens"], batch["segment_ids"], batch["positions"])
        logp_bt = token_logprobs(h_btd, model.unembed(), batch["targets"], 1.0, chunk_size)
    else:
        logits_btv = model(batch["tokens"], batch["segment_ids"], batch["positions"])
        logp_bt = target_logprobs(logits_btv, batch["targets"])[0]
    return -jnp.sum(logp_bt * mask), jnp.sum(mask), {}


def load_config(recipe_path: str | None, overrides=()) -> SFTConfig:
    return load_recipe(SFTConfig, recipe_path, list(overrides))


def run(recipe_path: str | None, overrides=()) -> str:
    """Trains (or resumes) the run the recipe describes; returns the run directory."""
    config = load_config(recipe_path, overrides)
    cfg, loop = config.sft, config.loop
    k = loop.gradient_accumulation_steps

    def check_batch(dp: int) -> None:
        if not cfg.padding_free:
            check_batch_size(cfg.batch_size, k, dp, "sft.batch_size")

    setup = session.prepare(config, check_batch)
    dp, tokenizer = data_parallel_size(setup.mesh), setup.tokenizer
    if tokenizer.pad_token_id is None:
        raise JaxrlError(f"the tokenizer in {setup.model_path} has no pad token; set one in tokenizer_config.json")
    dataset = load_sft_dataset(config.data, tokenizer, config.chat, cfg.max_length, setup.vocab_size)
    batches = cfg.batches(
        dataset,
        tokenizer.pad_token_id,
        seed=loop.seed,
        rows_multiple_of=k * max(1, dp // jax.process_count()),
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    total_steps = loop.total_steps(batches.steps_per_epoch)
    trainer = session.build_trainer(config, setup.model_path, setup.mesh, cfg.loss_fn(), total_steps)
    counts = ", ".join(f"{name}={n}" for name, n in dataset.counts.items())
    summary = f"{len(dataset)} examples ({counts}); {batches.steps_per_epoch} steps per epoch"
    return session.train(config, setup, trainer, batches, total_steps, "sft", summary)
