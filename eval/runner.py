"""`jaxrl eval`: every task on every model, KL to a base model, and the reports.

Per task, the model-independent work (rows, parsing, shots, chat turns) is done once; per model,
prompts are rendered with that model's tokenizer, completions sampled (or choice letters scored
by log-likelihood), scored, and summarised. Everything lands in `out/`: results.json,
results.md, results.png, metrics.jsonl (a line per model and task, written as each finishes),
and samples/<model>/<task>.jsonl (every completion with its extracted answer and verdict).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import ClassVar

import numpy as np
from jaxrl.eval.data import Source, load_rows, parse_rows
from jaxrl.eval.metrics import summarize
from jaxrl.eval.models import ModelRef, expand_models
from jaxrl.eval.prompts import CHAT_TEMPLATES, encode, render_text, system_prompt_from
from jaxrl.eval.task import Item, Scored, Task, pick_shots
from jaxrl.eval.tasks import STUDY_TASKS, make_task

from jaxrl.destinations import check_destination
from jaxrl.errors import JaxrlError
from jaxrl.knobs import check_knobs
from jaxrl.model_files import check_vocabulary, load_tokenizer


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Everything a run depends on; the defaults are the study's decoding settings."""

    DOMAINS: ClassVar[dict[str, str]] = {  # jaxrl.knobs; the CLI checks its options the same way first
        "num_samples": ">= 1", "temperature": ">= 0; 0 = greedy", "top_p": "(0, 1]", "top_k": ">= 0; 0 = off",
        "max_new_tokens": ">= 1", "seed": ">= 0", "limit": ">= 1; leave it out for every problem",
        "batch_size": ">= 1", "slots": ">= 0; 0 = one per completion", "kl_batch_size": ">= 1",
    }  # fmt: skip

    tasks: tuple[str, ...] = STUDY_TASKS
    num_samples: int = 1  # completions per problem (pass@k and maj@k up to this)
    temperature: float = 0.6  # 0 = greedy
    top_p: float = 0.95
    top_k: int = 0
    max_new_tokens: int = 4096
    seed: int = 0  # sampling seed, and GPQA's option order
    limit: int | None = None  # first N usable problems of each task
    chat_template: str = "olmo2"  # "olmo2", "tokenizer" or "none"
    system_prompt: str | None = "study"  # "study", "none", or the text
    batch_size: int = 32  # prompts per sampler call; sequences per teacher-forced batch
    data: dict[str, str] = dataclasses.field(default_factory=dict)  # task -> local file or hub name
    shots: dict[str, str] = dataclasses.field(default_factory=dict)  # task -> file of few-shot examples
    num_shots: dict[str, int] = dataclasses.field(default_factory=dict)  # task -> k (default: the task's)
    tokenizer: str | None = None  # default: beside or above each model
    param_dtype: str | None = None  # e.g. float32, bfloat16 (default: float32)
    compute_dtype: str | None = None  # matmul dtype, e.g. bfloat16 (default: float32; logits, softmax, KL stay fp32)
    mesh: str = ""  # e.g. data=1,fsdp=-1,tensor=1
    rules: str = "tensor_parallel"  # the weights' layout: split only over tensor (decoding gathers none), or fsdp
    slots: int | None = None  # continuous batching on N decode slots (0: one per completion); None: static
    kl_base: str | None = None  # a model: report KL(base || each model)
    kl_data: str | None = None  # MATH-500 rows for the KL (default: the math500 data)
    kl_batch_size: int = 4
    strict: bool = False  # a malformed row is an error instead of skipped and counted

    def __post_init__(self):
        check_knobs(self)


def parse_source(text: str, default: Source) -> Source:
    """A local file path, or a hub name `name[:config][@split]` (split defaults to the task's)."""
    path = Path(text).expanduser()
    if path.exists() or path.suffix.lower() in (".jsonl", ".json", ".parquet"):
        return Source(str(path))
    name, _, split = text.partition("@")
    name, _, config = name.partition(":")
    return Source(name, config or None, split or default.split)


@dataclasses.dataclass
class Prepared:
    """A task's model-independent part: its items and, per item, the chat turns to render."""

    task: Task
    source: Source
    items: list[Item]
    turns: list[list[dict]]
    skipped: Counter
    num_shots: int


