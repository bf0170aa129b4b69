"""Throughput of checkpoint analysis beside the raw read rate of the same files.

Writes a synthetic OLMo-2-shaped base and tuned model (HF safetensors, bf16 by default), and a run
directory of `--checkpoints` Orbax checkpoints of the tuned model written by `save_model` from all
local devices (a training run's layout), then times in one process:
- reference: reading every byte of the files compared (sequential reads into one reused buffer,
  page cache warm, as for the analysis);
- jaxrl: every tensor (all modules, per layer) of the HF base against one HF checkpoint, against
  one Orbax checkpoint, and against the whole Orbax run (`diff_many`, what `jaxrl analyze BASE
  RUN` does: the base is read once for all checkpoints).
For the Orbax cases it also times each part alone (reading the base in our layout, reading one
checkpoint, the reduction kernel) and their sum in series, to show where the time goes.
GB/s counts the bytes of the files compared. One JSON line per case; the last one, a HF base
against a run of our checkpoints (the study's set-up), is the headline.

    python bench/analysis.py --hidden 2048 --layers 8 --dtype bfloat16 --checkpoints 4
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

WRITE_RUN = """
import shutil, sys
from pathlib import Path
import jax
from flax import nnx
from jaxrl.models.checkpoint import save_model
from jaxrl.models.hf_io import load_hf
from jaxrl.sharding import LogicalMesh, make_mesh
model = load_hf(sys.argv[1], LogicalMesh(make_mesh()), param_dtype=sys.argv[3])
run = Path(sys.argv[2])
state = nnx.state(model, nnx.Param)
start = nnx.to_pure_dict(state)
for k in range(int(sys.argv[4])):  # checkpoints that differ a little, as along a run
    scale = 1 + 1e-3 * k
    nnx.replace_by_pure_dict(state, jax.tree.map(lambda w: (w * scale).astype(w.dtype), start))
    nnx.update(model, state)
    save_model(model, run / "checkpoints" / str(10 * (k + 1)))
