"""What a benchmark is to the evaluator: rows in, chat prompts out, completions scored.

A `Task` parses each dataset row into an `Item` (raising `BadRow` for rows it cannot use), turns
an item and its few-shot examples into chat turns, and scores completions. Shots come from the
task's shot split (e.g. MMLU's dev split) or, when none is given, from the evaluated rows
themselves, never the item itself; items of the same group (subject, category) come first.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from jaxrl.eval.data import BadRow, Source


@dataclasses.dataclass(frozen=True)
class Item:
    """One usable problem: its id, its fields as the task needs them, and its group."""

    id: str
    fields: dict[str, Any]
    group: str = ""


@dataclasses.dataclass(frozen=True)
class Scored:
    """One completion's score: whether it is correct, the answer extracted (None if none), a
    verdict saying why (e.g. "correct", "wrong", "no_answer"), and per-part results where a
    task checks several things (IFEval's instructions)."""

    correct: bool
    answer: str | None
    verdict: str
    parts: tuple[bool, ...] = ()


class Task:
    """A benchmark. Subclasses set the class attributes and implement parse/turns/score."""

    name: str = ""
    source: Source = Source("")  # the hub dataset evaluated by default
    shot_source: Source | None = None  # where few-shot examples come from by default
    num_shots: int = 0
    kind: str = "generate"  # "generate": sampled completions; "loglik": scored continuations
    primary: str = "pass@1"  # the metric shown in the table
    data_of: str | None = None  # another task whose --data this one reads when it has none of its own
    votes: bool = True  # extracted answers can be majority-voted (maj@k); IFEval's cannot

    def parse(self, row: dict, index: int) -> Item:
        raise NotImplementedError

    def turns(self, item: Item, shots: Sequence[Item]) -> list[dict]:
        """Chat turns [user, assistant, ..., user] for `item` after its shots (no system turn)."""
        raise NotImplementedError

    def score(self, items: Sequence[Item], completions: Sequence[Sequence[str]]) -> list[list[Scored]]:
        """Scores of completions[i][j], the j-th completion of items[i]."""
        raise NotImplementedError


def required(row: dict, *names: str) -> list:
    """The row's values for `names`; BadRow naming the first missing (None) one."""
    for name in names:
        if row.get(name) is None:
            raise BadRow(f"missing '{name}'")
    return [row[name] for name in names]


def texts(row: dict, *names: str, numbers: bool = False) -> list[str]:
    """The row's values for `names` as non-empty strings (integers too, as text, when `numbers`);
    BadRow naming the first that is missing, empty or of another type."""
    out = []
    for name, value in zip(names, required(row, *names), strict=True):
        if numbers and isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise BadRow(f"'{name}' is a {type(value).__name__}, not text")
        if not value.strip():
            raise BadRow(f"'{name}' is empty")
        out.append(value)
    return out


def pick_shots(item: Item, pool: Sequence[Item], k: int) -> list[Item]:
    """The first `k` items of `pool` other than `item` itself (the same object: a pool read from
    another file may reuse its ids), those of its group first."""
    if k <= 0:
        return []
    others = [p for p in pool if p is not item]
    same = [p for p in others if p.group == item.group]
    rest = [p for p in others if p.group != item.group]
    return (same + rest)[:k]
