"""pass@k, maj@k and standard errors against values worked by hand."""

import math

import numpy as np
import pytest
from jaxrl.eval.metrics import default_ks, majority_correct, mean_and_stderr, pass_at_k, summarize


@pytest.mark.parametrize(
    "n, c, k, expected",
    [
        (5, 2, 2, 1 - 3 / 10),  # 1 - C(3,2)/C(5,2)
        (4, 1, 2, 1 - 3 / 6),  # 1 - C(3,2)/C(4,2)
        (10, 3, 5, 1 - 21 / 252),  # 1 - C(7,5)/C(10,5)
        (6, 0, 3, 0.0),
        (6, 6, 1, 1.0),
        (6, 4, 3, 1.0),  # fewer than k wrong: every k-subset holds a correct one
        (8, 3, 1, 3 / 8),  # pass@1 is the fraction correct
    ],
)
def test_pass_at_k_by_hand(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_rejects_impossible_counts():
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)


def test_mean_and_stderr_by_hand():
    mean, err = mean_and_stderr([0.5, 0.0, 1.0])
    assert mean == pytest.approx(0.5)
    assert err == pytest.approx(0.5 / math.sqrt(3))  # std(ddof=1) = 0.5
    assert mean_and_stderr([0.25]) == (0.25, 0.0)


def test_majority_vote_ties_and_missing_answers():
    assert majority_correct(["7", "7", "3"], [True, True, False])
    assert not majority_correct(["3", "7", "7", "3"][:2], [False, True])  # tie: the first seen wins
    assert majority_correct([None, None, "4"], [False, False, True])  # no answer: no vote
    assert not majority_correct([None, None], [False, False])


def test_summarize_by_hand():
    correct = np.array([[0, 1, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1]], bool)
    answers = [["3", "5", "5", "3"], [None, "2", "2", "7"], ["1", "1", "1", "1"]]
    out = summarize(correct, answers)
    assert out["num_problems"] == 3 and out["num_samples"] == 4
    assert out["pass@1"] == pytest.approx(0.5)
    assert out["pass@1_stderr"] == pytest.approx(0.5 / math.sqrt(3))
    assert out["pass@2"] == pytest.approx((5 / 6 + 0 + 1) / 3)  # problem 1: 1 - C(2,2)/C(4,2)
    assert out["pass@4"] == pytest.approx(2 / 3)
    assert out["maj@2"] == pytest.approx(1 / 3)  # problem 1 ties "3" vs "5": "3" came first, wrong
    assert out["maj@4"] == pytest.approx(1 / 3)
    assert default_ks(6) == [1, 2, 4, 6]


def test_reports_from_a_hand_made_report(tmp_path):
    import json

    from jaxrl.eval.report import run_steps, write_reports

    def metrics(p, err):
        return {"pass@1": p, "pass@1_stderr": err, "pass@2": p + 0.1, "maj@2": p, "num_problems": 10,
                "num_samples": 2}  # fmt: skip

    report = {
        "config": {"temperature": 0.6, "top_p": 0.95, "max_new_tokens": 64, "num_samples": 2, "seed": 0,
                   "chat_template": "olmo2", "system_prompt": "study"},
        "models": [{"label": "grpo@29", "path": "a"}, {"label": "grpo@58", "path": "b"},
                   {"label": "base", "path": "c"}],
        "tasks": {"math500": {"source": "f.jsonl", "primary": "pass@1", "num_problems": 10, "skipped": {"bad": 2}}},
        "results": {"grpo@29": {"math500": metrics(0.5, 0.1)}, "grpo@58": {"math500": metrics(0.25, float("nan"))},
                    "base": {"math500": {"num_problems": 0}}},
        "kl_base": "c",
        "kl": {"grpo@29": {"kl": 0.0007}, "grpo@58": {"kl": 0.43}},
    }  # fmt: skip
    write_reports(report, tmp_path)
    lines = (tmp_path / "results.md").read_text().splitlines()
    assert lines[0] == "| benchmark | grpo@29 | grpo@58 | base |"
    assert lines[2] == "| math500 (pass@1) | 0.500 ± 0.100 | 0.250 | - |"
    assert lines[3] == "| math500 (pass@2) | 0.600 | 0.350 | - |"
    assert lines[5] == "| KL(base ‖ model) | 0.0007 | 0.43 | - |"
    assert "- math500: 10 problems from f.jsonl; skipped bad: 2" in lines
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["results"]["grpo@58"]["math500"]["pass@1_stderr"] is None  # NaN -> null
    assert run_steps(report) == {"grpo": [(29, "grpo@29"), (58, "grpo@58")]}
    for name in ("results.png", "steps.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
