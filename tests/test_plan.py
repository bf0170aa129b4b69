"""`jaxrl plan` against memory measured on CPU.

The measurement runs in a fresh process (4 emulated devices, glibc told to mmap every block of
64 KiB or more so freed memory leaves the resident set at once) and compares:
- the abstract plan's lowered step with the step a real `Trainer` runs: the same program;
- params + optimizer state per device with the bytes of the live arrays on every device: exact
  (up to the RNG key's 8 bytes);
- the step's transient memory (devices x (temporaries + outputs - aliased)) with the growth of the
  process's peak resident set while one step runs (/proc/self/clear_refs resets the peak):
  measured within -10% / +35% of the plan. The CPU runtime adds a roughly constant ~35 MiB of its
  own (threads, host buffers), which is what the upper margin allows for.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from jaxrl.train.plan import HEADROOM, MemoryPlan, device_env

from jaxrl.cli import main as cli_main

HERE = Path(__file__).resolve()
REPO = HERE.parents[1]
ROWS, SEQ, ACCUMULATION = 16, 256, 2


def _measure(mesh: str) -> dict:
    """Runs in the fresh process: plan, real trainer, live bytes, peak-RSS growth of a step."""
    import jax
    import numpy as np
    from jaxrl.models.config import preset
    from jaxrl.models.params import init_decoder
    from jaxrl.train import plan
    from jaxrl.train.config import FreezeConfig, OptimizerConfig
    from jaxrl.train.loop import Trainer
    from jaxrl.train.sft import sft_loss

    from jaxrl.sharding import LogicalMesh, make_mesh

    def status(field: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(field)

    cfg = preset("tiny-olmo2", vocab_size=4096, hidden_size=128, intermediate_size=512, num_layers=2,
                 num_heads=4, num_kv_heads=4, head_dim=32)  # fmt: skip
    lm = LogicalMesh(make_mesh(mesh))
    opt = OptimizerConfig(learning_rate=1e-3, max_grad_norm=1.0)
    abstract = Trainer.abstract(cfg, sft_loss, opt, 10, freeze=FreezeConfig(), accumulation=ACCUMULATION, mesh=lm)
    host = {n: jax.ShapeDtypeStruct((ROWS, SEQ), np.int32) for n in ("tokens", "segment_ids", "positions", "targets")}
    host["loss_mask"] = jax.ShapeDtypeStruct((ROWS, SEQ), np.float32)
    lowered, _ = abstract.lower(host)
    planned = lowered.compile().memory_analysis()

    trainer = Trainer(init_decoder(cfg, lm), sft_loss, opt, 10, accumulation=ACCUMULATION, mesh=lm)
    live = dict.fromkeys(map(str, jax.devices()), 0)  # bytes of every live buffer, by device
    for a in jax.live_arrays():
        shard_bytes = int(np.prod(a.sharding.shard_shape(a.shape))) * a.dtype.itemsize
        for d in a.sharding.device_set:
            live[str(d)] += shard_bytes
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, cfg.vocab_size, (ROWS, SEQ)).astype(np.int32)
    host_batch = {"tokens": tokens, "segment_ids": np.ones_like(tokens), "targets": np.roll(tokens, -1, axis=1),
                  "positions": np.tile(np.arange(SEQ, dtype=np.int32), (ROWS, 1)),
                  "loss_mask": np.ones(tokens.shape, np.float32)}  # fmt: skip
    jax.block_until_ready(trainer.step(host_batch, 0))  # compiles
    device_batch = trainer.device_batch(host_batch)
    step = jax.device_put(np.int32(1), lm.replicated())
    same_program = (
        trainer._step_fn.lower(trainer.params, trainer.opt_state, device_batch, step).as_text() == lowered.as_text()
    )
    growth = []
    for _ in range(3):
        Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS
        before = status("VmRSS")
        trainer.params, trainer.opt_state, metrics = trainer._step_fn(
            trainer.params, trainer.opt_state, device_batch, step
        )
        jax.block_until_ready(metrics)
        growth.append(status("VmHWM") - before)
    fields = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes", "temp_size_in_bytes")
    return {
        "planned": {f: getattr(planned, f) for f in fields},
        "same_program": same_program,
        "params": plan.sharded_bytes(abstract.params),
        "opt_state": plan.sharded_bytes(abstract.opt_state),
        "live": live,
        "growth": growth,
        "devices": jax.device_count(),
    }


@pytest.mark.parametrize("mesh", ["fsdp=4"])
def test_plan_agrees_with_memory_measured_on_cpu(mesh):
    env = device_env(4)
    env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    out = subprocess.run([sys.executable, str(HERE), mesh], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["same_program"], "the abstract step must lower to the trainer's own step"
    resident = r["params"] + r["opt_state"]
    assert r["planned"]["alias_size_in_bytes"] == resident  # params and moments are donated
    for device, nbytes in r["live"].items():
        assert resident <= nbytes <= resident + 64, (device, nbytes, resident)
    p = r["planned"]
    transient = r["devices"] * (p["temp_size_in_bytes"] + p["output_size_in_bytes"] - p["alias_size_in_bytes"])
    measured = sorted(r["growth"])[1]
    assert 0.9 * transient <= measured <= 1.35 * transient, (measured / 2**20, transient / 2**20)


FREEZES = [(dict(train_only=("attn.{q,k}", "lm_head")), "fsdp=4,tensor=2")]  # the study's q/k-only variant


@pytest.mark.parametrize("freeze, mesh", FREEZES)
def test_abstract_step_is_the_trainers_step_with_freezing(freeze, mesh):
    """Frozen tensors change the optimizer state's structure; the abstract step must follow."""
    import jax
    import numpy as np
    from jaxrl.models.config import preset
    from jaxrl.models.params import init_decoder
    from jaxrl.train import plan
    from jaxrl.train.config import FreezeConfig, OptimizerConfig
    from jaxrl.train.loop import Trainer
    from jaxrl.train.sft import sft_loss

    from jaxrl.sharding import LogicalMesh, make_mesh

    cfg, lm, opt, fc = preset("tiny-olmo2"), LogicalMesh(make_mesh(mesh)), OptimizerConfig(), FreezeConfig(**freeze)
    rows, seq = 16, 32
    host = {n: np.zeros((rows, seq), np.int32) for n in ("tokens", "segment_ids", "positions", "targets")}
    host["loss_mask"] = np.ones((rows, seq), np.float32)
    trainer = Trainer(init_decoder(cfg, lm), sft_loss, opt, 10, freeze=fc, accumulation=2, mesh=lm)
    step = jax.device_put(np.int32(0), lm.replicated())
    real = trainer._build(host).lower(trainer.params, trainer.opt_state, trainer.device_batch(host), step)
    abstract = Trainer.abstract(cfg, sft_loss, opt, 10, freeze=fc, accumulation=2, mesh=lm)
    shapes = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in host.items()}
    lowered, _ = abstract.lower(shapes)
    assert lowered.as_text() == real.as_text()
    if "train_only" in freeze:  # tensors frozen in every layer carry no moments (partly frozen ones keep theirs)
        assert plan.sharded_bytes(abstract.opt_state) < 2 * plan.sharded_bytes(abstract.params)


