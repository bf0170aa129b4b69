"""One GRPO step's wall time: jaxrl beside TRL's GRPOTrainer and Tunix's GRPOLearner, in one run.

The same work on every side: a ~17M-parameter Qwen2-shaped model in fp32 (random weights written
once as a HF directory with a tiny BPE tokenizer, `jaxrl.tiny`; every side loads that directory),
2 prompts x 8 generations, 64 completion tokens, temperature 1 (no top-p / top-k), beta 0, one
update per generation batch, AdamW (lr 1e-6, betas 0.9 / 0.999, eps 1e-8, no weight decay,
clipping at norm 1), the loss `grpo` (token mean per completion, mean over completions: TRL's
`loss_type="grpo"`, Tunix's default `sequence-mean-token-mean`) and the same reward (`digit_share`
below). A random model's completions almost never end early, so every side decodes ~64 tokens.

Each side runs in its own process, pinned to the same CPUs, the sides taking turns in rounds (the
order reversed every round). A run times `--steps` steps (sampling, rewards, advantages, the update)
and the median of steps 2.. (the first compiles) is its figure; a side's figure is the median over
its rounds. With each run come the share of the machine that other processes took during its timed
steps (the busy time of its CPUs in /proc/stat minus its own CPU time, over wall time x CPUs) and,
for jaxrl, the split of a step into sampling, scoring (the separate forward pass, when it runs),
rewards and the update.

    bash bench/peers_env.sh                          # once: .venv-peers, with Tunix added
    .venv-peers/bin/python bench/grpo_step.py        # ~10 minutes on 2 busy cores
    python bench/grpo_step.py --sides jaxrl          # jaxrl alone (no peers needed)

The last line is one JSON object: `jaxrl`, each peer's seconds per step and `ratio_<peer>` (the
peer's seconds over jaxrl's; > 1: jaxrl is faster).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

SIDES = ("jaxrl", "tunix", "trl", "jaxrl-before")  # jaxrl-before: the step without the knobs this bench set
PROMPTS = ("What is 12 + 7? Think step by step, then answer.", "What is 3 + 15? Think step by step, then answer.")
NUM_GENERATIONS, COMPLETION_TOKENS, LR, CLIP = 8, 64, 1e-6, 1.0
VOCAB = 384  # the tiny tokenizer's


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--sides",
        default="jaxrl,tunix,trl",
        help="comma-separated: jaxrl, tunix, trl, jaxrl-before (jaxrl with its separate scoring pass, its "
        "layer scan rolled and each completion running its own prompt, as before this bench's changes; the "
        "CPU projections and the sampling copy's reuse have no switch)",
    )
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps", type=int, default=8, help="steps per run; the first is not counted")
    p.add_argument("--threads", type=int, default=None, help="pin every side to this many CPUs (default: all)")
    p.add_argument("--side", help=argparse.SUPPRESS)  # a child: the side it runs
    p.add_argument("--model", help=argparse.SUPPRESS)  # a child: the model directory
    return p.parse_args(argv)


def digit_share(prompts, completions, **columns) -> list[float]:
    """The reward of every side: the share of a completion's characters that are digits."""
    return [sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]


def model_config():
    """The ~17M-parameter Qwen2 shape (6 layers of 512, MLP 1408, 8 heads, 4 KV heads, tied)."""
    from jaxrl.models.config import ModelConfig

    return ModelConfig(
        family="qwen2", vocab_size=VOCAB, hidden_size=512, intermediate_size=1408, num_layers=6, num_heads=8,
        num_kv_heads=4, head_dim=64, rope_theta=1000000.0, rms_norm_eps=1e-6, qkv_bias=True,
        tie_word_embeddings=True,
    )  # fmt: skip


def build_model(directory: str):
    """The HF directory every side loads: random fp32 weights and the tiny tokenizer."""
    from decode import build_reference

    from jaxrl.tiny import EOS, PAD, build_tokenizer

    tokenizer = build_tokenizer(directory, vocab_size=VOCAB)
    eos, pad = tokenizer.convert_tokens_to_ids(EOS), tokenizer.convert_tokens_to_ids(PAD)
    config = dataclasses.replace(model_config(), bos_token_id=eos, eos_token_ids=(eos,), pad_token_id=pad)
    build_reference(config, directory, "float32")
    return config


# -- what a child measures ------------------------------------------------------------------------


