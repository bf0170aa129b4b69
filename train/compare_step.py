"""`jaxrl compare-step`: one optimizer step of a recipe in jaxrl and in TRL, on the same batch.

    jaxrl compare-step MODEL --recipe FILE [--method sft|grpo] [--reference DIR] [--json] [a.b=value ...]

jaxrl builds the batch once: SFT, the recipe's first batch of examples; GRPO, the recipe's first
prompts with completions sampled by jaxrl (then fed to TRL as they are; each side scores them with
the recipe's reward functions and computes its own advantages). Each side then takes one optimizer
step from the same weights (`train.trl_step` runs TRL's trainer) and the report compares the loss,
the gradient norm, every gradient (before clipping) and every update, tensor by tensor in the HF
layout, per module and layer. A relative difference is max|a - b| / max(max|a|, max|b|).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
import yaml
from flax import nnx
from jaxrl.models.keymap import hf_names
from jaxrl.train import rundir, session
from jaxrl.train.compare_report import TOLERANCES, compare_records, format_report
from jaxrl.train.loop import Trainer, check_batch_size
from jaxrl.train.trl_step import StepRecord, import_trl

from jaxrl.errors import JaxrlError
from jaxrl.model_files import check_vocabulary, is_orbax_model, load_tokenizer
from jaxrl.recipes import read_recipe_file
from jaxrl.sharding import data_parallel_size


def hf_tensors(tree, config) -> dict[str, np.ndarray]:
    """A params-like tree (params, gradients) as fp32 host arrays under the HF tensor names."""
    out = {}
    for name, entry, layer in hf_names(config):
        x = tree
        for key in entry.path:
            x = x[key]
        x = x if layer is None else x[layer]
        out[name] = entry.to_hf(np.asarray(jax.device_get(x), np.float32))
    return out


def frozen_tensors(trainer: Trainer) -> set[str]:
    """The HF names of the tensors jaxrl's freeze settings keep fixed (per layer)."""
    frozen = set()
    for name, entry, layer in hf_names(trainer.config):
        trainable = trainer.plan.trainable[entry.path]
        if not (trainable if layer is None else trainable[layer]):
            frozen.add(name)
    return frozen


# -- jaxrl's side ---------------------------------------------------------------------------------


def _setup(config):
    if jax.process_count() > 1:
        raise JaxrlError("compare-step runs on one host (TRL's side runs in this process)")
    path = rundir.check_model_path(config.model.path)
    if is_orbax_model(path):
        raise JaxrlError(f"{path} is an Orbax checkpoint; TRL needs a HF directory: `jaxrl convert` it first")
    mesh = rundir.training_mesh(config.loop.mesh)
    tokenizer = load_tokenizer(path)
    return path, mesh, tokenizer, check_vocabulary(tokenizer, path)


def from_hf_tensors(named: dict[str, np.ndarray], like, config):
    """HF-named host arrays back into a params-like tree of fp32 host arrays (`hf_tensors`' inverse)."""
    out = jax.tree.map(lambda x: np.zeros(x.shape, np.float32), like)
    for name, entry, layer in hf_names(config):
        parent = out
        for key in entry.path[:-1]:
            parent = parent[key]
        value = entry.to_ours(np.asarray(named[name], np.float32))
        if layer is None:
            parent[entry.path[-1]] = value
        else:
            parent[entry.path[-1]][layer] = value
    return out


def both_steps(trainer: Trainer, batch, trl_side) -> tuple[StepRecord, StepRecord, dict[str, np.ndarray]]:
    """(jaxrl's step, TRL's step, the update jaxrl's optimizer makes of TRL's gradients). trl_side()
    runs TRL's step between jaxrl's gradients and its update; the third value tells the optimizer's
    translation apart from the gradients' (Adam's first step, lr * g / (|g| + eps), turns rounding in
    gradients near eps into visible update differences)."""
    cfg = trainer.config
    before = hf_tensors(trainer.params, cfg)
    loss, grads = trainer.gradients(batch)
    theirs = trl_side()
    their_grads = jax.device_put(from_hf_tensors(theirs.grads, trainer.params, cfg), trainer.param_shardings)
    crossed = hf_tensors(trainer.updated(loss, their_grads, 0)[0], cfg)
    metrics = jax.device_get(trainer.apply_gradients(loss, grads, 0))
    after = hf_tensors(trainer.params, cfg)
    values = (float(metrics[k]) for k in ("loss", "grad_norm", "lr"))
    ours = StepRecord(*values, hf_tensors(grads, cfg), {n: after[n] - before[n] for n in before}, before)
    return ours, theirs, {n: crossed[n] - before[n] for n in before}


