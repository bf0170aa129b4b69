"""One SFT step against transformers + torch.optim.AdamW: the same tiny model, batch and
hyper-parameters give the same loss and the same updated parameters."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch
import transformers
from hf_models import build_hf_model
from jaxrl.models.checkpoint import load_model
from jaxrl.models.config import PRESETS
from jaxrl.train.config import OptimizerConfig
from jaxrl.train.loop import Trainer
from jaxrl.train.sft import sft_loss

from jaxrl.data.batching import padded_rows
from jaxrl.sharding import LogicalMesh, make_mesh

# lr 1e-4 keeps Adam's first step (lr * g / (|g| + eps)) from magnifying float noise in near-zero
# gradients past the tolerance; clipping at 0.2 is active (the gradient norm is above 1).
OPTIMIZER = OptimizerConfig(learning_rate=1e-4, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8,
                            weight_decay=0.01, max_grad_norm=0.2, lr_scheduler_type="constant")  # fmt: skip


def sft_batch(vocab: int, seed: int = 0, rows: int = 4, length: int = 20) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    examples = []
    for _ in range(rows):
        n = int(rng.integers(8, length + 1))
        examples.append((rng.integers(1, vocab, n).astype(np.int32), rng.random(n) < 0.7))
    return padded_rows(examples, length, pad_id=0)._asdict()


def torch_step(model_dir, batch, out_dir) -> float:
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.train()
    tokens = torch.as_tensor(batch["tokens"], dtype=torch.long)
    logits = model(input_ids=tokens, attention_mask=torch.as_tensor(batch["segment_ids"] > 0)).logits
    nll = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), torch.as_tensor(batch["targets"], dtype=torch.long).reshape(-1),
        reduction="none",
    )  # fmt: skip
    mask = torch.as_tensor(batch["loss_mask"]).reshape(-1)
    loss = (nll * mask).sum() / mask.sum()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), OPTIMIZER.max_grad_norm)
    opt = torch.optim.AdamW(model.parameters(), lr=OPTIMIZER.learning_rate,
                            betas=(OPTIMIZER.adam_beta1, OPTIMIZER.adam_beta2), eps=OPTIMIZER.adam_epsilon,
                            weight_decay=OPTIMIZER.weight_decay)  # fmt: skip
    opt.step()
    model.save_pretrained(out_dir)
    return loss.item()


def test_one_step_matches_torch_adamw(tmp_path):
    config = PRESETS["tiny-olmo2"]  # the study's family: post-norms, QK-norm, untied lm_head
    build_hf_model(config, tmp_path / "base")
    batch = sft_batch(config.vocab_size)
    ref_loss = torch_step(tmp_path / "base", batch, tmp_path / "torch_after")

    mesh = LogicalMesh(make_mesh("data=1,fsdp=1,tensor=1", jax.devices()[:1]))
    trainer = Trainer(load_model(tmp_path / "base", mesh), sft_loss, OPTIMIZER, total_steps=1, mesh=mesh)
    metrics = trainer.step(batch, 0)
    assert float(metrics["loss"]) == pytest.approx(ref_loss, rel=1e-5)
    assert float(metrics["grad_norm"]) > OPTIMIZER.max_grad_norm  # clipping took part

    expected = load_model(tmp_path / "torch_after", mesh)  # torch's updated weights in our layout
    ours = jax.tree_util.tree_leaves_with_path(trainer.params)
    theirs = dict(jax.tree_util.tree_leaves_with_path(jax.tree.map(np.asarray, nnx_params(expected))))
    moved = 0
    for path, value in ours:
        np.testing.assert_allclose(np.asarray(value), theirs[path], atol=1e-5, rtol=0,
                                   err_msg=jax.tree_util.keystr(path))  # fmt: skip
        moved += 1
    assert moved == len(theirs)


def nnx_params(model):
    from flax import nnx

    return nnx.to_pure_dict(nnx.state(model))
