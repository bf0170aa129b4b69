"""SFT train-step throughput: jaxrl's jitted step beside transformers + torch.optim.AdamW.

The ~40M-parameter Qwen2-shaped model of bench/decode.py (random weights, written as a HF
directory and loaded through `load_model`, as a user's checkpoint is) takes one SFT optimizer step
(forward, backward, global-norm clipping, AdamW) on a batch of 8 x 256 random tokens in fp32; the
same weights take the same step in PyTorch, with the same number of CPU threads, in the same run.
MFU is the step's model FLOPs (6 x matmul parameters + causal attention per token) over this
machine's fp32 matmul peak, measured here (the best of JAX and PyTorch on a large square matmul).

    python bench/train_step.py                  # CPU (JAX_PLATFORMS=cpu to be sure)
    python bench/train_step.py --device cuda    # GPU: JAX on its default GPU, PyTorch on cuda:0

jaxrl's step runs twice, once per attention path: the default (`auto`: blockwise on CPU and TPU,
where the [T, S] scores never exist) and `xla` (the scores materialised, the old path); the JSON's
`jaxrl` is the default's, `jaxrl_xla` the other's.

tokens/s is batch x length over the best of `--repeats` timed steps after a warm-up (compile).
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--length", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="CPU threads of both")
    p.add_argument("--device", default="cpu", help="PyTorch device: cpu or cuda")
    p.add_argument("--matmul", type=int, default=2048, help="side of the square matmul that measures the peak")
    p.add_argument("--no-reference", action="store_true", help="skip PyTorch (ratio is null)")
    return p.parse_args(argv)


LR, CLIP = 1e-5, 1.0


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def jax_matmul_peak(n: int, repeats: int) -> float:
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    mm = jax.jit(lambda a, b: jnp.matmul(a, b, precision="highest"))
    mm(a, b).block_until_ready()
    return 2 * n**3 / best_time(lambda: mm(a, b).block_until_ready(), repeats)


def torch_matmul_peak(n: int, repeats: int, device: str) -> float:
    import torch

    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    torch.matmul(a, b)
    sync()
    return 2 * n**3 / best_time(lambda: (torch.matmul(a, b), sync()), repeats)


def sft_batch(vocab: int, batch: int, length: int):
    import numpy as np

    from jaxrl.data.batching import padded_rows

    rng = np.random.default_rng(0)
    examples = [(rng.integers(0, vocab, length).astype(np.int32), np.ones(length, bool)) for _ in range(batch)]
    return padded_rows(examples, length, pad_id=0)._asdict()


def bench_jaxrl(directory, batch, args, attention: str = "auto") -> dict:
    import jax
    from jaxrl.models.checkpoint import load_model
    from jaxrl.train.config import OptimizerConfig
    from jaxrl.train.loop import Trainer
    from jaxrl.train.sft import sft_loss

    from jaxrl.sharding import LogicalMesh, make_mesh

    mesh = LogicalMesh(make_mesh("data=1,fsdp=-1,tensor=1", jax.devices()[:1]))
    optimizer = OptimizerConfig(learning_rate=LR, max_grad_norm=CLIP, lr_scheduler_type="constant")
    trainer = Trainer(load_model(directory, mesh, attention=attention), sft_loss, optimizer, 1000, mesh=mesh)
    step = [0]

    def run():
        metrics = jax.device_get(trainer.step(batch, step[0]))
        step[0] += 1
        return metrics

    start = time.perf_counter()
    first = run()
    first_s = time.perf_counter() - start
    seconds = best_time(run, args.repeats)
    return {
        "seconds": seconds,
        "loss": float(first["loss"]),
        "compile_s": max(first_s - seconds, 0.0),
        "device": str(jax.devices()[0].device_kind),
    }


def bench_reference(directory, batch, args) -> dict:
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).to(args.device)
    model.train()
    tokens = torch.as_tensor(batch["tokens"], dtype=torch.long, device=args.device)
    targets = torch.as_tensor(batch["targets"], dtype=torch.long, device=args.device).reshape(-1)
    mask = torch.as_tensor(batch["loss_mask"], device=args.device).reshape(-1)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    losses = []

    def run():
        opt.zero_grad(set_to_none=True)
        logits = model(input_ids=tokens).logits
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets, reduction="none")
        loss = (nll * mask).sum() / mask.sum()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        opt.step()
        sync()
        losses.append(loss.item())

    run()
    seconds = best_time(run, args.repeats)
    return {"seconds": seconds, "loss": losses[0]}


def main(argv=None) -> dict:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from decode import bench_config, build_reference
    from jaxrl.models.params import count_params  # noqa: F401  (imports jax after the thread setting)
    from jaxrl.train.loop import flops_per_token

    config = bench_config()
    batch = sft_batch(config.vocab_size, args.batch, args.length)
    tokens = args.batch * args.length
    with tempfile.TemporaryDirectory() as directory:
        build_reference(config, directory, "float32")
        ours = bench_jaxrl(directory, batch, args)
        xla = bench_jaxrl(directory, batch, args, attention="xla")
        ref = None if args.no_reference else bench_reference(directory, batch, args)
    peaks = {"jax": jax_matmul_peak(args.matmul, args.repeats)}
    if not args.no_reference:
        peaks["torch"] = torch_matmul_peak(args.matmul, args.repeats, args.device)
    peak = max(peaks.values())
    step_flops = flops_per_token(config, args.length) * tokens
    jax_tps = tokens / ours["seconds"]
    result = {
        "metric": "sft_train_step_tokens_per_s",
        "jaxrl": round(jax_tps, 1),
        "reference": None if ref is None else round(tokens / ref["seconds"], 1),
        "ratio": None if ref is None else round(ref["seconds"] / ours["seconds"], 3),
        "unit": "tokens/s",
        "mfu": round(step_flops / ours["seconds"] / peak, 4),
        "jaxrl_xla": round(tokens / xla["seconds"], 1),
    }
    print(
        f"model: {config.num_params() / 1e6:.1f}M parameters, batch {args.batch} x {args.length}, fp32, "
        f"{args.threads} threads, device {ours['device']}"
    )
    for name, r in (("jaxrl (attention auto)", ours), ("jaxrl (attention xla)", xla)):
        print(f"{name}: {r['seconds'] * 1e3:.1f} ms/step, loss {r['loss']:.4f}, compile {r['compile_s']:.1f} s")
    if ref is not None:
        print(f"transformers + torch AdamW: {ref['seconds'] * 1e3:.1f} ms/step, loss {ref['loss']:.4f}")
        print(f"reference MFU: {step_flops / ref['seconds'] / peak:.4f}")
    print("fp32 matmul peak (GFLOP/s): " + ", ".join(f"{k} {v / 1e9:.1f}" for k, v in peaks.items()))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
