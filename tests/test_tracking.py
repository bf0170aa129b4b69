"""W&B tracking (`loop.report_to`, `grpo.log_completions`, `jaxrl eval --report-to wandb`), offline:
the tiny GRPO and SFT recipes write a local W&B run whose history holds metrics.jsonl's values under
TRL's names, a resumed run continues the same W&B run id, completions.jsonl holds the rewards and
advantages the step trained on, and nothing reaches the network (every W&B URL and proxy points at
a local trap; a test fails if anything connects to it or past the loopback)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from jaxrl.models.tiny import build_tiny_model
from jaxrl.train import grpo, sft
from jaxrl.train.grpo_loss import group_advantages

from jaxrl.cli import main
from jaxrl.errors import JaxrlError
from jaxrl.metrics import MetricsLogger
from jaxrl.rewards import register_reward
from jaxrl.tracking import RUN_ID_FILE, STEP_METRIC, WandbRun, WandbSettings, trl_name
from tests.wandb_files import NetworkTrap, offline_runs

pytest.importorskip("wandb")

REPO = Path(__file__).parents[1]
FIXTURES = REPO / "tests" / "fixtures"


def digits(prompts, completions, **_):
    return [float(sum(map(str.isdigit, c))) for c in completions]


def length(prompts, completions, **_):
    return [len(c) / 10 for c in completions]


register_reward("tracking_digits", digits)
register_reward("tracking_length", length)
WEIGHTS = (1.0, 0.5)


@pytest.fixture
def offline(monkeypatch):
    """W&B in offline mode, with no way out: yields the trap, and fails the test if it was touched."""
    trap = NetworkTrap()
    trap.guard(monkeypatch)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")
    monkeypatch.setenv("WANDB_PROJECT", "jaxrl-tests")
    for name in ("WANDB_DIR", "WANDB_RUN_ID", "WANDB_API_KEY", "WANDB_ENTITY"):
        monkeypatch.delenv(name, raising=False)
    yield trap
    trap.close()
    assert not trap.attempts, f"wandb tried the network: {trap.attempts}"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "olmo2", "tiny-olmo2", seed=0)


def metrics_rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_history_is_metrics(history: list[dict], rows: list[dict]) -> None:
    """Every number of every metrics.jsonl row is in the W&B row of its step, under TRL's name."""
    by_step = {h[STEP_METRIC]: h for h in history if "train/loss" in h}
    assert sorted(by_step) == [r["step"] for r in rows]
    for row in rows:
        logged = by_step[row["step"]]
        numbers = {k: v for k, v in row.items() if k not in ("step", "time")}
        assert numbers and "train/learning_rate" in logged and "train/lr" not in logged
        for key, value in numbers.items():
            theirs = logged[trl_name(key)]
            if isinstance(value, str):  # metrics.jsonl spells NaN and infinities out
                assert str(float(value)) == str(float(theirs)), key
            else:
                assert theirs == value, (row["step"], key)


def test_the_reader_reads_what_wandb_wrote(offline, tmp_path):
    """Known values, a record longer than a 32 KiB block (first, middle and last pieces), NaN."""
    run = WandbRun.open(tmp_path, WandbSettings(name="reader"), config={"grpo": {"beta": 0.04}})
    long_text = "x" * 70_000
    run.log(1, {"loss": 0.5, "lr": 1e-6, "note": "not a number"})
    run.log(2, {"loss": float("nan"), "lr": 2e-6})
    run.run.log({"train/long": long_text, STEP_METRIC: 2})
    run.finish()
    (only,) = offline_runs(tmp_path)
    assert (only.id, only.project, only.name) == (run.id, "jaxrl-tests", "reader")
    assert only.config["grpo"] == {"beta": 0.04}
    rows = [h for h in only.history if STEP_METRIC in h]
    assert [(h[STEP_METRIC], h.get("train/loss"), h.get("train/learning_rate")) for h in rows[:1]] == [(1, 0.5, 1e-6)]
    assert math.isnan(float(rows[1]["train/loss"])) and rows[2]["train/long"] == long_text
    assert "train/note" not in rows[0]  # only numbers are charted
    assert (tmp_path / RUN_ID_FILE).read_text().strip() == run.id


