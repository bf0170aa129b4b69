"""The training loop: loss falls, freezing is bitwise, mesh and accumulation invariance,
schedules against transformers, non-finite skips, damaged-checkpoint fallback."""

from __future__ import annotations

import json
import shutil

import jax
import numpy as np
import pytest
from jaxrl.models.checkpoint import load_model
from jaxrl.models.tiny import build_tiny_model
from jaxrl.train.checkpointing import Checkpoints
from jaxrl.train.config import CheckpointConfig, FreezeConfig, OptimizerConfig
from jaxrl.train.freeze import FreezePlan, expand_braces
from jaxrl.train.loop import Trainer, check_batch_size, fit
from jaxrl.train.optim import make_schedule
from jaxrl.train.sft import sft_loss

from jaxrl.data.batching import padded_rows
from jaxrl.errors import JaxrlError
from jaxrl.metrics import MetricsLogger
from jaxrl.sharding import LogicalMesh, data_parallel_size, make_mesh

VOCAB = 384
# Sharding or accumulation sums the same numbers in another order (float noise ~1e-7 relative).
# Adam divides by sqrt(v) + eps, so with eps=1e-8 a gradient near zero (a rare embedding row) turns
# that noise into differences up to lr; a larger eps keeps the comparison about the gradients.
EXACT_EPS = 1e-4


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "olmo2", "tiny-olmo2", seed=0)


def mesh_of(spec: str, devices: int = 8) -> LogicalMesh:
    return LogicalMesh(make_mesh(spec, jax.devices()[:devices]))