def prepare(name: str, config: EvalConfig) -> Prepared:
    """Loads and parses a task's rows (malformed ones counted), keeps the first `limit`, and builds
    each item's chat turns with its k shots: from --shots, else the task's shot split for hub
    data, else the evaluated rows themselves (never the item itself)."""
    task = make_task(name, config.seed)
    key = name if name in config.data else task.data_of  # mmlu_loglik reads mmlu's --data
    local = key in config.data
    source = parse_source(config.data[key], task.source) if local else task.source
    parsed = parse_rows(load_rows(source), task.parse)
    if config.strict and parsed.skipped:
        reason, count = parsed.skipped.most_common(1)[0]
        raise JaxrlError(f"{name}: {parsed.num_skipped} malformed rows in {source.describe()}, e.g. {reason} ({count})")
    if not parsed.items:  # as in training: a task with nothing to score is an error, not "nan (0 problems)"
        reasons = ", ".join(f"{reason} ({count})" for reason, count in parsed.skipped.most_common(3))
        raise JaxrlError(
            f"{name}: {source.describe()} holds no usable rows ({reasons or 'no rows'}); check its columns"
        )
    items = parsed.items[: config.limit] if config.limit is not None else parsed.items
    k = config.num_shots.get(name, task.num_shots)
    pool = parsed.items
    if k > 0 and name in config.shots:
        shots = parse_source(config.shots[name], task.shot_source or task.source)
        pool = parse_rows(load_rows(shots), task.parse).items
    elif k > 0 and task.shot_source is not None and not local:
        pool = parse_rows(load_rows(task.shot_source), task.parse).items
    turns = [task.turns(item, pick_shots(item, pool, k)) for item in items]
    return Prepared(task, source, items, turns, parsed.skipped, k)


def sampling_config(config: EvalConfig):
    from jaxrl.models.sampler import SamplingConfig

    return SamplingConfig(
        temperature=config.temperature,
        top_p=config.top_p,
        top_k=config.top_k,
        max_new_tokens=config.max_new_tokens,
        num_samples=config.num_samples,
        seed=config.seed,
    )


def score_loglik(prepared: Prepared, model, tokenizer, prompts: list[list[int]], config: EvalConfig):
    """One 'sample' per item: the option whose letter is most likely as the reply's start."""
    from jaxrl.eval.forced import continuation_logprobs

    task = prepared.task
    options = [task.continuations(item) for item in prepared.items]
    pairs = [(p, encode(o, tokenizer)) for p, opts in zip(prompts, options, strict=True) for o in opts]
    logprobs = continuation_logprobs(model, pairs, batch_size=config.batch_size)
    scored, records, at = [], [], 0
    for item, opts in zip(prepared.items, options, strict=True):
        lp = logprobs[at : at + len(opts)]
        at += len(opts)
        choice = opts[int(np.argmax(lp))]
        ok = choice == item.fields["gold"]
        scored.append([Scored(ok, choice, "correct" if ok else "wrong")])
        records.append({"logprobs": dict(zip(opts, map(float, lp), strict=True))})
    return scored, records


def task_metrics(scored: list[list[Scored]], lengths, finish, votes: bool = True) -> dict:
    """Summary of one task on one model (see `metrics.summarize`; maj@k when `votes`), verdict
    counts, IFEval's instruction-level accuracy, and completion lengths and truncation."""
    if not scored:
        return {"num_problems": 0}
    answers = [[s.answer for s in row] for row in scored] if votes else None
    out = summarize([[s.correct for s in row] for row in scored], answers)
    out["verdicts"] = dict(Counter(s.verdict for row in scored for s in row))
    parts = [p for row in scored for s in row for p in s.parts]
    if parts:
        out["inst_strict"] = float(np.mean(parts))
        out["num_instructions"] = len(parts) // out["num_samples"]
    if lengths:
        out["mean_completion_tokens"] = float(np.mean(lengths))
        out["truncated_fraction"] = float(np.mean([r == "length" for row in finish for r in row]))
    return out


