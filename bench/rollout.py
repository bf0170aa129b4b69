"""GRPO rollout throughput: the continuous-batching engine, the static decode loop and transformers'
`generate` on the same weights, the same prompts and the same kind of completions, in one run.

The ~40M-parameter Qwen2-shaped model of bench/decode.py (random weights, written as a HF directory
and loaded through `load_model`) samples 8 completions for each of 16 random prompts of 24 to 64
tokens, at temperature 1, for at most 256 new tokens: a GRPO group per prompt. A random model's
next-token distribution is close to uniform, so a set of K EOS ids ends a completion with
probability about K / V at every step and the lengths come out geometric, skewed the way GRPO's
are: most short, a tail at the limit. K = V / (0.38 x new tokens) puts the mean near 0.35 of the
limit and about 7% of the completions at it (in expectation).

    python bench/rollout.py                     # CPU (JAX_PLATFORMS=cpu to be sure)
    python bench/rollout.py --device cuda --dtype bfloat16   # GPU: JAX's default GPU, PyTorch on cuda:0

Three runners, on the same CPU threads:
- jaxrl (the engine): `sample(..., slots=48)`, continuous batching on 48 decode slots refilled as
  completions end;
- jaxrl static: `sample(..., slots=None)`, every completion decoded at once until the longest ends;
  the same completions as the engine (checked);
- transformers: `generate` with the same sampling, prompts left-padded, `num_return_sequences=8`.
  Its random stream is its own, so its completions differ from jaxrl's; their lengths follow the
  same distribution.

tokens/s counts each runner's useful tokens (its completions' lengths, EOS included) over the whole
call (prefill included), the best of `--repeats` timed rounds after a warm-up (compile excluded),
the runners taking turns in each round. `slot_steps_per_token` is the decode steps x rows a runner
executed per token its decode steps produced (1.0: no row ever idle; the first token of each
completion comes from the prefill): the engine's and the static loop's are counted by the sampler,
transformers' is rows x (its longest completion - 1), since it too runs every row until the longest
ends. `weight_gathers_per_step` is the number of weight all-gathers in the engine's compiled decode
loop on an emulated data=1,fsdp=8 mesh, reading the tensor_parallel sampling copy of the weights
(`training_layout_weight_gathers_per_step`: the same loop reading the FSDP training layout); the
loop runs each of them at every step. It is counted in a subprocess that has 8 CPU devices, so the
timed process keeps one. The last line is one JSON object; `ratio` is jaxrl's engine over
transformers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

SEED = 0
PROMPT_LENGTHS = (24, 64)  # inclusive range of the prompts' lengths
MEAN_FRACTION = 0.38  # the mean completion length aimed at, as a fraction of --new-tokens
COUNT_NEW_TOKENS = 16  # enough for the gather count: the compiled loop does not depend on it
COUNT_MESH = "data=1,fsdp=8,tensor=1"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--samples", type=int, default=8, help="completions per prompt (GRPO's group size)")
    p.add_argument("--new-tokens", type=int, default=256, help="the completion length limit")
    p.add_argument(
        "--slots",
        type=int,
        default=48,
        help="the engine's decode slots (keep it unlike every model dimension: the gather count tells "
        "rows from weights by it)",
    )
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="pin the process to this many CPUs, used by all (default: all it may use)",
    )
    p.add_argument("--dtype", default="float32", help="float32 or bfloat16, for all")
    p.add_argument("--device", default="cpu", help="PyTorch device: cpu or cuda (JAX takes its default device)")
    p.add_argument("--no-reference", action="store_true", help="skip transformers (ratio is null)")
    p.add_argument("--count-gathers", action="store_true", help=argparse.SUPPRESS)  # the subprocess
    return p.parse_args(argv)


def workload(vocab_size: int, args):
    """(prompts, EOS ids): `args.prompts` seeded random prompts of mixed lengths, and the
    K = V / (MEAN_FRACTION x new tokens) ids that end a completion, none of them in a prompt."""
    import numpy as np

    rng = np.random.default_rng(SEED)
    k = max(1, round(vocab_size / (MEAN_FRACTION * args.new_tokens)))
    eos = np.sort(rng.choice(np.arange(1, vocab_size), k, replace=False))  # 0 is the pad id
    allowed = np.setdiff1d(np.arange(1, vocab_size), eos)
    lengths = rng.integers(PROMPT_LENGTHS[0], PROMPT_LENGTHS[1] + 1, args.prompts)
    prompts = [rng.choice(allowed, n).tolist() for n in lengths]
    return prompts, tuple(eos.tolist())


def sampling_config(args, new_tokens: int | None = None):
    from jaxrl.models.sampler import SamplingConfig

    return SamplingConfig(
        temperature=1.0,
        max_new_tokens=new_tokens or args.new_tokens,
        num_samples=args.samples,
        seed=SEED,
    )


def count_gathers(args) -> int:
    """The subprocess: prints {"sampling_copy": n, "training_layout": n}, the weight all-gathers of
    the engine's compiled loop on an emulated fsdp=8 mesh, reading each layout."""
    flags = os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count=8".strip()
    from decode import bench_config
    from flax import nnx
    from jaxrl.models.params import init_decoder, sampling_copy
    from jaxrl.models.sampler import decode_collectives

    from jaxrl.sharding import LogicalMesh, make_mesh, rules_preset

    config = dataclasses.replace(bench_config(), dtype=args.dtype, param_dtype=args.dtype)
    prompts, _ = workload(config.vocab_size, args)
    mesh = make_mesh(COUNT_MESH)
    training = init_decoder(config, LogicalMesh(mesh), seed=SEED)
    params = nnx.to_pure_dict(nnx.state(training))
    copy = sampling_copy(params, config, LogicalMesh(mesh, rules_preset("tensor_parallel")))
    sampling = sampling_config(args, COUNT_NEW_TOKENS)
    counts = {
        name: decode_collectives(model, prompts, sampling, slots=args.slots)["weight all-gather"]
        for name, model in (("sampling_copy", copy), ("training_layout", training))
    }
    print(json.dumps(counts))
    return 0


