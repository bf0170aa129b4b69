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