def test_plan_command(tmp_path, capsys):
    recipe = tmp_path / "sft.yaml"
    recipe.write_text("model:\n  path: tiny-olmo2\nsft:\n  batch_size: 16\n  max_length: 64\n"
                      "loop:\n  gradient_accumulation_steps: 2\n")  # fmt: skip
    out = tmp_path / "plan.json"
    argv = ["plan", "--recipe", str(recipe), "--devices", "8", "--mesh", "fsdp=4,tensor=2", "--chip", "v5e"]
    assert cli_main([*argv, "--json", str(out), "sft.batch_size=32"]) == 0
    text = capsys.readouterr().out
    assert "on mesh data=1,fsdp=4,tensor=2 (8 devices)" in text and "32 rows x 64 tokens" in text
    assert "v5e: 16 GB per device" in text and "-> fits" in text
    plan = json.loads(out.read_text())
    assert plan["accumulation"] == 2 and plan["rows"] == 32 and plan["fits"] is True
    assert plan["peak"] == plan["arguments"] + plan["outputs"] - plan["aliased"] + plan["temporaries"]
    assert plan["arguments"] == plan["params"] + plan["opt_state"] + plan["batch"] + 4  # + the step counter

    assert cli_main([*argv, "--mesh", "fsdp=3"]) == 2
    assert "needs 3 devices but 8 are available" in capsys.readouterr().err
    assert cli_main([*argv, "--chip", "tpu9"]) == 2
    assert "unknown chip 'tpu9'" in capsys.readouterr().err
    (tmp_path / "bare.yaml").write_text("loop:\n  seed: 1\n")
    assert cli_main(["plan", "--recipe", str(tmp_path / "bare.yaml"), "--devices", "8"]) == 2
    assert "--method sft or --method grpo" in capsys.readouterr().err


def test_grpo_plan_counts_the_sampling_cache(tmp_path, capsys):
    from jaxrl.models.config import preset

    out = tmp_path / "plan.json"
    argv = ["plan", "--recipe", str(REPO / "train/recipes/grpo-tiny.yaml"), "--model", "tiny-olmo2",
            "--devices", "4", "--mesh", "fsdp=4", "--chip", "v4", "--json", str(out)]  # fmt: skip
    assert cli_main(argv) == 0
    text = capsys.readouterr().out
    assert "grpo step of tiny-olmo2" in text and "KV cache" in text
    plan = json.loads(out.read_text())
    assert (plan["rows"], plan["seq_len"]) == (8, 280)  # 2 prompts x 4 generations; 256 + 24 slots
    c = preset("tiny-olmo2")
    kv = 2 * c.num_layers * 8 * 280 * c.num_kv_heads * c.head_dim * 4 // 4  # k and v, fp32, rows split 4 ways
    lengths = 8 * 4 // 4  # each row's filled length, int32
    assert plan["decode_slots"] == 8 and plan["kv_cache_bytes"] == kv + lengths
    assert plan["need"] == max(plan["peak"], plan["params"] + plan["opt_state"] + kv + lengths)

    assert cli_main([*argv, "rollout.slots=4"]) == 0  # the cache follows the slots, not the rows
    assert "(GRPO generation: 4 decode slots of 8 completions)" in capsys.readouterr().out
    plan = json.loads(out.read_text())
    assert plan["decode_slots"] == 4 and plan["kv_cache_bytes"] == (kv + lengths) // 2