class Machine:
    """CPU time of this process and the busy time of its CPUs (/proc/stat), to tell how much of the
    machine other processes took between two readings."""

    def __init__(self):
        self.cpus = sorted(os.sched_getaffinity(0))
        self.tick = os.sysconf("SC_CLK_TCK")

    def read(self) -> tuple[float, float, float]:
        busy = 0
        with open("/proc/stat") as f:
            for line in f:
                name, *fields = line.split()
                if name.startswith("cpu") and name != "cpu" and int(name[3:]) in self.cpus:
                    values = list(map(int, fields))
                    busy += sum(values[:8]) - values[3] - values[4]  # all but idle and iowait
        return time.perf_counter(), time.process_time(), busy / self.tick

    def others_share(self, start, end) -> float:
        wall, own, busy = (b - a for a, b in zip(start, end, strict=True))
        return max(0.0, (busy - own) / (wall * len(self.cpus)))


class Timer:
    """Wall-clock marks of one run: step ends, and (jaxrl) seconds per phase per step."""

    def __init__(self):
        self.machine = Machine()
        self.ends: list[float] = []
        self.phases: list[dict[str, float]] = []
        self.readings = []

    def mark(self):
        self.ends.append(time.perf_counter())
        self.readings.append(self.machine.read())  # the share is over steps 2.. (readings 0..-1)

    def result(self, start: float) -> dict:
        times = [b - a for a, b in zip([start] + self.ends[:-1], self.ends, strict=True)]
        steady = times[1:]
        out = {
            "step_s": statistics.median(steady),
            "steps_s": [round(t, 3) for t in times],
            "others_share": round(self.machine.others_share(self.readings[0], self.readings[-1]), 3),
        }
        if self.phases:
            out["phases_s"] = {k: statistics.median(p[k] for p in self.phases[1:]) for k in self.phases[0]}
        return out


def run_jaxrl(directory: str, steps: int, timer: Timer, before: bool = False) -> dict:
    """jaxrl's step as `jaxrl train grpo` runs it (`grpo.run`'s Rollout and trainer): `generation_batch`
    then `GRPOTrainer.step`. before: with the rollout's own scoring pass, the layer scan rolled and
    no shared prompt pass."""
    import jax
    import numpy as np
    from jaxrl.models.checkpoint import load_model
    from jaxrl.train import grpo_rollout
    from jaxrl.train.config import OptimizerConfig
    from jaxrl.train.grpo import GRPOSettings, GRPOTrainer, RolloutConfig
    from jaxrl.train.grpo_loss import make_loss_fn
    from jaxrl.train.grpo_rollout import Rollout, generation_batch
    from transformers import AutoTokenizer

    from jaxrl.data import PromptBatch
    from jaxrl.rewards import RewardScorer
    from jaxrl.sharding import LogicalMesh, make_mesh

    mesh = LogicalMesh(make_mesh("data=1,fsdp=-1,tensor=1", jax.devices()[:1]))
    tokenizer = AutoTokenizer.from_pretrained(directory)
    settings = GRPOSettings(
        prompts_per_step=len(PROMPTS), num_generations=NUM_GENERATIONS, max_completion_length=COMPLETION_TOKENS,
        temperature=1.0, beta=0.0, num_iterations=1, loss_type="grpo", reward_funcs=("grpo_step:digit_share",),
        max_prompt_length=None, share_prompt_pass=False if before else None,
    )  # fmt: skip
    optimizer = OptimizerConfig(learning_rate=LR, max_grad_norm=CLIP, weight_decay=0.0, lr_scheduler_type="constant")
    model = load_model(directory, mesh, scan_unroll=1 if before else 0)
    trainer = GRPOTrainer(model, make_loss_fn(settings.loss), optimizer, 10**6, mesh=mesh)
    rollout_config = RolloutConfig()
    rollout = Rollout(
        trainer.graphdef, tokenizer, RewardScorer(settings.reward_funcs), settings, mesh=mesh,
        sampling_mesh=rollout_config.sampling_mesh(mesh), slots=rollout_config.slots,
        pad_id=trainer.config.pad_token_id or 0, score_in_loss=not before,
    )  # fmt: skip
    prompts = PromptBatch([tokenizer.encode(p) for p in PROMPTS], [{} for _ in PROMPTS])

    phase: dict[str, float] = {}

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            out = jax.block_until_ready(fn(*args, **kwargs))
            phase[name] = phase.get(name, 0.0) + time.perf_counter() - start
            return out

        return wrapper

    grpo_rollout.sample = timed("sampling", grpo_rollout.sample)
    Rollout.score = timed("scoring", Rollout.score)
    rollout.scorer.__class__.__call__ = timed("rewards", rollout.scorer.__class__.__call__)
    lengths = []
    start = time.perf_counter()
    for step in range(steps):
        phase.clear()
        phase.update(sampling=0.0, scoring=0.0, rewards=0.0)
        batch, metrics, _ = generation_batch(trainer.params, prompts, rollout, step)
        mark = time.perf_counter()
        jax.device_get(trainer.step(batch, step))
        phase["update"] = time.perf_counter() - mark
        timer.mark()
        phase["other"] = timer.ends[-1] - (timer.ends[-2] if step else start) - sum(phase.values())
        timer.phases.append(dict(phase))
        lengths.append(float(np.mean(batch["completion_mask"].sum(axis=1))))
    return {**timer.result(start), "mean_length": statistics.mean(lengths)}