def batch(seed: int, rows: int = 8, length: int = 24) -> dict[str, np.ndarray]:
    """Right-padded rows of random tokens with random lengths, every target trained."""
    rng = np.random.default_rng(seed)
    examples = []
    for _ in range(rows):
        n = int(rng.integers(length // 2, length + 1))
        examples.append((rng.integers(2, VOCAB, n).astype(np.int32), np.ones(n, bool)))
    return padded_rows(examples, length, pad_id=1)._asdict()


def host(tree):
    return jax.tree.map(np.asarray, tree)


def flat(tree) -> dict[str, np.ndarray]:
    return {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def trainer_for(model_dir, spec="data=1,fsdp=-1,tensor=1", devices=8, lr=1e-3, steps=10, eps=1e-8, **kw):
    mesh = mesh_of(spec, devices)
    optimizer = OptimizerConfig(learning_rate=lr, max_grad_norm=1.0, weight_decay=0.01, adam_epsilon=eps)
    return Trainer(load_model(model_dir, mesh), sft_loss, optimizer, steps, mesh=mesh, **kw)


def test_loss_falls(model_dir):
    trainer = trainer_for(model_dir, "data=2,fsdp=1,tensor=1", 2, lr=3e-3, steps=20)
    data = [batch(i) for i in range(2)]
    losses = [float(trainer.step(data[s % 2], s)["loss"]) for s in range(20)]
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.7 * losses[0], losses  # from ln(384) = 5.95 towards memorising two batches


def test_freezing_is_bitwise_and_frozen_tensors_have_no_state(model_dir):
    freeze = FreezeConfig(freeze=("mlp.{gate,up,down}@1", "embed"))
    trainer = trainer_for(model_dir, freeze=freeze)
    before = flat(trainer.params)
    for s in range(3):
        trainer.step(batch(s), s)
    after = flat(trainer.params)
    for name in before:
        if name.endswith("['embed']"):
            assert np.array_equal(before[name], after[name]), name
        elif any(f"['{w}']" in name for w in ("gate", "up", "down")):
            assert np.array_equal(before[name][1], after[name][1]), name  # layer 1 frozen
            assert (before[name][0] != after[name][0]).all(), name  # layer 0 trains, every value moves
        else:
            assert not np.array_equal(before[name], after[name]), name
    # only q, k and lm_head train: the optimizer keeps moments for those three tensors alone
    only_qk = trainer_for(model_dir, freeze=FreezeConfig(train_only=("attn.{q,k}", "lm_head")))
    moments = [x for x in jax.tree.leaves(only_qk.opt_state) if x.ndim > 0]
    assert sorted(x.shape for x in moments) == sorted([(64, VOCAB)] * 2 + [(2, 64, 4, 16)] * 4)


def test_freeze_patterns():
    assert expand_braces("mlp.{gate,up}@1-2") == ["mlp.gate@1-2", "mlp.up@1-2"]
    params = {"embed": np.zeros((4, 2)), "layers": {"q": np.zeros((3, 2)), "gate": np.zeros((3, 2))}}
    plan = FreezePlan.build(FreezeConfig(freeze=("mlp.gate@1-2",)), params, 3)
    assert plan.trainable[("layers", "gate")].tolist() == [True, False, False]
    assert plan.trainable[("layers", "q")].all() and plan.trainable[("embed",)]
    plan = FreezePlan.build(FreezeConfig(train_only=("attn.*@0",)), params, 3)
    assert plan.trainable[("layers", "q")].tolist() == [True, False, False] and not plan.trainable[("embed",)]
    for bad in (("mlp.gate@2-1",), ("mlp.gate@5",), ("attn.nothing",), ("embed@0",), ("x y z!",)):
        with pytest.raises(JaxrlError):
            FreezePlan.build(FreezeConfig(freeze=bad), params, 3)
    with pytest.raises(JaxrlError, match="no parameter trainable"):
        FreezePlan.build(FreezeConfig(freeze=("*",)), params, 3)


def test_one_device_and_2x4_mesh_agree(model_dir):
    results = []
    for spec, devices in (("data=1,fsdp=1,tensor=1", 1), ("data=1,fsdp=2,tensor=4", 8)):
        trainer = trainer_for(model_dir, spec, devices, eps=EXACT_EPS)
        losses = [float(trainer.step(batch(s), s)["loss"]) for s in range(3)]
        results.append((losses, flat(trainer.params)))
    (loss1, p1), (loss8, p8) = results
    np.testing.assert_allclose(loss1, loss8, rtol=1e-6)
    for name in p1:
        np.testing.assert_allclose(p1[name], p8[name], atol=1e-5, rtol=0, err_msg=name)


def test_accumulation_matches_one_big_batch(model_dir):
    big = batch(7, rows=16)
    results = []
    for k in (1, 4):
        trainer = trainer_for(model_dir, "data=2,fsdp=1,tensor=1", 2, eps=EXACT_EPS, accumulation=k)
        m = [host(trainer.step(big, s)) for s in range(2)]
        results.append((m, flat(trainer.params)))
    (m1, p1), (m4, p4) = results
    for a, b in zip(m1, m4, strict=True):
        np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-6)
        np.testing.assert_allclose(a["grad_norm"], b["grad_norm"], rtol=1e-5)
        assert a["loss_denominator"] == b["loss_denominator"]
    for name in p1:
        np.testing.assert_allclose(p1[name], p4[name], atol=1e-6, rtol=0, err_msg=name)


def test_gradients_then_their_update_is_the_step_and_compiles_once(model_dir):
    stepped, split = trainer_for(model_dir, devices=2), trainer_for(model_dir, devices=2)
    want = host(stepped.step(batch(3), 0))
    loss, grads = split.gradients(batch(3))
    got = host(split.apply_gradients(loss, grads, 0))
    np.testing.assert_allclose(got["loss"], want["loss"], rtol=1e-6)
    np.testing.assert_allclose(got["grad_norm"], want["grad_norm"], rtol=1e-5)
    for name, value in flat(stepped.params).items():
        np.testing.assert_allclose(flat(split.params)[name], value, atol=1e-7, err_msg=name)
    split.gradients(batch(4))  # another batch of the same shapes: no new compilation
    assert split._gradients_fn._cache_size() == 1


def test_batch_not_divisible_is_a_clear_error():
    assert data_parallel_size(mesh_of("data=2,fsdp=2,tensor=2")) == 4
    assert check_batch_size(32, 2, 4) == 16
    with pytest.raises(JaxrlError, match="data-parallel size 8"):
        check_batch_size(8, 2, 8)
    with pytest.raises(JaxrlError, match="gradient_accumulation_steps=3"):
        check_batch_size(8, 3, 1)


@pytest.mark.parametrize("kind", ["constant_with_warmup", "linear", "cosine"])
def test_schedules_match_transformers(kind):
    import torch
    import transformers

    total, config = 40, OptimizerConfig(learning_rate=2e-3, lr_scheduler_type=kind, warmup_ratio=0.1)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2e-3)
    ref = transformers.get_scheduler(kind, opt, num_warmup_steps=config.num_warmup_steps(total),
                                     num_training_steps=total)  # fmt: skip
    expected = []
    for _ in range(total):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        ref.step()
    ours = [float(make_schedule(config, total)(s)) for s in range(total)]
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-10)  # fp32 against float64


