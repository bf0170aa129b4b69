"""One optimizer step of TRL on a batch jaxrl built: the reference side of `jaxrl compare-step`.

TRL runs its own trainer (`SFTTrainer` / `GRPOTrainer`, stopped after its first optimizer step):
its collator, loss, gradient accumulation, clipping, learning-rate schedule and AdamW. It does not
choose the data: SFT gets jaxrl's tokenised examples with labels from jaxrl's loss mask; GRPO gets
jaxrl's prompt ids and the completions jaxrl sampled through TRL's `rollout_func` hook, and computes
the rewards (with the recipe's reward functions), the advantages and the loss itself.

torch and trl are imported inside the functions: the rest of jaxrl never needs them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import os
import tempfile
import warnings
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from jaxrl.errors import JaxrlError

TRL_VERSIONS = ">=1.16,<1.17"  # what compare-step was tested with (pyproject's `trl` extra)


@dataclasses.dataclass
class StepRecord:
    """One side's step. grads: HF tensor name -> fp32 gradient before clipping (zeros for frozen
    tensors); updates: name -> parameter after minus before; params: name -> the parameter before;
    advantages [N] (GRPO only)."""

    loss: float
    grad_norm: float
    lr: float
    grads: dict[str, np.ndarray]
    updates: dict[str, np.ndarray]
    params: dict[str, np.ndarray]
    advantages: np.ndarray | None = None
    notes: list[str] = dataclasses.field(default_factory=list)


def import_trl():
    """(torch, trl), or a JaxrlError that says how to install them."""
    try:
        import torch
        import trl
    except ImportError:
        raise JaxrlError(f"compare-step needs TRL: pip install 'jaxrl[trl]' (trl{TRL_VERSIONS})") from None
    return torch, trl


def _cuda() -> bool:
    torch, _ = import_trl()
    return torch.cuda.is_available()


@dataclasses.dataclass(frozen=True)
class Translation:
    """The recipe in TRL's terms. args: keyword arguments of SFTConfig / GRPOConfig. translated:
    (jaxrl knob, TRL name) pairs. not_translated: jaxrl knob -> why TRL has no counterpart (or how
    both sides still see the same thing)."""

    args: dict[str, Any]
    translated: list[tuple[str, str]]
    not_translated: dict[str, str]


def common_args(config, rows: int, total_steps: int) -> Translation:
    """Optimizer, schedule, batch and numerics: the knobs SFT and GRPO share."""
    o, loop, m = config.optimizer, config.loop, config.model
    k = loop.gradient_accumulation_steps
    args = dict(
        learning_rate=o.learning_rate,
        adam_beta1=o.adam_beta1,
        adam_beta2=o.adam_beta2,
        adam_epsilon=o.adam_epsilon,
        weight_decay=o.weight_decay,
        max_grad_norm=o.max_grad_norm if o.max_grad_norm and o.max_grad_norm > 0 else 0.0,
        lr_scheduler_type=o.lr_scheduler_type,
        # transformers 5: warmup_steps below 1 is a ratio of the run's steps
        warmup_steps=o.warmup_steps if o.warmup_steps > 0 else o.warmup_ratio,
        max_steps=total_steps,  # the run's length, so the schedule is the run's; stopped after one step
        seed=loop.seed,
        gradient_accumulation_steps=k,
        per_device_train_batch_size=rows // k,
        bf16=m.dtype == "bfloat16",
        fp16=False,
        gradient_checkpointing=m.remat,
        use_cpu=not _cuda(),  # transformers refuses bf16 on a CPU unless told it is one
    )
    translated = [(f"optimizer.{n}", n) for n in ("learning_rate", "adam_beta1", "adam_beta2", "adam_epsilon")]
    translated += [
        ("optimizer.weight_decay", "weight_decay"),
        ("optimizer.max_grad_norm", "max_grad_norm (None -> 0.0: no clipping)"),
        ("optimizer.lr_scheduler_type", "lr_scheduler_type"),
        ("optimizer.warmup_ratio / warmup_steps", "warmup_steps (a value below 1 is a ratio)"),
        ("loop.max_steps", "max_steps (the schedule's length; one step is taken)"),
        ("loop.seed", "seed"),
        ("loop.gradient_accumulation_steps", "gradient_accumulation_steps"),
        ("model.dtype", "bf16 (autocast over fp32 master weights)"),
        ("model.param_dtype", "the torch model's dtype"),
        ("model.remat", "gradient_checkpointing"),
        ("freeze.freeze / freeze.train_only", "requires_grad=False on the same tensors"),
    ]
    not_translated = {
        "model.attention": "an implementation choice; transformers uses its default (sdpa)",
        "loop.mesh": "jaxrl's device layout; TRL runs on one device",
        "checkpoint.*, loop.output_dir, loop.logging_steps, loop.report_to, loop.run_name, loop.wandb_*": (
            "run management, no effect on a step"
        ),
    }
    return Translation(args, translated, not_translated)


_EXTRA_ARGS: dict[str, Any] = {}


@contextlib.contextmanager
def extra_args(values: dict[str, Any]):
    """TRL config values that replace the translation's while the block runs (compare-step's --trl)."""
    _EXTRA_ARGS.update(values)
    try:
        yield
    finally:
        _EXTRA_ARGS.clear()


# One step, in order, nothing written or printed: the TRL settings both comparisons share.
_QUIET = dict(
    report_to="none",
    save_strategy="no",
    logging_strategy="no",
    disable_tqdm=True,
    shuffle_dataset=False,
    dataloader_num_workers=0,
)


def _silence():
    """TRL and transformers print progress, warnings and experimental notices; a comparison needs none."""
    stack = contextlib.ExitStack()
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    for name in ("transformers", "trl", "accelerate", "datasets"):
        logger = logging.getLogger(name)
        stack.callback(logger.setLevel, logger.level)
        logger.setLevel(logging.ERROR)
    previous = os.environ.get("TRL_EXPERIMENTAL_SILENCE")
    os.environ["TRL_EXPERIMENTAL_SILENCE"] = "1"  # rollout_func is marked experimental
    stack.callback(_restore_env, "TRL_EXPERIMENTAL_SILENCE", previous)
    from transformers.utils import logging as hf_logging

    if hf_logging.is_progress_bar_enabled():
        hf_logging.disable_progress_bar()
        stack.callback(hf_logging.enable_progress_bar)
    return stack


def _restore_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def _recording(trainer_class):
    """`trainer_class` that keeps each micro-batch's loss and the gradients before clipping."""
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    class StopAfterOneStep(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            control.should_training_stop = True

    class Recording(trainer_class):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, callbacks=[StopAfterOneStep()], **kwargs)
            for callback in (PrinterCallback, ProgressCallback):  # they print the run's metrics on stdout
                self.remove_callback(callback)
            self.micro_losses, self.recorded_grads, self.recorded_norm, self.recorded_lr = [], None, None, None

        def training_step(self, *args, **kwargs):
            loss = super().training_step(*args, **kwargs)
            self.micro_losses.append(float(loss))
            return loss

        def _record(self, model):
            self.recorded_grads = {
                name: p.grad.detach().float().cpu().numpy().copy()
                for name, p in model.named_parameters()
                if p.grad is not None
            }
            self.recorded_lr = float(self.lr_scheduler.get_last_lr()[0])

        def _clip_grad_norm(self, model):  # called only when clipping is on, before it clips
            self._record(model)
            self.recorded_norm = float(super()._clip_grad_norm(model))
            return self.recorded_norm

        def _get_grad_norm(self, model, grad_norm=None):
            if grad_norm is None:  # no clipping: the gradients are still the raw ones
                self._record(model)
            norm = super()._get_grad_norm(model, grad_norm=grad_norm)
            if self.recorded_norm is None:
                self.recorded_norm = float(norm)
            return norm

    return Recording


