"""`jaxrl compare`: our logits beside transformers' PyTorch logits on the same tokens."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from jaxrl.errors import JaxrlError
from jaxrl.model_files import load_tokenizer

DEFAULT_PROMPTS = (
    "What is 12 + 30? Think step by step.",
    "The capital of a country is",
    "Write a short list of three prime numbers.",
    "1 2 3 4 5",
)


def logit_stats(ours_btv: np.ndarray, ref_btv: np.ndarray, mask_bt: np.ndarray) -> dict:
    """Max/mean |logit diff|, top-1 agreement and mean KL(ref || ours) over unmasked tokens."""
    valid = mask_bt.astype(bool)
    ours, ref = ours_btv[valid].astype(np.float64), ref_btv[valid].astype(np.float64)
    diff = np.abs(ours - ref)
    log_p = ref - _logsumexp(ref)
    log_q = ours - _logsumexp(ours)
    kl = np.sum(np.exp(log_p) * (log_p - log_q), axis=-1)
    return {
        "tokens": int(valid.sum()),
        "max_abs_logit_diff": float(diff.max()),
        "mean_abs_logit_diff": float(diff.mean()),
        "top1_agreement": float(np.mean(ours.argmax(-1) == ref.argmax(-1))),
        "kl": float(kl.mean()),
    }


def _logsumexp(x):
    m = x.max(-1, keepdims=True)
    return m + np.log(np.exp(x - m).sum(-1, keepdims=True))


def compare(model_dir: str | Path, prompts: list[str], dtype: str = "float32", mesh: str = "") -> dict:
    """Runs both models on the tokenised `prompts` (right-padded batch) and compares logits."""
    try:
        import torch
        import transformers
    except ImportError:
        raise JaxrlError("compare needs PyTorch: pip install 'jaxrl[torch]'") from None
    import jax.numpy as jnp
    from jaxrl.models.checkpoint import is_orbax_model
    from jaxrl.models.config import ModelConfig
    from jaxrl.models.hf_io import load_hf

    from jaxrl.sharding import LogicalMesh, make_mesh

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise JaxrlError(f"model directory {model_dir} does not exist")
    if is_orbax_model(model_dir):
        raise JaxrlError(f"{model_dir} is an Orbax checkpoint; `jaxrl convert` it to a HF directory first")
    if not prompts:
        raise JaxrlError("no prompts to compare on")
    ModelConfig.from_hf_dir(model_dir)  # a config.json key missing, null or wrong: its file and key
    tokenizer = load_tokenizer(model_dir)  # the shared loader: local files only, one-line errors
    ours = load_hf(model_dir, LogicalMesh(make_mesh(mesh)), param_dtype=dtype, dtype=dtype)
    rows = [tokenizer(p).input_ids for p in prompts]
    length = max(map(len, rows))
    tokens = np.zeros((len(rows), length), np.int64)
    mask = np.zeros((len(rows), length), np.int64)
    for i, row in enumerate(rows):
        tokens[i, : len(row)], mask[i, : len(row)] = row, 1
    reference = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype))
    with torch.no_grad():
        ref_logits = reference(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask)).logits
    our_logits = ours(jnp.asarray(tokens), jnp.asarray(mask))
    return logit_stats(np.asarray(our_logits, np.float32), ref_logits.float().numpy(), mask)


def compare_cli(args) -> None:
    prompts = list(DEFAULT_PROMPTS)
    if args.prompts:
        path = Path(args.prompts)
        if not path.is_file():
            raise JaxrlError(f"prompts file {path} does not exist")
        prompts = [line for line in path.read_text().splitlines() if line.strip()]
    stats = compare(args.model, prompts, args.dtype, args.mesh)
    for key, value in stats.items():
        print(f"{key:>20}: {value:.6g}" if isinstance(value, float) else f"{key:>20}: {value}")
    if args.json:
        print(json.dumps(stats))
