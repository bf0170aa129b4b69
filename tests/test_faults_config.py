"""Model configs, key by key, for every command that reads a model: each required key of
config.json (`HF_REQUIRED_KEYS`) and each field of a llama3 `rope_parameters` (`LLAMA3_ROPE_KEYS`)
missing, null or of the wrong type, and the values that must agree (heads and kv heads, head_dim,
llama3's two frequency factors). Every case ends in one line, `jaxrl CMD: error: <file>: <key> ...`,
exit 2, and leaves no output behind. docs/FAULTS.md gives the counts."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from jaxrl.models.config import HF_REQUIRED_KEYS, LLAMA3_ROPE_KEYS
from jaxrl.models.tiny import build_tiny_model

from jaxrl import cli

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests/fixtures/data/openr1_math_sample.jsonl"
GSM8K = REPO / "tests/fixtures/eval/gsm8k.jsonl"
SFT, GRPO = REPO / "train/recipes/sft-tiny.yaml", REPO / "train/recipes/grpo-tiny.yaml"
LLAMA3 = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 64}  # fmt: skip
TRAIN = ("model.path={bad}", f"data.dataset_name={DATA}", "loop.output_dir={out}", "loop.mesh=data=1,fsdp=-1,tensor=1")
COMMANDS = {  # every command that reads a model, with {bad} the damaged model and {out} its output
    "train-sft": ("train", "sft", "--recipe", str(SFT), *TRAIN),
    "train-grpo": ("train", "grpo", "--recipe", str(GRPO), *TRAIN),
    "eval": ("eval", "--out", "{out}", "--tasks", "gsm8k", "--data", f"gsm8k={GSM8K}", "--model", "{bad}"),
    "generate": ("generate", "{bad}", "--prompt", "hi", "--out", "{out}"),
    "convert": ("convert", "{bad}", "{out}"),
    "analyze": ("analyze", "{bad}", "{model}", "--out", "{out}"),
    "compare": ("compare", "{bad}"),
    "compare-step": ("compare-step", "{bad}", "--recipe", str(SFT), f"data.dataset_name={DATA}"),
}
WRONG = {"model_type": 7}  # a wrong type for each key: a string where a number belongs, else this


def key_cases() -> dict[str, tuple[dict, str]]:
    """case -> (the change to config.json, a regex of what the error says after the file)."""
    cases = {}
    for key in HF_REQUIRED_KEYS:
        cases[f"{key}-missing"] = ({key: ...}, rf"{key} is missing")
        cases[f"{key}-null"] = ({key: None}, rf"{key} is null")
        cases[f"{key}-wrong-type"] = ({key: WRONG.get(key, "x")}, rf"{key} must be")
    for key in LLAMA3_ROPE_KEYS:
        rope = lambda value, key=key: {"rope_parameters": {**LLAMA3, key: value}}  # noqa: E731
        cases[f"rope-{key}-missing"] = (rope(...), rf"rope_parameters\.{key} is missing")
        cases[f"rope-{key}-null"] = (rope(None), rf"rope_parameters\.{key} is null")
        cases[f"rope-{key}-wrong-type"] = (rope("x"), rf"rope_parameters\.{key} must be")
    no_factor = {k: v for k, v in LLAMA3.items() if k != "factor"}  # transformers 4.x's key, as in the issue
    cases["rope-scaling-factor-missing"] = (
        {"rope_parameters": ..., "rope_scaling": no_factor},
        r"rope_scaling\.factor is missing",
    )
    cases["kv-heads-disagree"] = ({"num_key_value_heads": 3}, r"num_attention_heads=4 is not a multiple of")
    cases["head-dim-absent-hidden-indivisible"] = ({"head_dim": ..., "hidden_size": 66}, r"no head_dim, and hidden")
    cases["rope-freq-factors-disagree"] = (
        {"rope_parameters": {**LLAMA3, "low_freq_factor": 4.0, "high_freq_factor": 1.0}},
        r"rope_parameters\.high_freq_factor \(1\.0\) must be larger than rope_parameters\.low_freq_factor",
    )
    return cases


CASES = key_cases()


def without_dropped(table: dict) -> dict:
    """`table` without its keys set to `...` (at any depth): a key missing from config.json."""
    return {k: without_dropped(v) if isinstance(v, dict) else v for k, v in table.items() if v is not ...}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The tiny model, and per case a directory with its damaged config.json beside links to the
    model's other files."""
    root = tmp_path_factory.mktemp("config-keys")
    model = build_tiny_model(root / "model", "tiny-olmo2", seed=0)
    config = json.loads((model / "config.json").read_text())
    damaged = {}
    for case, (change, _) in CASES.items():
        directory = root / case
        directory.mkdir()
        for f in model.iterdir():
            if f.name != "config.json":
                (directory / f.name).symlink_to(f)
        changed = without_dropped({**config, **change})
        (directory / "config.json").write_text(json.dumps(changed))
        damaged[case] = directory
    return model, damaged


def test_every_case_is_counted_in_the_docs():
    text = (REPO / "docs/FAULTS.md").read_text()
    assert f"{len(CASES)} config.json cases x {len(COMMANDS)} commands = {len(CASES) * len(COMMANDS)}" in text


@pytest.mark.parametrize("command", list(COMMANDS))
def test_config_key_fails_in_one_line_naming_file_and_key(models, command, tmp_path, capsys):
    model, damaged = models
    for case, (_, says) in CASES.items():
        out = tmp_path / f"out-{case}"
        argv = [a.format(bad=damaged[case], model=model, out=out) for a in COMMANDS[command]]
        assert cli.main(argv) == 2, (case, capsys.readouterr().err)
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1, (case, err)
        assert re.fullmatch(rf"jaxrl {argv[0]}: error: .*{case}/config\.json: {says}.*", err[0]), (case, err[0])
        assert not out.exists(), (case, "output left behind")
