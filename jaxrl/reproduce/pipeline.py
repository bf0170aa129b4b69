"""The miniature study's stages: data -> base -> GRPO, SFT and the two freezing arms -> evaluation
-> analysis -> report.

The pipeline is the top floor: it calls the library's public entry points, the ones a TPU user
would (`jaxrl.train.grpo.run`, `jaxrl.train.sft.run`, `jaxrl.eval.runner.evaluate`,
`jaxrl.analysis.analyze.analyze`), never the `jaxrl` command. Each stage leaves a marker in
`.done/`, so a killed reproduction resumes at the stage it was in (and training resumes from its
last checkpoint).
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path

from jaxrl import synthetic
from jaxrl.destinations import check_destination
from jaxrl.errors import JaxrlError
from jaxrl.model_files import latest_checkpoint
from jaxrl.reproduce.arms import Arm, sft_arms
from jaxrl.reproduce.base import BASE_SHAPE, BaseSpec, build_base, world_and_pools, write_jsonl


@dataclasses.dataclass(frozen=True)
class Preset:
    """Sizes of one reproduction; the recipes' other settings are the study's (see `grpo_overrides`)."""

    name: str
    num_train: int  # word problems both methods train on
    num_test: int  # held-out word problems: the in-domain test and the KL set
    grpo_steps: int
    grpo_prompts: int  # prompts per step
    grpo_generations: int
    grpo_lr: float
    sft_steps: int
    sft_batch: int
    sft_lr: float
    checkpoints: int  # per run, evenly spaced
    eval_samples: int  # completions per test problem
    num_instruction_prompts: int


PRESETS = {
    "default": Preset("default", num_train=256, num_test=100, grpo_steps=40, grpo_prompts=8, grpo_generations=8,
                      grpo_lr=1e-4, sft_steps=96, sft_batch=8, sft_lr=1e-3, checkpoints=8, eval_samples=4,
                      num_instruction_prompts=48),
    "fast": Preset("fast", num_train=64, num_test=24, grpo_steps=12, grpo_prompts=4, grpo_generations=4,
                   grpo_lr=1e-4, sft_steps=24, sft_batch=8, sft_lr=1e-3, checkpoints=3, eval_samples=1,
                   num_instruction_prompts=24),
}  # fmt: skip
GRPO_COMPLETION = 64  # tokens: a base-style solution takes up to ~30
EVAL_NEW_TOKENS = 160  # the teacher's style (what SFT learns) takes up to ~130


def write_data(preset: Preset, spec: BaseSpec, data: Path) -> dict[str, Path]:
    """The training and test files, each in the schema of the dataset whose role it plays."""
    world, _, train, test = world_and_pools(spec, preset.num_train, preset.num_test)
    return {
        "train": write_jsonl(data / "train.jsonl", synthetic.math_rows(train, "teacher")),
        "math500": write_jsonl(data / "math500.jsonl", synthetic.math500_rows(test)),
        "triviaqa": write_jsonl(data / "triviaqa.jsonl", synthetic.trivia_rows(world)),
        "ifeval": write_jsonl(
            data / "ifeval.jsonl", synthetic.instruction_rows(world, spec.seed, preset.num_instruction_prompts)
        ),
    }


def grpo_overrides(preset: Preset, base: Path, train: Path, out: Path) -> list[str]:
    """The study's GRPO recipe (dr_grpo, no std scaling, truncated completions masked, beta 0,
    epsilon 0.2, clip 0.2, T 0.6, accuracy + 0.2 format) at the preset's sizes."""
    every = max(preset.grpo_steps // preset.checkpoints, 1)
    return [
        f"model.path={base}",
        f"data.dataset_name={train}",
        "grpo.gold_column=answer",
        f"grpo.prompts_per_step={preset.grpo_prompts}",
        f"grpo.num_generations={preset.grpo_generations}",
        f"grpo.max_completion_length={GRPO_COMPLETION}",
        "grpo.max_prompt_length=256",
        "grpo.verifier_workers=1",
        "grpo.loss_type=dr_grpo",
        "grpo.scale_rewards=none",
        "grpo.mask_truncated_completions=true",
        "grpo.beta=0.0",
        "grpo.epsilon=0.2",
        "grpo.temperature=0.6",
        "grpo.top_p=1.0",
        "grpo.reward_funcs=[accuracy,format]",
        "grpo.reward_weights=[1.0,0.2]",
        f"optimizer.learning_rate={preset.grpo_lr}",
        "optimizer.lr_scheduler_type=constant_with_warmup",
        "optimizer.warmup_ratio=0.1",
        "optimizer.max_grad_norm=0.2",
        f"loop.max_steps={preset.grpo_steps}",
        f"loop.output_dir={out}",
        f"checkpoint.save_steps={every}",
        "loop.logging_steps=1",
    ]


def sft_overrides(preset: Preset, base: Path, train: Path, out: Path) -> list[str]:
    """The study's SFT recipe (whole-sequence loss, constant lr after 10% warmup, clip 0.2) at the
    preset's sizes, on the teacher's solutions to the same problems."""
    every = max(preset.sft_steps // preset.checkpoints, 1)
    return [
        f"model.path={base}",
        f"data.dataset_name={train}",
        f"sft.batch_size={preset.sft_batch}",
        "sft.max_length=256",
        "sft.pad_to_multiple_of=32",
        f"optimizer.learning_rate={preset.sft_lr}",
        "optimizer.lr_scheduler_type=constant_with_warmup",
        "optimizer.warmup_ratio=0.1",
        "optimizer.max_grad_norm=0.2",
        f"loop.max_steps={preset.sft_steps}",
        f"loop.output_dir={out}",
        f"checkpoint.save_steps={every}",
        "loop.logging_steps=1",
    ]


def evaluate(preset: Preset, models: dict[str, Path], files: dict[str, Path], base: Path, out: Path) -> dict:
    """In-domain (with the study's system prompt and format) and the two probes (without it)."""
    from jaxrl.eval.runner import EvalConfig, evaluate

    common = dict(temperature=0.6, top_p=0.95, max_new_tokens=EVAL_NEW_TOKENS, chat_template="olmo2", seed=0)
    maths = EvalConfig(
        tasks=("math500",),
        num_samples=preset.eval_samples,
        system_prompt="study",
        data={"math500": str(files["math500"])},
        kl_base=str(base),
        **common,
    )
    probes = EvalConfig(
        tasks=("triviaqa", "ifeval"),
        system_prompt="none",
        data={t: str(files[t]) for t in ("triviaqa", "ifeval")},
        **common,
    )
    paths = [f"{name}={m}" for name, m in models.items()]
    return {"maths": evaluate(paths, maths, out / "maths"), "probes": evaluate(paths, probes, out / "probes")}


def stage(out: Path, name: str, log, work, redo: bool = False) -> float:
    """Runs `work()` unless `out/.done/name` exists (or `redo`: its inputs are new); returns the seconds
    it took (then or earlier)."""
    done = out / ".done" / name
    if redo:
        done.unlink(missing_ok=True)
    if done.exists():
        log(f"[{name}] done already")
        return float(done.read_text() or 0)
    start = time.time()
    log(f"[{name}] ...")
    work()
    seconds = time.time() - start
    done.parent.mkdir(parents=True, exist_ok=True)
    done.write_text(f"{seconds:.1f}")
    log(f"[{name}] {seconds:.0f} s")
    return seconds


def base_model(spec: BaseSpec, cache: str | Path | None, rebuild: bool, log) -> Path:
    """The shipped base model, or one built (and cached) from `spec`; `rebuild` re-makes the shipped one."""
    from jaxrl.reproduce.base import ship_base, shipped_base

    if not rebuild and (shipped := shipped_base(spec)):
        return shipped
    cache = Path(cache) if cache else Path.home() / ".cache" / "jaxrl" / f"reproduce-base-{spec.key()}"
    built = build_base(spec, cache, log)
    return ship_base(spec, built) if rebuild else built


def reproduce(
    preset_name: str = "default",
    out: str | Path = "runs/reproduce",
    cache: str | Path | None = None,
    rebuild_base: bool = False,
    log=print,
) -> Path:
    """Runs (or resumes) the whole miniature study; returns the report directory."""
    from jaxrl.reproduce.report import write_report

    if preset_name not in PRESETS:
        raise JaxrlError(f"unknown preset {preset_name!r}; choose from {', '.join(PRESETS)}")
    preset, spec, out = PRESETS[preset_name], BaseSpec(), check_destination(out, "directory", "--out")
    if cache is not None:
        check_destination(cache, "directory", "--base-cache")
    out.mkdir(parents=True, exist_ok=True)
    timings, files = {}, write_data(preset, spec, out / "data")
    timings["base"] = stage(out, "base", log, lambda: _copy(base_model(spec, cache, rebuild_base, log), out / "base"))
    base = out / "base"
    arms = sft_arms(BASE_SHAPE["num_layers"])
    runs = {"grpo": out / "runs" / "grpo", **{arm.name: out / "runs" / arm.name for arm in arms}}

    def train_grpo():
        from jaxrl.train import grpo

        grpo.run(None, grpo_overrides(preset, base, files["train"], runs["grpo"]))

    def train_sft(arm: Arm):
        from jaxrl.train import sft

        sft.run(None, sft_overrides(preset, base, files["train"], runs[arm.name]) + arm.overrides())

    # a run trained now (e.g. an arm new to an older report directory) makes the evaluation and analysis stale
    trained = any(not (out / ".done" / name).exists() for name in runs)
    timings["grpo"] = stage(out, "grpo", log, train_grpo)
    for arm in arms:
        timings[arm.name] = stage(out, arm.name, log, lambda arm=arm: train_sft(arm))
    models = {"base": base, "GRPO": latest_checkpoint(runs["grpo"])}
    models |= {arm.label: latest_checkpoint(runs[arm.name]) for arm in arms}
    timings["eval"] = stage(out, "eval", log, lambda: evaluate(preset, models, files, base, out / "eval"), trained)
    frozen_arms = [runs[arm.name] for arm in arms if arm.freeze or arm.train_only]
    timings["analysis"] = stage(
        out, "analysis", log, lambda: _analyze(base, list(runs.values()), frozen_arms, out / "analysis", log), trained
    )
    write_report(out, preset, models, runs, arms, timings)
    return out


def _copy(src: Path, dst: Path) -> None:
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)


def _analyze(base: Path, runs: list[Path], frozen_arms: list[Path], out: Path, log) -> None:
    """The study's analysis (q, k, v, o, gate, up, down) of every run, and every tensor of the
    freezing arms (embeddings, norms and lm_head too) under `out/all-tensors`: the freezing's check."""
    from jaxrl.analysis.analyze import analyze
    from jaxrl.models.keymap import key_map_of_hf_config

    rows = analyze(base, runs, out, key_map_of_hf_config)
    log(f"wrote {len(rows)} rows and figures to {out}")
    if frozen_arms:
        rows = analyze(base, frozen_arms, out / "all-tensors", key_map_of_hf_config, modules="all")
        log(f"wrote {len(rows)} rows of every tensor of the freezing arms to {out / 'all-tensors'}")