def run_trl(directory: str, steps: int, timer: Timer) -> dict:
    """TRL's GRPOTrainer on the same settings; a callback marks the end of every optimizer step."""
    import torch
    import transformers
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)

    class StepEnds(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            timer.mark()

    with tempfile.TemporaryDirectory() as out:
        config = GRPOConfig(
            output_dir=out, per_device_train_batch_size=len(PROMPTS) * NUM_GENERATIONS,
            num_generations=NUM_GENERATIONS, max_completion_length=COMPLETION_TOKENS, temperature=1.0, top_p=1.0,
            top_k=0, beta=0.0, num_iterations=1, loss_type="grpo", learning_rate=LR, lr_scheduler_type="constant",
            adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, weight_decay=0.0, max_grad_norm=CLIP,
            max_steps=steps, logging_steps=1, report_to="none", save_strategy="no", use_cpu=True, bf16=False,
            shuffle_dataset=False, seed=0, disable_tqdm=True, gradient_checkpointing=False,
        )  # fmt: skip
        data = Dataset.from_list([{"prompt": p} for p in PROMPTS] * steps)
        trainer = GRPOTrainer(
            model=model, reward_funcs=[digit_share], args=config, train_dataset=data, processing_class=tokenizer,
            callbacks=[StepEnds()],
        )  # fmt: skip
        start = time.perf_counter()
        trainer.train()
    return timer.result(start)


def run_tunix(directory: str, steps: int, timer: Timer) -> dict:
    """Tunix's GRPOLearner (its vanilla KV-cache sampler) on the same settings; the end of a step is
    when the learner asks for the next batch of prompts."""
    import jax
    import numpy as np
    import optax
    import transformers
    from tunix.models.qwen2 import model as qwen2
    from tunix.models.qwen2 import params as qwen2_params
    from tunix.rl import rl_cluster as cluster
    from tunix.rl.grpo.grpo_learner import GRPOConfig, GRPOLearner
    from tunix.rl.rollout.base_rollout import RolloutConfig

    c = model_config()
    config = qwen2.ModelConfig(
        num_layers=c.num_layers, vocab_size=c.vocab_size, embed_dim=c.hidden_size, hidden_dim=c.intermediate_size,
        num_heads=c.num_heads, head_dim=c.head_dim, num_kv_heads=c.num_kv_heads, rope_theta=int(c.rope_theta),
        norm_eps=c.rms_norm_eps, use_tied_embedding=True,
    )  # fmt: skip
    auto = (jax.sharding.AxisType.Auto,) * 2  # Tunix's models shard by annotation (JAX's default is Explicit)
    mesh = jax.make_mesh((1, 1), ("fsdp", "tp"), axis_types=auto, devices=jax.devices()[:1])
    actor = qwen2_params.create_model_from_safe_tensors(directory, config, mesh)
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    prompt_slots = max(len(tokenizer.encode(p)) for p in PROMPTS)
    optimizer = optax.chain(
        optax.clip_by_global_norm(CLIP), optax.adamw(LR, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0)
    )
    with tempfile.TemporaryDirectory() as out:
        training = cluster.RLTrainingConfig(
            actor_optimizer=optimizer, eval_every_n_steps=10**6, max_steps=steps,
            metrics_logging_options=None, checkpoint_root_directory=None,
        )  # fmt: skip
        rollout = RolloutConfig(
            max_tokens_to_generate=COMPLETION_TOKENS, max_prompt_length=prompt_slots, temperature=1.0, top_p=1.0,
            top_k=None, kv_cache_size=prompt_slots + COMPLETION_TOKENS + 8, eos_tokens=[tokenizer.eos_token_id],
        )  # fmt: skip
        roles = {cluster.Role.ACTOR: mesh, cluster.Role.REFERENCE: mesh, cluster.Role.ROLLOUT: mesh}
        cluster_config = cluster.ClusterConfig(
            role_to_mesh=roles, rollout_engine="vanilla", offload_to_cpu=False, training_config=training,
            rollout_config=rollout,
        )  # fmt: skip
        rl = cluster.RLCluster(actor=actor, reference=actor, tokenizer=tokenizer, cluster_config=cluster_config)
        algo = GRPOConfig(num_generations=NUM_GENERATIONS, num_iterations=1, beta=0.0, epsilon=0.2)
        learner = GRPOLearner(rl_cluster=rl, reward_fns=[digit_share], algo_config=algo)
        os.chdir(out)

        def batches():
            for step in range(steps + 1):
                if step:
                    timer.mark()  # the learner asks for step `step`'s prompts: step - 1 is done
                yield {"prompts": np.array(PROMPTS)}  # a batch as its data loaders give one

        start = time.perf_counter()
        learner.train(batches())
        timer.mark()  # the last step's end
    return timer.result(start)


def child(args) -> int:
    timer = Timer()
    before = lambda *a: run_jaxrl(*a, before=True)
    runner = {"jaxrl": run_jaxrl, "trl": run_trl, "tunix": run_tunix, "jaxrl-before": before}[args.side]
    result = runner(args.model, args.steps, timer)
    print(json.dumps(result))
    return 0


# -- the parent -----------------------------------------------------------------------------------


def run_side(side: str, directory: str, args) -> dict:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    command = [sys.executable, os.path.abspath(__file__), "--side", side, "--model", directory]
    command += ["--steps", str(args.steps)]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-4000:])
        raise RuntimeError(f"the {side} run failed (exit {done.returncode})")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    args = parse_args(argv)
    from decode import pin_threads, say

    args.threads = pin_threads(args.threads)  # the children inherit the CPUs
    if args.side:
        return child(args)
    sides = [s for s in args.sides.split(",") if s]
    unknown = set(sides) - set(SIDES)
    if unknown or "jaxrl" not in sides:
        raise SystemExit(f"--sides takes jaxrl and any of tunix, trl, jaxrl-before (got {args.sides})")
    runs: dict[str, list[dict]] = {s: [] for s in sides}
    with tempfile.TemporaryDirectory() as directory:
        config = build_model(directory)
        say(
            f"model: qwen2-shaped, {config.num_params() / 1e6:.1f}M params, fp32; {len(PROMPTS)} prompts x "
            f"{NUM_GENERATIONS} generations, {COMPLETION_TOKENS} completion tokens; {args.threads} CPUs, "
            f"{args.rounds} rounds of {args.steps} steps"
        )
        for r in range(args.rounds):
            for side in sides if r % 2 == 0 else sides[::-1]:
                run = run_side(side, directory, args)
                runs[side].append(run)
                phases = run.get("phases_s")
                split = (", " + ", ".join(f"{k} {v:.2f}" for k, v in phases.items())) if phases else ""
                say(
                    f"round {r + 1} {side:6s}: {run['step_s']:.2f} s/step (steps {run['steps_s']}), others took "
                    f"{run['others_share']:.0%} of the CPUs{split}"
                )
    seconds = {s: statistics.median(run["step_s"] for run in runs[s]) for s in sides}
    result = {"metric": "grpo_step_s", "jaxrl": round(seconds["jaxrl"], 3), "unit": "s/step"}
    for peer in [s for s in sides if s != "jaxrl"]:
        result[peer] = round(seconds[peer], 3)
        result[f"ratio_{peer}"] = round(seconds[peer] / seconds["jaxrl"], 3)
    first = runs["jaxrl"][0]["phases_s"]
    result["jaxrl_phases_s"] = {
        k: round(statistics.median(run["phases_s"][k] for run in runs["jaxrl"]), 3) for k in first
    }
    result["others_share"] = {s: [run["others_share"] for run in runs[s]] for s in sides}
    result.update(rounds=args.rounds, steps=args.steps, threads=args.threads, params=config.num_params())
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
