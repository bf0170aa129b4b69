"""Reward functions, their registry, and the weighted sum GRPO trains on.

A reward function has TRL's signature, so users' TRL reward functions work unchanged:

    fn(prompts: list[str], completions: list[str], **columns) -> list[float | None]

`columns` holds every dataset column as a list aligned with the completions (e.g. `solution`).
None means "no reward for this sample": it counts as 0 in the weighted sum and is left out of
that function's mean. Register one with `@register_reward("name")`, or name it in a recipe as
`"package.module:function"` (imported, never evaluated).

Built in: "accuracy" (math-verify against the gold answer, the study's weight 1.0) and "format"
(the study's `<think>/<answer>` layout, weight 0.2).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from jaxrl.errors import JaxrlError
from jaxrl.rewards.extract import final_answer, last_boxed, matches_format
from jaxrl.rewards.verify import MathVerifier, default_verifier

RewardFn = Callable[..., Sequence[float | None]]
REWARDS: dict[str, RewardFn] = {}


def register_reward(name: str, fn: RewardFn | None = None):
    """Adds `fn` to the registry under `name` (usable as a decorator)."""

    def add(f: RewardFn) -> RewardFn:
        REWARDS[name] = f
        return f

    return add if fn is None else add(fn)


def get_reward(name: str) -> RewardFn:
    """A registered reward, or `"module:function"` imported."""
    if name in REWARDS:
        return REWARDS[name]
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            fn = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise JaxrlError(f"reward {name!r} cannot be imported ({e}); check the module path") from None
        if not callable(fn):
            raise JaxrlError(f"reward {name!r} is not callable")
        return fn
    raise JaxrlError(f"unknown reward {name!r}; registered: {', '.join(sorted(REWARDS))} (or use 'module:function')")


def gold_answer(row: dict[str, Any], gold_column: str) -> str | None:
    """The gold answer's text: the last boxed answer of a solution, else the column's text itself
    (an `answer` column holds the bare answer). None when the row has no usable gold."""
    value = row.get(gold_column)
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        return None
    text = str(value).strip()
    if not text:
        return None
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    return text.strip("$ ").strip() or None


class Accuracy:
    """1.0 when the completion's final answer (last boxed, else its `<answer>` block) equals the
    gold by math-verify, else 0.0. A sample whose gold is missing or unparseable, or whose check
    errs or times out, gets 0.0 and is counted in `counts` by verdict (see `verify.VERDICTS`)."""

    def __init__(self, gold_column: str = "solution", verifier: MathVerifier | None = None):
        self.gold_column = gold_column
        self.verifier = verifier
        self.counts: Counter = Counter()  # verdict -> samples, over the whole run

    def verdicts(self, completions: Sequence[str], rows: Sequence[dict[str, Any]]) -> list[str]:
        verdicts: list[str | None] = [None] * len(completions)
        requests, where = [], []
        for i, (completion, row) in enumerate(zip(completions, rows, strict=True)):
            gold = gold_answer(row, self.gold_column)
            found = final_answer(completion)
            if gold is None:
                verdicts[i] = "gold_unparseable"
            elif found is None:
                verdicts[i] = "no_answer"
            else:
                requests.append((gold, found[1], found[0] == "boxed"))
                where.append(i)
        if requests:
            for i, verdict in zip(where, (self.verifier or default_verifier()).judge(requests), strict=True):
                verdicts[i] = verdict
        self.counts.update(verdicts)
        return verdicts  # type: ignore[return-value]

    def __call__(self, prompts, completions, **columns) -> list[float]:
        rows = [dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)]
        if not columns:
            rows = [{} for _ in completions]
        return [1.0 if v == "correct" else 0.0 for v in self.verdicts(completions, rows)]


def format_reward(prompts, completions, **columns) -> list[float]:
    """1.0 when the completion is `<think>\\n...\\n</think>\\n<answer>\\n...\\n</answer>` (the study's
    regex, DOTALL and MULTILINE), else 0.0."""
    return [1.0 if matches_format(c) else 0.0 for c in completions]


register_reward("accuracy", Accuracy())
register_reward("format", format_reward)


@dataclasses.dataclass
class Scores:
    """Rewards of N completions. per_function: name -> float32 [N] (NaN where a function gave None);
    total: float32 [N], the weighted sum with NaN counted as 0."""

    per_function: dict[str, np.ndarray]
    total: np.ndarray


class RewardScorer:
    """The weighted sum of named reward functions (the study: accuracy 1.0 + format 0.2).

    A function that raises costs its samples (None for all of them, counted in `errors`), never
    the run.
    """

    def __init__(
        self,
        names: Sequence[str],
        weights: Sequence[float] | None = None,
        *,
        gold_column: str = "solution",
        verifier: MathVerifier | None = None,
    ):
        if not names:
            raise JaxrlError("no reward functions: set grpo.reward_funcs (e.g. [accuracy, format])")
        weights = [1.0] * len(names) if weights is None or len(weights) == 0 else list(weights)
        if len(weights) != len(names):
            raise JaxrlError(f"{len(weights)} reward_weights for {len(names)} reward_funcs; give one per function")
        self.names, self.weights = list(names), [float(w) for w in weights]
        self.functions = [
            Accuracy(gold_column, verifier) if n == "accuracy" else get_reward(n) for n in self.names
        ]  # one Accuracy per scorer: its own gold column, verifier and counts
        self.errors: Counter = Counter()  # function name -> calls that raised

    @property
    def verdict_counts(self) -> Counter:
        """Accuracy verdicts over the run (empty without an accuracy reward)."""
        total = Counter()
        for f in self.functions:
            total.update(getattr(f, "counts", {}))
        return total

    def __call__(self, prompts: Sequence[str], completions: Sequence[str], rows: Sequence[dict[str, Any]]) -> Scores:
        n = len(completions)
        columns = {k: [r.get(k) for r in rows] for k in {k for r in rows for k in r}}
        columns.pop("prompts", None)
        columns.pop("completions", None)
        per_function, total = {}, np.zeros(n, np.float32)
        for name, weight, fn in zip(self.names, self.weights, self.functions, strict=True):
            try:
                values = list(fn(prompts=list(prompts), completions=list(completions), **columns))
                if len(values) != n:
                    raise ValueError(f"returned {len(values)} rewards for {n} completions")
                r = np.array([np.nan if v is None else float(v) for v in values], np.float32)
            except Exception:  # a reward bug costs this batch's rewards from it, never the run
                self.errors[name] += 1
                r = np.full(n, np.nan, np.float32)
            per_function[name] = r
            total += weight * np.nan_to_num(r, nan=0.0)
        return Scores(per_function, total)