def load_torch_model(model_dir, config, frozen: set[str]):
    """The HF model in the recipe's parameter dtype, with jaxrl's frozen tensors frozen."""
    torch, _ = import_trl()
    import transformers

    dtype = getattr(torch, config.model.param_dtype or "float32")
    model = transformers.AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype)
    for name, p in model.named_parameters():
        if name in frozen:
            p.requires_grad_(False)
    return model


def _fresh_process_state() -> None:
    """Drops what an earlier Trainer in this process left behind (its objects and accelerate's
    process-wide state) before the next one is built: several comparisons in one process (the
    tests) otherwise crashed inside the next Trainer's set-up."""
    from accelerate.state import AcceleratorState, PartialState

    gc.collect()
    AcceleratorState._reset_state(reset_partial_state=True)
    PartialState._reset_state()


def _run(trainer, model) -> StepRecord:
    """Trains one step and reads what it did; the gradients of frozen tensors are zeros."""
    before = {n: p.detach().float().cpu().numpy().copy() for n, p in model.named_parameters()}
    trainer.train()
    if trainer.recorded_grads is None:
        raise JaxrlError("TRL took no optimizer step (was the batch empty?)")
    after = {n: p.detach().float().cpu().numpy() for n, p in model.named_parameters()}
    grads = {n: trainer.recorded_grads.get(n, np.zeros_like(v)) for n, v in before.items()}
    updates = {n: after[n] - before[n] for n in before}
    loss = float(sum(trainer.micro_losses))
    return StepRecord(loss, trainer.recorded_norm, trainer.recorded_lr, grads, updates, before)