def grpo_overrides(model_dir, out, max_steps):
    return [f"model.path={model_dir}", f"loop.output_dir={out}", f"loop.max_steps={max_steps}",
            f"data.dataset_name={FIXTURES / 'data' / 'openr1_math_sample.jsonl'}", "grpo.max_completion_length=12",
            "grpo.reward_funcs=[tracking_digits,tracking_length]", f"grpo.reward_weights=[{WEIGHTS[0]},{WEIGHTS[1]}]",
            "grpo.scale_rewards=group", "grpo.log_completions=true", "loop.report_to=[wandb]",
            "checkpoint.save_steps=2", "checkpoint.async_save=false"]  # fmt: skip


def test_grpo_logs_to_wandb_and_completions_and_resumes_the_same_run(offline, model_dir, tmp_path, monkeypatch):
    trained = {}  # step -> the advantages the step trained on
    step = grpo.GRPOTrainer.step

    def recording(self, batch, i):
        trained[i + 1] = np.asarray(batch["advantages"]).tolist()
        return step(self, batch, i)

    monkeypatch.setattr(grpo.GRPOTrainer, "step", recording)
    run = tmp_path / "run"
    grpo.run(str(REPO / "train/recipes/grpo-tiny.yaml"), grpo_overrides(model_dir, run, 2))
    run_id = (run / RUN_ID_FILE).read_text().strip()
    (first,) = offline_runs(run)  # W&B's files go to the run directory
    assert (first.id, first.project, first.name) == (run_id, "jaxrl-tests", "run")
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    assert {k: v for k, v in first.config.items() if k != "_wandb"} == recipe  # the recipe, every field
    assert_history_is_metrics(first.history, metrics_rows(run))
    assert not (run / "tb").exists()  # report_to names wandb only

    grpo.run(str(REPO / "train/recipes/grpo-tiny.yaml"), grpo_overrides(model_dir, run, 3))  # resumes at 2
    first, second = offline_runs(run)
    assert second.id == first.id == run_id
    assert [h[STEP_METRIC] for h in second.history if "train/loss" in h] == [3]
    assert_history_is_metrics(first.history + second.history, metrics_rows(run))

    samples = [json.loads(line) for line in (run / "completions.jsonl").read_text().splitlines()]
    assert sorted({s["step"] for s in samples}) == [1, 2, 3] and len(samples) == 3 * 8
    for i, s in enumerate(samples):
        assert s["rewards"] == {"tracking_digits": digits(None, [s["completion"]])[0],
                                "tracking_length": pytest.approx(length(None, [s["completion"]])[0])}  # fmt: skip
        assert s["reward"] == pytest.approx(WEIGHTS[0] * s["rewards"]["tracking_digits"]
                                            + WEIGHTS[1] * s["rewards"]["tracking_length"])  # fmt: skip
        assert s["advantage"] == pytest.approx(trained[s["step"]][i % 8], abs=1e-6)
        assert s["finish_reason"] in ("eos", "length") and s["prompt"].endswith("<|assistant|>\n")
    for at in (1, 2, 3):
        rows = [s for s in samples if s["step"] == at]
        advantages, _ = group_advantages(np.array([s["reward"] for s in rows]), 4, "group")
        np.testing.assert_allclose([s["advantage"] for s in rows], advantages, rtol=1e-5, atol=1e-6)
        logged = {r["step"]: r for r in metrics_rows(run)}[at]
        assert logged["reward"] == pytest.approx(np.mean([s["reward"] for s in rows]), rel=1e-6)
    tables = [h for r in (first, second) for h in r.history if "completions/_type" in h]
    assert [t[STEP_METRIC] for t in tables] == [1, 2, 3]
    table = json.loads((second.directory / "files" / tables[-1]["completions/path"]).read_text())
    assert table["columns"] == ["step", "prompt", "completion", "tracking_digits", "tracking_length",
                                "advantage", "reward", "finish_reason"]  # fmt: skip
    assert [row[5] for row in table["data"]] == pytest.approx([s["advantage"] for s in samples[-8:]])