class ListBatches:
    """An in-memory resumable batch source."""

    def __init__(self, items):
        self.items, self.i = items, 0

    def __iter__(self):
        return self

    def __next__(self):
        item = self.items[self.i % len(self.items)]
        self.i += 1
        return item

    def state(self):
        return {"i": self.i}

    def restore(self, state):
        self.i = state["i"]


@pytest.fixture(scope="module")
def fit_trainer(model_dir):
    """One compiled trainer for the fit tests (they only compare it with itself)."""
    return trainer_for(model_dir, "data=2,fsdp=1,tensor=1", 2, steps=20)


def poisoned(b):
    return {**b, "loss_mask": np.full_like(b["loss_mask"], np.nan)}


def test_nonfinite_updates_are_skipped_then_stop_the_run(fit_trainer, tmp_path):
    trainer = fit_trainer
    good = [batch(0), batch(1)]
    before = flat((trainer.params, trainer.opt_state))
    assert int(trainer.step(poisoned(good[0]), 0)["skipped"]) == 1
    after = flat((trainer.params, trainer.opt_state))
    assert all(np.array_equal(before[k], after[k], equal_nan=True) for k in before)
    ckpts = Checkpoints(tmp_path / "checkpoints", CheckpointConfig(save_steps=2, async_save=False))
    logger = MetricsLogger(tmp_path, 20, progress=False, tensorboard=False)
    # steps 1-2 good (checkpoint 2), step 3 poisoned and skipped, step 4 good, 5-7 poisoned: stop at 3 in a row
    items = good + [poisoned(good[0]), good[1]] + [poisoned(good[0])] * 3
    with pytest.raises(JaxrlError, match=r"3 non-finite updates in a row \(steps 5-7\).*step 4"):
        fit(trainer, ListBatches(items), 20, ckpts, logger, save_interval=2, max_nonfinite_steps=3)
    logger.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_updates"] for r in rows] == [0, 0, 1, 1, 2, 3, 4]
    assert ckpts.steps() == [2, 4]  # none during the streak: the newest checkpoint is a good one
    ckpts.close()


def test_damaged_newest_checkpoint_falls_back_with_a_warning(fit_trainer, tmp_path):
    trainer = fit_trainer
    ckpts = Checkpoints(tmp_path / "checkpoints", CheckpointConfig(async_save=False))
    logger = MetricsLogger(tmp_path, 4, progress=False, tensorboard=False)
    fit(trainer, ListBatches([batch(0), batch(1)]), 4, ckpts, logger, save_interval=2)
    step2 = ckpts.restore(2, *trainer.abstract_state())
    # damage step 4: truncate every array file of its params
    for f in (tmp_path / "checkpoints" / "4" / "params").rglob("*"):
        if f.is_file() and f.stat().st_size > 1000:
            f.write_bytes(f.read_bytes()[:100])
    with pytest.warns(UserWarning, match="checkpoint step 4 .* cannot be restored.*resuming from step 2"):
        params, _, state = ckpts.restore_latest(*trainer.abstract_state())
    assert state["step"] == 2 and ckpts.steps() == [2]
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(step2[0]), strict=True):
        assert np.array_equal(a, b)
    # a deleted item is caught the same way; with no good step left, resume refuses and moves nothing
    fresh = Checkpoints(tmp_path / "checkpoints", CheckpointConfig(async_save=False))
    shutil.rmtree(tmp_path / "checkpoints" / "2" / "opt_state")
    with pytest.raises(JaxrlError, match="no checkpoint .* can be restored"):
        fresh.restore_latest(*trainer.abstract_state())
    assert fresh.steps() == [2]
    ckpts.close()
    fresh.close()


def test_chunked_sft_loss_equals_the_plain_one(model_dir):
    from flax import nnx

    model = load_model(model_dir, mesh_of("data=1,fsdp=1,tensor=1", 1))
    graphdef, params = nnx.split(model)
    b = {k: jax.numpy.asarray(v) for k, v in batch(3, rows=2, length=20).items()}

    def loss(p, chunk):
        num, den, _ = sft_loss(nnx.merge(graphdef, p), b, chunk)
        return num / den

    plain, g_plain = jax.jit(jax.value_and_grad(lambda p: loss(p, 0)))(params)
    chunked, g_chunked = jax.jit(jax.value_and_grad(lambda p: loss(p, 8)))(params)  # 20 = 8 + 8 + 4
    np.testing.assert_allclose(chunked, plain, rtol=1e-6)
    for a, c in zip(jax.tree.leaves(g_plain), jax.tree.leaves(g_chunked), strict=True):
        np.testing.assert_allclose(c, a, atol=1e-7, rtol=1e-5)
