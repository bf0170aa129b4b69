"""Fault injection, bad inputs: every case of CASES runs `jaxrl ...` in-process and must end with a
clear one-line error (exit 2) or a counted skip (exit 0), never a traceback, and leave no partial
output behind. docs/FAULTS.md lists the same cases (a test checks that the two agree).

Placeholders in a case's arguments: {model} a tiny HF model, {out} an output path that must not
exist afterwards, {fx} tests/fixtures/faults, {data} the 12-row OpenR1 sample, {sft} / {grpo} the
tiny recipes, the damaged model directories {no_config}, {no_tokenizer}, {bad_config},
{cut_weights}, {list_config} (config.json is `[]`) and {big_vocab} (a tokenizer of 385 tokens for
a model of 384: "triangle" became token 384), and {a_file} / {a_dir}, an existing file and an
existing empty directory (both watched: a case must leave them as they were).
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import tempfile
import warnings
from pathlib import Path

import pytest
from jaxrl.models.tiny import build_tiny_model
from transformers import AutoTokenizer

from jaxrl import cli

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "faults"
DOC = REPO / "docs" / "FAULTS.md"


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]
    expect: str  # a regex the one stderr line (error) or stdout (skip) must match
    skip: bool = False  # True: the designed outcome is a counted skip and exit 0


def sft(*overrides: str) -> tuple[str, ...]:
    return ("train", "sft", "--recipe", "{sft}", "model.path={model}", "data.dataset_name={data}",
            "loop.output_dir={out}", "loop.mesh=data=1,fsdp=-1,tensor=1", *overrides)  # fmt: skip


def grpo(*overrides: str) -> tuple[str, ...]:
    return ("train", "grpo", "--recipe", "{grpo}", "model.path={model}", "data.dataset_name={data}",
            "loop.output_dir={out}", "loop.mesh=data=1,fsdp=-1,tensor=1", *overrides)  # fmt: skip


def data(*overrides: str) -> tuple[str, ...]:
    return ("data", "data.dataset_name={data}", *overrides)


def evaluate(*args: str) -> tuple[str, ...]:
    return ("eval", "--out", "{out}", "--tasks", "gsm8k", "--data", "gsm8k={gsm8k}", *args)


TOKENIZER_TOO_BIG = r"the tokenizer in .*big_vocab has 385 tokens \(ids up to 384\) but the model's vocab_size is 384"


CASES = [
    # recipes: unknown keys, wrong types, impossible values, broken files
    Case(
        "recipe-unknown-key-override",
        sft("sft.batch_sizes=4"),
        r"unknown key 'sft\.batch_sizes'; did you mean 'sft\.batch_size'",
    ),
    Case(
        "recipe-unknown-key-file",
        ("train", "sft", "--recipe", "{fx}/unknown_key.yaml", "model.path={model}", "loop.output_dir={out}"),
        r"unknown key 'sft\.micro_batch_size'",
    ),
    Case("recipe-unknown-section", sft("trainer.lr=1"), r"unknown key 'trainer'"),
    Case("recipe-wrong-type-int", sft("sft.batch_size=four"), r"sft\.batch_size must be an integer, got 'four'"),
    Case(
        "recipe-wrong-type-file",
        ("train", "sft", "--recipe", "{fx}/wrong_type.yaml", "model.path={model}", "loop.output_dir={out}"),
        r"sft\.batch_size must be an integer",
    ),
    Case("recipe-wrong-type-bool", sft("sft.padding_free=maybe"), r"sft\.padding_free must be true or false"),
    Case("recipe-wrong-type-float", sft("optimizer.learning_rate=fast"), r"optimizer\.learning_rate must be a number"),
    Case("recipe-bad-choice", sft("chat.chat_template=jinja"), r"chat\.chat_template must be one of"),
    Case("recipe-malformed-override", sft("sft.batch_size"), r"malformed override 'sft\.batch_size'"),
    Case("recipe-override-a-section", sft("sft=4"), r"sft is a section"),
    Case(
        "recipe-file-missing",
        ("train", "sft", "--recipe", "{fx}/no_such_recipe.yaml"),
        r"recipe file .* does not exist",
    ),
    Case("recipe-bad-yaml", ("train", "sft", "--recipe", "{fx}/bad_yaml.yaml"), r"is not valid YAML at line \d+"),
    Case(
        "recipe-not-a-mapping", ("train", "sft", "--recipe", "{fx}/list.yaml"), r"must be a mapping of keys to values"
    ),
    Case("recipe-not-utf8", ("train", "sft", "--recipe", "{fx}/not_utf8.yaml"), r"is not UTF-8 text"),
    Case(
        "recipe-negative-lr",
        sft("optimizer.learning_rate=-1"),
        r"recipe: optimizer\.learning_rate must be a finite number >= 0, got -1\.0$",
    ),
    Case(
        "recipe-save-steps-nan",
        sft("checkpoint.save_steps=nan"),
        r"recipe: checkpoint\.save_steps must be a finite number > 0, got nan$",
    ),
    Case(
        "recipe-epochs-nan",
        sft("loop.num_train_epochs=nan"),
        r"recipe: loop\.num_train_epochs must be a finite number > 0, got nan$",
    ),
    Case("recipe-lr-inf", sft("optimizer.learning_rate=inf"), r"optimizer\.learning_rate must be a finite number"),
    Case(
        "recipe-unknown-scheduler",
        sft("optimizer.lr_scheduler_type=cosine_restarts"),
        r"lr_scheduler_type='cosine_restarts'",
    ),
    Case(
        "recipe-max-steps-zero",
        sft("loop.max_steps=0"),
        r"loop\.max_steps must be an integer >= 1 \(or -1; -1: use num_train_epochs\), got 0",
    ),
    Case("recipe-save-steps-fraction", sft("checkpoint.save_steps=2.5"), r"checkpoint\.save_steps=2\.5"),
    Case(
        "recipe-prompt-without-completion",
        sft("data.prompt_column=problem"),
        r"set both prompt_column and completion_column",
    ),
    Case("recipe-output-dir-remote", sft("loop.output_dir=gs://bucket/run"), r"must be a local directory"),
    Case("recipe-freeze-matches-nothing", sft("freeze.freeze=[nonsense]"), r"freeze pattern 'nonsense' matches no"),
    Case("recipe-freeze-layer-out-of-range", grpo("freeze.train_only=[mlp.gate@40-50]"), r"layer 50 does not exist"),
    Case("recipe-checkpoint-dir-s3", sft("checkpoint.directory=s3://b/x"), r"only local paths and gs://"),
    Case("grpo-unknown-reward", grpo("grpo.reward_funcs=[nope,format]"), r"unknown reward 'nope'"),
    Case(
        "grpo-reward-not-importable",
        grpo("grpo.reward_funcs=[nosuchmod:f]", "grpo.reward_weights=[]"),
        r"cannot be imported",
    ),
    # impossible combinations of batch, accumulation, generations and mesh
    Case(
        "sft-batch-vs-accumulation",
        sft("sft.padding_free=false", "sft.batch_size=4", "loop.gradient_accumulation_steps=3"),
        r"sft\.batch_size 4 is not divisible by gradient_accumulation_steps=3",
    ),
    Case(
        "sft-batch-vs-data-parallel",
        sft("sft.padding_free=false", "sft.batch_size=4", "loop.mesh=data=8,fsdp=1"),
        r"not divisible by the data-parallel size 8",
    ),
    Case(
        "grpo-completions-vs-data-parallel",
        grpo("grpo.prompts_per_step=2", "grpo.num_generations=3"),
        r"completions per step .* 6 .* not divisible by the data-parallel size 8",
    ),
    Case(
        "grpo-completions-vs-accumulation",
        grpo("grpo.num_generations=3", "loop.gradient_accumulation_steps=4", "loop.mesh=data=1,fsdp=1,tensor=8"),
        r"6 is not divisible by gradient_accumulation_steps=4",
    ),
    Case(
        "grpo-one-generation",
        grpo("grpo.num_generations=1"),
        r"grpo\.num_generations must be an integer >= 2 \(group advantages need two\), got 1",
    ),
    Case("grpo-unknown-loss", grpo("grpo.loss_type=ppo"), r"grpo\.loss_type='ppo'"),
    Case("grpo-weights-vs-rewards", grpo("grpo.reward_weights=[1.0]"), r"1 grpo\.reward_weights for 2 reward_funcs"),
    Case("grpo-zero-temperature", grpo("grpo.temperature=0"), r"grpo\.temperature must be a finite number > 0"),
    Case(
        "grpo-lengths-past-positions",
        grpo("grpo.max_prompt_length=4000", "grpo.max_completion_length=200"),
        r"grpo\.max_prompt_length \+ max_completion_length = 4200 tokens pass the model's "
        r"max_position_embeddings=4096",
    ),
    Case(
        "sft-length-past-positions",
        sft("sft.max_length=5000"),
        r"sft\.max_length = 5000 tokens pass the model's max_position_embeddings=4096",
    ),
    Case(
        "grpo-epochs-give-no-step",
        grpo("loop.max_steps=-1", "loop.num_train_epochs=0.01"),
        r"num_train_epochs=0\.01 of 6 steps is no step",
    ),
    Case("grpo-missing-prompt-column", grpo("data.prompt_column=question"), r"has no column 'question'"),
    # mesh specs
    Case("mesh-unknown-axis", sft("loop.mesh=data=1,pipeline=2"), r"bad mesh spec .*expected axis=size"),
    Case("mesh-size-not-integer", sft("loop.mesh=data=two"), r"size of 'data' is not an integer"),
    Case("mesh-wrong-device-count", sft("loop.mesh=data=3,fsdp=1,tensor=1"), r"needs 3 devices but 8 are available"),
    Case("mesh-two-wildcards", sft("loop.mesh=data=-1,fsdp=-1"), r"at most one -1"),
    # model directories
    Case("model-path-missing", sft("model.path={fx}/no_such_model"), r"model\.path .* does not exist"),
    Case("model-path-empty", sft("model.path="), r"no model: set model\.path"),
    Case("model-path-run-without-checkpoints", sft("model.path={empty_run}"), r"run .*empty_run has no checkpoint yet"),
    Case("model-dir-without-config", sft("model.path={no_config}"), r"neither a HF model directory"),
    Case("model-dir-without-tokenizer", sft("model.path={no_tokenizer}"), r"no tokenizer files next to"),
    Case("model-config-not-json", sft("model.path={bad_config}"), r"config\.json"),
    Case("model-weights-truncated", sft("model.path={cut_weights}"), r"model\.safetensors"),
    # data files
    Case("data-file-missing", sft("data.dataset_name={fx}/no_such_file.jsonl"), r"data file .* does not exist"),
    Case("data-file-empty", sft("data.dataset_name={fx}/empty.jsonl"), r"data file .*empty\.jsonl is empty"),
    Case("data-file-blank-lines", sft("data.dataset_name={fx}/blank_lines.jsonl"), r"is empty"),
    Case("data-not-utf8", sft("data.dataset_name={fx}/not_utf8.jsonl"), r"is not UTF-8 text \(bad byte at line 3\)"),
    Case("data-missing-column", sft("data.dataset_name={fx}/no_messages.jsonl"), r"has no column 'messages'"),
    Case(
        "data-no-valid-line",
        sft("data.dataset_name={fx}/all_bad_lines.jsonl"),
        r"holds no usable rows \(.*line is not a JSON object.*line is not valid JSON\)",
    ),
    Case("data-unknown-format", sft("data.dataset_name={fx}/rows.txt"), r"unknown data format \.txt"),
    Case("data-json-not-rows", sft("data.dataset_name={fx}/number.json"), r"expected a list of rows, got a JSON int"),
    Case("data-corrupt-parquet", sft("data.dataset_name={fx}/garbage.parquet"), r"cannot read .* as parquet"),
    Case("data-malformed-filter", sft("data.filters=[source]"), r"malformed filter 'source'"),
    Case("data-filter-keeps-nothing", sft("data.filters=[source=nowhere]"), r"keeps none of 12 rows"),
    Case("data-filter-unknown-column", sft("data.filters=[origin=cn_k12]"), r"filter on 'origin'"),
    Case(
        "data-every-row-too-long",
        sft("sft.max_length=16"),
        r"no SFT example left: 12 of 12 are longer than max_length=16",
    ),
    Case(
        "data-strict-bad-line",
        sft("data.dataset_name={fx}/some_bad_lines.jsonl", "data.strict=true"),
        r"line 3 is not valid JSON",
    ),
    # counted skips (exit 0): the report says how many rows were dropped and why
    Case(
        "skip-bad-json-lines",
        data("data.dataset_name={fx}/some_bad_lines.jsonl"),
        r"skipped: 1 line is not a JSON object\nskipped: 2 line is not valid JSON",
        skip=True,
    ),
    Case(
        "skip-malformed-messages",
        data("data.dataset_name={fx}/bad_messages.jsonl"),
        r"skipped: 1 a message is not \{role, content\} text\n.*no user message.*\n.*not a non-empty assistant answer",
        skip=True,
    ),
    Case(
        "skip-over-max-length",
        data("tokenizer={model}", "max_length=512"),
        r"over max_length=512: 1 dropped; 11 kept",
        skip=True,
    ),
    Case(
        "skip-prompt-rows-without-text",
        data(
            "data.dataset_name={fx}/bad_messages.jsonl",
            "mode=prompts",
            "data.prompt_column=problem",
            "tokenizer={model}",
        ),
        r"skipped: 3 'problem' is missing or not text/messages",
        skip=True,
    ),
    Case("data-report-bad-mode", data("mode=chat"), r"mode must be one of 'sft', 'prompts'"),
    Case("data-report-bad-tokenizer", data("tokenizer={fx}/no_such_tokenizer"), r"cannot load a tokenizer"),
    # jaxrl eval
    Case("eval-unknown-task", ("eval", "--out", "{out}", "--tasks", "math9000", "--model", "{model}"), r"math9000"),
    Case("eval-no-model", evaluate(), r"no model given"),
    Case("eval-model-missing", evaluate("--model", "{fx}/no_such_model"), r"no_such_model"),
    Case("eval-limit-zero", evaluate("--model", "{model}", "--limit", "0"), r"--limit must be an integer >= 1"),
    Case("eval-bad-num-shots", evaluate("--model", "{model}", "--num-shots", "gsm8k=two"), r"--num-shots gsm8k=two"),
    Case(
        "eval-bad-chat-template",
        evaluate("--model", "{model}", "--chat-template", "jinja"),
        r"unknown chat template 'jinja'",
    ),
    Case("eval-bad-top-p", evaluate("--model", "{model}", "--top-p", "1.5"), r"--top-p must be .* in \(0, 1\]"),
    Case("eval-temperature-nan", evaluate("--model", "{model}", "--temperature", "nan"), r"--temperature .*got nan"),
    Case(
        "eval-no-usable-rows",
        ("eval", "--out", "{out}", "--tasks", "gsm8k", "--data", "gsm8k={data}", "--model", "{model}"),
        r"gsm8k: .*openr1_math_sample\.jsonl holds no usable rows \(missing 'question' \(12\)\)",
    ),
    Case(
        "eval-run-without-checkpoints",
        evaluate("--model", "{empty_run}"),
        r"run .*empty_run has no checkpoint yet \(expected checkpoints/<step>/params\)",
    ),
    Case("eval-bad-mesh", evaluate("--model", "{model}", "--mesh", "data=3,fsdp=1,tensor=1"), r"needs 3 devices"),
    Case(
        "eval-empty-data",
        ("eval", "--out", "{out}", "--tasks", "gsm8k", "--data", "gsm8k={fx}/empty.jsonl", "--model", "{model}"),
        r"empty",
    ),
    Case(
        "eval-strict-malformed-rows",
        evaluate("--model", "{model}", "--strict", "--data", "gsm8k={fx}/gsm8k_no_answer.jsonl"),
        r"malformed rows",
    ),
    # jaxrl analyze
    Case("analyze-base-missing", ("analyze", "{fx}/no_such_model", "{model}", "--out", "{out}"), r"no_such_model"),
    Case("analyze-base-not-a-model", ("analyze", "{no_config}", "{model}", "--out", "{out}"), r"no_config"),
    Case("analyze-run-missing", ("analyze", "{model}", "{fx}/no_such_run", "--out", "{out}"), r"no_such_run"),
    Case(
        "analyze-run-weights-cut",
        ("analyze", "{model}", "{cut_weights}", "--out", "{out}"),
        r"cut_weights/model\.safetensors",
    ),
    Case(
        "analyze-unknown-module",
        ("analyze", "{model}", "{model}", "--out", "{out}", "--modules", "attention"),
        r"unknown module 'attention'",
    ),
    Case(
        "analyze-negative-svd",
        ("analyze", "{model}", "{model}", "--out", "{out}", "--svd", "-1"),
        r"--svd must be an integer >= 0 \(0 = none\), got -1",
    ),
    # jaxrl generate
    Case("generate-model-missing", ("generate", "{fx}/no_such_model", "--prompt", "hi"), r"does not exist"),
    Case("generate-no-prompt", ("generate", "{model}"), r"no prompts"),
    Case(
        "generate-empty-prompts-file", ("generate", "{model}", "--prompts", "{fx}/prompts_empty.txt"), r"has no prompts"
    ),
    Case("generate-no-tokenizer", ("generate", "{no_tokenizer}", "--prompt", "hi"), r"no tokenizer files"),
    Case(
        "generate-temperature-nan",
        ("generate", "{model}", "--prompt", "hi", "--temperature", "nan"),
        r"--temperature must be a finite number >= 0 \(0 = greedy\), got nan",
    ),
    Case(
        "generate-run-without-checkpoints",
        ("generate", "{empty_run}", "--prompt", "hi"),
        r"run .*empty_run has no checkpoint yet",
    ),
    # compare and compare-step: the shared loaders and checks, before any model loads
    Case("compare-no-tokenizer", ("compare", "{no_tokenizer}"), r"no tokenizer files next to"),
    Case(
        "compare-step-bad-recipe",
        ("compare-step", "{model}", "--recipe", "{fx}/bad_yaml.yaml"),
        r"recipe file .*bad_yaml\.yaml is not valid YAML at line 3",
    ),
    Case(
        "compare-step-unknown-trl-name",
        ("compare-step", "{model}", "--recipe", "{sft}", "--trl", "learning_rat=1e-5"),
        r"--trl learning_rat: trl\.SFTConfig has no field 'learning_rat'; did you mean 'learning_rate'\?",
    ),
    Case(
        "generate-bad-mesh", ("generate", "{model}", "--prompt", "hi", "--mesh", "tensor=3,fsdp=1"), r"needs 3 devices"
    ),
    # jaxrl convert
    Case("convert-source-missing", ("convert", "{fx}/no_such_model", "{out}"), r"source .* does not exist"),
    Case("convert-source-not-a-model", ("convert", "{no_config}", "{out}"), r"neither a HF model directory"),
    Case("convert-bad-mesh", ("convert", "{model}", "{out}", "--mesh", "data=5"), r"mesh spec"),
    # model directories every command reads: a config.json that is not an object, a larger tokenizer
    Case("model-config-not-object", sft("model.path={list_config}"), r"config\.json must be a JSON object.*array"),
    Case("eval-config-not-object", evaluate("--model", "{list_config}"), r"config\.json must be a JSON object"),
    Case("generate-config-not-object", ("generate", "{list_config}", "--prompt", "hi"), r"must be a JSON object"),
    Case("convert-config-not-object", ("convert", "{list_config}", "{out}"), r"config\.json must be a JSON object"),
    Case(
        "analyze-config-not-object",
        ("analyze", "{list_config}", "{model}", "--out", "{out}"),
        r"config\.json must be a JSON object",
    ),
    Case("model-tokenizer-larger-than-vocab", sft("model.path={big_vocab}"), TOKENIZER_TOO_BIG),
    Case("grpo-tokenizer-larger-than-vocab", grpo("model.path={big_vocab}"), TOKENIZER_TOO_BIG),
    Case("eval-tokenizer-larger-than-vocab", evaluate("--model", "{big_vocab}"), TOKENIZER_TOO_BIG),
    Case("generate-tokenizer-larger-than-vocab", ("generate", "{big_vocab}", "--prompt", "hi"), TOKENIZER_TOO_BIG),
    # token ids outside the model's vocabulary in data rows: skipped and counted, or an error when strict
    Case(
        "skip-sft-ids-outside-vocab",
        data("tokenizer={big_vocab}", "vocab_size=384"),
        r"skipped: 1 a token id is outside the model's vocabulary \[0, 384\)\n(.*\n)+"
        r"over max_length=4096: 0 dropped; 11 kept",
        skip=True,
    ),
    Case(
        "skip-prompt-ids-outside-vocab",
        data("tokenizer={big_vocab}", "vocab_size=384", "mode=prompts", "data.prompt_column=problem"),
        r"skipped: 1 a token id is outside the model's vocabulary \[0, 384\)",
        skip=True,
    ),
    Case(
        "data-strict-ids-outside-vocab",
        data("tokenizer={big_vocab}", "vocab_size=384", "data.strict=true"),
        r"token id 384 is outside the model's vocabulary \[0, 384\)",
    ),
    Case(
        "recipe-checkpoint-dir-under-a-file",
        sft("checkpoint.directory={a_file}/checkpoints"),
        r"checkpoint\.directory .*a_file/checkpoints cannot be created: .*a_file is a file, not a directory",
    ),
    # jaxrl plan (the checks made before the planning process starts)
    Case("plan-zero-devices", ("plan", "--recipe", "{sft}", "--devices", "0"), r"--devices must be an integer >= 1"),
    Case(
        "plan-mfu-nan",
        ("plan", "--recipe", "{sft}", "--devices", "8", "--chip", "v5p", "--mfu", "nan"),
        r"--mfu must be a finite number in \(0, 1\], got nan",
    ),
    Case("plan-unknown-chip", ("plan", "--recipe", "{sft}", "--devices", "8", "--chip", "tpu-v9"), r"tpu-v9"),
    Case(
        "plan-mesh-vs-devices",
        ("plan", "--recipe", "{sft}", "--devices", "8", "--mesh", "data=3,fsdp=1"),
        r"needs 3 devices but 8",
    ),
]


# Every command that writes, against each kind of destination it cannot write to. The one check
# (jaxrl.destinations) runs before any work, so each case fails at once and leaves the path as it was.
WRITERS = {  # command -> (its arguments, {dest} the destination; what the message calls it; its kind)
    "train-sft": (sft("loop.output_dir={dest}"), "loop.output_dir", "directory"),
    "train-grpo": (grpo("loop.output_dir={dest}"), "loop.output_dir", "directory"),
    "eval": (evaluate("--model", "{model}", "--out", "{dest}"), "--out", "directory"),
    "analyze": (("analyze", "{model}", "{model}", "--out", "{dest}"), "--out", "directory"),
    "convert": (("convert", "{model}", "{dest}"), "destination", "directory"),
    "tiny": (("tiny", "{dest}"), "destination", "directory"),
    "reproduce": (("reproduce", "--preset", "fast", "--out", "{dest}"), "--out", "directory"),
    "generate": (("generate", "{model}", "--prompt", "hi", "--out", "{dest}"), "--out", "file"),
    "plan": (("plan", "--recipe", "{sft}", "--devices", "8", "--json", "{dest}"), "--json", "file"),
}
# per kind of destination: each bad one's name -> (the path, what the message says after it)
BAD_DESTINATIONS = {
    "directory": {
        "is-a-file": ("{a_file}", r"is a file, not a directory"),
        "parent-is-a-file": ("{a_file}/out", r"cannot be created: .*a_file is a file, not a directory"),
        "unwritable": ("/sys/jaxrl-out", r"cannot be created: /sys is a sysfs filesystem"),
        "not-creatable": ("/proc/jaxrl-out", r"cannot be created: /proc is a proc filesystem"),
    },
    "file": {
        "is-a-directory": ("{a_dir}", r"is a directory, not a file"),
        "parent-is-a-file": ("{a_file}/out.json", r"cannot be created: .*a_file is a file, not a directory"),
        "unwritable": ("/sys/jaxrl-out.json", r"cannot be created: /sys is a sysfs filesystem"),
        "not-creatable": ("/proc/jaxrl-out.json", r"cannot be created: /proc is a proc filesystem"),
    },
}


def destination_cases() -> list[Case]:
    cases = []
    for command, (argv, what, kind) in WRITERS.items():
        for name, (dest, says) in BAD_DESTINATIONS[kind].items():
            shown = re.escape(dest).replace(r"\{a_file\}", ".*a_file").replace(r"\{a_dir\}", ".*a_dir")
            expect = rf"{re.escape(what)} {shown} {says}"
            cases.append(Case(f"out-{command}-{name}", tuple(a.replace("{dest}", dest) for a in argv), expect))
    return cases


CASES += destination_cases()


@pytest.fixture(scope="module", autouse=True)
def process_faults_started_early(request, tmp_path_factory):
    """When the kill/resume and non-finite CLI tests are selected too, their training runs start now
    (child processes) and go on while the cases below run in this process."""
    if any(item.path.name.startswith("test_faults_") and "runs" in item.fixturenames for item in request.session.items):
        from test_faults_resume import start_tracks

        start_tracks(tmp_path_factory.mktemp("faults-resume"))


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    model = build_tiny_model(root / "model", "tiny-olmo2", seed=0)
    damaged = {}
    for name in ("no_config", "no_tokenizer", "bad_config", "cut_weights"):
        damaged[name] = shutil.copytree(model, root / name)
    (damaged["no_config"] / "config.json").unlink()
    for f in damaged["no_tokenizer"].glob("tokenizer*"):
        f.unlink()
    (damaged["no_tokenizer"] / "chat_template.jinja").unlink(missing_ok=True)
    (damaged["bad_config"] / "config.json").write_text('{"model_type": "olmo2", "hidden_size": ')
    weights = damaged["cut_weights"] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    damaged["list_config"] = shutil.copytree(model, root / "list_config")
    (damaged["list_config"] / "config.json").write_text("[]")
    damaged["big_vocab"] = shutil.copytree(model, root / "big_vocab")
    tokenizer = AutoTokenizer.from_pretrained(damaged["big_vocab"])
    tokenizer.add_tokens(["triangle"])  # id 384, one past the embedding; one row of the sample has it
    tokenizer.save_pretrained(damaged["big_vocab"])
    damaged["empty_run"] = root / "empty_run"  # a training run stopped before its first checkpoint
    damaged["empty_run"].mkdir()
    for f in model.iterdir():
        if f.suffix != ".safetensors":
            shutil.copy2(f, damaged["empty_run"])
    (damaged["empty_run"] / "recipe.yaml").write_text("loop:\n  max_steps: 4\n")
    (damaged["empty_run"] / "checkpoints").mkdir()
    (root / "a_file").write_text("not a directory\n")
    (root / "a_dir").mkdir()
    return {
        "model": model, "fx": FIXTURES, "data": REPO / "tests/fixtures/data/openr1_math_sample.jsonl",
        "gsm8k": REPO / "tests/fixtures/eval/gsm8k.jsonl",
        "sft": REPO / "train/recipes/sft-tiny.yaml", "grpo": REPO / "train/recipes/grpo-tiny.yaml",
        "root": root, "a_file": root / "a_file", "a_dir": root / "a_dir", **damaged,
    }  # fmt: skip


def snapshot(root: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime_ns for p in root.rglob("*")}


# Python's own default warning filters: what a user of the `jaxrl` command would see on stderr.
def shown_warnings(record: list[warnings.WarningMessage]) -> list[str]:
    hidden = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)
    return [str(w.message) for w in record if not issubclass(w.category, hidden)]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, paths, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [a.format(**paths, out=out) for a in case.argv]
    before = snapshot(paths["root"])
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        code = cli.main(argv)
    captured = capsys.readouterr()
    stderr_lines = captured.err.splitlines() + shown_warnings(record)
    if case.skip:
        assert code == 0, captured.err
        assert re.search(case.expect, captured.out), captured.out
        assert "Traceback" not in captured.err and not shown_warnings(record), captured.err
    else:
        assert code == 2, (code, captured.err)
        assert len(stderr_lines) == 1, stderr_lines
        assert stderr_lines[0].startswith(f"jaxrl {argv[0]}: error: "), stderr_lines
        assert re.search(case.expect, stderr_lines[0]), stderr_lines[0]
    assert not out.exists(), f"partial output left behind: {sorted(p.name for p in out.rglob('*'))}"
    assert snapshot(paths["root"]) == before, "an input was changed"


def test_failed_eval_leaves_an_earlier_run_as_it_was(paths, tmp_path, capsys, monkeypatch):
    """eval writes into a staging directory moved into --out only at the end: a run that fails once
    its model loads (the weights are cut) changes nothing in --out, and leaves no staging behind."""
    out = tmp_path / "results"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"model": "earlier", "task": "gsm8k"}\n')
    (out / "results.json").write_text('{"earlier": true}\n')
    before = snapshot(out) | {str(p): p.read_text() for p in out.iterdir()}
    staging = tmp_path / "tmp"
    staging.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(staging))
    code = cli.main(["eval", "--out", str(out), "--tasks", "gsm8k", "--data", f"gsm8k={paths['gsm8k']}",
                     "--limit", "1", "--model", str(paths["cut_weights"])])  # fmt: skip
    err = capsys.readouterr().err.splitlines()
    assert code == 2 and len(err) == 1 and "model.safetensors" in err[0], err
    assert snapshot(out) | {str(p): p.read_text() for p in out.iterdir()} == before
    assert not any(staging.iterdir()), "a staging directory was left behind"


def test_generate_and_eval_warn_once_past_the_positions(paths, tmp_path, capsys):
    """A prompt plus max_new_tokens past max_position_embeddings is a warning (one line, once per
    run), not an error: completions usually stop long before the cap (docs/FAULTS.md says why)."""
    short = shutil.copytree(paths["model"], tmp_path / "short")
    config = json.loads((short / "config.json").read_text())
    (short / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 8}))
    argv = ["generate", str(short), "--prompt", "hi", "--prompt", "a longer prompt", "--max-new-tokens", "4",
            "--temperature", "0"]  # fmt: skip
    assert cli.main(argv) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if "warning:" in line]
    assert len(warned) == 1 and re.search(
        r"warning: 2 of 2 prompts plus max_new_tokens=4 pass the model's max_position_embeddings=8 \(up to \d+ "
        r"positions\)",
        warned[0],
    ), warned
    out = tmp_path / "eval"
    argv = ["eval", "--out", str(out), "--tasks", "gsm8k", "--data", f"gsm8k={paths['gsm8k']}", "--limit", "2",
            "--num-shots", "gsm8k=0", "--max-new-tokens", "2", "--model", str(short),
            "--model", f"again={short}"]  # fmt: skip
    assert cli.main(argv) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if "warning:" in line]
    assert len(warned) == 1 and "pass the model's max_position_embeddings=8" in warned[0], warned  # two models, once
    assert (out / "results.json").is_file()


def test_every_case_is_documented():
    text = DOC.read_text(encoding="utf-8")
    documented = set(re.findall(r"^\| `([a-z0-9-]+)` \|", text, flags=re.M))
    ids = {c.id for c in CASES}
    assert len(ids) == len(CASES), "duplicate case ids"
    assert len(ids) >= 30
    assert ids - documented == set(), "cases missing from docs/FAULTS.md"
    bad_input_rows = documented - set(FAULT_TESTS)
    assert bad_input_rows - ids == set(), "docs/FAULTS.md lists bad inputs the suite does not run"
    for case, test in FAULT_TESTS.items():
        module, name = test.split("::")
        assert f"def {name}(" in (REPO / "tests" / module).read_text(), test
        row = next(line for line in text.splitlines() if line.startswith(f"| `{case}` |"))
        assert f"`{test}`" in row, (case, test)


# Runtime faults documented in docs/FAULTS.md and the tests that show them (tests/test_faults_*.py).
FAULT_TESTS = {
    "sigkill-sft": "test_faults_resume.py::test_sft_killed_at_random_points_resumes_bitwise",
    "sigkill-grpo": "test_faults_resume.py::test_grpo_killed_at_random_points_resumes_bitwise",
    "sigterm": "test_faults_resume.py::test_sft_sigterm_checkpoints_and_resumes_bitwise",
    "checkpoint-truncated": "test_faults_resume.py::test_grpo_killed_at_random_points_resumes_bitwise",
    "checkpoint-file-deleted": "test_faults_resume.py::test_grpo_killed_at_random_points_resumes_bitwise",
    "nonfinite-stop": "test_faults_nonfinite.py::test_huge_learning_rate_skips_then_stops",
    "nonfinite-skip": "test_faults_nonfinite.py::test_poisoned_steps_are_skipped_counted_and_recovered",
    "eval-failed-run-keeps-results": "test_faults.py::test_failed_eval_leaves_an_earlier_run_as_it_was",
    "positions-warning": "test_faults.py::test_generate_and_eval_warn_once_past_the_positions",
}