def sft_examples(batch: dict[str, np.ndarray]) -> list[tuple[list[int], list[int]]]:
    """Every example of a jaxrl SFT batch (padded or packed rows) as (input_ids, labels) in HF's
    convention: labels[j] = input_ids[j] where jaxrl trains the prediction of token j, else -100."""
    out = []
    for tokens, segments, mask in zip(batch["tokens"], batch["segment_ids"], batch["loss_mask"], strict=True):
        for segment in np.unique(segments[segments > 0]):
            at = np.flatnonzero(segments == segment)
            ids = tokens[at].astype(int).tolist()
            trained = mask[at[:-1]] > 0  # mask[t]: the prediction of token t + 1
            out.append((ids, [-100] + [t if keep else -100 for t, keep in zip(ids[1:], trained, strict=True)]))
    return out


def compare_sft(config):
    """(jaxrl's StepRecord, TRL's, jaxrl's update of TRL's gradients, Translation, notes, facts:
    pad_tokens, how often the pad id is a real token of the batch)."""
    from jaxrl.train import trl_step

    from jaxrl.data import load_sft_dataset

    path, mesh, tokenizer, vocab = _setup(config)
    s, loop = config.sft, config.loop
    k, dp = loop.gradient_accumulation_steps, data_parallel_size(mesh)
    if not s.padding_free:
        check_batch_size(s.batch_size, k, dp, "sft.batch_size")
    if tokenizer.pad_token_id is None:
        raise JaxrlError(f"the tokenizer in {path} has no pad token; set one in tokenizer_config.json")
    dataset = load_sft_dataset(config.data, tokenizer, config.chat, s.max_length, vocab)
    batches = s.batches(dataset, tokenizer.pad_token_id, seed=loop.seed, rows_multiple_of=k * dp)
    total_steps = loop.total_steps(batches.steps_per_epoch)
    batch = next(batches)._asdict()
    trainer = session.build_trainer(config, path, mesh, s.loss_fn(), total_steps)
    frozen, examples, out = frozen_tensors(trainer), sft_examples(batch), {}

    def trl_side():
        out["record"], out["translation"] = trl_step.sft_step(path, tokenizer, config, examples, total_steps, frozen)
        return out["record"]

    pad_tokens = sum(ids.count(tokenizer.pad_token_id) for ids, _ in examples)
    return (*both_steps(trainer, batch, trl_side), out["translation"], [], {"pad_tokens": pad_tokens})


def completions_of(batch: dict[str, np.ndarray], num_generations: int):
    """(prompt ids per prompt, completion ids per row) of a GRPO training batch: prompts left-padded
    into P slots, completions right-padded into C = completion_mask.shape[1]."""
    c = batch["completion_mask"].shape[1]
    tokens, segments = batch["tokens"], batch["segment_ids"]
    p = tokens.shape[1] - c
    prompts = [tokens[r, :p][segments[r, :p] > 0].astype(int).tolist() for r in range(0, len(tokens), num_generations)]
    lengths = segments[:, p:].sum(axis=1)
    completions = [tokens[r, p : p + n].astype(int).tolist() for r, n in enumerate(lengths)]
    return prompts, completions


def truncation_disagreements(batch, completions, settings, stop_ids: set[int]) -> list[int]:
    """Rows that jaxrl and TRL mask differently under mask_truncated_completions: jaxrl masks a
    completion that hit max_completion_length without an eos; TRL one whose last token is neither
    an eos nor the pad token."""
    if not settings.mask_truncated_completions:
        return []
    masked_here = [bool(ids) and not batch["completion_mask"][r].any() for r, ids in enumerate(completions)]
    masked_there = [bool(ids) and ids[-1] not in stop_ids for ids in completions]
    return [r for r, (a, b) in enumerate(zip(masked_here, masked_there, strict=True)) if a != b]


