"""Data: rows from files or the hub, chat templates, tokenised SFT examples and prompts, batches.

- `sources`: `DataConfig`, `load_rows` (local .jsonl/.json/.parquet or a hub dataset, filters).
- `chat`: `ChatConfig`, `SYSTEM_PROMPT`, `render_prompt`, `encode_prompt`, `encode_example`.
- `sft`: `load_sft_dataset` -> `TokenizedDataset`; `SFTBatches` (padded or packed, resumable).
- `prompts`: `load_prompts` -> `PromptSet`; `PromptBatches` for GRPO and evaluation.
- `batching`: the `Batch` row layout, the seeded resumable order, per-host slices, packing.
"""

from jaxrl.data.batching import Batch, EpochSampler
from jaxrl.data.chat import SYSTEM_PROMPT, ChatConfig, Encoded, encode_example, encode_prompt, render_prompt
from jaxrl.data.prompts import PromptBatch, PromptBatches, PromptSet, encode_prompts, load_prompts
from jaxrl.data.sft import SFTBatches, TokenizedDataset, conversations, load_sft_dataset, tokenize_sft
from jaxrl.data.sources import DataConfig, Rows, load_rows

__all__ = [
    "SYSTEM_PROMPT",
    "Batch",
    "ChatConfig",
    "DataConfig",
    "Encoded",
    "EpochSampler",
    "PromptBatch",
    "PromptBatches",
    "PromptSet",
    "Rows",
    "SFTBatches",
    "TokenizedDataset",
    "conversations",
    "encode_example",
    "encode_prompt",
    "encode_prompts",
    "load_prompts",
    "load_rows",
    "load_sft_dataset",
    "render_prompt",
    "tokenize_sft",
]
