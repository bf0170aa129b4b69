"""Rewards: extraction, the format regex, math-verify verdicts on a fixture, time bounds on
adversarial input, the weighted sum and the registry."""

import json
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxrl.errors import JaxrlError
from jaxrl.rewards import (
    FORMAT_PATTERN,
    REWARDS,
    Accuracy,
    MathVerifier,
    RewardScorer,
    answer_block,
    final_answer,
    get_reward,
    gold_answer,
    last_boxed,
    matches_format,
    register_reward,
)  # fmt: skip

FIXTURE = Path(__file__).parent / "fixtures" / "rewards" / "math_pairs.jsonl"
TIMEOUT_S = 2.0


@pytest.fixture(scope="module")
def verifier():
    with MathVerifier(num_workers=2, timeout_s=TIMEOUT_S) as v:
        yield v


def test_last_boxed_keeps_nested_braces_and_takes_the_last_closed_one():
    assert last_boxed("a \\boxed{\\frac{1}{2}} b") == "\\frac{1}{2}"
    assert last_boxed("\\boxed{1} then \\boxed {2}") == "2"
    assert last_boxed("\\boxed{1} then \\boxed{2") == "1"  # the unclosed one is skipped
    assert last_boxed("\\fbox{7}") == "7"
    assert last_boxed("no box") is None
    assert answer_block("<answer>\n 42 \n</answer>") == "42"
    assert final_answer("<answer>\\boxed{3}</answer>") == ("boxed", "3")
    assert final_answer("<answer>x</answer>") == ("answer_block", "x")
    assert final_answer("nothing") is None


def test_gold_answer_from_solution_or_answer_column():
    assert gold_answer({"solution": "so $\\boxed{\\frac{3}{4}}$."}, "solution") == "\\frac{3}{4}"
    assert gold_answer({"answer": "$12$"}, "answer") == "12"
    assert gold_answer({"answer": 7}, "answer") == "7"
    assert gold_answer({"solution": ""}, "solution") is None
    assert gold_answer({}, "solution") is None


FORMAT_CASES = [
    ("<think>\na\n</think>\n<answer>\nb\n</answer>", True),
    ("<think>\n\n</think>\n<answer>\n\n</answer>", True),
    ("<think>\na\n</think>\n<answer>\nb\n</answer>\ntrailing line", True),  # MULTILINE `$`
    ("<think>\na\n</think>\n<answer>\nb\n</answer> trailing", False),
    (" <think>\na\n</think>\n<answer>\nb\n</answer>", False),
    ("<think>a</think><answer>b</answer>", False),
    ("<think>\na\n</think>\n<answer>\nb\n</answer>\n</answer>x", True),
]


@pytest.mark.parametrize("text,expected", FORMAT_CASES)
def test_format_cases(text, expected):
    assert matches_format(text) is expected
    assert (re.match(FORMAT_PATTERN, text, re.DOTALL | re.MULTILINE) is not None) is expected


_pieces = st.lists(st.sampled_from(["<think>", "</think>", "<answer>", "</answer>", "\n", "a", " "]), max_size=14)


@settings(max_examples=400, deadline=None)
@given(_pieces)
def test_format_matches_the_study_regex(pieces):
    text = "".join(pieces)
    assert matches_format(text) == (re.match(FORMAT_PATTERN, text, re.DOTALL | re.MULTILINE) is not None)


def test_fixture_verdicts(verifier):
    rows = [json.loads(line) for line in FIXTURE.read_text().splitlines()]
    assert len(rows) >= 30
    accuracy = Accuracy("solution", verifier)
    got = accuracy.verdicts([r["completion"] for r in rows], rows)
    wrong = [
        (r["solution"], r["completion"][:50], r["verdict"], g)
        for r, g in zip(rows, got, strict=True)
        if g != r["verdict"]
    ]
    assert not wrong
    assert accuracy.counts["correct"] == sum(r["verdict"] == "correct" for r in rows)


