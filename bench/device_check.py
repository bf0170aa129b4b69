"""Every accelerator check in one run, summarised in one JSON file.

    bash bench/device_check.sh [OUT.json]      # on a GPU or TPU machine (installs its own venv)
    python bench/device_check.py --reduced OUT.json   # any machine, small sizes (a CPU smoke test)

Checks, each recorded as {"ok": bool, ...figures} or {"ok": false, "error": "..."} so that one
failure never hides the others:
- device: backend, device kind and count, jax version;
- compare: `jaxrl compare` (our logits beside transformers') on a tiny model of each family, in
  fp32 and bf16 (reduced: OLMo-2 in fp32);
- attention: every attention implementation this backend offers against `blockwise` on random
  inputs with padding and packing, forward and gradients;
- sft, grpo: a tiny run of each (10 steps; 3 and 2 reduced) end to end through `jaxrl train`;
- train_step, decode, rollout: the benches' last JSON lines, with the decode step's achieved HBM
  bandwidth against the chip's where the chip is known.
Reduced sizes skip the benches (each builds a ~40M model); the other checks stay the same.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FAMILIES = ("tiny-olmo2", "tiny-qwen2", "tiny-llama")
# HBM bandwidth (GB/s) by device kind, from the vendors' data sheets (H100 SXM5: 3.35 TB/s;
# H200: 4.8 TB/s; A100 80GB SXM: 2.04 TB/s; TPU v4: 1.2 TB/s; v5e: 0.82 TB/s; v5p: 2.76 TB/s;
# v6e: 1.64 TB/s).
HBM_GB_S = {"H100": 3350, "H200": 4800, "A100": 2039, "TPU v4": 1200, "TPU v5 lite": 819, "TPU v5": 2765,
            "TPU v6 lite": 1640}  # fmt: skip


def check(results: dict, name: str, fn) -> None:
    """Runs one check; records its figures, or its error, and the seconds it took."""
    start = time.perf_counter()
    try:
        results[name] = {"ok": True, **fn()}
    except Exception as e:  # a failed check is a result, not the end of the run
        results[name] = {"ok": False, "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-2000:]}
    results[name]["seconds"] = round(time.perf_counter() - start, 1)
    print(f"[{name}] {'ok' if results[name]['ok'] else 'FAILED'} ({results[name]['seconds']} s)", flush=True)


def device() -> dict:
    import jax

    d = jax.devices()[0]
    return {
        "backend": jax.default_backend(),
        "kind": d.device_kind,
        "count": jax.device_count(),
        "jax": jax.__version__,
    }


def compare(work: Path, families, dtypes) -> dict:
    from jaxrl.models.compare import compare as compare_logits
    from jaxrl.models.tiny import build_tiny_model

    out = {}
    for family in families:
        model = build_tiny_model(work / family, family)
        for dtype in dtypes:
            stats = compare_logits(str(model), ["What is 2 + 3?", "Name a prime number."], dtype, "")
            out[f"{family}/{dtype}"] = {k: v for k, v in stats.items() if isinstance(v, int | float)}
    return out


def attention(reduced: bool) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jaxrl.models.attention import IMPLEMENTATIONS, attend, blockwise_attention

    b, t, h, kv, e = (2, 64, 4, 2, 16) if reduced else (4, 1024, 32, 8, 128)
    keys = jax.random.split(jax.random.key(0), 4)
    q = jax.random.normal(keys[0], (b, t, h, e), jnp.bfloat16)
    k, v = (jax.random.normal(key, (b, t, kv, e), jnp.bfloat16) for key in keys[1:3])
    seg = np.ones((b, t), np.int32)
    seg[0, t // 2 :] = 0  # right padding
    seg[1, : t // 4], seg[1, t // 2 :] = 0, 2  # left padding, then a second packed sequence
    pos = np.zeros_like(seg)
    for row in range(b):
        for s in (1, 2):
            idx = np.flatnonzero(seg[row] == s)
            pos[row, idx] = np.arange(len(idx))
    seg, pos = jnp.asarray(seg), jnp.asarray(pos)
    live = (seg > 0)[:, :, None, None]
    weights = jax.random.normal(keys[3], q.shape, jnp.float32) * live

    def run(fn):
        loss = lambda q, k, v: jnp.sum(fn(q, k, v).astype(jnp.float32) * weights)
        out = jax.jit(fn)(q, k, v).astype(jnp.float32)
        return out * live, jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)

    ref_out, ref_grads = run(lambda q, k, v: blockwise_attention(q, k, v, seg, pos, seg, pos))
    result = {}
    for impl in IMPLEMENTATIONS:
        if {"cudnn": "gpu", "splash": "tpu"}.get(impl, jax.default_backend()) != jax.default_backend():
            continue  # a kernel for another backend (splash would run in Pallas' slow interpreter)
        out, grads = run(lambda q, k, v, impl=impl: attend(q, k, v, seg, pos, seg, pos, impl))
        diffs = [float(jnp.max(jnp.abs(out - ref_out)))]
        diffs += [
            float(jnp.max(jnp.abs(g.astype(jnp.float32) - r.astype(jnp.float32))))
            for g, r in zip(grads, ref_grads, strict=True)
        ]
        result[impl] = {"max_abs_diff_out": diffs[0], "max_abs_diff_grads": max(diffs[1:])}
    return result


def train(work: Path, method: str, steps: int) -> dict:
    from jaxrl.models.tiny import build_tiny_model

    from jaxrl import cli

    model = work / "tiny-olmo2" if (work / "tiny-olmo2").is_dir() else build_tiny_model(work / "tiny-olmo2")
    run = work / f"{method}-run"
    argv = [
        "train",
        method,
        "--recipe",
        str(REPO / f"train/recipes/{method}-tiny.yaml"),
        f"model.path={model}",
        f"data.dataset_name={REPO / 'tests/fixtures/data/openr1_math_sample.jsonl'}",
        f"loop.output_dir={run}",
        f"loop.max_steps={steps}",
        "checkpoint.save_steps=1000",
    ]
    if cli.main(argv) != 0:
        raise RuntimeError(f"jaxrl {' '.join(argv[:2])} failed")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    last = rows[-1]
    return {
        "steps": last["step"],
        "loss": last["loss"],
        "tokens_per_s": last.get("tokens_per_s"),
        "mfu": last.get("mfu"),
    }


def bench(script: str, args: list[str]) -> dict:
    """A bench's last JSON line (it runs in its own process, as a user would run it)."""
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / script), *args], capture_output=True, text=True, timeout=420, cwd=REPO
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}")
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    return {"result": json.loads(lines[-1]), "log": lines[:-1][-12:]}