class Progress:
    """One bar over all work (problems x models), with rate and ETA; quiet when not on a terminal."""

    def __init__(self, total: int):
        from tqdm.auto import tqdm

        quiet = None if _writer() else True  # None: a bar only on a terminal
        self.bar = tqdm(total=total, unit="problem", dynamic_ncols=True, disable=quiet, file=sys.stderr)
        self.start, self.done, self.total = time.monotonic(), 0, total

    def update(self, n: int, what: str) -> None:
        self.done += n
        self.bar.set_postfix_str(what, refresh=False)
        self.bar.update(n)

    def log(self, message: str) -> None:
        """A line with the elapsed time and the ETA of the whole run (also when the bar is off)."""
        if not _writer():
            return
        elapsed = time.monotonic() - self.start
        done, total = self.done, self.total or 1
        eta = elapsed / done * (total - done) if done else float("nan")
        self.bar.write(f"[{elapsed:7.1f}s, eta {eta:7.1f}s] {message}", file=sys.stderr)
        sys.stderr.flush()

    def close(self) -> None:
        self.bar.close()


def _safe(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._@#-]+", "_", label)


def evaluate_model(
    ref: ModelRef, prepared: list[Prepared], config: EvalConfig, out: Path, progress, mesh, base=None, warned=None
):
    """Runs every prepared task on one model. Returns ({task: metrics}, kl or None). `warned`: the
    warnings already shown in this run (each is shown once)."""
    from jaxrl.models.checkpoint import load_model
    from jaxrl.models.sampler import positions_warning

    tokenizer = load_tokenizer(ref.path, config.tokenizer)
    check_vocabulary(tokenizer, ref.path)  # a larger tokenizer fails before the model loads
    model = load_model(ref.path, mesh, config.param_dtype, **_compute(config))
    system = system_prompt_from(config.system_prompt)
    results = {}
    for p in prepared:
        name, started = p.task.name, time.monotonic()
        texts = [render_text(t, tokenizer, system, config.chat_template) for t in p.turns]
        prompts = [encode(t, tokenizer) for t in texts]
        lengths = finish = None
        if p.task.kind == "loglik":
            scored, records = score_loglik(p, model, tokenizer, prompts, config)
            completions = [[] for _ in p.items]
            progress.update(len(p.items), f"{ref.label} {name}")
        else:
            from jaxrl.eval.generate import generate

            prompt_lengths = [len(ids) for ids in prompts]
            warning = positions_warning(prompt_lengths, config.max_new_tokens, model.config.max_position_embeddings)
            if warning and warned is not None and "positions" not in warned:
                warned.add("positions")
                progress.log(warning)
            sampling = sampling_config(config)
            done = [0]

            def on_batch(n, done=done, label=f"{ref.label} {name}"):
                progress.update(n - done[0], label)
                done[0] = n

            gens = generate(
                model,
                tokenizer,
                prompts,
                sampling,
                batch_size=config.batch_size,
                mesh=mesh,
                on_batch=on_batch,
                slots=config.slots,
            )
            completions = [g.texts for g in gens]
            scored = p.task.score(p.items, completions)
            lengths, finish = [g.lengths for g in gens], [g.finish_reasons for g in gens]
            records = [{"finish_reasons": g.finish_reasons} for g in gens]
        metrics = task_metrics(scored, lengths, finish, p.task.votes)
        if p.task.primary != "pass@1" and "pass@1" in metrics:  # e.g. IFEval's prompt_strict: the same figure
            metrics[p.task.primary], metrics[p.task.primary + "_stderr"] = metrics["pass@1"], metrics["pass@1_stderr"]
        metrics |= {
            "skipped": dict(p.skipped),
            "num_skipped": sum(p.skipped.values()),
            "num_shots": p.num_shots,
            "seconds": round(time.monotonic() - started, 3),
        }
        results[name] = metrics
        _write_samples(out / "samples" / _safe(ref.label) / f"{name}.jsonl", p, texts, completions, scored, records)
        _append_jsonl(out / "metrics.jsonl", {"model": ref.label, "path": str(ref.path), "task": name, **metrics})
        shown = metrics.get("pass@1", float("nan"))
        progress.log(
            f"{ref.label} {name}: {p.task.primary} {shown:.3f} +- {metrics.get('pass@1_stderr', 0):.3f} "
            f"({metrics['num_problems']} problems, {metrics['num_skipped']} skipped)"
        )
    kl = None
    if base is not None:
        from jaxrl.eval.kl import mean_token_kl

        base_model, pairs = base
        kl = mean_token_kl(base_model, model, pairs, batch_size=config.kl_batch_size)
        _append_jsonl(out / "metrics.jsonl", {"model": ref.label, "path": str(ref.path), "task": "kl_to_base", **kl})
        progress.update(len(pairs), f"{ref.label} kl")
        progress.log(f"{ref.label} KL(base || model) {kl['kl']:.5f} over {kl['num_tokens']} tokens")
    return results, kl


def kl_pairs(config: EvalConfig, tokenizer) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, reference-solution ids) for each MATH-500 problem that has a solution."""
    task = make_task("math500")
    source = task.source
    if config.kl_data or "math500" in config.data:
        source = parse_source(config.kl_data or config.data["math500"], task.source)
    items = [i for i in parse_rows(load_rows(source), task.parse).items if i.fields["solution"].strip()]
    items = items[: config.limit] if config.limit is not None else items
    if not items:
        raise JaxrlError(f"no MATH-500 rows with a 'solution' in {source.describe()} for the KL")
    system = system_prompt_from(config.system_prompt)
    pairs = []
    for item in items:
        prompt = render_text(task.turns(item, []), tokenizer, system, config.chat_template)
        pairs.append((encode(prompt, tokenizer), encode(item.fields["solution"], tokenizer)))
    return pairs


def evaluate(models: list[str], config: EvalConfig, out_dir: str | Path) -> dict:
    """Evaluates every model (HF dir, Orbax checkpoint, or run dir) on every task; writes the reports."""
    from jaxrl.eval.report import write_reports
    from jaxrl.models.checkpoint import load_model
    from jaxrl.models.config import ModelConfig

    from jaxrl.sharding import LogicalMesh, make_mesh, rules_preset

    if not models:
        raise JaxrlError("no model given; pass --model DIR (a HF dir, an Orbax checkpoint or a run dir)")
    if config.kl_base and not Path(config.kl_base).exists():
        raise JaxrlError(f"--kl-base {config.kl_base} does not exist")
    if config.chat_template not in CHAT_TEMPLATES:
        raise JaxrlError(f"unknown chat template {config.chat_template!r}; choose from {', '.join(CHAT_TEMPLATES)}")
    sampling_config(config)  # bad temperature / top_p / top_k fail here, before any model loads
    out = check_destination(out_dir, "directory", "--out")
    refs = expand_models(models)
    mesh = LogicalMesh(make_mesh(config.mesh), rules_preset(config.rules))
    prepared = [prepare(name, config) for name in config.tasks]  # bad mesh or data: fail before writing
    for path in [ref.path for ref in refs] + ([Path(config.kl_base)] if config.kl_base else []):
        ModelConfig.from_model_path(path)  # a config.json key missing, null or wrong: its file and key
        check_vocabulary(load_tokenizer(path, config.tokenizer), path)  # so does a tokenizer the model cannot take
    with staged_output(out) as stage:  # `out` changes only when every model has run
        base = None
        if config.kl_base:
            base_path = Path(config.kl_base)
            pairs = kl_pairs(config, load_tokenizer(base_path, config.tokenizer))
            base = (load_model(base_path, mesh, config.param_dtype, **_compute(config)), pairs)
        total = len(refs) * (sum(len(p.items) for p in prepared) + (len(base[1]) if base else 0))
        progress = Progress(total)
        results, kls, warned = {}, {}, set()
        try:
            for ref in refs:
                results[ref.label], kl = evaluate_model(ref, prepared, config, stage, progress, mesh, base, warned)
                if kl is not None:
                    kls[ref.label] = kl
        finally:
            progress.close()
        report = _report(config, refs, prepared, results, kls)
        if _writer():
            write_reports(report, stage)
    return report


def _report(config: EvalConfig, refs: list[ModelRef], prepared: list[Prepared], results: dict, kls: dict) -> dict:
    """results.json's content."""
    return {
        "config": dataclasses.asdict(config),
        "models": [{"label": r.label, "path": str(r.path)} for r in refs],
        "tasks": {
            p.task.name: {
                "source": p.source.describe(),
                "primary": p.task.primary,
                "num_problems": len(p.items),
                "skipped": dict(p.skipped),
            }
            for p in prepared
        },
        "results": results,
        "kl_base": config.kl_base,
        "kl": kls,
    }


