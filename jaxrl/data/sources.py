"""Rows of a dataset: a local .jsonl/.json/.parquet/.csv file, a folder of them, or a hub dataset.

Parquet, CSV, folders and hub datasets are read as Arrow tables: filters and `columns` apply there,
before any Python row exists (the study's hub split carries long R1 traces in columns most runs
never read). JSON is parsed line by line so that bad lines can be counted.

What is fatal and what is counted:
- JaxrlError (one line): the file does not exist, has an unknown suffix, is not UTF-8, is not
  JSON/Parquet/CSV at all, holds no rows, a filter is malformed or names a column the data lacks,
  the filters keep no row, a requested column is missing, or a hub dataset cannot be loaded
  (offline and not cached, unknown name, config or split).
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
from typing import Any, ClassVar

from jaxrl.errors import JaxrlError
from jaxrl.knobs import check_knobs

SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where rows come from and which columns hold the conversation (TRL's names where it has them).

    Conversations come from `messages_column` (a list of {role, content}, the last one the
    assistant's answer), unless `prompt_column` and `completion_column` are both set (text, or
    messages). For GRPO and evaluation only `prompt_column` is read; other columns ride along.
    """

    DOMAINS: ClassVar[dict[str, str]] = {"max_samples": ">= 1"}  # jaxrl.knobs

    dataset_name: str = ""  # a local .jsonl/.json/.parquet/.csv file or folder, or a hub dataset name
    dataset_config: str | None = None  # hub configuration, e.g. "extended"
    split: str = "train"  # hub or folder split (a single file has one)
    filters: tuple[str, ...] = ()  # "column=value" or "column!=value"; every one must hold
    columns: tuple[str, ...] = ()  # keep only these columns (empty: all); the SFT loader picks its own
    max_samples: int | None = None  # keep the first N rows after filtering
    messages_column: str = "messages"
    prompt_column: str | None = None
    completion_column: str | None = None
    strict: bool = False  # bad rows are errors instead of skipped and counted

    def __post_init__(self):  # caught when the recipe loads, before anything is read
        check_knobs(self, "data.")
        for text in self.filters:
            parse_filter(text)


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


def load_rows(config: DataConfig, columns: tuple[str, ...] | None = None) -> Rows:
    """The rows `config` names, filtered, cut to `columns` (default `config.columns`) and capped.

    See the module docstring for what is fatal and what is skipped and counted.
    """
    name = config.dataset_name
    if not name:
        raise JaxrlError("no dataset: set dataset_name to a .jsonl/.json/.parquet/.csv file or a hub dataset")
    filters = [parse_filter(f) for f in config.filters]
    columns = tuple(config.columns if columns is None else columns)
    path = Path(name).expanduser()
    skipped = Counter()
    if path.is_dir():
        source = f"{path} [{config.split}]"
        data = _read_datasets(str(path), config.dataset_config, config.split, source)
    elif path.suffix.lower() in SUFFIXES or path.exists():
        source = str(path)
        data, skipped = read_file(path, config.strict)
    else:
        source = name + (f" ({config.dataset_config})" if config.dataset_config else "") + f" [{config.split}]"
        data = _read_datasets(name, config.dataset_config, config.split, source)
    total = len(data) if isinstance(data, list) else data.num_rows
    if not total:
        raise JaxrlError(f"{source} holds no usable rows" + (f" ({_reasons(skipped)})" if skipped else ""))
    cap = config.max_samples
    if isinstance(data, list):
        kept = apply_filters(data, filters, source)
        passed = len(kept)
        if columns:
            _check_columns(columns, _column_names(data), source)
            kept = [{c: r[c] for c in columns if c in r} for r in kept]
        kept = kept[:cap] if cap is not None else kept
    else:
        table = data
        if columns:  # drop unread columns before the filter copies the rows it keeps
            _check_columns(columns, table.column_names, source)
            needed = dict.fromkeys([*columns, *(f[0] for f in filters if f[0] in table.column_names)])
            table = table.select(list(needed))
        table = _filter_table(table, filters, source)
        passed = table.num_rows
        if columns:
            table = table.select(list(columns))
        kept = (table.slice(0, cap) if cap is not None else table).to_pylist()
    return Rows(kept, source, skipped, filtered_out=total - passed)


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
        keep = [_matches(r.get(column), value) == equal for r in rows]
        _check_kept(keep, [r.get(column) for r in rows], column, equal, value, source)
        rows = [r for r, k in zip(rows, keep, strict=True) if k]
    return rows


