"""Throughput of checkpoint analysis beside the raw read rate of the same files.

Writes a synthetic OLMo-2-shaped base and tuned model (HF safetensors, bf16 by default) and the
tuned model again as an Orbax checkpoint written from all local devices (a training run's
layout), then times in one process:
- reference: reading every byte of the checkpoint files (sequential reads into one reused buffer,
  page cache warm, as for the analysis);
- jaxrl: `diff_sources` over every tensor (all modules, per layer), HF base against the HF run and
  against the Orbax run.
GB/s counts the bytes of the files of both sides. The last line is one JSON object.

    python bench/analysis.py --hidden 2048 --layers 8 --dtype bfloat16 --work /tmp/bench_analysis
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

WRITE_ORBAX = """
import sys
from jaxrl.models.checkpoint import save_model
from jaxrl.models.hf_io import load_hf
from jaxrl.sharding import LogicalMesh, make_mesh
save_model(load_hf(sys.argv[1], LogicalMesh(make_mesh()), param_dtype=sys.argv[3]), sys.argv[2])
"""


def write_models(work: Path, config, dtype: str) -> None:
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
        [sys.executable, "-c", WRITE_ORBAX, str(work / "tuned"), str(work / "orbax"), dtype],
        capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode:
        sys.exit(done.stderr[-3000:])


def files_of(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file() and p.name != "config.json")


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many timings")
    parser.add_argument("--work", default="/tmp/jaxrl_bench_analysis")
    parser.add_argument("--keep", action="store_true", help="keep the synthetic checkpoints")
    args = parser.parse_args()

    import jax
    from jaxrl.models.config import preset
    from jaxrl.models.keymap import hf_key_map

    from jaxrl.analysis import HFSource, OrbaxSource, diff_sources, specs_from_key_map

    h = args.hidden
    config = preset(
        "tiny-olmo2", vocab_size=8 * h, hidden_size=h, intermediate_size=4 * h, num_layers=args.layers,
        num_heads=h // 128, num_kv_heads=h // 128, head_dim=128,
    )  # fmt: skip
    work = Path(args.work)
    if not (work / "orbax").is_dir():
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        write_models(work, config, args.dtype)
    specs = specs_from_key_map(hf_key_map(config), config.num_layers)
    print(f"model: hidden {h}, {args.layers} layers, {args.dtype}; devices: {jax.devices()[0].platform} "
          f"x {jax.device_count()}", file=sys.stderr)  # fmt: skip

    results = {}
    for run in ("tuned", "orbax"):
        files = files_of(work / "base") + files_of(work / run)
        raw_read(files)  # warm the page cache for both measurements
        nbytes, _ = raw_read(files)
        read_s = min(raw_read(files)[1] for _ in range(args.repeats))
        other = HFSource(work / run) if run == "tuned" else OrbaxSource(work / "orbax" / "params")
        base = HFSource(work / "base")
        diff_sources(base, other, specs)  # compile every block shape once
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            diff_sources(base, other, specs)
            times.append(time.perf_counter() - start)
        jaxrl_rate, read_rate = nbytes / min(times) / 1e9, nbytes / read_s / 1e9
        name = "hf_vs_hf" if run == "tuned" else "hf_vs_orbax"
        results[name] = (jaxrl_rate, read_rate)
        print(f"{name}: {nbytes / 1e9:.2f} GB of files; analysis {jaxrl_rate:.2f} GB/s, raw read {read_rate:.2f} GB/s, "
              f"ratio {jaxrl_rate / read_rate:.2f}", file=sys.stderr)  # fmt: skip
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    # HF base against our Orbax run (the study's set-up) last: the headline line.
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