@contextlib.contextmanager
def staged_output(out: Path):
    """A temporary directory the run writes into, moved into `out` file by file only when the run
    ends well: a failed run creates and deletes nothing in `out`, so an earlier run's results stay
    as they were (a successful one replaces the files it writes, metrics.jsonl included)."""
    stage = Path(tempfile.mkdtemp(prefix="jaxrl-eval-"))
    try:
        yield stage
        if _writer():
            out.mkdir(parents=True, exist_ok=True)
            for file in sorted(p for p in stage.rglob("*") if p.is_file()):
                target = out / file.relative_to(stage)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(file, target)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _compute(config: EvalConfig) -> dict:
    return {"dtype": config.compute_dtype} if config.compute_dtype else {}


def _writer() -> bool:
    """Every host runs the models in lockstep; only the first writes files."""
    import jax

    return jax.process_index() == 0


def _append_jsonl(path: Path, record: dict) -> None:
    if not _writer():
        return
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def _write_samples(path: Path, p: Prepared, prompts, completions, scored, records) -> None:
    if not _writer():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for item, prompt, texts, row, extra in zip(p.items, prompts, completions, scored, records, strict=True):
            record = {
                "id": item.id,
                "gold": item.fields.get("gold", item.fields.get("answer")),
                "prompt": prompt,
                "completions": texts,
                "answers": [s.answer for s in row],
                "verdicts": [s.verdict for s in row],
                "correct": [s.correct for s in row],
                **extra,
            }
            f.write(json.dumps(record) + "\n")