def test_adversarial_answers_return_within_the_bound_and_execute_nothing(verifier, tmp_path):
    marker = tmp_path / "executed"
    cases = [
        ("1", "\\boxed{9^{9^{9^{9}}}}", True),
        ("1", "\\boxed{(x+1)^{3000}-x^{3000}}", True),
        ("1", "\\boxed{10^{10^{10}}!}", True),
        ("1", "\\boxed{" + "{" * 300 + "1" + "}" * 300 + "}", True),
        ("2", f"__import__('os').system('touch {marker}')", False),
        ("2", f"\\boxed{{__import__('os').system('touch {marker}')}}", True),
        ("2", f"exec(\"open('{marker}', 'w')\")", False),
    ]
    began = time.monotonic()
    verdicts = verifier.judge(cases)
    elapsed = time.monotonic() - began
    # every item has its own deadline; two workers, so at most ceil(7/2) deadlines in sequence,
    # plus a worker restart (import) per time-out
    assert elapsed < 4 * (TIMEOUT_S + 3)
    assert set(verdicts) <= {"timeout", "wrong", "answer_unparseable", "correct"}
    assert "timeout" in verdicts and verdicts[4:] != ["correct"] * 3
    assert not marker.exists()
    assert verifier.judge([("\\frac{1}{2}", "0.5", True)]) == ["correct"]  # the pool recovered


def test_megabyte_completions_are_bounded(verifier):
    huge = [
        "x" * (1 << 20),
        "{" * (1 << 20),
        "\\boxed{" * (1 << 17),
        "\\boxed{" + "1" * (1 << 20) + "}",
        "<think>\n" + "\n</think>\n<answer>\n" * 50000,
    ]
    accuracy = Accuracy("solution", verifier)
    began = time.monotonic()
    verdicts = accuracy.verdicts(huge, [{"solution": "\\boxed{1}"}] * len(huge))
    assert [matches_format(h) for h in huge] == [False] * 5
    assert time.monotonic() - began < 10
    assert verdicts == ["no_answer", "no_answer", "no_answer", "answer_too_long", "no_answer"]


def test_verification_works_off_the_main_thread(verifier):
    out = {}
    thread = threading.Thread(target=lambda: out.update(v=verifier.judge([("4", "4", True), ("4", "5", True)])))
    thread.start()
    thread.join(60)
    assert out["v"] == ["correct", "wrong"]


def test_scorer_weighted_sum_nones_and_failures(verifier):
    register_reward(
        "test_length_or_none", lambda prompts, completions, **kw: [None if not c else 0.5 for c in completions]
    )
    register_reward("test_broken", lambda prompts, completions, **kw: 1 / 0)
    scorer = RewardScorer(["accuracy", "format", "test_length_or_none", "test_broken"], [1.0, 0.2, 2.0, 1.0],
                          verifier=verifier)  # fmt: skip
    completions = ["<think>\nok\n</think>\n<answer>\n\\boxed{4}\n</answer>", "\\boxed{5}", ""]
    rows = [{"solution": "\\boxed{4}"}, {"solution": "\\boxed{4}"}, {"solution": "garbage $$"}]
    scores = scorer(["p"] * 3, completions, rows)
    np.testing.assert_array_equal(scores.per_function["accuracy"], [1, 0, 0])
    np.testing.assert_array_equal(scores.per_function["format"], [1, 0, 0])
    np.testing.assert_array_equal(scores.per_function["test_length_or_none"], [0.5, 0.5, np.nan])
    assert np.isnan(scores.per_function["test_broken"]).all() and scorer.errors["test_broken"] == 1
    np.testing.assert_allclose(scores.total, [1 + 0.2 + 1.0, 1.0, 0.0])
    assert scorer.verdict_counts["correct"] == 1 and scorer.verdict_counts["wrong"] == 1
    del REWARDS["test_length_or_none"], REWARDS["test_broken"]


def test_user_rewards_by_import_path_and_clear_errors():
    assert get_reward("jaxrl.rewards.functions:format_reward") is REWARDS["format"]
    with pytest.raises(JaxrlError, match="unknown reward"):
        get_reward("nope")
    with pytest.raises(JaxrlError, match="cannot be imported"):
        get_reward("no.such.module:f")
    with pytest.raises(JaxrlError, match="reward_weights"):
        RewardScorer(["format"], [1.0, 2.0])


def test_a_verifier_that_cannot_start_answers_error(monkeypatch, tmp_path):
    from jaxrl.rewards import verify

    broken = tmp_path / "broken_worker.py"
    broken.write_text("raise SystemExit(1)\n")
    monkeypatch.setattr(verify, "WORKER_SCRIPT", broken)
    with MathVerifier(num_workers=1, timeout_s=1.0, start_timeout_s=30) as v:
        began = time.monotonic()
        assert v.judge([("1", "1", True), ("2", "2", True)]) == ["error", "error"]
        assert time.monotonic() - began < 20
