"""Benchmark rows from a local file (.jsonl, .json, .parquet) or a hub dataset (through `datasets`).

Reading is the shared loader's (`jaxrl.data.sources`): a line that is not a JSON object is skipped
and counted there. The task then parses each row; a row it cannot use raises `BadRow` and is
skipped and counted with its reason, never fatal (unless the run is strict).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")


class BadRow(ValueError):
    """A dataset row the task cannot use; the message says why."""


@dataclasses.dataclass(frozen=True)
class Source:
    """Where rows come from: a local file, or a hub dataset name with its config and split."""

    path: str
    config: str | None = None
    split: str = "test"

    def is_local(self) -> bool:
        return Path(self.path).suffix.lower() in LOCAL_SUFFIXES or Path(self.path).exists()

    def describe(self) -> str:
        if self.is_local():
            return self.path
        return self.path + (f" ({self.config})" if self.config else "") + f" [{self.split}]"


@dataclasses.dataclass
class Rows:
    """Rows as dicts, and the lines the reader skipped (reason -> count)."""

    rows: list[dict[str, Any]]
    skipped: Counter


def load_rows(source: Source) -> Rows:
    """All rows of `source`. Raises JaxrlError when the file or dataset cannot be read at all."""
    from jaxrl.data.sources import DataConfig
    from jaxrl.data.sources import load_rows as read

    rows = read(DataConfig(dataset_name=source.path, dataset_config=source.config, split=source.split))
    return Rows(rows.rows, Counter(rows.skipped))


@dataclasses.dataclass
class Parsed:
    """The usable items of a source, and what was skipped (reason -> count)."""

    items: list
    skipped: Counter

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())


def parse_rows(rows: Rows, parse: Callable[[dict, int], Any]) -> Parsed:
    """Applies `parse(row, index)` to every row, skipping and counting the rows it rejects."""
    items, skipped = [], Counter(rows.skipped)
    for index, row in enumerate(rows.rows):
        try:
            items.append(parse(row, index))
        except BadRow as e:
            skipped[str(e)] += 1
    return Parsed(items, skipped)
