"""`jaxrl generate` on a tiny model with its own tokenizer, from a HF directory and an Orbax checkpoint."""

import json

import pytest
from jaxrl.models.checkpoint import load_model, save_model
from jaxrl.models.tiny import build_tiny_model
from transformers import AutoTokenizer

from jaxrl.cli import main

# One sampling setting and prompts of one bucket, so every run reuses one compiled program.
SAMPLING = ["--num-samples", "2", "--max-new-tokens", "8", "--temperature", "0.8", "--top-p", "0.95", "--seed", "3"]
PROMPTS = ["What is 2 + 3?", "Think step by step: 7 + 5"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("generate")
    hf = build_tiny_model(root / "hf", "tiny-olmo2", seed=1)
    orbax = save_model(load_model(hf), root / "ckpt")
    return hf, orbax


def run(capsys, *argv):
    code = main(["generate", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_json_from_hf_dir_and_orbax_checkpoint_agree(models, capsys):
    hf, orbax = models
    prompt_args = [a for p in PROMPTS for a in ("--prompt", p)]
    code, out, err = run(capsys, hf, *prompt_args, *SAMPLING, "--json")
    assert code == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert [(r["prompt"], r["sample_index"]) for r in records] == [(p, s) for p in PROMPTS for s in (0, 1)]
    tokenizer = AutoTokenizer.from_pretrained(hf)
    for r in records:
        assert 1 <= len(r["token_ids"]) <= 8 and len(r["logprobs"]) == len(r["token_ids"])
        assert r["finish_reason"] in ("eos", "length")
        assert (r["finish_reason"] == "length") == (len(r["token_ids"]) == 8 and r["token_ids"][-1] != 0)
        assert r["text"] == tokenizer.decode(r["token_ids"], skip_special_tokens=True)
        assert all(lp <= 0 for lp in r["logprobs"])

    code, out_orbax, err = run(capsys, orbax, *prompt_args, *SAMPLING, "--json", "--tokenizer", hf)
    assert code == 0, err
    assert out_orbax == out
    code, out_continuous, err = run(capsys, hf, *prompt_args, *SAMPLING, "--json", "--slots", "3")
    assert code == 0, err
    assert [json.loads(line)["token_ids"] for line in out_continuous.splitlines()] == [
        r["token_ids"] for r in records
    ]  # continuous batching on 3 slots: the same completions


def test_out_file_holds_the_json_lines(models, capsys, tmp_path):
    hf, _ = models
    prompt_args = [a for p in PROMPTS for a in ("--prompt", p)]
    code, printed, err = run(capsys, hf, *prompt_args, *SAMPLING, "--json")
    assert code == 0, err
    out = tmp_path / "completions.jsonl"
    code, said, err = run(capsys, hf, *prompt_args, *SAMPLING, "--out", out)
    assert code == 0, err
    assert out.read_text() == printed and said == f"wrote 4 completions to {out}\n"


def test_prompts_file_raw_and_text_output(models, capsys, tmp_path):
    hf, _ = models
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n\n")
    code, out, err = run(capsys, hf, "--prompts", prompts, "--raw", *SAMPLING)
    assert code == 0, err
    headers = [line for line in out.splitlines() if line.startswith("### prompt")]
    assert [h.split(" (")[0] for h in headers] == [f"### prompt {p}, sample {s}" for p in (0, 1) for s in (0, 1)]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["{missing}", "--prompt", "hi"], "does not exist"),
        (["{hf}", "--prompts", "{empty}"], "has no prompts"),
        (["{hf}"], "no prompts"),
        (["{hf}", "--prompt", "hi", "--top-p", "0"], "--top-p must be a finite number in (0, 1], got 0.0"),
        (["{orbax}", "--prompt", "hi"], "no tokenizer files"),
        (["{hf}", "--prompt", "hi", "--slots", "-1"], "--slots must be an integer >= 0"),
    ],
)
def test_bad_inputs_exit_2_with_one_line(models, capsys, tmp_path, argv, message):
    hf, orbax = models
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    paths = {"missing": tmp_path / "nope", "hf": hf, "orbax": orbax, "empty": empty}
    code, out, err = run(capsys, *[a.format(**paths) for a in argv])
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and message in err


def test_weights_in_either_layout_give_the_same_completions(models, capsys):
    """--rules picks the loaded weights' layout on the mesh; the completions do not depend on it."""
    hf, _ = models
    common = [hf, "--prompt", PROMPTS[0], *SAMPLING, "--json", "--mesh", "data=2,fsdp=4,tensor=1"]
    outputs = []
    for rules in ("tensor_parallel", "fsdp"):
        code, out, err = run(capsys, *common, "--rules", rules)
        assert code == 0, err
        outputs.append([json.loads(line)["token_ids"] for line in out.splitlines()])
    assert outputs[0] == outputs[1]
    code, _, err = run(capsys, *common, "--rules", "zero3")
    assert code == 2 and "unknown sharding rules 'zero3'" in err
