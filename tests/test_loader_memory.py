"""Peak host memory of `load_hf` stays near the largest tensor, not the model.

A synthetic OLMo-2-shaped checkpoint of ~0.6 GB (largest tensor 16 MiB) is written tensor by
tensor, then loaded in a fresh process. The loaded model itself lives in host memory (CPU devices),
so the check is on the overshoot: peak RSS during the load minus RSS once it is done.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from jaxrl.models.config import preset
from jaxrl.models.keymap import hf_names

from jaxrl.tensorfiles import write_safetensors

CONFIG = preset(
    "tiny-olmo2",
    vocab_size=4096,
    hidden_size=1024,
    intermediate_size=4096,
    num_layers=10,
    num_heads=8,
    num_kv_heads=8,
    head_dim=128,
)
LARGEST = 4096 * 1024 * 4  # one MLP matrix or the embedding, fp32

MEASURE = """
import json, sys
import jax
from jaxrl.models.hf_io import load_hf

def status(key):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith(key + ":"))

model = load_hf(sys.argv[1])
jax.block_until_ready(jax.tree.leaves(model))
# VmHWM, not ru_maxrss: a forked child's ru_maxrss starts at the parent's RSS (the test runner's)
print(json.dumps({"peak": status("VmHWM"), "after": status("VmRSS")}))
"""


@pytest.mark.slow
def test_peak_memory_near_largest_tensor(tmp_path):
    specs = [(name, entry.hf_shape, np.float32) for name, entry, _ in hf_names(CONFIG)]
    model_bytes = sum(int(np.prod(shape)) * 4 for _, shape, _ in specs)
    assert max(int(np.prod(shape)) * 4 for _, shape, _ in specs) == LARGEST
    rng = np.random.default_rng(0)
    write_safetensors(
        tmp_path,
        specs,
        lambda name: rng.standard_normal(dict((n, s) for n, s, _ in specs)[name], np.float32),
        max_shard_bytes=200 * 2**20,
    )
    (tmp_path / "config.json").write_text(json.dumps(CONFIG.to_hf_config()))

    out = subprocess.run([sys.executable, "-c", MEASURE, str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    rss = json.loads(out.stdout.strip().splitlines()[-1])
    overshoot = rss["peak"] - rss["after"]
    mib = {k: round(v / 2**20) for k, v in {"model": model_bytes, **rss}.items()}
    print(f"MiB: model {mib['model']}, peak {mib['peak']}, after load {mib['after']}")
    assert model_bytes > 30 * LARGEST
    assert overshoot <= 4 * LARGEST + 100 * 2**20, (overshoot / 2**20, model_bytes / 2**20)