def test_sft_logs_to_wandb_with_tensorboard(offline, model_dir, tmp_path):
    run = tmp_path / "sft"
    overrides = [f"model.path={model_dir}", f"loop.output_dir={run}", "loop.max_steps=2", "chat.system_prompt=null",
                 f"data.dataset_name={FIXTURES / 'data' / 'openr1_math_sample.jsonl'}",
                 "loop.report_to=[tensorboard,wandb]", "loop.run_name=sft-tiny", "loop.wandb_project=mine",
                 f"loop.wandb_dir={tmp_path / 'elsewhere'}"]  # fmt: skip
    sft.run(str(REPO / "train/recipes/sft-tiny.yaml"), overrides)
    (only,) = offline_runs(tmp_path / "elsewhere")
    assert (only.name, only.project) == ("sft-tiny", "mine")  # the recipe's settings win over WANDB_PROJECT
    assert only.id == (run / RUN_ID_FILE).read_text().strip()
    assert_history_is_metrics(only.history, metrics_rows(run))
    assert any((run / "tb").iterdir()) and not (run / "completions.jsonl").exists()


def test_only_process_zero_logs(offline, tmp_path):
    logger = MetricsLogger(tmp_path / "run", 2, wandb=WandbSettings(), progress=False, enabled=False)
    logger.start(0)
    logger.log(1, {"loss": 1.0})
    logger.log_samples(1, [{"prompt": "p", "completion": "c"}])
    logger.close()
    assert not (tmp_path / "run").exists()


def test_report_to_is_checked_at_load(monkeypatch, capsys):
    with pytest.raises(JaxrlError, match="unknown backend 'wandbb'; choose from tensorboard, wandb, none"):
        grpo.load_config(None, ["loop.report_to=[wandbb]"])
    with pytest.raises(JaxrlError, match="'none' cannot be combined"):
        sft.load_config(None, ["loop.report_to=[none,wandb]"])
    assert sft.load_config(None, ["loop.report_to=none"]).loop.wandb_settings() is None
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else find_spec(name, *a))
    with pytest.raises(JaxrlError, match=r"loop.report_to asks for wandb, which is not installed: pip install"):
        grpo.load_config(None, ["loop.report_to=[wandb]"])
    assert main(["train", "sft", "loop.report_to=[tensorboard,wandb]"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'jaxrl[wandb]'" in err
    assert main(["eval", "--model", "x", "--out", "y", "--report-to", "wandb"]) == 2
    assert "--report-to asks for wandb, which is not installed" in capsys.readouterr().err


def test_eval_logs_its_results_table(offline, model_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    args = ["eval", "--tasks", "gsm8k", "--data", f"gsm8k={FIXTURES / 'eval' / 'gsm8k.jsonl'}", "--model",
            f"tiny={model_dir}", "--out", str(out), "--limit", "2", "--max-new-tokens", "4",
            "--report-to", "wandb"]  # fmt: skip
    assert main(args) == 0
    assert "logged the results to W&B run" in capsys.readouterr().out
    (only,) = offline_runs(out)
    assert (only.name, only.project) == ("eval", "jaxrl-tests") and only.config["tasks"] == ["gsm8k"]
    logged = {k.split("/")[1]: v for h in only.history for k, v in h.items() if k.endswith("/path")}
    results = json.loads((only.directory / "files" / logged["results"]).read_text())
    report = json.loads((out / "results.json").read_text())
    expected = {("tiny", "gsm8k", k): v for k, v in report["results"]["tiny"]["gsm8k"].items()
                if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)}  # fmt: skip
    assert {tuple(row[:3]): row[3] for row in results["data"]} == pytest.approx(expected)
    table = json.loads((only.directory / "files" / logged["table"]).read_text())
    assert table["columns"] == ["benchmark", "tiny"] and table["data"][0][0] == "gsm8k (pass@1)"
    assert main([*args[:-1], "tensorboard"]) == 2
    assert "results table, which TensorBoard has not" in capsys.readouterr().err