shutil.move(run / "checkpoints" / "10" / "config.json", run / "config.json")
"""


def write_models(work: Path, config, dtype: str, checkpoints: int) -> None:
    import ml_dtypes
    from jaxrl.models.keymap import hf_names

    from jaxrl.tensorfiles import write_safetensors

    np_dtype = np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else np.dtype(dtype)
    specs = [(name, entry.hf_shape, np_dtype) for name, entry, _ in hf_names(config)]
    shapes = {n: s for n, s, _ in specs}
    for name, scale in (("base", 0.0), ("tuned", 1e-2)):
        noise = np.random.default_rng(1)

        def produce(n, scale=scale, noise=noise):
            w = np.random.default_rng(sorted(shapes).index(n)).standard_normal(shapes[n], np.float32)
            return (w + np.float32(scale) * noise.standard_normal(shapes[n], np.float32)).astype(np_dtype)

        write_safetensors(work / name, specs, produce, max_shard_bytes=1 << 30)
        (work / name / "config.json").write_text(json.dumps(config.to_hf_config() | {"torch_dtype": dtype}))
    done = subprocess.run(
        [sys.executable, "-c", WRITE_RUN, str(work / "tuned"), str(work / "run"), dtype, str(checkpoints)],
        capture_output=True,
        text=True,
    )
    if done.returncode:
        sys.exit(done.stderr[-3000:])


def files_of(*paths: Path) -> list[Path]:
    return sorted(p for path in paths for p in path.rglob("*") if p.is_file() and p.name != "config.json")


def raw_read(files: list[Path]) -> tuple[int, float]:
    """Bytes and seconds to read `files` front to back into one reused 64 MiB buffer."""
    buffer = bytearray(64 << 20)
    view, total = memoryview(buffer), 0
    start = time.perf_counter()
    for path in files:
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(view):
                total += n
    return total, time.perf_counter() - start


def time_parts(base, other, specs) -> dict[str, float]:
    """Seconds each part of comparing checkpoint `other` with `base` takes alone, over all tensors:
    reading the base in our layout, reading the checkpoint, and the reduction kernel."""
    import jax

    from jaxrl.analysis.sources import Buffers
    from jaxrl.analysis.stream import _sums

    buffers, spent = Buffers(), {"base_read_ours": 0.0, "checkpoint_read": 0.0, "kernel": 0.0}
    device = jax.local_devices()[0]
    for spec in specs:
        for layer in range(spec.shape[0]) if spec.stacked else (None,):
            start = time.perf_counter()
            b = base.read_ours(spec, layer, (buffers, 0))
            mid = time.perf_counter()
            o = other.read_ours(spec, layer, (buffers, 1))
            end = time.perf_counter()
            _sums(b, o, device)
            spent["base_read_ours"] += mid - start
            spent["checkpoint_read"] += end - mid
            spent["kernel"] += time.perf_counter() - end
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--checkpoints", type=int, default=4, help="checkpoints in the Orbax run")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many timings")
    parser.add_argument("--work", default="/tmp/jaxrl_bench_analysis")
    parser.add_argument("--keep", action="store_true", help="keep the synthetic checkpoints")
    args = parser.parse_args()

    import jax
    from jaxrl.models.config import preset
    from jaxrl.models.keymap import hf_key_map

    from jaxrl.analysis import HFSource, specs_from_key_map
    from jaxrl.analysis.runs import run_checkpoints
    from jaxrl.analysis.stream import diff_many

    h = args.hidden
    config = preset(
        "tiny-olmo2",
        vocab_size=8 * h,
        hidden_size=h,
        intermediate_size=4 * h,
        num_layers=args.layers,
        num_heads=h // 128,
        num_kv_heads=h // 128,
        head_dim=128,
    )
    work = Path(args.work)
    run = run_checkpoints(work / "run") if (work / "run" / "config.json").is_file() else []
    if len(run) != args.checkpoints:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        write_models(work, config, args.dtype, args.checkpoints)
        run = run_checkpoints(work / "run")
    specs = specs_from_key_map(hf_key_map(config), config.num_layers)
    print(
        f"model: hidden {h}, {args.layers} layers, {args.dtype}; devices: {jax.devices()[0].platform} "
        f"x {jax.device_count()}",
        file=sys.stderr,
    )

    orbax_dirs = [c.path / "params" for c in run]
    cases = {  # name: (files read by the reference, the checkpoints compared with the base)
        "hf_vs_hf": ([work / "tuned"], [HFSource(work / "tuned")]),
        "hf_vs_orbax": (orbax_dirs[:1], [c.open() for c in run[:1]]),
        f"hf_vs_orbax_run_{len(run)}": (orbax_dirs, [c.open() for c in run]),
    }
    results = {}
    for name, (paths, others) in cases.items():
        files = files_of(work / "base", *paths)
        raw_read(files)  # warm the page cache for both measurements
        nbytes, _ = raw_read(files)
        read_s = min(raw_read(files)[1] for _ in range(args.repeats))
        base = HFSource(work / "base")
        diff_many(base, others, specs)  # compile every block shape once
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            diff_many(base, others, specs)
            times.append(time.perf_counter() - start)
        jaxrl_rate, read_rate = nbytes / min(times) / 1e9, nbytes / read_s / 1e9
        if others[0].layout == "ours":  # where the time goes: each part alone, then all in series
            timings = [time_parts(base, others[0], specs) for _ in range(args.repeats)]
            parts = min(timings, key=lambda p: sum(p.values()))
            serial = parts["base_read_ours"] + len(others) * (parts["checkpoint_read"] + parts["kernel"])
            print(
                f"{name}: parts alone "
                + ", ".join(f"{k} {v:.3f} s" for k, v in parts.items())
                + f"; in series {serial:.2f} s (ratio {read_s / serial:.2f}), analysis {min(times):.2f} s, "
                f"raw read {read_s:.2f} s",
                file=sys.stderr,
            )
        results[name] = (jaxrl_rate, read_rate)
        print(
            f"{name}: {nbytes / 1e9:.2f} GB of files; analysis {jaxrl_rate:.2f} GB/s, raw read {read_rate:.2f} GB/s, "
            f"ratio {jaxrl_rate / read_rate:.2f}",
            file=sys.stderr,
        )
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    for name, (jaxrl_rate, read_rate) in results.items():
        line = {
            "metric": f"analysis_{name}_throughput",
            "jaxrl": round(jaxrl_rate, 3),
            "reference": round(read_rate, 3),
            "ratio": round(jaxrl_rate / read_rate, 3),
            "unit": "GB/s",
        }
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    main()
