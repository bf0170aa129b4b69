"""`jaxrl generate`: completions for text prompts from a HF directory or an Orbax checkpoint.

Prompts are wrapped in the tokenizer's chat template (one user turn, generation prompt added)
unless `raw`. The tokenizer is read from `--tokenizer`, else from beside or above the model
(`jaxrl.model_files`: a training run keeps it at its root).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from jaxrl.destinations import check_destination
from jaxrl.errors import JaxrlError
from jaxrl.model_files import check_vocabulary, load_tokenizer


def read_prompts(prompts: list[str] | None, prompts_file: str | None) -> list[str]:
    """The --prompt values, then the non-empty lines of --prompts FILE."""
    texts = list(prompts or [])
    if prompts_file:
        path = Path(prompts_file)
        if not path.is_file():
            raise JaxrlError(f"prompts file {path} does not exist")
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        if not lines:
            raise JaxrlError(f"prompts file {path} has no prompts (one prompt per line)")
        texts += lines
    if not texts:
        raise JaxrlError("no prompts: give --prompt TEXT or --prompts FILE")
    return texts


def encode_prompts(tokenizer, texts: list[str], raw: bool, system: str | None = None) -> list[list[int]]:
    """Token ids of each prompt, through the chat template unless `raw`."""
    if raw:
        return [tokenizer(text).input_ids for text in texts]
    if not getattr(tokenizer, "chat_template", None):
        raise JaxrlError("the tokenizer has no chat template; pass --raw to use prompts as they are")
    ids = []
    for text in texts:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
        rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids.append(tokenizer(rendered, add_special_tokens=False).input_ids)
    return ids


def generate_cli(args, out=None) -> None:
    """Loads the model and tokenizer, samples, and prints text or one JSON object per completion;
    with `args.out` the JSON objects go to that file instead, written once sampling is done."""
    from jaxrl.models.checkpoint import load_model
    from jaxrl.models.config import ModelConfig
    from jaxrl.models.sampler import SamplingConfig, positions_warning, sample

    from jaxrl.sharding import LogicalMesh, make_mesh, rules_preset

    out = out or sys.stdout
    model_path = Path(args.model)
    if not model_path.exists():
        raise JaxrlError(f"model path {model_path} does not exist")
    destination = check_destination(args.out, "file", "--out") if args.out else None
    texts = read_prompts(args.prompt, args.prompts)
    model_config = ModelConfig.from_model_path(model_path)  # a config.json key missing, null or wrong
    tokenizer = load_tokenizer(model_path, args.tokenizer)
    check_vocabulary(tokenizer, model_path)  # before the model loads and the sampler compiles
    prompt_ids = encode_prompts(tokenizer, texts, args.raw, args.system)
    config = SamplingConfig(
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        max_new_tokens=args.max_new_tokens,
        num_samples=args.num_samples,
        seed=args.seed,
        stop_strings=tuple(args.stop or ()),
    )
    warning = positions_warning(
        [len(p) for p in prompt_ids], config.max_new_tokens, model_config.max_position_embeddings
    )
    if warning:
        print(warning, file=sys.stderr)
    overrides = {"dtype": args.dtype} if args.dtype else {}
    mesh = LogicalMesh(make_mesh(args.mesh), rules_preset(args.rules))
    model = load_model(model_path, mesh, param_dtype=args.dtype, **overrides)
    completions = sample(model, prompt_ids, config, tokenizer=tokenizer, slots=args.slots)

    n = config.num_samples
    lines = []  # JSON objects, for stdout (--json) or the --out file
    for row, (tokens, text) in enumerate(zip(completions.token_lists(), completions.texts(tokenizer), strict=True)):
        prompt, reason = int(completions.prompt_index[row]), completions.finish_reasons[row]
        logprobs = completions.logprobs[row, : len(tokens)]
        if args.json or destination is not None:
            record = {
                "prompt": texts[prompt],
                "prompt_index": prompt,
                "sample_index": row % n,
                "token_ids": tokens,
                "text": text,
                "logprobs": [round(float(x), 6) for x in logprobs],
                "finish_reason": reason,
            }
            lines.append(json.dumps(record) + "\n")
        else:
            mean = float(logprobs.mean()) if len(tokens) else 0.0
            print(
                f"### prompt {prompt}, sample {row % n} ({reason}, {len(tokens)} tokens, mean logprob {mean:.3f})",
                file=out,
            )
            print(text, file=out)
    if destination is not None:
        destination.write_text("".join(lines))
        print(f"wrote {len(lines)} completions to {destination}", file=out)
    else:
        print("".join(lines), end="", file=out)