def compare_grpo(config, reference: str | Path | None = None):
    """As `compare_sft`, for GRPO (the StepRecords carry both sides' advantages). reference: the HF
    directory of the KL's reference model (beta > 0), when the policy has left it; None: the policy's
    own weights, as at a run's first step."""
    from jaxrl.train import trl_step
    from jaxrl.train.grpo_loss import make_loss_fn
    from jaxrl.train.grpo_rollout import Rollout, generation_batch

    from jaxrl.data import PromptBatches, load_prompts
    from jaxrl.rewards import MathVerifier, RewardScorer

    path, mesh, tokenizer, vocab = _setup(config)
    s, loop = config.grpo, config.loop
    k = loop.gradient_accumulation_steps
    completions = s.prompts_per_step * s.num_generations
    check_batch_size(completions, k, data_parallel_size(mesh), "completions per step (prompts x generations)")
    prompts = load_prompts(config.data, tokenizer, config.chat, s.max_prompt_length, vocab)
    prompt_batches = PromptBatches(prompts, s.prompts_per_step, seed=loop.seed, shuffle=s.shuffle)
    total_steps = loop.total_steps(prompt_batches.steps_per_epoch * s.num_iterations)
    verifier = MathVerifier(num_workers=s.verifier_workers or None, timeout_s=s.verifier_timeout_s)
    try:
        scorer = RewardScorer(s.reward_funcs, s.reward_weights, gold_column=s.gold_column, verifier=verifier)
        trainer = session.build_trainer(config, path, mesh, make_loss_fn(s.loss), total_steps)
        ref_path = path if reference is None else rundir.check_model_path(str(reference))
        ref_params = nnx.to_pure_dict(nnx.state(session.load_policy(config, ref_path, mesh))) if s.beta > 0 else None
        pad_id = trainer.config.pad_token_id or 0
        rollout = Rollout(
            trainer.graphdef,
            tokenizer,
            scorer,
            s,
            mesh=mesh,
            pad_id=pad_id,
            ref_params=ref_params,
            micro_batches=k,
            seed=loop.seed,
        )
        prompt_batch = next(prompt_batches)
        batch, _, _ = generation_batch(trainer.params, prompt_batch, rollout, 0)
        frozen, out = frozen_tensors(trainer), {}
        prompt_ids, completion_ids = completions_of(batch, s.num_generations)
        data = {
            "prompt_texts": [tokenizer.decode(p) for p in prompt_ids],
            "prompt_ids": prompt_ids,
            "rows": prompt_batch.rows,
            "completion_ids": completion_ids,
        }

        def trl_side():
            out["record"], out["translation"] = trl_step.grpo_step(
                path, tokenizer, config, data, scorer, total_steps, frozen, reference=reference
            )
            return out["record"]

        ours, theirs, crossed = both_steps(trainer, batch, trl_side)
        ours.advantages = np.asarray(batch["advantages"], np.float32)
    finally:
        verifier.close()
    stop_ids = set(trainer.config.eos_token_ids) | {tokenizer.eos_token_id, tokenizer.pad_token_id}
    notes = list(theirs.notes)
    rows = truncation_disagreements(batch, completion_ids, s, stop_ids)
    if rows:
        notes.append(
            f"rows {rows}: jaxrl and TRL disagree on truncation (TRL counts a completion ending in the pad or an "
            "eos token as finished; jaxrl, one that stopped before max_completion_length)"
        )
    pad = trainer.config.pad_token_id
    pad_tokens = sum(ids.count(pad) for ids in prompt_ids) * s.num_generations
    pad_tokens += sum(ids.count(pad) for ids in completion_ids)
    return ours, theirs, crossed, out["translation"], notes, {"pad_tokens": pad_tokens}