def gather_counts(args) -> dict:
    """Runs `count_gathers` in a fresh process (8 emulated devices there, one here)."""
    command = [sys.executable, os.path.abspath(__file__), "--count-gathers"]
    command += ["--prompts", str(args.prompts), "--samples", str(args.samples), "--new-tokens", str(args.new_tokens)]
    command += ["--slots", str(args.slots), "--dtype", args.dtype]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        raise RuntimeError(f"the gather count failed (exit {done.returncode})")
    return json.loads(done.stdout.strip().splitlines()[-1])


def jaxrl_runners(directory, prompts, eos, args):
    """({"jaxrl": engine call, "jaxrl_static": static call}, their Completions, compile seconds),
    on one device; each call also warms up (compiles) here."""
    import jax
    from jaxrl.models.checkpoint import load_model
    from jaxrl.models.sampler import sample

    from jaxrl.sharding import LogicalMesh, make_mesh

    mesh = LogicalMesh(make_mesh("data=1,fsdp=-1,tensor=1", jax.devices()[:1]))
    model = load_model(directory, mesh, param_dtype=args.dtype, dtype=args.dtype)
    config = sampling_config(args)
    runners = {
        "jaxrl": lambda: sample(model, prompts, config, eos_token_ids=eos, slots=args.slots),
        "jaxrl_static": lambda: sample(model, prompts, config, eos_token_ids=eos),
    }
    completions, compile_s = {}, {}
    for name, run in runners.items():
        start = time.perf_counter()
        completions[name] = run()  # compiles
        first_s = time.perf_counter() - start
        start = time.perf_counter()
        run()
        compile_s[name] = max(first_s - (time.perf_counter() - start), 0.0)
    return runners, completions, compile_s


def reference_runner(model, prompts, eos, args):
    """(generate, lengths of its completions) for transformers; every call draws with the same
    torch seed, so each call produces the same completions (and tokens to count)."""
    import numpy as np
    import torch
    import transformers

    width = max(len(p) for p in prompts)
    ids = torch.zeros((len(prompts), width), dtype=torch.long)  # left-padded, pad id 0
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    generation = transformers.GenerationConfig(
        do_sample=True,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        num_return_sequences=args.samples,
        max_new_tokens=args.new_tokens,
        eos_token_id=list(eos),
        pad_token_id=0,
    )

    ids, mask, model = ids.to(args.device), mask.to(args.device), model.to(args.device)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    @torch.no_grad()
    def generate():
        torch.manual_seed(SEED)
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=generation)
        sync()
        return out

    new = generate()[:, width:].cpu().numpy()  # also the warm-up
    ends = np.isin(new, eos)
    lengths = np.where(ends.any(axis=1), ends.argmax(axis=1) + 1, args.new_tokens)
    return generate, lengths


def length_summary(lengths, limit: int) -> dict:
    mean = float(lengths.mean())
    return {
        "mean_length": round(mean, 1),
        "clipped_fraction": round(float((lengths >= limit).mean()), 4),
        "max_over_mean": round(float(lengths.max()) / mean, 2),
    }