def test_fit_verdict_keeps_headroom():
    gb = 10**9
    plan = MemoryPlan("sft", "m", 1, "fsdp=8", 8, 8, 8, 1, 0, 0, 0, 0, 0, 0, 0, 0, peak=int(30 * gb), chip="v4",
                      capacity=32 * gb)  # fmt: skip
    assert plan.fits is (30 <= 32 * (1 - HEADROOM))
    plan.peak = int(28 * gb)
    assert plan.fits is True and plan.need == plan.peak
    # GRPO generation holds params, optimizer state and the KV cache at once, not the step's peak
    plan.params, plan.opt_state, plan.kv_cache_bytes = int(4 * gb), int(8 * gb), int(17 * gb)
    assert plan.need == int(29 * gb) and plan.fits is False
    assert "does NOT fit" in plan.table() and "generation" in plan.table()


@pytest.mark.slow
def test_olmo2_7b_sft_plan_stays_abstract(tmp_path, capsys):
    """The study's SFT step for OLMo-2-7B on 32 devices: compiled on shapes only, exact param shards."""
    recipe = tmp_path / "sft7b.yaml"
    recipe.write_text("model:\n  path: olmo2-1124-7b\n  dtype: bfloat16\n  remat: true\n"
                      "sft:\n  batch_size: 448\n  max_length: 4096\n"
                      "loop:\n  gradient_accumulation_steps: 14\n")  # fmt: skip
    out = tmp_path / "plan.json"
    argv = ["plan", "--recipe", str(recipe), "--method", "sft", "--devices", "32", "--mesh", "fsdp=32"]
    assert cli_main([*argv, "--json", str(out)]) == 0
    plan = json.loads(out.read_text())
    assert plan["num_params"] == 7_298_617_344 and (plan["rows"], plan["seq_len"]) == (448, 4096)
    split = 7_298_617_344 * 4 // 32  # fp32 split 32 ways; small tensors (QK-norm weights) stay whole
    assert split <= plan["params"] <= 1.002 * split
    assert plan["opt_state"] == 2 * plan["params"] + 4  # two moments and the step count
    assert plan["peak"] < 32e9  # the study's SFT step fits a v4 chip at this mesh


if __name__ == "__main__":
    print(json.dumps(_measure(sys.argv[1])))


def test_plan_measures_the_recipes_own_sft_loss(tmp_path):
    """The planned step is the one `jaxrl train sft` runs: a chunked loss never holds the whole
    [rows, length, vocab] logits, and the plan shows it."""
    from jaxrl.train.plan import make_plan

    recipe = tmp_path / "sft.yaml"
    recipe.write_text("model:\n  path: tiny-olmo2\nsft:\n  batch_size: 8\n  max_length: 256\n")
    whole, chunked = (
        make_plan(str(recipe), "fsdp=8", overrides=[f"sft.loss_chunk_size={c}"], model="tiny-olmo2") for c in (0, 32)
    )
    assert chunked.temporaries < whole.temporaries, (chunked.temporaries, whole.temporaries)


def test_a_grpo_plan_keeps_the_accelerators_prompt_pass():
    """A plan is for TPUs and GPUs: its CPU estimate keeps their default of one prompt per row."""
    from jaxrl.train.grpo import load_config
    from jaxrl.train.plan import grpo_inputs

    recipe = str(REPO / "train/recipes/grpo-tiny.yaml")
    loss_fn, _ = grpo_inputs(load_config(recipe, ["grpo.num_generations=2"]), rows=None)
    assert loss_fn.settings.share_prompt_pass is False
    loss_fn, _ = grpo_inputs(load_config(recipe, ["grpo.share_prompt_pass=true"]), rows=None)
    assert loss_fn.settings.share_prompt_pass is True  # asked for: planned as asked


def test_a_grpo_plan_with_a_kl_term_holds_the_reference(tmp_path, capsys):
    out = tmp_path / "plan.json"
    argv = ["plan", "--recipe", str(REPO / "train/recipes/grpo-tiny.yaml"), "--model", "tiny-olmo2",
            "--devices", "4", "--mesh", "fsdp=4", "--chip", "v4", "--json", str(out)]  # fmt: skip
    assert cli_main(argv) == 0
    without = json.loads(out.read_text())
    assert without["reference"] == 0 and "reference" not in capsys.readouterr().out
    assert cli_main([*argv, "grpo.beta=0.04"]) == 0
    assert "reference  " in capsys.readouterr().out
    plan = json.loads(out.read_text())
    assert plan["reference"] == plan["params"] > 0  # the initial params, in the training layout
    generation = plan["params"] + plan["opt_state"] + plan["kv_cache_bytes"] + plan["sampling_copy_bytes"]
    assert plan["need"] == max(plan["peak"] + plan["reference"], generation + plan["reference"])