def hbm_bandwidth(decode: dict, kind: str) -> dict:
    """Bytes a decode step must read (the weights once) over its measured time, beside the chip's."""
    from decode import bench_config

    result = decode["result"]
    step_s = (result.get("decode_ms_per_step") or 0) / 1e3
    if not step_s:
        return {}
    bytes_per_step = bench_config().num_params() * (2 if "bfloat16" in json.dumps(result) else 4)
    achieved = bytes_per_step / step_s / 1e9
    peak = next((v for k, v in HBM_GB_S.items() if kind.startswith(k)), None)
    return {
        "weights_gb_s": round(achieved, 1),
        "chip_gb_s": peak,
        "fraction": round(achieved / peak, 3) if peak else None,
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", nargs="?", default="device_check.json")
    p.add_argument("--reduced", action="store_true", help="small sizes, no benches (a smoke test on any machine)")
    args = p.parse_args(argv)
    sys.path.insert(0, str(REPO / "bench"))
    results: dict = {}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        check(results, "device", device)
        gpu = results["device"].get("backend") == "gpu"
        families, dtypes = (FAMILIES[:1], ("float32",)) if args.reduced else (FAMILIES, ("float32", "bfloat16"))
        check(results, "compare", lambda: compare(work, families, dtypes))
        check(results, "attention", lambda: attention(args.reduced))
        check(results, "sft", lambda: train(work, "sft", 3 if args.reduced else 10))
        check(results, "grpo", lambda: train(work, "grpo", 2 if args.reduced else 10))
        if not args.reduced:
            device_args = ["--device", "cuda"] if gpu else []
            check(results, "train_step", lambda: bench("train_step.py", device_args))
            check(results, "decode", lambda: bench("decode.py", [*device_args, "--dtype", "bfloat16"]))
            if results["decode"]["ok"]:
                results["decode"]["hbm"] = hbm_bandwidth(results["decode"], results["device"].get("kind", ""))
            rollout_args = [*device_args, "--dtype", "bfloat16", "--repeats", "1"]
            check(results, "rollout", lambda: bench("rollout.py", rollout_args))
    summary = {
        "reduced": args.reduced,
        "seconds": round(time.perf_counter() - start, 1),
        "ok": all(r["ok"] for r in results.values()),
        "checks": results,
    }
    Path(args.out).write_text(json.dumps(summary, indent=1) + "\n")
    print(f"wrote {args.out}: {'all checks passed' if summary['ok'] else 'some checks FAILED'}")
    return summary


if __name__ == "__main__":
    sys.exit(0 if main()["ok"] else 1)