def static_slot_steps_per_token(lengths) -> float:
    """Rows x decode steps per decoded token of a loop that runs every row until the longest ends
    (the first token of each completion comes from the prefill)."""
    return len(lengths) * (int(lengths.max()) - 1) / max(int(lengths.sum()) - len(lengths), 1)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.count_gathers:
        return count_gathers(args)
    from decode import bench_config, best_times, build_reference, pin_threads, say

    args.threads = pin_threads(args.threads)
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    config = bench_config()
    prompts, eos = workload(config.vocab_size, args)
    rows = args.prompts * args.samples
    say(
        f"model: qwen2-shaped, {config.num_params() / 1e6:.1f}M params; {args.prompts} prompts of "
        f"{PROMPT_LENGTHS[0]}-{PROMPT_LENGTHS[1]} tokens x {args.samples} samples, at most {args.new_tokens} "
        f"new tokens, {len(eos)} EOS ids, temperature 1; {args.slots} slots, {args.threads} threads, {args.dtype}"
    )

    start = time.perf_counter()
    gathers = gather_counts(args)
    say(
        f"weight all-gathers in the engine's decode loop on {COUNT_MESH}: {gathers['sampling_copy']} reading "
        f"the sampling copy, {gathers['training_layout']} reading the training layout "
        f"({time.perf_counter() - start:.0f} s to count)"
    )

    with tempfile.TemporaryDirectory() as directory:
        reference_model = build_reference(config, directory, args.dtype)
        runners, completions, compile_s = jaxrl_runners(directory, prompts, eos, args)
    engine, static = completions["jaxrl"], completions["jaxrl_static"]
    same = np.array_equal(engine.tokens, static.tokens) and np.array_equal(engine.lengths, static.lengths)
    say(
        f"engine and static loop: identical completions: {same}; compile {compile_s['jaxrl']:.1f} s "
        f"and {compile_s['jaxrl_static']:.1f} s"
    )
    assert same, "the engine's completions differ from the static loop's"
    tokens = {"jaxrl": int(engine.lengths.sum()), "jaxrl_static": int(static.lengths.sum())}
    if not args.no_reference:
        runners["reference"], reference_lengths = reference_runner(reference_model, prompts, eos, args)
        tokens["reference"] = int(reference_lengths.sum())
    best, _ = best_times(runners, args.repeats)
    speed = {name: tokens[name] / best[name] for name in runners}

    import jax

    lengths = length_summary(engine.lengths, args.new_tokens)
    result = {
        "metric": "rollout_tokens_per_s",
        "jaxrl": round(speed["jaxrl"], 2),
        "reference": None,
        "ratio": None,
        "unit": "tokens/s",
        "weight_gathers_per_step": gathers["sampling_copy"],
        "slot_steps_per_token": round(engine.slot_steps_per_token(), 3),
        "static_tokens_per_s": round(speed["jaxrl_static"], 2),
        "static_slot_steps_per_token": round(static.slot_steps_per_token(), 3),
        "reference_slot_steps_per_token": None,
        "training_layout_weight_gathers_per_step": gathers["training_layout"],
        **lengths,
        "completions": rows,
        "new_tokens": args.new_tokens,
        "eos_ids": len(eos),
        "compile_s": round(compile_s["jaxrl"], 2),
        "slots": args.slots,
        "threads": args.threads,
        "dtype": args.dtype,
        "jax_device": jax.devices()[0].platform,
    }
    say(
        f"lengths:      mean {lengths['mean_length']:.1f} of {args.new_tokens}, "
        f"{lengths['clipped_fraction']:.1%} at the limit, max/mean {lengths['max_over_mean']:.2f}"
    )
    say(
        f"jaxrl engine: {speed['jaxrl']:9.1f} tokens/s ({tokens['jaxrl']} tokens in {best['jaxrl']:.2f} s), "
        f"{engine.decode_steps} decode steps, {result['slot_steps_per_token']:.3f} slot-steps per token"
    )
    say(
        f"jaxrl static: {speed['jaxrl_static']:9.1f} tokens/s ({tokens['jaxrl_static']} tokens in "
        f"{best['jaxrl_static']:.2f} s), {static.decode_steps} decode steps, "
        f"{result['static_slot_steps_per_token']:.3f} slot-steps per token"
    )
    if not args.no_reference:
        reference = length_summary(reference_lengths, args.new_tokens)
        result.update(
            reference=round(speed["reference"], 2),
            ratio=round(speed["jaxrl"] / speed["reference"], 3),
            reference_slot_steps_per_token=round(static_slot_steps_per_token(reference_lengths), 3),
            reference_mean_length=reference["mean_length"],
            reference_clipped_fraction=reference["clipped_fraction"],
        )
        say(
            f"transformers: {speed['reference']:9.1f} tokens/s ({tokens['reference']} tokens in "
            f"{best['reference']:.2f} s), {int(reference_lengths.max()) - 1} decode steps, "
            f"{result['reference_slot_steps_per_token']:.3f} slot-steps per token; its lengths: mean "
            f"{reference['mean_length']:.1f}, {reference['clipped_fraction']:.1%} at the limit"
        )
        say(f"ratio:        {result['ratio']:.2f} (engine over transformers)")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
