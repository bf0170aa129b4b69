"""Decode throughput: jaxrl's sampler beside transformers' `generate` on the same weights.

A ~40M-parameter Qwen2-shaped model (hidden 512, 8 layers, 8 heads, 4 KV heads, vocab 32000) with
random weights is written as a HF directory and loaded through `load_model`, the path a user's
checkpoint takes; PyTorch runs the very same weights. Both decode greedily, without EOS, a batch
of 16 random 64-token prompts for 128 new tokens, with the same number of CPU threads, in one run.

    python bench/decode.py                      # CPU (JAX_PLATFORMS=cpu to be sure)
    python bench/decode.py --device cuda        # GPU: JAX on its default GPU, PyTorch on cuda:0

tokens/s counts new tokens over the whole call (prefill included) and takes the best of
`--repeats` timed rounds after a warm-up, jaxrl and transformers taking turns in each round.
`decode_ms_per_step` is jaxrl's call less its prefill, per new token; `cpu_s` holds each side's
best process CPU seconds, the steadier figure with `--threads 1` on a machine shared with other
work (`cpu_ratio` compares those). `matmul_floor_ms_per_step` times the matrix products of one
decode step alone in JAX (same device, dtype and threads), and `ratio_at_matmul_floor` is the ratio
jaxrl would reach if its decode steps cost nothing else: the ceiling of this benchmark on the
machine. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="pin the process to this many CPUs, used by both (default: all it may use)",
    )
    p.add_argument("--dtype", default="float32", help="float32 or bfloat16, for both")
    p.add_argument("--device", default="cpu", help="PyTorch device: cpu or cuda")
    p.add_argument("--no-reference", action="store_true", help="skip transformers (ratio is null)")
    return p.parse_args(argv)


def bench_config():
    from jaxrl.models.config import ModelConfig

    return ModelConfig(
        family="qwen2", vocab_size=32000, hidden_size=512, intermediate_size=1408, num_layers=8, num_heads=8,
        num_kv_heads=4, head_dim=64, rope_theta=1000000.0, qkv_bias=True, tie_word_embeddings=True,
    )  # fmt: skip


def build_reference(config, directory, dtype: str):
    """A random transformers model of `config`, saved to `directory` (fp32), cast to `dtype`."""
    import torch
    import transformers

    torch.manual_seed(0)
    hf_config = transformers.AutoConfig.for_model(**config.to_hf_config())
    model = transformers.AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32)
    with torch.no_grad():  # non-trivial biases, so every term of the forward pass matters
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.1)
    model.eval().save_pretrained(directory)
    return model.to(getattr(torch, dtype))


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


PAUSE_S = 1.0  # before each timed call: the other side's worker threads stop spinning meanwhile


def best_times(runners: dict, repeats: int) -> tuple[dict, dict]:
    """Best wall time and best process CPU time of each runner over `repeats` rounds, the runners
    taking turns in each round (so a change in the machine's load hits all of them alike), each
    after a pause (PyTorch's OpenMP workers keep spinning on the cores for a while after a call,
    which measurably slowed the JAX call that followed). On a shared machine with `--threads 1`, CPU
    seconds count the work done even when the wall clock also counts time spent waiting for the
    core."""
    best = dict.fromkeys(runners, float("inf"))
    best_cpu = dict.fromkeys(runners, float("inf"))
    for _ in range(repeats):
        for name, run in runners.items():
            time.sleep(PAUSE_S)
            start, start_cpu = time.perf_counter(), time.process_time()
            run()
            best[name] = min(best[name], time.perf_counter() - start)
            best_cpu[name] = min(best_cpu[name], time.process_time() - start_cpu)
    return best, best_cpu


def jaxrl_runners(directory, prompts, args):
    """(generate, prefill, greedy tokens [B, N], compile seconds) for jaxrl on one device."""
    import jax
    from jaxrl.models.checkpoint import load_model
    from jaxrl.models.sampler import SamplingConfig, bucket, pad_prompts, prefill, sample

    from jaxrl.sharding import LogicalMesh, make_mesh

    mesh = LogicalMesh(make_mesh("data=1,fsdp=-1,tensor=1", jax.devices()[:1]))
    model = load_model(directory, mesh, param_dtype=args.dtype, dtype=args.dtype)
    config = SamplingConfig(temperature=0, max_new_tokens=args.new_tokens)
    generate = lambda: sample(model, prompts, config, eos_token_ids=())
    batch = pad_prompts(prompts, model.config.vocab_size, 1, mesh)
    run_prefill = lambda: jax.block_until_ready(prefill(model, batch, 1, bucket(args.new_tokens), mesh))

    start = time.perf_counter()
    tokens = generate().tokens  # compiles prefill and decode
    first_s = time.perf_counter() - start
    start = time.perf_counter()
    generate()
    compile_s = max(first_s - (time.perf_counter() - start), 0.0)
    return generate, run_prefill, tokens, compile_s


def reference_runners(model, prompts, args):
    """(generate, prefill, greedy tokens [B, N]) for transformers on `args.device`."""
    import numpy as np
    import torch
    import transformers

    ids = torch.tensor(np.asarray(prompts), device=args.device)
    mask = torch.ones_like(ids)
    model = model.to(args.device)
    generation = transformers.GenerationConfig(
        do_sample=False,
        max_new_tokens=args.new_tokens,
        min_new_tokens=args.new_tokens,
        eos_token_id=None,
        pad_token_id=0,
    )
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    @torch.no_grad()
    def generate():
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=generation)
        sync()
        return out

    @torch.no_grad()
    def run_prefill():  # logits of the last position only, as generate's prefill does
        model(input_ids=ids, attention_mask=mask, logits_to_keep=1)
        sync()

    tokens = generate()[:, ids.shape[1] :].cpu().numpy()  # also the warm-up
    run_prefill()
    return generate, run_prefill, tokens


def matmul_floor_s(config, batch: int, dtype: str, repeats: int) -> float:
    """Seconds for the matrix products of one decode step alone ([batch, in] @ [in, out] for every
    weight matrix of every layer, and the output projection), jitted together on JAX's device: what
    a decode step would cost if it were nothing else."""
    import jax
    import jax.numpy as jnp

    c = config
    q, kv = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    layer = [
        (c.hidden_size, q),
        (c.hidden_size, kv),
        (c.hidden_size, kv),
        (q, c.hidden_size),
        (c.hidden_size, c.intermediate_size),
        (c.hidden_size, c.intermediate_size),
        (c.intermediate_size, c.hidden_size),
    ]
    shapes = layer * c.num_layers + [(c.hidden_size, c.vocab_size)]
    keys = jax.random.split(jax.random.key(0), len(shapes))
    weights = [jax.random.normal(k, s, dtype) * 0.02 for k, s in zip(keys, shapes, strict=True)]
    inputs = {n: jnp.ones((batch, n), dtype) for n in {s[0] for s in shapes}}

    @jax.jit
    def products(weights, inputs):
        return sum(jnp.sum(inputs[w.shape[0]] @ w, dtype=jnp.float32) for w in weights)

    jax.block_until_ready(products(weights, inputs))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(10):
            jax.block_until_ready(products(weights, inputs))
        best = min(best, (time.perf_counter() - start) / 10)
    return best


def pin_threads(threads: int | None) -> int:
    """Restricts this process to `threads` CPUs before JAX or PyTorch start their thread pools: XLA
    sizes its pool by the CPUs it may run on, PyTorch is told the same number."""
    cpus = sorted(os.sched_getaffinity(0))
    if threads is not None and threads < len(cpus):
        cpus = cpus[:threads]
        os.sched_setaffinity(0, cpus)
    return len(cpus)


def main(argv=None) -> int:
    args = parse_args(argv)
    args.threads = pin_threads(args.threads)
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    config = bench_config()
    rng = np.random.default_rng(0)
    prompts = rng.integers(1, config.vocab_size, (args.batch, args.prompt_len)).tolist()
    new_tokens, prompt_tokens = args.batch * args.new_tokens, args.batch * args.prompt_len
    say(
        f"model: qwen2-shaped, {config.num_params() / 1e6:.1f}M params; batch {args.batch}, "
        f"{args.prompt_len}-token prompts, {args.new_tokens} new tokens, {args.threads} threads, "
        f"{args.dtype}"
    )

    with tempfile.TemporaryDirectory() as directory:
        reference_model = build_reference(config, directory, args.dtype)
        generate, run_prefill, tokens, compile_s = jaxrl_runners(directory, prompts, args)
    runners = {"jaxrl": generate, "jaxrl_prefill": run_prefill}
    if not args.no_reference:
        (
            ref_generate,
            ref_prefill,
            ref_tokens,
        ) = reference_runners(reference_model, prompts, args)
        runners.update(reference=ref_generate, reference_prefill=ref_prefill)
    best, best_cpu = best_times(runners, args.repeats)

    import jax

    result = {
        "metric": "decode_new_tokens_per_s",
        "jaxrl": round(new_tokens / best["jaxrl"], 2),
        "reference": None,
        "ratio": None,
        "unit": "tokens/s",
        "prefill_tokens_per_s": round(prompt_tokens / best["jaxrl_prefill"], 1),
        "compile_s": round(compile_s, 2),
        "jax_device": jax.devices()[0].platform,
        "threads": args.threads,
        "batch": args.batch,
        "prompt_len": args.prompt_len,
        "new_tokens": args.new_tokens,
        "dtype": args.dtype,
        # one decode step of the whole batch: the generate call less its prefill, per new token
        "decode_ms_per_step": round((best["jaxrl"] - best["jaxrl_prefill"]) / args.new_tokens * 1e3, 2),
        "cpu_s": {name: round(seconds, 3) for name, seconds in best_cpu.items()},
        "cpu_ratio": None,
    }
    floor_s = matmul_floor_s(config, args.batch, args.dtype, args.repeats)
    # jaxrl's call if each decode step cost only its matrix products (prefill as measured)
    floor_call_s = best["jaxrl_prefill"] + args.new_tokens * floor_s
    result["matmul_floor_ms_per_step"] = round(floor_s * 1e3, 2)
    say(
        f"jaxrl:        {result['jaxrl']:9.1f} new tokens/s ({best['jaxrl']:.2f} s, {best_cpu['jaxrl']:.2f} "
        f"CPU s), prefill {result['prefill_tokens_per_s']:.0f} tokens/s, decode step "
        f"{result['decode_ms_per_step']:.1f} ms, compile {compile_s:.1f} s"
    )
    if not args.no_reference:
        agree = float(np.mean(ref_tokens == tokens))
        result.update(
            reference=round(new_tokens / best["reference"], 2),
            ratio=round(best["reference"] / best["jaxrl"], 3),
            reference_prefill_tokens_per_s=round(prompt_tokens / best["reference_prefill"], 1),
            greedy_token_agreement=round(agree, 4),
            reference_device=args.device,
            cpu_ratio=round(best_cpu["reference"] / best_cpu["jaxrl"], 3),
            ratio_at_matmul_floor=round(best["reference"] / floor_call_s, 3),
        )
        say(
            f"transformers: {result['reference']:9.1f} new tokens/s ({best['reference']:.2f} s, "
            f"{best_cpu['reference']:.2f} CPU s), prefill "
            f"{result['reference_prefill_tokens_per_s']:.0f} tokens/s; greedy tokens agree: {agree:.3f}"
        )
        say(
            f"ceiling:      the matrix products of one decode step alone take {floor_s * 1e3:.1f} ms in JAX; "
            f"a jaxrl step costing only those would reach ratio {result['ratio_at_matmul_floor']:.2f}"
        )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
