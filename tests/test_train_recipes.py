"""The study's SFT recipes carry PAPER.md's numbers; bad recipes fail before anything compiles."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from flax import nnx
from jaxrl.models.config import preset
from jaxrl.models.params import abstract_decoder
from jaxrl.train import sft
from jaxrl.train.freeze import FreezePlan

from jaxrl.errors import JaxrlError

RECIPES = Path(__file__).parents[1] / "train" / "recipes"
STUDY = ("sft-3ep", "sft-1ep", "sft-lr-control", "sft-frozen-mid-mlp", "sft-only-qk")
# PAPER.md: one string, real newlines
SYSTEM_PROMPT = (
    "You are a helpful AI Assistant that provides well-reasoned and detailed responses. You first think about the "
    "reasoning process as an internal monologue and then provide the user with the answer. Respond in the "
    "following format: <think>\n...\n</think>\n<answer>\n...\n</answer>"
)
ROWS_UNDER_4096 = 69_100  # "about 69.1k rows" of templated length <= 4096


def load(name: str) -> sft.SFTConfig:
    return sft.load_config(str(RECIPES / f"{name}.yaml"))


@pytest.mark.parametrize("name", STUDY)
def test_study_recipes_carry_the_paper_numbers(name):
    c = load(name)
    o = c.optimizer
    assert o.learning_rate == (1e-6 if name == "sft-lr-control" else 5e-5)
    assert (o.lr_scheduler_type, o.warmup_ratio, o.weight_decay) == ("constant_with_warmup", 0.1, 0.0)
    assert (o.adam_beta1, o.adam_beta2, o.adam_epsilon, o.max_grad_norm) == (0.9, 0.999, 1e-8, 0.2)
    assert (c.sft.batch_size, c.sft.max_length, c.sft.padding_free) == (448, 4096, True)
    assert c.sft.completion_only_loss is False  # the whole sequence, as the original
    d = c.data
    assert (d.dataset_name, d.dataset_config, d.filters) == ("open-r1/OpenR1-Math-220k", "extended", ("source=cn_k12",))
    assert c.chat.chat_template == "olmo2" and c.chat.system_prompt == SYSTEM_PROMPT
    assert c.chat.drop_user_newline is True  # the original SFT path's quirk
    assert c.loop.seed == 42 and c.model.dtype == "bfloat16"

    steps_per_epoch = ROWS_UNDER_4096 // 448
    total = c.loop.total_steps(steps_per_epoch)
    assert total == {"sft-1ep": 154, "sft-lr-control": 571}.get(name, 462)  # PAPER: 462, ~152, 571
    assert c.checkpoint.save_steps == 0.05  # every 5% of training
    if total == 462:
        assert c.checkpoint.interval(total) == 24  # the paper's SFT checkpoint "at step 24"


def plan_for(name: str) -> dict[str, np.ndarray]:
    params = nnx.to_pure_dict(nnx.state(abstract_decoder(preset("olmo2-1124-7b"))))
    plan = FreezePlan.build(load(name).freeze, params, 32)
    return {".".join(p): t for p, t in plan.trainable.items()}


def test_frozen_mid_mlp_freezes_layers_19_to_25_only():
    trainable = plan_for("sft-frozen-mid-mlp")
    mid = np.zeros(32, bool)
    mid[19:26] = True
    for name, t in trainable.items():
        if name in ("layers.gate", "layers.up", "layers.down"):
            assert (t == ~mid).all(), name
        else:
            assert t.all(), name


def test_only_qk_trains_q_k_and_the_untied_lm_head():
    trainable = plan_for("sft-only-qk")
    assert {n for n, t in trainable.items() if t.any()} == {"layers.q", "layers.k", "lm_head"}
    assert all(t.all() for n, t in trainable.items() if n in ("layers.q", "layers.k", "lm_head"))


def test_study_recipes_are_the_3_epoch_recipe_plus_their_change():
    base = load("sft-3ep")
    for name, changed in (("sft-1ep", {"loop"}), ("sft-lr-control", {"optimizer", "loop"}),
                          ("sft-frozen-mid-mlp", {"freeze", "loop"}), ("sft-only-qk", {"freeze", "loop"})):  # fmt: skip
        other = load(name)
        differs = {f for f in ("model", "data", "chat", "sft", "optimizer", "freeze", "checkpoint", "loop")
                   if getattr(other, f) != getattr(base, f)}  # fmt: skip
        assert differs == changed, name


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model.path=/nonexistent/model"], "does not exist"),
        (["loop.output_dir=gs://bucket/run"], "must be a local directory"),
        (["optimizer.lr_scheduler_type=cosin"], "lr_scheduler_type"),
        (["optimizer.learning_rat=1"], "did you mean 'optimizer.learning_rate'"),
        (["checkpoint.save_steps=2.5"], "save_steps"),
        (["loop.gradient_accumulation_steps=0"], "gradient_accumulation_steps"),
        (["freeze.freeze=[mlp.gate@9-3]"], None),  # checked when the model's layers are known
    ],
)
def test_bad_recipes_fail_with_one_line(overrides, message, tmp_path):
    base = [f"loop.output_dir={tmp_path / 'run'}"]
    if message is None:
        sft.load_config(None, overrides)  # a syntactically fine pattern loads
        return
    with pytest.raises(JaxrlError, match=message) as e:
        sft.run(None, base + overrides)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "run").exists()  # nothing half-written


def test_batch_not_divisible_by_data_parallel_fails_before_loading(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    # a valid config and no weights: the config is checked first, then the batch, before any loading
    (model / "config.json").write_text(json.dumps(preset("tiny-olmo2").to_hf_config()))
    overrides = [f"model.path={model}", f"loop.output_dir={tmp_path / 'run'}", "loop.mesh=data=2,fsdp=4,tensor=1",
                 "sft.batch_size=12", "sft.padding_free=false"]  # fmt: skip
    with pytest.raises(JaxrlError, match="data-parallel size 8"):
        sft.run(None, overrides)
    assert not (tmp_path / "run").exists()
