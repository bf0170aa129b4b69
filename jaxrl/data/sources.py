"""Rows of a dataset: a local .jsonl/.json/.parquet file or a hub dataset, split and filtered.

What is fatal and what is counted:
- JaxrlError (one line): the file does not exist, has an unknown suffix, is not UTF-8, is not
  JSON/Parquet at all, holds no rows, a filter is malformed or names a column the data lacks,
  the filters keep no row, or a hub dataset cannot be loaded (offline, unknown name or split).
- Skipped and counted in `Rows.skipped` (reason -> count): a .jsonl line that is not valid JSON,
  a line or list item that is not a JSON object. With `strict=True` these are errors too.
Rows the filters leave out are counted in `Rows.filtered_out`, not as bad rows.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

from jaxrl.errors import JaxrlError

SUFFIXES = (".jsonl", ".json", ".parquet")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where rows come from and which columns hold the conversation (TRL's names where it has them).

    Conversations come from `messages_column` (a list of {role, content}, the last one the
    assistant's answer), unless `prompt_column` and `completion_column` are both set (text, or
    messages). For GRPO and evaluation only `prompt_column` is read; other columns ride along.
    """

    dataset_name: str = ""  # a local .jsonl/.json/.parquet file, or a hub dataset name
    dataset_config: str | None = None  # hub configuration, e.g. "extended"
    split: str = "train"  # hub split (local files have one)
    filters: tuple[str, ...] = ()  # "column=value" or "column!=value"; every one must hold
    max_samples: int | None = None  # keep the first N rows after filtering
    messages_column: str = "messages"
    prompt_column: str | None = None
    completion_column: str | None = None
    strict: bool = False  # bad rows are errors instead of skipped and counted


@dataclasses.dataclass
class Rows:
    """Loaded rows (dicts), with what was dropped and why."""

    rows: list[dict[str, Any]]
    source: str
    skipped: Counter = dataclasses.field(default_factory=Counter)  # reason -> count
    filtered_out: int = 0

    def __len__(self) -> int:
        return len(self.rows)

    def summary(self) -> str:
        parts = [f"{len(self.rows)} rows from {self.source}"]
        if self.filtered_out:
            parts.append(f"{self.filtered_out} filtered out")
        parts += [f"{n} skipped: {why}" for why, n in sorted(self.skipped.items())]
        return "; ".join(parts)


def load_rows(config: DataConfig) -> Rows:
    """The rows `config` names, filtered and capped; see the module docstring for what is fatal."""
    name = config.dataset_name
    if not name:
        raise JaxrlError("no dataset: set dataset_name to a .jsonl/.json/.parquet file or a hub dataset")
    filters = [parse_filter(f) for f in config.filters]
    path = Path(name).expanduser()
    if path.suffix.lower() in SUFFIXES or path.exists():
        rows, skipped = read_file(path, config.strict)
        source = str(path)
    else:
        rows, skipped = _read_hub(name, config.dataset_config, config.split), Counter()
        source = f"{name}" + (f" ({config.dataset_config})" if config.dataset_config else "") + f" [{config.split}]"
    if not rows:
        raise JaxrlError(f"{source} holds no usable rows" + (f" ({_reasons(skipped)})" if skipped else ""))
    kept = apply_filters(rows, filters, source)
    filtered_out = len(rows) - len(kept)
    if config.max_samples is not None:
        kept = kept[: config.max_samples]
    return Rows(kept, source, skipped, filtered_out)


def parse_filter(text: str) -> tuple[str, bool, str]:
    """'column=value' -> (column, True, value); 'column!=value' -> (column, False, value)."""
    for op, equal in (("!=", False), ("==", True), ("=", True)):
        column, found, value = text.partition(op)
        if found and column.strip():
            return column.strip(), equal, value.strip().strip("'\"")
    raise JaxrlError(f"malformed filter {text!r}; write column=value or column!=value, e.g. source=cn_k12")


