"""The time estimate of `jaxrl plan --chip`, worked by hand on a toy chip, and the command's lines."""

from __future__ import annotations

import json

import pytest
from jaxrl.models.config import preset
from jaxrl.train.chips import Chip
from jaxrl.train.grpo import GRPOSettings
from jaxrl.train.timeplan import Layout, Lengths, grpo_plan, sft_plan

from jaxrl.cli import main as cli_main

# tiny-olmo2 in bf16: 2 layers, hidden 64, 4 heads of 16 (no GQA), MLP 128, vocab 384, untied.
# Params by hand: a layer = attention 4 x 64 x 64 (16384) + QK-norm 128 + MLP 3 x 64 x 128 (24576)
# + 2 norms (128) = 41216; 2 layers 82432 + embedding and lm_head 2 x 384 x 64 (49152) + final norm 64.
PARAMS, MATMUL_PARAMS = 131648, 131648 - 384 * 64  # the input embedding is a lookup, not a matmul
TOY = Chip("toy", memory_gb=1, bf16_flops=1e12, hbm_bytes_s=1e9, link_bytes_s=1e8)
CONFIG = preset("tiny-olmo2", dtype="bfloat16")


def test_grpo_estimate_worked_by_hand():
    s = GRPOSettings(prompts_per_step=2, num_generations=4, max_prompt_length=16, max_completion_length=8,
                     num_iterations=2)  # fmt: skip
    plan = grpo_plan(CONFIG, s, steps=4, chip=TOY, layout=Layout(4, 4, 1), mfu=0.5, lengths=Lengths(4, 6))
    assert CONFIG.num_params() == PARAMS
    # decode: the longest completion, 6 steps; each reads the bf16 weights (2 bytes each) and the
    # KV cache of its 8 / 4 = 2 rows filled on average to 16 + 6 / 2 = 19 slots
    kv = 2 * 2 * 4 * 16 * 2 * 2 * 19  # K and V x layers x heads x head_dim x bytes x rows x slots
    step = (PARAMS * 2 + kv) / 1e9
    reshard = PARAMS * 2 / 1e8
    prefill = 2 * PARAMS * 2 * 16 / (4 * 1e12 * 0.5)  # 2 prompts of 16 tokens, once each
    # a training step: 8 rows x 24 tokens; per token 6 x matmul params + 6 x L x H x E x T
    train = (6 * MATMUL_PARAMS + 6 * 2 * 4 * 16 * 24) * 8 * 24 / (4 * 1e12 * 0.5)
    generation = reshard + prefill + 6 * step + train / 3
    assert plan.decode_steps == 6 and plan.decode_step_s == pytest.approx(step)
    assert plan.train_step_s == pytest.approx(train) and plan.score_s == pytest.approx(train / 3)
    assert plan.generation_s == pytest.approx(generation)
    assert plan.run_s == pytest.approx(2 * generation + 4 * train)  # mu = 2: two generation batches
    assert plan.chip_hours == pytest.approx(plan.run_s * 4 / 3600)
    assert plan.slot_steps_per_token == pytest.approx(6 / 4)

    packed = grpo_plan(CONFIG, s, steps=4, chip=TOY, layout=Layout(4, 4, 1), mfu=0.5, lengths=Lengths(4, 6), slots=4)
    # continuous batching on 4 slots: 8 completions x mean 4 / 4 slots = 8 packed steps, + the tail
    # 6 - 4 = 10 decode steps, each reading the KV cache of 4 / 4 = 1 slot per device, filled to 19
    kv_packed = 2 * 2 * 4 * 16 * 2 * 1 * 19
    assert packed.decode_steps == 10
    assert packed.decode_step_s == pytest.approx((PARAMS * 2 + kv_packed) / 1e9)
    assert packed.slot_steps_per_token == pytest.approx(4 * 10 / (8 * 4))

    split = grpo_plan(CONFIG, s, steps=4, chip=TOY, layout=Layout(4, 2, 2), mfu=0.5, lengths=Lengths(4, 6))
    kv_split = 2 * 2 * (4 / 2) * 16 * 2 * (8 / 2) * 19  # half the heads, twice the rows
    ring = 2 * 2 * (8 / 2) * 64 * 2 * (2 * 1 / 2) / 1e8  # 2 all-reduces per layer of [rows, D] bf16
    assert split.decode_step_s == pytest.approx((PARAMS * 2 / 2 + kv_split) / 1e9 + ring)


def test_sft_estimate_and_the_command(tmp_path, capsys):
    plan = sft_plan(CONFIG, rows=8, seq_len=64, steps=10, chip=TOY, layout=Layout(2, 2, 1), mfu=0.25)
    train = (6 * MATMUL_PARAMS + 6 * 2 * 4 * 16 * 64) * 8 * 64 / (2 * 1e12 * 0.25)
    assert plan.train_step_s == pytest.approx(train) and plan.run_s == pytest.approx(10 * train)

    recipe = tmp_path / "grpo.yaml"
    recipe.write_text("model:\n  path: tiny-olmo2\ngrpo:\n  prompts_per_step: 4\n  num_generations: 4\n"
                      "  max_prompt_length: 32\n  max_completion_length: 16\nloop:\n  max_steps: 571\n")  # fmt: skip
    out_json = tmp_path / "plan.json"
    argv = ["plan", "--recipe", str(recipe), "--devices", "8", "--chip", "v5p", "--json", str(out_json)]
    assert cli_main([*argv, "--lengths", "6,12"]) == 0
    out = capsys.readouterr().out
    assert "time on v5p at MFU 0.40" in out and "12 decode steps" in out and "for 571 steps" in out
    t = json.loads(out_json.read_text())["time_plan"]
    assert t["decode_steps"] == 12 and t["slot_steps_per_token"] == 2.0 and t["steps"] == 571
    assert t["run_s"] == pytest.approx(571 * (t["generation_s"] + t["train_step_s"]))  # one update per batch
    assert cli_main([*argv, "--lengths", "six,7"]) == 2
    assert "--lengths 'six,7'" in capsys.readouterr().err
    for bad in ("nan,7", "6,inf", "-1,7"):
        assert cli_main([*argv, f"--lengths={bad}"]) == 2
        assert "must be finite token counts > 0" in capsys.readouterr().err