def compare_step(
    model_dir: str | Path,
    recipe: str | None,
    method: str | None = None,
    overrides=(),
    tolerances: dict[str, float] | None = None,
    trl_args: dict[str, Any] | None = None,
    reference: str | Path | None = None,
) -> dict[str, Any]:
    """Runs both steps and returns the report, a JSON-able dict: `ok` says whether the loss, the
    gradient norm, every gradient and every update (of the same gradients) agree within
    `tolerances` (keys loss, grad, update; defaults by dtype). trl_args: TRL config values set on
    TRL's side only, over the translation (to see what a knob does, or to check that a wrong
    translation shows). reference: GRPO with beta > 0, the HF directory of the KL's reference model
    when MODEL is a policy that has left it (a step after a run's first; default MODEL itself)."""
    from jaxrl.train import grpo, sft, trl_step

    torch, trl = import_trl()  # before any JAX work: a missing extra fails at once
    method = method or _method_of(recipe)
    module = {"sft": sft, "grpo": grpo}.get(method)
    if module is None:
        raise JaxrlError(f"--method {method!r}; choose sft or grpo")
    config = module.load_config(recipe, [*overrides, f"model.path={model_dir}"])
    check_trl_names(trl, method, trl_args or {})  # before any model loads
    if reference is not None and not (method == "grpo" and config.grpo.beta > 0):
        raise JaxrlError("--reference is the KL's reference model: it needs a GRPO recipe with grpo.beta > 0")
    torch.manual_seed(config.loop.seed)
    with trl_step.extra_args(trl_args or {}):
        if method == "sft":
            ours, theirs, crossed, translation, notes, facts = compare_sft(config)
        else:
            ours, theirs, crossed, translation, notes, facts = compare_grpo(config, reference)
    dtype = {"compute": config.model.dtype, "params": config.model.param_dtype or "float32"}
    report = {"method": method, "model": str(model_dir), "trl_version": trl.__version__, "dtype": dtype}
    if reference is not None:
        report["reference"] = str(reference)
    report.update(compare_records(ours, theirs, crossed, dtype["params"]), **facts)
    tol = dict(TOLERANCES["bfloat16" if "bfloat16" in dtype.values() else "float32"], **(tolerances or {}))
    checks = (
        ("loss", report["loss"]["rel_diff"], tol["loss"]),
        ("grad_norm", report["grad_norm"]["rel_diff"], tol["grad"]),
        ("gradients", report["grad_max_rel_diff"], tol["grad"]),
        ("updates", report["update_max_rel_diff"], tol["update"]),
    )
    failed = [key for key, value, limit in checks if not value <= limit]
    report.update(tolerance=tol, failed=failed, ok=not failed)
    report["translated"] = [f"{a} -> {b}" for a, b in translation.translated]
    report["not_translated"] = translation.not_translated
    report["trl_only"] = {k: repr(v) for k, v in (trl_args or {}).items()}
    report["differences"] = notes + semantic_differences(config, method)
    if not trl.__version__.startswith("1.16."):
        report["differences"].append(f"trl {trl.__version__} is outside the tested range {trl_step.TRL_VERSIONS}")
    return report


def check_trl_names(trl, method: str, trl_args: dict[str, Any]) -> None:
    """Each --trl NAME must be a field of TRL's SFTConfig / GRPOConfig (a JaxrlError otherwise)."""
    cls = trl.SFTConfig if method == "sft" else trl.GRPOConfig
    known = [f.name for f in dataclasses.fields(cls)]
    for name in trl_args:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"see the fields of trl.{cls.__name__}"
            raise JaxrlError(f"--trl {name}: trl.{cls.__name__} has no field {name!r}; {hint}")


def _method_of(recipe: str | None) -> str:
    """sft or grpo from the recipe's sections, or a JaxrlError asking for --method."""
    sections = set(read_recipe_file(recipe)) if recipe else set()
    found = sections & {"sft", "grpo"}
    if len(found) != 1:
        raise JaxrlError("pass --method sft or --method grpo (the recipe does not say which)")
    return found.pop()


def semantic_differences(config, method: str) -> list[str]:
    """What differs between the two stacks by design, where this recipe meets it."""
    notes = []
    if config.optimizer.weight_decay:
        notes.append(
            "weight_decay > 0: HF's Trainer exempts biases and norm weights from weight decay, jaxrl decays "
            "every parameter; their updates differ"
        )
    return notes


# -- the command ----------------------------------------------------------------------------------


def compare_step_cli(args) -> None:
    # torch shares the accelerator with JAX in this process: JAX takes memory as it needs it
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    tolerances = {
        key: value
        for key, value in (("loss", args.loss_tol), ("grad", args.grad_tol), ("update", args.update_tol))
        if value is not None
    }
    trl_args = {}
    for item in args.trl or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise JaxrlError(f"--trl {item!r}: expected NAME=VALUE, e.g. --trl temperature=0.7")
        try:
            trl_args[key] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise JaxrlError(f"--trl {item!r}: {value!r} is not a YAML value") from None
    report = compare_step(args.model, args.recipe, args.method, args.overrides, tolerances, trl_args, args.reference)
    print(format_report(report))
    if args.json:
        print(json.dumps(report))
    if not report["ok"]:
        tol = report["tolerance"]
        raise JaxrlError(
            f"{', '.join(report['failed'])} differ beyond tolerance (loss {tol['loss']:g}, gradients "
            f"{tol['grad']:g}, updates {tol['update']:g} relative); see the table above"
        )
