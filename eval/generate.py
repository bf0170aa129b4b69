"""Completions for many prompts through the shared sampler, a batch of prompts at a time."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Generation:
    """The n completions of one prompt: decoded texts, token counts and finish reasons."""

    texts: list[str]
    lengths: list[int]
    finish_reasons: list[str]


def generate(
    model,
    tokenizer,
    prompts: Sequence[Sequence[int]],
    sampling,
    *,
    batch_size: int = 32,
    mesh=None,
    on_batch: Callable[[int], None] | None = None,
    slots: int | None = None,
) -> list[Generation]:
    """`sampling.num_samples` completions of each prompt (a `SamplingConfig`).

    Batch b samples with seed `sampling.seed + b`, so a run is a pure function of the seed, the
    prompts and the batch size. `on_batch(num_prompts_done)` reports progress. slots: the
    sampler's (None: static batches; N: continuous batching on N slots; the same completions).
    """
    from jaxrl.models.sampler import sample

    eos = model.config.eos_token_ids or (tokenizer.eos_token_id,)
    out: list[Generation] = []
    for b, start in enumerate(range(0, len(prompts), batch_size)):
        batch = [list(p) for p in prompts[start : start + batch_size]]
        config = dataclasses.replace(sampling, seed=sampling.seed + b)
        done = sample(model, batch, config, eos_token_ids=eos, tokenizer=tokenizer, mesh=mesh, slots=slots)
        tokens, lengths = np.asarray(done.tokens), np.asarray(done.lengths)
        n = sampling.num_samples
        for i in range(len(batch)):
            rows = range(i * n, (i + 1) * n)
            texts = [tokenizer.decode(tokens[r, : lengths[r]].tolist(), skip_special_tokens=True) for r in rows]
            out.append(Generation(texts, [int(lengths[r]) for r in rows], [done.finish_reasons[r] for r in rows]))
        if on_batch is not None:
            on_batch(len(out))
    return out
