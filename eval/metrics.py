"""Scores from n samples per problem: pass@1 with its standard error, pass@k, and maj@k.

`correct` is a boolean matrix [N problems, n samples]; `answers` holds the extracted answer of
each sample (None when nothing was extracted), in the same layout.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with c correct among n samples: 1 - C(n-c, k) / C(n, k).

    Worked as a product, 1 - prod_{i=n-c+1..n} (1 - k / i), which never forms the large binomials.
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n; got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def mean_and_stderr(values: Sequence[float]) -> tuple[float, float]:
    """The mean and its standard error, std(ddof=1) / sqrt(N); the error is 0 for N < 2."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return math.nan, math.nan
    if x.size < 2:
        return float(x.mean()), 0.0
    return float(x.mean()), float(x.std(ddof=1) / math.sqrt(x.size))


def majority_correct(answers: Sequence[str | None], correct: Sequence[bool]) -> bool:
    """Whether the most frequent extracted answer is a correct one.

    Samples without an answer do not vote; a tie goes to the answer seen first. Answers are
    grouped by their text, so equal values written differently vote apart.
    """
    votes = Counter(a for a in answers if a is not None)
    if not votes:
        return False
    top = max(votes.values())
    winner = next(a for a in answers if a is not None and votes[a] == top)
    return bool(next(ok for a, ok in zip(answers, correct, strict=True) if a == winner))


def default_ks(n: int) -> list[int]:
    """1, 2, 4, ... up to n, and n itself."""
    ks = [1 << i for i in range(n.bit_length()) if 1 << i <= n]
    return ks if ks[-1] == n else ks + [n]


def summarize(correct: np.ndarray, answers: Sequence[Sequence[str | None]] | None = None) -> dict:
    """Metrics of a [N, n] correctness matrix (and the answers, for maj@k).

    pass@1 is the mean over problems of each problem's fraction correct, with the standard error
    over problems; pass@k is the unbiased estimator averaged over problems; maj@k votes over the
    first k samples of each problem (when `answers` are given).
    """
    correct = np.asarray(correct, dtype=bool)
    if correct.ndim != 2 or correct.shape[1] == 0:
        raise ValueError(f"correct must be [problems, samples]; got shape {correct.shape}")
    num, n = correct.shape
    mean, stderr = mean_and_stderr(correct.mean(axis=1))
    out = {"pass@1": mean, "pass@1_stderr": stderr, "num_problems": num, "num_samples": n}
    hits = correct.sum(axis=1)
    for k in default_ks(n)[1:]:
        out[f"pass@{k}"] = float(np.mean([pass_at_k(n, int(c), k) for c in hits])) if num else math.nan
    if answers is not None:
        for k in default_ks(n)[1:]:
            votes = [majority_correct(a[:k], c[:k]) for a, c in zip(answers, correct, strict=True)]
            out[f"maj@{k}"] = float(np.mean(votes)) if num else math.nan
    return out