def _filter_table(table: Any, filters: list[tuple[str, bool, str]], source: str) -> Any:
    """`apply_filters` on an Arrow table: only the filtered columns become Python values."""
    import numpy as np

    for column, equal, value in filters:
        if column not in table.column_names:
            raise JaxrlError(
                f"filter on {column!r}: {source} has no such column (columns: {', '.join(table.column_names[:12])})"
            )
        values = table.column(column).to_pylist()
        keep = [_matches(v, value) == equal for v in values]
        _check_kept(keep, values, column, equal, value, source)
        table = table.take(np.flatnonzero(keep))
    return table


def _check_kept(keep: list[bool], values: list, column: str, equal: bool, value: str, source: str) -> None:
    if not any(keep):
        seen = sorted({_text(v) for v in values})
        shown = ", ".join(seen[:8]) + (", ..." if len(seen) > 8 else "")
        raise JaxrlError(
            f"filter {column}{'=' if equal else '!='}{value} keeps none of {len(values)} rows "
            f"of {source} (values of {column}: {shown})"
        )


def _check_columns(columns: tuple[str, ...], available: list[str], source: str) -> None:
    missing = [c for c in columns if c not in available]
    if missing:
        raise JaxrlError(f"{source} has no column {missing[0]!r} (columns: {', '.join(available[:12])})")


def _column_names(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(k for r in rows for k in r))


def read_file(path: Path, strict: bool = False) -> tuple[Any, Counter]:
    """All rows of a local file (dicts for JSON, an Arrow table otherwise), and the skipped ones."""
    suffix = path.suffix.lower()
    if not path.is_file():
        raise JaxrlError(f"data file {path} does not exist")
    if suffix not in SUFFIXES:
        raise JaxrlError(f"{path}: unknown data format {suffix or '(no suffix)'}; use .jsonl, .json, .parquet or .csv")
    if suffix in (".parquet", ".csv"):
        return _read_table(path, suffix), Counter()
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


def _read_table(path: Path, suffix: str) -> Any:
    import pyarrow.csv
    import pyarrow.parquet

    try:
        if suffix == ".csv":
            _read_utf8(path)  # a clear message for a non-UTF-8 file
            table = pyarrow.csv.read_csv(path)
        else:
            table = pyarrow.parquet.read_table(path)
    except JaxrlError:
        raise
    except Exception as e:  # pyarrow raises several types for a file it cannot read
        raise JaxrlError(f"cannot read {path} as {suffix[1:]}: {_first_line(e)}") from None
    if table.num_rows == 0:
        raise JaxrlError(f"data file {path} holds no rows")
    return table


def _read_datasets(name: str, config: str | None, split: str, source: str) -> Any:
    """An Arrow table through `datasets`: a hub name (cached when offline) or a local folder."""
    import datasets

    datasets.disable_progress_bars()
    logging.getLogger("datasets").setLevel(logging.ERROR)
    try:
        dataset = datasets.load_dataset(name, config, split=split)
    except Exception as e:  # offline, unknown name, unknown config or split: all one line for the user
        offline = datasets.config.HF_HUB_OFFLINE or datasets.config.HF_DATASETS_OFFLINE
        hint = "; offline and not cached: download it first or pass a local file" if offline else ""
        raise JaxrlError(f"cannot load dataset {source}: {_first_line(e)}{hint}") from None
    if dataset._indices is not None:  # a selection over the table: materialise it
        dataset = dataset.flatten_indices()
    return dataset.data.table


def _matches(cell: Any, value: str) -> bool:
    """A cell equals a filter's text: compared as text, booleans in any case (true, True)."""
    if isinstance(cell, bool):
        return str(cell).lower() == value.lower()
    return _text(cell) == value


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _reasons(skipped: Counter) -> str:
    return ", ".join(f"{n} {why}" for why, n in sorted(skipped.items()))


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200]