def _pairs(values: list[str], flag: str) -> dict[str, str]:
    out = {}
    for value in values:
        key, sep, rest = value.partition("=")
        if not sep or not key.strip() or not rest.strip():
            raise JaxrlError(f"{flag} {value!r}: expected TASK=VALUE")
        out[key.strip()] = rest.strip()
    return out


def eval_cli(args) -> dict:
    """`jaxrl eval`: the parsed arguments -> EvalConfig -> evaluate; prints where the reports are."""
    from jaxrl.eval.tasks import parse_task_list
    from jaxrl.eval.wandb_results import log_results, wants_wandb

    wandb = wants_wandb(getattr(args, "report_to", "none"))  # a missing wandb fails before any work
    tasks = parse_task_list(args.tasks)
    data, shots = _pairs(args.data, "--data"), _pairs(args.shots, "--shots")
    num_shots = {}
    for task, k in _pairs(args.num_shots, "--num-shots").items():
        if not k.isdigit():
            raise JaxrlError(f"--num-shots {task}={k}: K must be a non-negative integer")
        num_shots[task] = int(k)
    for task in [*data, *shots, *num_shots]:
        make_task(task)  # an unknown task name is an error here, not silently ignored
    config = EvalConfig(
        tasks=tuple(tasks),
        num_samples=args.num_samples,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        limit=args.limit,
        chat_template=args.chat_template,
        system_prompt=args.system_prompt,
        batch_size=args.batch_size,
        data=data,
        shots=shots,
        num_shots=num_shots,
        tokenizer=args.tokenizer,
        param_dtype=args.dtype,
        compute_dtype=args.compute_dtype,
        mesh=args.mesh,
        rules=args.rules,
        slots=args.slots,
        kl_base=args.kl_base,
        kl_data=args.kl_data,
        strict=args.strict,
    )
    report = evaluate(args.model, config, args.out)
    print(Path(args.out, "results.md").read_text(), end="")
    print(f"wrote {args.out}/results.json, results.md, results.png, metrics.jsonl, samples/")
    if wandb:
        print(f"logged the results to W&B run {log_results(report, args.out)}")
    return report