def apply_filters(rows: list[dict], filters: list[tuple[str, bool, str]], source: str) -> list[dict]:
    """Rows whose column values (compared as text) satisfy every filter; none kept is an error."""
    for column, equal, value in filters:
        if not any(column in r for r in rows):
            raise JaxrlError(f"filter on {column!r}: {source} has no such column (columns: {columns_of(rows)})")
        before = rows
        rows = [r for r in rows if (_text(r.get(column)) == value) == equal]
        if not rows:
            seen = sorted({_text(r.get(column)) for r in before})
            shown = ", ".join(seen[:8]) + (", ..." if len(seen) > 8 else "")
            raise JaxrlError(f"filter {column}{'=' if equal else '!='}{value} keeps none of {len(before)} rows "
                             f"of {source} (values of {column}: {shown})")  # fmt: skip
    return rows


def read_file(path: Path, strict: bool = False) -> tuple[list[dict], Counter]:
    """All rows of a local file, and the bad ones skipped (reason -> count)."""
    suffix = path.suffix.lower()
    if not path.is_file():
        raise JaxrlError(f"data file {path} does not exist")
    if suffix not in SUFFIXES:
        raise JaxrlError(f"{path}: unknown data format {suffix or '(no suffix)'}; use .jsonl, .json or .parquet")
    if suffix == ".parquet":
        return _read_parquet(path), Counter()
    text = _read_utf8(path)
    if not text.strip():
        raise JaxrlError(f"data file {path} is empty")
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            if e.msg != "Extra data":  # several values: JSON lines in a .json file
                raise JaxrlError(f"{path} is not valid JSON (line {e.lineno}): {e.msg}") from None
        else:
            return _json_document_rows(data, path, strict)
    return _json_lines(text, path, strict)


def columns_of(rows: list[dict], limit: int = 12) -> str:
    names = list(dict.fromkeys(k for r in rows[:100] for k in r))
    return ", ".join(names[:limit]) + (", ..." if len(names) > limit else "") or "none"


def _json_lines(text: str, path: Path, strict: bool) -> tuple[list[dict], Counter]:
    rows, skipped = [], Counter()
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            if strict:
                raise JaxrlError(f"{path} line {number} is not valid JSON: {e.msg}") from None
            skipped["line is not valid JSON"] += 1
            continue
        if not isinstance(row, dict):
            if strict:
                raise JaxrlError(f"{path} line {number} is a {type(row).__name__}, not a JSON object")
            skipped["line is not a JSON object"] += 1
            continue
        rows.append(row)
    return rows, skipped


def _json_document_rows(data: Any, path: Path, strict: bool) -> tuple[list[dict], Counter]:
    """A list of objects, or an object with one list of objects inside (e.g. {"data": [...]})."""
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise JaxrlError(f"{path}: expected a list of rows, or an object holding one list of rows")
        data = lists[0]
    if not isinstance(data, list):
        raise JaxrlError(f"{path}: expected a list of rows, got a JSON {type(data).__name__}")
    rows = [r for r in data if isinstance(r, dict)]
    bad = len(data) - len(rows)
    if bad and strict:
        raise JaxrlError(f"{path}: {bad} items are not JSON objects")
    return rows, Counter({"item is not a JSON object": bad} if bad else {})


def _read_utf8(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise JaxrlError(f"{path} is not UTF-8 text (bad byte at line {line}); re-encode it as UTF-8") from None


def _read_parquet(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for a file that is not Parquet
        raise JaxrlError(f"cannot read {path} as Parquet: {_first_line(e)}") from None
    if table.num_rows == 0:
        raise JaxrlError(f"data file {path} holds no rows")
    return table.to_pylist()


def _read_hub(name: str, config: str | None, split: str) -> list[dict]:
    import datasets

    datasets.disable_progress_bars()
    logging.getLogger("datasets").setLevel(logging.ERROR)
    try:
        dataset = datasets.load_dataset(name, config, split=split)
    except Exception as e:  # offline, unknown name, unknown config or split: all one line for the user
        offline = datasets.config.HF_HUB_OFFLINE or datasets.config.HF_DATASETS_OFFLINE
        hint = "; offline: download it first or pass a local file" if offline else ""
        raise JaxrlError(f"cannot load dataset {name!r} (split {split!r}) from the hub: "
                         f"{_first_line(e)}{hint}") from None  # fmt: skip
    return dataset.to_list()


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _reasons(skipped: Counter) -> str:
    return ", ".join(f"{n} {why}" for why, n in sorted(skipped.items()))


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200]
