"""`jaxrl data`: what a data recipe yields before any training compiles.

    jaxrl data data.dataset_name=openr1.jsonl data.filters=source=cn_k12 tokenizer=/models/olmo2 \
        max_length=4096 --json

Reads the rows, counts what the filters leave out and what is skipped, renders the first example
with the chat template and, given a tokenizer, the token lengths and how many examples
`max_length` would drop (the study's 4096 filter) or how many prompts `max_prompt_length` would cut;
given also the model's `vocab_size`, how many rows have a token id outside it.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any, ClassVar, Literal

import numpy as np

from jaxrl.data.chat import ChatConfig, render_example, render_prompt
from jaxrl.data.prompts import encode_prompts
from jaxrl.data.sft import conversation_columns, conversations, tokenize_sft
from jaxrl.data.sources import DataConfig, load_rows
from jaxrl.model_files import load_tokenizer


@dataclasses.dataclass(frozen=True)
class DataReportConfig:
    """mode: "sft" reads conversations; "prompts" reads `data.prompt_column` as GRPO does."""

    DOMAINS: ClassVar[dict[str, str]] = {"max_length": ">= 1", "max_prompt_length": ">= 1", "vocab_size": ">= 1"}

    data: DataConfig = DataConfig()
    chat: ChatConfig = ChatConfig()
    tokenizer: str = ""  # a directory with tokenizer files (a model directory); "" = no token counts
    mode: Literal["sft", "prompts"] = "sft"
    max_length: int | None = 4096
    max_prompt_length: int | None = 512
    vocab_size: int | None = None  # the model's: with a tokenizer, rows with ids outside it are skipped


def data_report(config: DataReportConfig) -> dict[str, Any]:
    """A JSON-able summary: counts, skipped reasons, token length percentiles, the first example."""
    data = config.data
    if config.mode == "prompts" and not data.prompt_column:
        data = dataclasses.replace(data, prompt_column="problem")
    rows = load_rows(data, conversation_columns(data) if config.mode == "sft" else None)
    report: dict[str, Any] = {"source": rows.source, "rows": len(rows), "filtered_out": rows.filtered_out}
    skipped = Counter(rows.skipped)
    tokenizer = load_tokenizer(None, config.tokenizer) if config.tokenizer else None
    if config.mode == "sft":
        pairs, bad = conversations(rows, data)
        skipped += bad
        report["examples"] = len(pairs)
        if pairs:
            report["first_example"] = render_example(*pairs[0], config.chat, tokenizer)[0]
        if tokenizer is not None and pairs:
            examples = tokenize_sft(pairs, tokenizer, config.chat, vocab_size=config.vocab_size, strict=data.strict)
            skipped.update(_skipped(examples.counts))
            lengths = examples.lengths
            report["tokens"] = _length_stats(lengths)
            if config.max_length is not None:
                over = lengths > config.max_length
                report["over_max_length"] = int(over.sum())
                report["kept"] = int((~over).sum())
                report["kept_tokens"] = int(lengths[~over].sum())
    else:
        report["first_prompt"] = render_prompt(rows.rows[0].get(data.prompt_column, ""), config.chat, tokenizer)
        if tokenizer is not None:
            column, strict = data.prompt_column, data.strict
            prompts = encode_prompts(rows, tokenizer, config.chat, column, None, strict, config.vocab_size)
            lengths = np.array([len(p) for p in prompts.prompt_ids])
            report["prompts"] = len(prompts)
            report["tokens"] = _length_stats(lengths)
            skipped.update(_skipped(prompts.counts))
            if config.max_prompt_length is not None:
                report["truncated"] = int((lengths > config.max_prompt_length).sum())
    report["skipped"] = dict(sorted(skipped.items()))
    return report


def format_report(report: dict[str, Any], config: DataReportConfig) -> str:
    """The report as lines a person reads."""
    lines = [f"source: {report['source']}", f"rows: {report['rows']} (filtered out {report['filtered_out']})"]
    lines += [f"skipped: {n} {why}" for why, n in report["skipped"].items()]
    if "examples" in report:
        lines.append(f"examples: {report['examples']}")
    if "tokens" in report:
        t = report["tokens"]
        lines.append(
            f"tokens per {'example' if config.mode == 'sft' else 'prompt'}: min {t['min']}, "
            f"median {t['median']}, p90 {t['p90']}, p99 {t['p99']}, max {t['max']}"
        )
    if "over_max_length" in report:
        lines.append(
            f"over max_length={config.max_length}: {report['over_max_length']} dropped; "
            f"{report['kept']} kept ({report['kept_tokens']} tokens)"
        )
    if "truncated" in report:
        lines.append(f"over max_prompt_length={config.max_prompt_length}: {report['truncated']} left-truncated")
    first = report.get("first_example", report.get("first_prompt", ""))
    lines += ["first " + ("example:" if config.mode == "sft" else "prompt:"), _clip(first)]
    return "\n".join(lines)


def _skipped(counts: dict[str, int]) -> dict[str, int]:
    """The "skipped: REASON" entries of a dataset's counts, by reason."""
    return {k.removeprefix("skipped: "): v for k, v in counts.items() if k.startswith("skipped: ")}


def _length_stats(lengths: np.ndarray) -> dict[str, int]:
    if not len(lengths):
        return {k: 0 for k in ("min", "median", "p90", "p99", "max", "total")}
    q = np.percentile(lengths, [50, 90, 99]).round().astype(int)
    return {
        "min": int(lengths.min()),
        "median": int(q[0]),
        "p90": int(q[1]),
        "p99": int(q[2]),
        "max": int(lengths.max()),
        "total": int(lengths.sum()),
    }


def _clip(text: str, limit: int = 1500) -> str:
    return text if len(text) <= limit else text[:limit] + f"... ({len(text) - limit} more characters)"


def data_report_cli(recipe: str | None, overrides: list[str], as_json: bool) -> None:
    """`jaxrl data`: prints the report; with `as_json` the last line is the report as JSON."""
    import json

    from jaxrl.recipes import load_recipe

    config = load_recipe(DataReportConfig, recipe, overrides)
    report = data_report(config)
    print(format_report(report, config))
    if as_json:
        print(json.dumps(report, ensure_ascii=False))