def sft_step(model_dir, tokenizer, config, examples, total_steps: int, frozen: set[str]):
    """TRL's SFTTrainer, one step on `examples`: (input_ids, labels) lists, labels -100 where
    jaxrl's loss mask does not train. Returns (StepRecord, Translation)."""
    _, trl = import_trl()
    from datasets import Dataset

    k = config.loop.gradient_accumulation_steps
    if len(examples) % k:
        raise JaxrlError(f"{len(examples)} examples do not split into {k} equal micro-batches for TRL")
    t = common_args(config, len(examples), total_steps)
    t.translated.append(("sft.batch_size", "per_device_train_batch_size x gradient_accumulation_steps"))
    t.not_translated.update(
        {
            "sft.max_length": "jaxrl drops longer examples, TRL would cut them; TRL gets jaxrl's kept examples",
            "sft.completion_only_loss": "applied through the labels: TRL trains exactly the tokens jaxrl's mask trains",
            "sft.padding_free": "TRL gets one example per row (its padding_free needs flash attention); same loss",
            "sft.pad_to_multiple_of, sft.loss_chunk_size": "memory layout only",
            "data.*, chat.*, sft.shuffle": "jaxrl's tokenised first batch is given to both sides",
        }
    )
    with _silence(), tempfile.TemporaryDirectory() as out:
        args = trl.SFTConfig(
            output_dir=out, max_length=None, packing=False, padding_free=False, **_QUIET, **{**t.args, **_EXTRA_ARGS}
        )
        _fresh_process_state()
        model = load_torch_model(model_dir, config, frozen)
        data = Dataset.from_list([{"input_ids": ids, "labels": labels} for ids, labels in examples])
        trainer = _recording(trl.SFTTrainer)(model=model, args=args, train_dataset=data, processing_class=tokenizer)
        return _run(trainer, model), t


def trl_reward(name: str, fn: Callable, rows: Sequence[dict]):
    """A jaxrl reward function in TRL's calling convention: TRL passes the dataset's `jaxrl_row`
    column (and its own extras); the function gets the jaxrl rows' columns, as jaxrl's scorer gives
    them. A function that raises gives None for the batch, as in jaxrl's scorer."""
    keys = sorted({key for row in rows for key in row} - {"prompts", "completions"})

    def reward(prompts, completions, jaxrl_row, **_):
        columns = {key: [rows[i].get(key) for i in jaxrl_row] for key in keys}
        try:
            return [None if v is None else float(v) for v in fn(prompts=prompts, completions=completions, **columns)]
        except Exception:
            return [None] * len(completions)

    reward.__name__ = name
    return reward


