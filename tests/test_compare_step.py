"""`jaxrl compare-step` against TRL: one SFT step and one GRPO step of every loss type, on tiny
OLMo-2 (untied lm_head, pad apart from eos) and Qwen2 (tied embeddings, pad = eos = bos, so the pad
id is the first token of every prompt and the last of every finished completion), agree to 1e-5
relative in the loss and 1e-4 in every gradient; a wrong translation shows as a difference."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from jaxrl.models.config import ModelConfig
from jaxrl.models.tiny import build_tiny_model
from jaxrl.train import compare_report as report_module
from jaxrl.train import compare_step as cs
from jaxrl.train import grpo, trl_step
from safetensors.numpy import load_file, save_file

from jaxrl.cli import main
from jaxrl.errors import JaxrlError
from jaxrl.rewards import register_reward
from jaxrl.tiny import EOS

pytest.importorskip("trl")
pytestmark = pytest.mark.slow

MESH = "loop.mesh=data=1,fsdp=1,tensor=8"  # any batch size divides a data-parallel size of 1
COMMON = [MESH, "model.attention=xla", "chat.system_prompt=null", "optimizer.learning_rate=1e-4",
          "optimizer.max_grad_norm=0.2", "loop.max_steps=3"]  # fmt: skip


register_reward(
    "compare_step_digits", lambda prompts, completions, **_: [sum(map(str.isdigit, c)) for c in completions]
)
register_reward("compare_step_length", lambda prompts, completions, **_: [len(c) / 10 for c in completions])


def with_likely_eos(directory, gain: float = 30.0, weight: float = 0.25) -> None:
    """Makes eos likely at some positions, so that some completions of a random model finish: the
    final norm amplifies one hidden dimension, whose sign varies over positions, and only eos's row
    of the output projection reads it."""
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    prompt = transformers.AutoTokenizer.from_pretrained(directory)(f"{EOS}<|user|>\n3+4=\n<|assistant|>\n").input_ids
    tail = torch.randint(0, model.config.vocab_size, (8, 16), generator=torch.Generator().manual_seed(0))
    ids = torch.cat([torch.tensor(prompt).expand(8, -1), tail], dim=1)
    with torch.no_grad():  # the final hidden states over completions of a prompt like the tests'
        h = model.model(input_ids=ids).last_hidden_state[:, len(prompt) :].reshape(-1, model.config.hidden_size)
    dim = int(torch.argmin(h.mean(0).abs() / h.std(0)))
    path = directory / "model.safetensors"
    tensors = load_file(path)
    head = "model.embed_tokens.weight" if model.config.tie_word_embeddings else "lm_head.weight"
    tensors[head][:, dim] = 0.0
    tensors[head][model.config.eos_token_id, dim] = weight
    tensors["model.norm.weight"][dim] = gain
    save_file(tensors, path, metadata={"format": "pt"})


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory):
    """Runs on one model share programs (the optimizer's update, the sampler): a persistent cache
    lets the later runs reuse them."""
    import jax
    from jax._src import compilation_cache  # jax reads the cache settings once; reset makes it read them again

    keys = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
            "jax_persistent_cache_min_entry_size_bytes")  # fmt: skip
    before = {k: getattr(jax.config, k) for k in keys}
    jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("xla_cache")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    compilation_cache.reset_cache()
    yield
    for k, v in before.items():
        jax.config.update(k, v)
    compilation_cache.reset_cache()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return build_models(tmp_path_factory.mktemp("models"))


def build_models(root):
    olmo = build_tiny_model(root / "olmo2", "tiny-olmo2", seed=0)
    qwen = build_tiny_model(root / "qwen2", "tiny-qwen2", seed=1)
    # pad = eos = bos, as in many Qwen and Llama checkpoints
    config = json.loads((qwen / "config.json").read_text())
    config["pad_token_id"] = config["eos_token_id"]
    (qwen / "config.json").write_text(json.dumps(config))
    tokenizer = json.loads((qwen / "tokenizer_config.json").read_text())
    (qwen / "tokenizer_config.json").write_text(json.dumps({**tokenizer, "pad_token": EOS}))
    for directory in (olmo, qwen):
        with_likely_eos(directory)
    return {"olmo2": olmo, "qwen2": qwen}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_data(tmp_path_factory.mktemp("data"))


def write_data(directory):
    """Short sums; one answer holds the literal pad token, so SFT trains on the pad id mid-text."""
    rows = []
    for i in range(16):
        a, b = i % 7, (3 * i) % 5
        answer = f"<think>\n{a} plus {b} is {a + b}.\n</think>\n<answer>\n{a + b}\n</answer>"
        if i % 4 == 1:
            answer = answer.replace("plus", "<|pad|> plus")
        messages = [{"role": "user", "content": f"{a}+{b}="}, {"role": "assistant", "content": answer}]
        rows.append({"problem": f"{a}+{b}=", "answer": str(a + b), "messages": messages})
    path = directory / "sums.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def sft_overrides(data, *extra):
    return [f"data.dataset_name={data}", "sft.batch_size=4", "sft.max_length=96", "sft.pad_to_multiple_of=8",
            "loop.seed=3", *COMMON, *extra]  # fmt: skip


def grpo_overrides(data, *extra):
    return [f"data.dataset_name={data}", "data.prompt_column=problem", "grpo.prompts_per_step=2",
            "grpo.num_generations=4", "grpo.max_prompt_length=24", "grpo.max_completion_length=10",
            "grpo.reward_funcs=[compare_step_digits,compare_step_length]", "grpo.reward_weights=[1.0,0.5]",
            "grpo.verifier_workers=1", *COMMON, *extra]  # fmt: skip


def assert_agree(report):
    assert report["loss"]["rel_diff"] <= 1e-5, report["loss"]
    assert report["grad_norm"]["rel_diff"] <= 1e-4, report["grad_norm"]
    assert report["grad_max_rel_diff"] <= 1e-4, report["worst_grad"]
    assert report["update_max_rel_diff"] <= 1e-4, report["worst_update"]
    assert report["ok"] and not report["failed"]
    assert report["grad_norm"]["trl"] > 0.2  # a real gradient, and clipping takes part


@pytest.mark.parametrize(
    "family, extra",
    [
        ("olmo2", []),  # padded rows; the pad id inside the text
        ("qwen2", ["sft.padding_free=true", "loop.gradient_accumulation_steps=2"]),  # packed, accumulated
    ],
)
def test_sft_step_agrees_with_trl(models, data, family, extra):
    report = cs.compare_step(models[family], None, "sft", sft_overrides(data, *extra))
    assert_agree(report)
    assert report["pad_tokens"] > 0  # OLMo-2: <|pad|> inside answers; Qwen2: bos and eos of every example
    assert report["lr"]["trl"] == pytest.approx(1e-4)


GRPO_CASES = {
    "olmo2-grpo-beta-accum": ("olmo2", ["grpo.loss_type=grpo", "grpo.beta=0.04", "loop.gradient_accumulation_steps=2"]),
    "olmo2-bnpo-accum": ("olmo2", ["grpo.loss_type=bnpo", "grpo.epsilon_high=0.28",
                                   "loop.gradient_accumulation_steps=2"]),
    "olmo2-dr_grpo-masked": ("olmo2", ["grpo.loss_type=dr_grpo", "grpo.scale_rewards=none",
                                       "grpo.mask_truncated_completions=true"]),
    "olmo2-dapo-temperature": ("olmo2", ["grpo.loss_type=dapo", "grpo.temperature=0.7"]),
    "qwen2-grpo-unscaled": ("qwen2", ["grpo.loss_type=grpo", "grpo.scale_rewards=none"]),
    "qwen2-bnpo-beta-accum": ("qwen2", ["grpo.loss_type=bnpo", "grpo.beta=0.04", "loop.gradient_accumulation_steps=2"]),
    "qwen2-dr_grpo-masked-accum": ("qwen2", ["grpo.loss_type=dr_grpo", "grpo.mask_truncated_completions=true",
                                             "loop.gradient_accumulation_steps=2"]),
    "qwen2-dapo-batch": ("qwen2", ["grpo.loss_type=dapo", "grpo.epsilon_high=0.28", "grpo.scale_rewards=batch"]),
}  # fmt: skip


@pytest.mark.parametrize("case", list(GRPO_CASES))
def test_grpo_step_agrees_with_trl(models, data, case):
    family, extra = GRPO_CASES[case]
    report = cs.compare_step(models[family], None, "grpo", grpo_overrides(data, *extra))
    assert_agree(report)
    assert report["advantages_max_abs_diff"] <= 1e-5
    assert not [d for d in report["differences"] if "truncation" in d or "None" in d]
    if family == "qwen2":  # the pad id begins every prompt and ends every finished completion
        assert report["pad_tokens"] > 8


@pytest.fixture(scope="module")
def moved(models, tmp_path_factory):
    """The tiny OLMo-2 policy some steps into a run: every weight moved by a few percent, so that the
    KL to its reference (`models["olmo2"]`, the initial weights) and its gradient are not zero."""
    directory = tmp_path_factory.mktemp("moved") / "olmo2"
    shutil.copytree(models["olmo2"], directory)
    path = directory / "model.safetensors"
    rng = np.random.default_rng(5)
    moved = {k: (v * (1 + 0.05 * rng.standard_normal(v.shape))).astype(v.dtype) for k, v in load_file(path).items()}
    save_file(moved, path, metadata={"format": "pt"})
    return directory


KL_AFTER_FIRST_STEP = ["grpo.loss_type=grpo", "grpo.beta=0.1", "loop.gradient_accumulation_steps=2"]


@pytest.mark.parametrize("correct", [True, False])
def test_the_kl_of_a_policy_that_left_its_reference_agrees_with_trl(models, moved, data, correct):
    """beta > 0 at a step after the first: use_bias_correction_kl on (TRL 1.16's default) and off
    (TRL's use_bias_correction_kl=False) each give TRL's gradients."""
    import trl

    assert trl.GRPOConfig.__dataclass_fields__["use_bias_correction_kl"].default is True
    assert grpo.GRPOSettings().use_bias_correction_kl is True  # jaxrl's default is TRL's
    extra = [*KL_AFTER_FIRST_STEP, f"grpo.use_bias_correction_kl={str(correct).lower()}"]
    report = cs.compare_step(moved, None, "grpo", grpo_overrides(data, *extra), reference=models["olmo2"])
    assert_agree(report)
    assert report["reference"] == str(models["olmo2"])
    assert "grpo.use_bias_correction_kl -> use_bias_correction_kl" in report["translated"]


def test_the_kl_weight_shows_in_the_gradients(models, moved, data, capsys):
    """jaxrl without the KL weight beside TRL with it (`--trl`): the gradients differ and the command
    fails, so the two tests above can tell the settings apart."""
    args = ["compare-step", str(moved), "--method", "grpo", "--reference", str(models["olmo2"]), "--json",
            "--trl", "use_bias_correction_kl=true"]  # fmt: skip
    overrides = grpo_overrides(data, *KL_AFTER_FIRST_STEP, "grpo.use_bias_correction_kl=false")
    assert main([*args, *overrides]) == 2
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert "gradients" in report["failed"] and report["grad_max_rel_diff"] > 0.05  # 0.15 measured
    assert report["update_max_rel_diff"] <= 1e-4


def test_a_reference_needs_a_kl_term(models, data):
    with pytest.raises(JaxrlError, match="--reference.*grpo.beta > 0"):
        cs.compare_step(models["olmo2"], None, "grpo", grpo_overrides(data), reference=models["olmo2"])


def test_the_pad_rule_is_what_makes_the_embedding_agree(models, data, monkeypatch):
    """Without HF's padding_idx rule jaxrl trains the pad row through the lookup, and compare-step
    shows it (the Qwen2 prompts start with the pad id)."""
    monkeypatch.setattr(ModelConfig, "frozen_embedding_row", property(lambda self: None))
    report = cs.compare_step(models["qwen2"], None, "grpo", grpo_overrides(data, "grpo.loss_type=dapo"))
    assert not report["ok"] and "gradients" in report["failed"]
    assert report["worst_grad"]["tensor"] == "model.embed_tokens.weight"
    others = [v for m, d in report["modules"].items() if m != "embed_tokens.weight" for v in d["grad"]]
    assert max(others) <= 1e-4  # only the embedding's pad row differs


def test_a_wrong_translation_is_reported_and_fails_the_command(models, data, capsys):
    """TRL's side alone gets another temperature: the gradients differ, the report says so, the
    command exits 2 with one line on stderr, and stdout's last line is the JSON report."""
    args = ["compare-step", str(models["olmo2"]), "--method", "grpo", "--json", "--trl", "temperature=0.9"]
    assert main([*args, *grpo_overrides(data, "grpo.loss_type=dapo")]) == 2
    out, err = capsys.readouterr()
    report = json.loads(out.strip().splitlines()[-1])
    assert report["failed"] == ["grad_norm", "gradients"] and report["trl_only"] == {"temperature": "0.9"}
    assert report["grad_max_rel_diff"] > 0.05
    assert report["update_max_rel_diff"] <= 1e-4  # the optimizer's translation is still right
    assert "DIFFER" in out and err.count("\n") == 1 and "gradients differ beyond tolerance" in err


def test_missing_trl_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "trl", None)
    with pytest.raises(JaxrlError, match=r"pip install 'jaxrl\[trl\]'"):
        trl_step.import_trl()


def test_sft_examples_follow_hf_label_convention():
    """A packed row of two examples: labels are the tokens jaxrl's mask trains, -100 elsewhere."""
    batch = {
        "tokens": np.array([[5, 6, 7, 8, 9, 0]]),
        "segment_ids": np.array([[1, 1, 1, 2, 2, 0]]),
        "loss_mask": np.array([[0.0, 1.0, 0.0, 1.0, 0.0, 0.0]]),  # trains 7 (after 6) and 9 (after 8)
    }
    assert cs.sft_examples(batch) == [([5, 6, 7], [-100, -100, 7]), ([8, 9], [-100, 9])]


def test_relative_differences():
    assert report_module.rel_diff([1.0, -2.0], [1.0, -2.0]) == 0.0
    assert report_module.rel_diff([0.0], [0.0]) == 0.0
    assert report_module.rel_diff([1.0, 4.0], [1.0, 3.0]) == pytest.approx(0.25)
    assert report_module.rel_diff([1.0, 4.0], [1.0, 3.0], slack=0.5) == pytest.approx(0.125)
    assert report_module.module_of("model.layers.12.mlp.up_proj.weight") == ("mlp.up_proj.weight", 12)
    assert report_module.module_of("lm_head.weight") == ("lm_head.weight", None)
