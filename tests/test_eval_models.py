"""A tiny model end to end on every task fixture: HF directory and Orbax checkpoint give the same
scores, greedy evaluation matches transformers' generate, log-likelihoods and KL match PyTorch."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from jaxrl.eval.runner import EvalConfig, evaluate, kl_pairs, prepare
from jaxrl.eval.tasks import TASKS

from jaxrl.cli import main

FIXTURES = Path(__file__).parent / "fixtures" / "eval"
DATA = {name: str(FIXTURES / f"{name}.jsonl") for name in TASKS if name != "mmlu_loglik"}  # it reads mmlu's
# Short prompts keep the test quick: each new prompt-length bucket costs the sampler a compile (few-shot
# prompt building is tested in test_eval_tasks.py).
NO_SHOTS = {"gsm8k": 0, "mmlu": 0, "mmlu_loglik": 0, "mmlu_pro": 0}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny HF model, a run directory holding the same weights as an Orbax checkpoint, and a
    second tiny model with other weights."""
    from jaxrl.models.checkpoint import load_model, save_model
    from jaxrl.models.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("eval_models")
    hf = build_tiny_model(root / "hf", seed=0)
    run = root / "run"
    save_model(load_model(hf), run / "checkpoints" / "7")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(hf / name, run / name)
    other = build_tiny_model(root / "other", seed=1)
    return hf, run, other


@pytest.fixture(scope="module")
def sampled(models, tmp_path_factory):
    hf, run, _ = models
    config = EvalConfig(
        tasks=tuple(TASKS), num_samples=2, temperature=0.6, seed=3, max_new_tokens=8, batch_size=2,
        system_prompt="none", data=DATA, num_shots=NO_SHOTS, kl_base=str(hf),
    )  # fmt: skip
    out = tmp_path_factory.mktemp("eval_out")
    return evaluate([str(hf), str(run)], config, out), out


def test_hf_dir_and_orbax_checkpoint_score_the_same(sampled):
    report, out = sampled
    assert [m["label"] for m in report["models"]] == ["hf", "run@7"]
    hf, orbax = report["results"]["hf"], report["results"]["run@7"]
    assert set(hf) == set(TASKS)
    for task in TASKS:
        a = {k: v for k, v in hf[task].items() if k != "seconds"}
        b = {k: v for k, v in orbax[task].items() if k != "seconds"}
        assert a == b, task
        same = (out / "samples" / "hf" / f"{task}.jsonl").read_text()
        assert same == (out / "samples" / "run@7" / f"{task}.jsonl").read_text()
        assert a["num_samples"] == (1 if task == "mmlu_loglik" else 2)
    assert report["tasks"]["math500"]["skipped"] == {"line is not valid JSON": 1, "missing 'answer'": 1,
                                                     "'problem' is empty": 1}  # fmt: skip
    assert report["tasks"]["ifeval"]["num_problems"] == 4 and "inst_strict" in hf["ifeval"]
    assert "maj@2" in hf["math500"] and "maj@2" not in hf["ifeval"]  # IFEval has no answers to vote on
    for label in ("hf", "run@7"):
        assert report["kl"][label]["kl"] == pytest.approx(0.0, abs=1e-6)  # the same weights as the base
        assert report["kl"][label]["num_tokens"] > 0


def test_reports_written(sampled):
    report, out = sampled
    saved = json.loads((out / "results.json").read_text())
    assert saved["results"]["hf"]["gpqa_diamond"]["num_problems"] == 3
    table = (out / "results.md").read_text()
    assert table.startswith("| benchmark | hf | run@7 |") and "| ifeval (prompt_strict) |" in table
    assert "KL(base ‖ model)" in table
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 2 * (len(TASKS) + 1)
    record = json.loads((out / "samples" / "hf" / "math500.jsonl").read_text().splitlines()[0])
    assert len(record["completions"]) == 2 and record["prompt"].startswith("<|endoftext|><|user|>\n")