def grpo_step(model_dir, tokenizer, config, rollout: dict, scorer, total_steps: int, frozen: set[str], reference=None):
    """TRL's GRPOTrainer, one step on jaxrl's generation batch. rollout: prompt_texts, prompt_ids,
    rows (one per prompt), completion_ids (one list per completion, prompt-major: G per prompt).
    reference: the HF directory of the KL's reference model (beta > 0; None: model_dir).
    Returns (StepRecord with TRL's advantages, Translation)."""
    _, trl = import_trl()
    import trl.trainer.grpo_trainer as grpo_module
    from datasets import Dataset

    s = config.grpo
    n = len(rollout["completion_ids"])
    t = common_args(config, n, total_steps)
    names = list(s.reward_funcs)
    t.args.update(
        num_generations=s.num_generations,
        num_iterations=s.num_iterations,
        beta=s.beta,
        use_bias_correction_kl=s.use_bias_correction_kl,
        epsilon=s.epsilon,
        epsilon_high=s.epsilon_high,
        loss_type=s.loss_type,
        scale_rewards=s.scale_rewards,
        mask_truncated_completions=s.mask_truncated_completions,
        max_completion_length=s.max_completion_length,
        temperature=s.temperature,
        top_p=s.top_p,
        top_k=s.top_k,
        reward_weights=list(s.reward_weights) or [1.0] * len(names),
    )
    t.translated.extend(
        (f"grpo.{name}", name)
        for name in (
            "num_generations",
            "num_iterations",
            "beta",
            "use_bias_correction_kl",
            "epsilon",
            "epsilon_high",
            "loss_type",
            "scale_rewards",
            "mask_truncated_completions",
            "max_completion_length",
            "temperature",
            "top_p",
            "top_k",
            "reward_weights",
        )
    )
    t.translated.extend(
        [
            ("grpo.reward_funcs", "reward_funcs (jaxrl's functions, called the same way)"),
            ("grpo.prompts_per_step", "generation_batch_size / num_generations"),
        ]
    )
    t.not_translated.update(
        {
            "grpo.max_prompt_length": "TRL 1.16 has none; both sides get jaxrl's prompt ids, already cut",
            "grpo.num_iterations": "translated, but only the first of its updates is compared",
            "grpo.top_p, grpo.top_k": "sampling only: jaxrl samples once, TRL generates nothing",
            "grpo.gold_column, grpo.verifier_*": "read by the accuracy reward, the same function on both sides",
            "grpo.logprob_chunk_size, grpo.logprob_vocab_chunk_size": "memory layout only",
            "grpo.log_completions": "logging only",
            "data.*, chat.*, grpo.shuffle, rollout.*": "jaxrl's first prompt batch and completions go to both sides",
        }
    )
    queue = defaultdict(deque)  # prompt text -> its (prompt ids, completion ids), in jaxrl's row order
    g = s.num_generations
    for row, completion in enumerate(rollout["completion_ids"]):
        p = row // g
        queue[rollout["prompt_texts"][p]].append((list(rollout["prompt_ids"][p]), list(completion)))

    def rollout_func(prompts, trainer):
        pairs = [queue[text].popleft() for text in prompts]
        return {"prompt_ids": [a for a, _ in pairs], "completion_ids": [b for _, b in pairs], "logprobs": None}

    rewards = [trl_reward(name, fn, rollout["rows"]) for name, fn in zip(names, scorer.functions, strict=True)]
    data = Dataset.from_list([{"prompt": text, "jaxrl_row": i} for i, text in enumerate(rollout["prompt_texts"])])
    with _silence(), tempfile.TemporaryDirectory() as out:
        args = trl.GRPOConfig(output_dir=out, log_completions=False, **_QUIET, **{**t.args, **_EXTRA_ARGS})
        _fresh_process_state()
        model = load_torch_model(model_dir, config, frozen)
        trainer_class = _recording(trl.GRPOTrainer)
        trainer = trainer_class(
            model=model,
            reward_funcs=rewards,
            args=args,
            train_dataset=data,
            processing_class=tokenizer,
            rollout_func=rollout_func,
        )
        if reference is not None and trainer.ref_model is not None:  # TRL loads its reference from model_dir
            trainer.ref_model.load_state_dict(load_torch_model(reference, config, set()).state_dict())
        # TRL shuffles a generation batch's rows before cutting it into micro-batches; keep jaxrl's
        # order so both sides' micro-batches hold the same rows (bnpo's mean per micro-batch reads it)
        with _patched(grpo_module, "shuffle_sequence_dict", lambda batch: batch):
            record = _run(trainer, model)
        buffered = trainer._buffered_inputs or []
        record.advantages = np.concatenate([b["advantages"].float().cpu().numpy() for b in buffered])
        per_function = np.array([list(trainer._logs["rewards"][name]) for name in names], np.float64)
        unscored = np.flatnonzero(np.isnan(per_function).all(axis=0)).tolist()
        if unscored:
            record.notes.append(
                f"rows {unscored}: every reward function gave None; jaxrl counts such a completion as 0 in its "
                "group, TRL leaves it out of the group mean and gives it advantage 0"
            )
        return record, t


@contextlib.contextmanager
def _patched(module, name: str, value):
    old = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, old)
