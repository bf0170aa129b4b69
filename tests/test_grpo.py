"""GRPO on the loop: the whole step (sample, score, update) on a 2x4 mesh equals the unsharded
one; a run killed and resumed ends identical to an uninterrupted one; the recipes load; and (bench)
a tiny model learns single-digit sums."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx
from jaxrl.models.checkpoint import load_model
from jaxrl.models.sampler import Completions
from jaxrl.models.tiny import build_tiny_model
from jaxrl.train import grpo, grpo_rollout
from jaxrl.train.config import OptimizerConfig
from jaxrl.train.grpo import GRPOSettings, GRPOTrainer, RolloutConfig
from jaxrl.train.grpo_loss import make_loss_fn
from jaxrl.train.grpo_rollout import Rollout, Rollouts, loss_rows

from jaxrl.data import ChatConfig, PromptBatches, encode_prompts
from jaxrl.errors import JaxrlError
from jaxrl.model_files import load_tokenizer
from jaxrl.rewards import REWARDS, RewardScorer, register_reward
from jaxrl.sharding import LogicalMesh, make_mesh

RECIPES = Path(__file__).parents[1] / "train" / "recipes"
EXACT_EPS = 1e-4  # see test_train.py: keeps Adam's update about the gradients, not float noise


def digit_share(prompts, completions, **columns):
    """A dense toy reward: the share of digits in the completion (rarely tied within a group)."""
    return [sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]


register_reward("test_digit_share", digit_share)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "olmo2", "tiny-olmo2", seed=0)


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    """Single-digit sums; `answer` is the gold."""
    path = tmp_path_factory.mktemp("data") / "sums.jsonl"
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(64):
        a, b = (int(x) for x in rng.integers(0, 5, 2))
        rows.append({"problem": f"{a}+{b}=", "answer": str(a + b)})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_loss_rows_layout():
    tokens, segments = loss_rows([[5, 6, 7], [8]], np.array([[1, 2, 0], [3, 0, 0], [4, 4, 4], [9, 0, 0]]),
                                 np.array([2, 1, 3, 0]), 3, 2)  # fmt: skip
    np.testing.assert_array_equal(tokens[0], [5, 6, 7, 1, 2, 0])
    np.testing.assert_array_equal(segments[0], [1, 1, 1, 1, 1, 0])
    np.testing.assert_array_equal(tokens[2], [0, 0, 8, 4, 4, 4])
    np.testing.assert_array_equal(segments[3], [0, 0, 1, 0, 0, 0])


def test_recipes_load_with_the_study_numbers():
    study = grpo.load_config(str(RECIPES / "grpo.yaml"))
    s, o = study.grpo, study.optimizer
    assert (s.prompts_per_step, s.num_generations, s.num_iterations, s.beta, s.epsilon) == (16, 28, 1, 0.0, 0.2)
    assert not s.use_bias_correction_kl  # the study's TRL had no KL weight (and beta is 0)
    assert (s.loss_type, s.scale_rewards, s.mask_truncated_completions) == ("dr_grpo", "none", True)
    assert (s.max_prompt_length, s.max_completion_length, s.temperature, s.top_p) == (512, 1500, 0.6, 1.0)
    assert s.reward_funcs == ("accuracy", "format") and s.reward_weights == (1.0, 0.2)
    assert (o.learning_rate, o.lr_scheduler_type, o.warmup_ratio, o.max_grad_norm) == (1e-6, "constant_with_warmup",
                                                                                      0.1, 0.2)  # fmt: skip
    assert (o.weight_decay, o.adam_beta1, o.adam_beta2, o.adam_epsilon) == (0.0, 0.9, 0.999, 1e-8)
    assert (study.loop.max_steps, study.loop.seed, study.checkpoint.interval(571)) == (571, 42, 29)
    assert study.data.filters == ("source=cn_k12",) and study.data.dataset_config == "extended"
    trl = grpo.load_config(str(RECIPES / "grpo-trl.yaml"))
    assert trl.grpo == GRPOSettings()  # the defaults are TRL's
    grpo.load_config(str(RECIPES / "grpo-tiny.yaml"))
    with pytest.raises(JaxrlError, match="loss_type"):
        grpo.load_config(None, ["grpo.loss_type=ppo"])
    with pytest.raises(JaxrlError, match="num_generations"):
        grpo.load_config(None, ["grpo.num_generations=1"])


def test_rollout_masks_truncated_completions_and_reports_metrics(model_dir, monkeypatch):
    """A canned sampler output: one completion ended by EOS (3 tokens), one cut at the limit."""
    c = 5
    tokens = np.array([[11, 12, 13, 0, 0], [21, 22, 23, 24, 25]], np.int32)
    canned = Completions(tokens, np.zeros((2, c), np.float32), np.array([3, 5], np.int32), ["eos", "length"],
                         np.array([0, 0], np.int32))  # fmt: skip
    monkeypatch.setattr(grpo_rollout, "sample", lambda *args, **kwargs: canned)
    register_reward("test_first_wins", lambda prompts, completions, **kw: [1.0, 0.0])
    tokenizer = load_tokenizer(model_dir)
    s = GRPOSettings(prompts_per_step=1, num_generations=2, max_completion_length=c, max_prompt_length=4,
                     mask_truncated_completions=True, scale_rewards="none",
                     reward_funcs=("test_first_wins",))  # fmt: skip
    mesh = LogicalMesh(make_mesh("", jax.devices()[:1]))
    trainer = GRPOTrainer(load_model(model_dir, mesh, "float32"), make_loss_fn(s.loss), OptimizerConfig(),
                          1, mesh=mesh)  # fmt: skip
    prompts = encode_prompts([{"problem": "1+1="}], tokenizer, ChatConfig(system_prompt=None))
    prompts.prompt_ids = [[7, 8, 9]]
    rollout = Rollout(trainer.graphdef, tokenizer, RewardScorer(s.reward_funcs), s, mesh=mesh,
                      pad_id=trainer.config.pad_token_id)  # fmt: skip
    rollouts = Rollouts(lambda: trainer.params, PromptBatches(prompts, 1, seed=0), rollout)
    batch = next(rollouts)
    REWARDS.pop("test_first_wins")
    np.testing.assert_array_equal(batch["completion_mask"], [[1, 1, 1, 0, 0], [0, 0, 0, 0, 0]])
    pad = trainer.config.pad_token_id
    np.testing.assert_array_equal(batch["tokens"][0], [pad, 7, 8, 9, 11, 12, 13, pad, pad])
    np.testing.assert_array_equal(batch["segment_ids"][1], [0, 1, 1, 1, 1, 1, 1, 1, 1])
    np.testing.assert_allclose(batch["advantages"], [0.5, -0.5])
    m = rollouts.metrics
    assert (m["reward"], m["frac_reward_zero_std"], m["completions/clipped_ratio"]) == (0.5, 0.0, 0.5)
    assert (m["completions/min_length"], m["completions/max_length"], m["completions/mean_length"]) == (3, 5, 4)
    # the canned log-probs are 0, so the gap is the trainer's |log-prob| over the 8 sampled tokens
    logp, _ = rollout.score(trainer.params, batch["tokens"], batch["segment_ids"], np.ones((2, c), np.float32))
    live = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    np.testing.assert_allclose(m["logprob_gap/max"], np.abs(logp[live]).max(), rtol=1e-6)
    assert "old_logprobs" not in batch and "ref_logprobs" not in batch  # mu = 1, beta = 0


@functools.lru_cache(maxsize=4)  # the single-device reference serves two tests
def _one_step(model_dir, data_file, spec: str, devices: int, rollout_rules: str = "fsdp"):
    """One GRPO step (generation, rewards, advantages, update) on a mesh: (batch, metrics, params).
    rollout_rules: the layout the completions are sampled on (`fsdp`: the training layout)."""
    mesh = LogicalMesh(make_mesh(spec, jax.devices()[:devices]))
    tokenizer = load_tokenizer(model_dir)
    rows = [json.loads(line) for line in data_file.read_text().splitlines()]
    prompts = encode_prompts(rows, tokenizer, ChatConfig(system_prompt=None), max_prompt_length=16)
    s = GRPOSettings(prompts_per_step=2, num_generations=4, max_completion_length=8, max_prompt_length=16,
                     loss_type="dr_grpo", beta=0.04, reward_funcs=("test_digit_share", "format"))  # fmt: skip
    model = load_model(model_dir, mesh, "float32")
    ref = nnx.to_pure_dict(nnx.state(load_model(model_dir, mesh, "float32")))
    trainer = GRPOTrainer(model, make_loss_fn(s.loss), OptimizerConfig(learning_rate=1e-2,
                          adam_epsilon=EXACT_EPS), 4, mesh=mesh)  # fmt: skip
    rollout = Rollout(trainer.graphdef, tokenizer, RewardScorer(s.reward_funcs), s, mesh=mesh,
                      sampling_mesh=RolloutConfig(rules=rollout_rules).sampling_mesh(mesh),
                      pad_id=trainer.config.pad_token_id, ref_params=ref, seed=3)  # fmt: skip
    rollouts = Rollouts(lambda: trainer.params, PromptBatches(prompts, 2, seed=0), rollout)
    batch = next(rollouts)
    metrics = {k: float(v) for k, v in {**rollouts.metrics, **jax.device_get(trainer.step(batch, 0))}.items()}
    return batch, metrics, jax.device_get(trainer.params)


def test_step_on_a_2x4_mesh_matches_unsharded(model_dir, data_file):
    batch1, m1, p1 = _one_step(model_dir, data_file, "data=1,fsdp=1,tensor=1", 1)
    batch8, m8, p8 = _one_step(model_dir, data_file, "data=2,fsdp=1,tensor=4", 8)
    np.testing.assert_array_equal(batch1["tokens"], batch8["tokens"])  # same completions
    np.testing.assert_allclose(batch1["advantages"], batch8["advantages"], atol=1e-6)
    np.testing.assert_allclose(batch1["ref_logprobs"], batch8["ref_logprobs"], atol=2e-5)
    assert np.std(batch1["advantages"]) > 0 and m1["grad_norm"] > 0
    for key in ("loss", "grad_norm", "kl", "reward", "entropy", "clip_ratio/region_mean"):
        np.testing.assert_allclose(m1[key], m8[key], rtol=1e-4, atol=1e-6, err_msg=key)
    assert m1["logprob_gap/max"] < 1e-4 and m8["logprob_gap/max"] < 1e-4  # sampler and trainer agree
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), p1, p8)


def test_step_sampling_on_the_tensor_parallel_layout_of_a_2x4_mesh_matches_unsharded(model_dir, data_file):
    """The rollout samples from the params' copy in the tensor_parallel layout (resharded once,
    weights whole on every data/fsdp shard): the same completions and update as one device."""
    batch1, m1, p1 = _one_step(model_dir, data_file, "data=1,fsdp=1,tensor=1", 1)
    batch8, m8, p8 = _one_step(model_dir, data_file, "data=2,fsdp=4,tensor=1", 8, "tensor_parallel")
    np.testing.assert_array_equal(batch1["tokens"], batch8["tokens"])
    for key in ("loss", "grad_norm", "kl", "reward", "entropy"):
        np.testing.assert_allclose(m1[key], m8[key], rtol=1e-4, atol=1e-6, err_msg=key)
    assert m8["logprob_gap/max"] < 1e-4  # the copy samples what the trainer scores
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), p1, p8)


def _run(model_dir, data_file, out: Path, extra=()):
    overrides = [
        f"model.path={model_dir}", f"data.dataset_name={data_file}", "data.prompt_column=problem",
        "chat.system_prompt=null", f"loop.output_dir={out}", "loop.max_steps=6", "loop.seed=7",
        "grpo.prompts_per_step=2", "grpo.num_generations=4", "grpo.max_completion_length=6",
        "grpo.max_prompt_length=16", "grpo.num_iterations=2", "grpo.beta=0.04", "grpo.loss_type=grpo",
        "grpo.reward_funcs=[test_digit_share,test_kill_switch]", "grpo.verifier_workers=1",
        "optimizer.learning_rate=1e-2", f"optimizer.adam_epsilon={EXACT_EPS}", "checkpoint.save_steps=3",
        "checkpoint.async_save=false", "loop.gradient_accumulation_steps=2", "loop.mesh=data=1,fsdp=2,tensor=4",
        *extra,
    ]  # fmt: skip
    return grpo.run(None, overrides)


class Killed(BaseException):
    """Stands for the process dying: not an Exception, so no reward guard swallows it."""


@pytest.fixture
def compilation_cache(tmp_path):
    """The three runs compile the same programs: a persistent cache lets the later ones reuse them."""
    keys = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
            "jax_persistent_cache_min_entry_size_bytes")  # fmt: skip
    from jax._src import compilation_cache  # jax reads the cache settings once; reset makes it read them again

    before = {k: getattr(jax.config, k) for k in keys}
    jax.config.update("jax_compilation_cache_dir", str(tmp_path / "xla_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    compilation_cache.reset_cache()
    yield
    for k, v in before.items():
        jax.config.update(k, v)
    compilation_cache.reset_cache()


def test_killed_and_resumed_run_equals_uninterrupted(model_dir, data_file, tmp_path, compilation_cache):
    calls = {"n": 0, "kill_at": None}

    def kill_switch(prompts, completions, **columns):
        calls["n"] += 1
        if calls["n"] == calls["kill_at"]:
            raise Killed
        return [0.0] * len(completions)

    register_reward("test_kill_switch", kill_switch)
    try:
        whole = Path(_run(model_dir, data_file, tmp_path / "whole"))
        # generations happen before steps 1, 3, 5; checkpoint 3 falls inside the second generation
        # batch (one of its two updates done); dying while generating for step 5 loses step 4
        calls.update(n=0, kill_at=3)
        with pytest.raises(Killed):
            _run(model_dir, data_file, tmp_path / "resumed")
        assert sorted(int(p.name) for p in (tmp_path / "resumed" / "checkpoints").iterdir()) == [3]
        calls.update(kill_at=None)
        resumed = Path(_run(model_dir, data_file, tmp_path / "resumed"))
    finally:
        REWARDS.pop("test_kill_switch", None)
    a = jax.device_get(nnx.to_pure_dict(nnx.state(load_model(whole / "checkpoints" / "6"))))
    b = jax.device_get(nnx.to_pure_dict(nnx.state(load_model(resumed / "checkpoints" / "6"))))
    jax.tree.map(np.testing.assert_array_equal, a, b)
    rows = lambda run: {r["step"]: r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}
    w, r = rows(whole), rows(resumed)
    for step in (4, 5, 6):
        for key in ("loss", "grad_norm", "reward", "kl", "completions/mean_length"):
            assert w[step][key] == r[step][key], (step, key)
    assert w[6]["grad_norm"] > 0


def test_resuming_with_a_changed_recipe_warns(model_dir, data_file, tmp_path, capsys):
    """The run set-up SFT and GRPO share says which recipe keys changed since the run began."""
    register_reward("test_kill_switch", lambda prompts, completions, **columns: [0.0] * len(completions))
    try:
        _run(model_dir, data_file, tmp_path / "run", ["loop.max_steps=1", "loop.gradient_accumulation_steps=1"])
        capsys.readouterr()
        _run(model_dir, data_file, tmp_path / "run", ["loop.max_steps=1", "loop.gradient_accumulation_steps=1",
                                                     "grpo.epsilon=0.3"])  # fmt: skip
    finally:
        REWARDS.pop("test_kill_switch", None)
    err = capsys.readouterr().err
    assert "warning: resuming with a recipe that differs from the run's in grpo.epsilon" in err, err
    assert "nothing to do" in err


@pytest.mark.bench
def test_tiny_model_learns_single_digit_sums(model_dir, tmp_path):
    """Prints the reward curve and the share of exactly right answers (about 10 minutes on 2 busy cores).

    Reward: 1 when the completion starts with the right digit; a wrong digit d earns
    0.5 * (1 - |d - answer| / 9), so a group that all answer with digits still ranks them (a flat
    reward for any digit let the model settle on the most common answer, 4, right 20% of the time).
    A random tiny model starts near 0; measured: exact 0.03 -> 0.57 over 600 steps.
    """

    def sum_digit(prompts, completions, answer, **columns):
        out = []
        for c, gold in zip(completions, answer, strict=True):
            c = c.lstrip()
            if c[:1] == gold:
                out.append(1.0)
            else:
                out.append(0.5 * (1 - abs(int(c[0]) - int(gold)) / 9) if c[:1].isdigit() else 0.0)
        return out

    def exact(prompts, completions, answer, **columns):
        return [float(c.lstrip()[:1] == gold) for c, gold in zip(completions, answer, strict=True)]

    register_reward("test_sum_digit", sum_digit)
    register_reward("test_sum_exact", exact)
    data = tmp_path / "sums.jsonl"
    data.write_text("".join(json.dumps({"problem": f"{a}+{b}=", "answer": str(a + b)}) + "\n"
                            for a in range(5) for b in range(5)))  # fmt: skip
    run = Path(grpo.run(None, [
        f"model.path={model_dir}", f"data.dataset_name={data}", "data.prompt_column=problem",
        "chat.system_prompt=null", f"loop.output_dir={tmp_path / 'run'}", "loop.max_steps=600",
        "grpo.prompts_per_step=8", "grpo.num_generations=16", "grpo.max_completion_length=2",
        "grpo.max_prompt_length=16", "grpo.reward_funcs=[test_sum_digit,test_sum_exact]",
        "grpo.reward_weights=[1.0,0.0]", "optimizer.learning_rate=1e-3", "optimizer.max_grad_norm=1.0",
        "checkpoint.save_steps=1000",
    ]))  # fmt: skip
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    window = 25
    curve = lambda key: [float(np.mean([r[key] for r in rows[i : i + window]])) for i in range(0, len(rows), window)]
    reward, right = curve("reward"), curve("rewards/test_sum_exact/mean")
    print(f"mean reward per {window} steps:", " ".join(f"{c:.3f}" for c in reward))
    print(f"exactly right per {window} steps:", " ".join(f"{c:.3f}" for c in right))
    assert reward[-1] > reward[0] + 0.3
    assert right[-1] > max(0.35, 3 * right[0])  # above always answering the commonest sum (0.2)