def test_choice_loglik_matches_pytorch(models, sampled):
    hf, _, _ = models
    _, out = sampled
    tok = transformers.AutoTokenizer.from_pretrained(hf)
    torch_model = transformers.AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32)
    records = [json.loads(line) for line in (out / "samples" / "hf" / "mmlu_loglik.jsonl").read_text().splitlines()]
    for record in records[:3]:
        ids = tok(record["prompt"], add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logprobs = torch.log_softmax(torch_model(torch.tensor([ids])).logits[0, -1].double(), -1)
        for letter, ours in record["logprobs"].items():
            (letter_id,) = tok(letter, add_special_tokens=False)["input_ids"]
            assert ours == pytest.approx(logprobs[letter_id].item(), abs=1e-4)
        best = max(record["logprobs"], key=record["logprobs"].get)
        assert record["answers"] == [best] and record["correct"] == [best == record["gold"]]


def test_greedy_matches_transformers_generate(models, tmp_path):
    hf, _, _ = models
    tasks = ("math500", "gpqa_diamond")  # a maths and a choice task; each new prompt bucket costs a compile
    config = EvalConfig(tasks=tasks, temperature=0.0, max_new_tokens=8, batch_size=8, system_prompt="none",
                        data=DATA, num_shots=NO_SHOTS)  # fmt: skip
    evaluate([str(hf)], config, tmp_path)
    tok = transformers.AutoTokenizer.from_pretrained(hf)
    torch_model = transformers.AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32)
    for task in tasks:
        lines = (tmp_path / "samples" / "hf" / f"{task}.jsonl").read_text().splitlines()
        records = [json.loads(line) for line in lines]
        theirs = []
        for record in records:
            ids = torch.tensor([tok(record["prompt"], add_special_tokens=False)["input_ids"]])
            with torch.no_grad():
                new = torch_model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=8,
                                           eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)  # fmt: skip
            theirs.append(tok.decode(new[0, ids.shape[1] :], skip_special_tokens=True))
        assert [r["completions"][0] for r in records] == theirs, task
        prepared = prepare(task, config)
        scored = prepared.task.score(prepared.items, [[t] for t in theirs])
        assert [r["correct"] for r in records] == [[s.correct for s in row] for row in scored]
        assert [r["verdicts"] for r in records] == [[s.verdict for s in row] for row in scored]


def test_kl_matches_pytorch(models):
    from jaxrl.eval.kl import mean_token_kl
    from jaxrl.models.checkpoint import load_model

    hf, _, other = models
    config = EvalConfig(data=DATA, system_prompt="none")
    tok = transformers.AutoTokenizer.from_pretrained(hf)
    pairs = kl_pairs(config, tok)
    assert len(pairs) == 3  # the fixture's three usable MATH-500 rows, each with a solution
    ours = mean_token_kl(load_model(hf), load_model(other), pairs, batch_size=2, chunk=16)
    base = transformers.AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32)
    tuned = transformers.AutoModelForCausalLM.from_pretrained(other, dtype=torch.float32)
    total, count, per_seq = 0.0, 0, []
    for prompt, solution in pairs:
        ids = torch.tensor([list(prompt) + list(solution)])
        with torch.no_grad():
            lp_base = torch.log_softmax(base(ids).logits[0].double(), -1)
            lp_tuned = torch.log_softmax(tuned(ids).logits[0].double(), -1)
        kl = (lp_base.exp() * (lp_base - lp_tuned)).sum(-1)[len(prompt) - 1 : len(prompt) - 1 + len(solution)]
        total, count = total + kl.sum().item(), count + len(solution)
        per_seq.append(kl.mean().item())
    assert ours["num_tokens"] == count
    assert ours["kl"] == pytest.approx(total / count, rel=1e-4)
    assert ours["kl_seq_mean"] == pytest.approx(np.mean(per_seq), rel=1e-4)
    assert ours["kl"] > 1e-3  # two different models really differ


def test_cli_eval_and_its_errors(models, tmp_path, capsys):
    hf, _, _ = models
    args = ["eval", "--tasks", "ifeval,mmlu_loglik", "--model", str(hf), "--out", str(tmp_path), "--limit", "2",
            "--max-new-tokens", "4", "--system-prompt", "none", "--num-shots", "mmlu_loglik=1",
            "--data", f"ifeval={DATA['ifeval']}", "--data", f"mmlu={DATA['mmlu']}"]  # fmt: skip
    assert main(args) == 0
    assert "| ifeval (prompt_strict) |" in capsys.readouterr().out
    static = json.loads((tmp_path / "results.json").read_text())["results"]["hf"]
    assert static["ifeval"]["num_problems"] == 2
    continuous = tmp_path / "slots"  # continuous batching on 2 slots: the same completions, the same scores
    assert (
        main([*args[: args.index("--out") + 1], str(continuous), *args[args.index("--out") + 2 :], "--slots", "2"]) == 0
    )
    capsys.readouterr()
    again = json.loads((continuous / "results.json").read_text())["results"]["hf"]["ifeval"]
    assert {**again, "seconds": 0} == {**static["ifeval"], "seconds": 0}
    for bad, message in [
        (["--tasks", "nope"], "unknown task 'nope'"),
        (["--data", "math500"], "expected TASK=VALUE"),
        (["--temperature", "-1"], "--temperature must be a finite number >= 0 (0 = greedy), got -1.0"),
        (["--chat-template", "chatml"], "unknown chat template 'chatml'"),
        (["--data", f"math500={tmp_path}/missing.jsonl"], "does not exist"),
        (["--limit", "0"], "--limit must be an integer >= 1"),
    ]:
        argv = ["eval", "--tasks", "math500", "--model", str(hf), "--out", str(tmp_path / "bad"), *bad]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    nowhere = ["eval", "--model", str(tmp_path / "nowhere"), "--out", str(tmp_path / "bad"), "--tasks", "math500"]
    assert main(nowhere) == 2
    assert "does not exist" in capsys.readouterr().err
