"""The `jaxrl` command. Each sub-command imports its floor lazily, so `jaxrl --help` is instant.

Every sub-command is one `@command` function below that adds its parser and returns the
function that runs it. A `JaxrlError` is printed on one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator

from jaxrl.errors import JaxrlError
from jaxrl.knobs import check_value, domain

COMMANDS = []

# The domain of every numeric option of every command (`jaxrl.knobs` specs), checked before the
# command runs; tests/test_knobs.py walks the parser, so an option missing here fails it.
OPTION_DOMAINS = {
    "--seed": ">= 0",
    "--num-processes": ">= 1",
    "--process-id": ">= 0",
    "--loss-tol": ">= 0",
    "--grad-tol": ">= 0",
    "--update-tol": ">= 0",
    "--svd": ">= 0; 0 = none",
    "--num-samples": ">= 1",
    "--limit": ">= 1; leave it out for every problem",
    "--max-new-tokens": ">= 1",
    "--temperature": ">= 0; 0 = greedy",
    "--top-p": "(0, 1]",
    "--top-k": ">= 0; 0 = off",
    "--batch-size": ">= 1",
    "--slots": ">= 0; 0 = one per completion",
    "--devices": ">= 1",
    "--rows": ">= 1",
    "--mfu": "(0, 1]",
    "--slices": ">= 1",
    "--steps": ">= 1",
    "--prompt-length": ">= 1",
    "--kl-length": ">= 1",
}


def command(add_parser):
    """Registers a sub-command: `add_parser(sub)` adds its parser and returns `run(args)`."""
    COMMANDS.append(add_parser)
    return add_parser


@command
def _convert(sub):
    p = sub.add_parser("convert", help="HF directory -> Orbax checkpoint, or Orbax -> HF directory")
    p.add_argument("src", help="a HF model directory or an Orbax model checkpoint")
    p.add_argument("dst", help="where to write the other format")
    p.add_argument("--mesh", default="", help="mesh spec, e.g. data=1,fsdp=-1,tensor=1")
    p.add_argument("--dtype", default=None, help="parameter dtype: float32, bfloat16, float16")

    def run(args):
        from jaxrl.models.convert import convert

        kind = convert(args.src, args.dst, mesh=args.mesh, dtype=args.dtype)
        print(f"wrote {kind} model to {args.dst}")

    return run


@command
def _compare(sub):
    p = sub.add_parser("compare", help="our logits beside transformers' PyTorch logits")
    p.add_argument("model", help="a HF model directory")
    p.add_argument("--prompts", default=None, help="text file, one prompt per line")
    p.add_argument("--dtype", default="float32", help="compute and parameter dtype of both models")
    p.add_argument("--mesh", default="", help="mesh spec for our model")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")

    def run(args):
        from jaxrl.models.compare import compare_cli

        compare_cli(args)

    return run


@command
def _compare_step(sub):
    p = sub.add_parser("compare-step", help="one training step of a recipe in jaxrl beside TRL's, on the same batch")
    p.add_argument("model", help="a HF model directory (both stacks load it)")
    p.add_argument("--recipe", default=None, help="a training recipe (YAML); its knobs are translated to TRL's")
    p.add_argument("--method", choices=("sft", "grpo"), default=None, help="default: the recipe's section")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. grpo.loss_type=bnpo")
    p.add_argument("--loss-tol", type=float, default=None, help="relative loss difference allowed")
    p.add_argument("--grad-tol", type=float, default=None, help="relative difference allowed per gradient")
    p.add_argument("--update-tol", type=float, default=None, help="relative difference allowed per update")
    p.add_argument("--trl", action="append", metavar="NAME=VALUE", help="a TRL config value on TRL's side only")
    p.add_argument("--reference", default=None, help="GRPO, beta > 0: the KL's reference model (default MODEL)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")

    def run(args):
        from jaxrl.train.compare_step import compare_step_cli

        compare_step_cli(args)

    return run


@command
def _tiny(sub):
    p = sub.add_parser("tiny", help="build a tiny random HF model with its own tokenizer (no download)")
    p.add_argument("dst", help="directory to write the model to")
    p.add_argument("--preset", default="tiny-olmo2", help="tiny-olmo2, tiny-qwen2 or tiny-llama")
    p.add_argument("--seed", type=int, default=0)

    def run(args):
        from jaxrl.models.config import PRESETS
        from jaxrl.models.tiny import build_tiny_model

        if args.preset not in PRESETS:
            raise JaxrlError(f"unknown preset {args.preset!r}; choose from {', '.join(PRESETS)}")
        print(f"wrote {build_tiny_model(args.dst, args.preset, args.seed)}")

    return run


@command
def _train(sub):
    p = sub.add_parser("train", help="train a model: SFT or GRPO from a recipe plus dotted overrides")
    kinds = p.add_subparsers(dest="method", required=True)
    for method, what in (("sft", "supervised fine-tuning"), ("grpo", "GRPO")):
        q = kinds.add_parser(method, help=f"{what}: --recipe FILE [a.b=value ...]")
        q.add_argument("--recipe", default=None, help="YAML recipe (see train/recipes/); defaults otherwise")
        q.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optimizer.learning_rate=1e-6")
        hosts = q.add_argument_group("several hosts (TPU VMs are detected without these)")
        hosts.add_argument("--coordinator", default=None, help="host:port of process 0")
        hosts.add_argument("--num-processes", type=int, default=None)
        hosts.add_argument("--process-id", type=int, default=None)

    def run(args):
        import importlib
        import os

        # jaxrl.sharding.init_distributed reads these when the run builds its mesh.
        for flag, name in (
            ("coordinator", "COORDINATOR"),
            ("num_processes", "NUM_PROCESSES"),
            ("process_id", "PROCESS_ID"),
        ):
            if getattr(args, flag) is not None:
                os.environ[f"JAXRL_{name}"] = str(getattr(args, flag))
        module = importlib.import_module(f"jaxrl.train.{args.method}")
        print(module.run(args.recipe, args.overrides))

    return run


@command
def _analyze(sub):
    p = sub.add_parser("analyze", help="how far each checkpoint of each run moved from a base model")
    p.add_argument("base", help="the base model: a HF directory or an Orbax model checkpoint")
    p.add_argument("runs", nargs="+", help="run directories, checkpoints, or HF directories")
    p.add_argument("--out", required=True, help="directory for changes.csv/json, figures and summary.md")
    p.add_argument(
        "--modules",
        default=None,
        help="modules or groups, e.g. 'q,k' or 'default,norms,embed,lm_head' or 'all' (default: q,k,v,o,gate,up,down)",
    )
    p.add_argument("--svd", type=int, default=0, help="top singular values of each matrix's change (0: none)")

    def run(args):
        from jaxrl.analysis.analyze import analyze
        from jaxrl.models.keymap import key_map_of_hf_config

        rows = analyze(args.base, args.runs, args.out, key_map_of_hf_config, modules=args.modules, svd=args.svd)
        print(f"wrote {len(rows)} rows and figures to {args.out}")

    return run


def _add_decoding_arguments(p) -> None:
    """Where and how `generate` and `eval` decode: the mesh, the weights' layout, the slots."""
    p.add_argument("--mesh", default="", help="mesh spec, e.g. data=1,fsdp=-1,tensor=1")
    p.add_argument(
        "--rules",
        default="tensor_parallel",
        help="weights split only over tensor (tensor_parallel: decoding gathers none) or as in training (fsdp)",
    )
    p.add_argument(
        "--slots",
        type=int,
        default=None,
        help="decode on N slots with continuous batching, a finished completion's slot taking the next "
        "(0: one per completion); default: every completion decodes until the longest ends",
    )


@command
def _eval(sub):
    p = sub.add_parser("eval", help="benchmarks (pass@k, maj@k, error bars) and KL to a base, across models")
    p.add_argument("--tasks", default="study", help="comma list (math500,gsm8k,...), 'study' or 'all'")
    p.add_argument(
        "--model", action="append", default=[], help="[LABEL=]DIR: HF dir, Orbax checkpoint or run dir; repeatable"
    )
    p.add_argument("--out", required=True, help="directory for results.json, results.md, results.png, ...")
    p.add_argument("--kl-base", default=None, help="a base model: also report KL(base || model) per token")
    p.add_argument("--kl-data", default=None, help="MATH-500 rows for the KL (default: the math500 data)")
    p.add_argument("--num-samples", type=int, default=1, help="completions per problem")
    p.add_argument("--limit", type=int, default=None, help="first N usable problems of each task")
    p.add_argument("--max-new-tokens", type=int, default=4096)
    p.add_argument("--temperature", type=float, default=0.6, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=32, help="prompts per sampler call")
    p.add_argument("--data", action="append", default=[], help="TASK=PATH_OR_HUB_NAME; repeatable")
    p.add_argument("--shots", action="append", default=[], help="TASK=PATH of few-shot examples; repeatable")
    p.add_argument("--num-shots", action="append", default=[], help="TASK=K; repeatable")
    p.add_argument("--chat-template", default="olmo2", help="olmo2, tokenizer or none")
    p.add_argument("--system-prompt", default="study", help="'study', 'none', or the text")
    p.add_argument("--tokenizer", default=None, help="tokenizer dir (default: beside or above each model)")
    p.add_argument("--dtype", default=None, help="parameter dtype: float32, bfloat16")
    p.add_argument("--compute-dtype", default=None, help="matmul dtype (default float32): bfloat16 saves memory")
    _add_decoding_arguments(p)
    p.add_argument("--strict", action="store_true", help="a malformed row is an error, not skipped")
    p.add_argument("--report-to", default="none", help="wandb: also log the results table to W&B (docs/tracking.md)")

    def run(args):
        from jaxrl.eval.runner import eval_cli

        eval_cli(args)

    return run


@command
def _data(sub):
    p = sub.add_parser("data", help="what a data recipe yields: rows, skips, token lengths, the first example")
    p.add_argument("--recipe", default=None, help="YAML with data:, chat:, tokenizer, mode, max_length")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.dataset_name=rows.jsonl tokenizer=DIR")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")

    def run(args):
        from jaxrl.data.report import data_report_cli

        data_report_cli(args.recipe, args.overrides, args.json)

    return run


@command
def _plan(sub):
    p = sub.add_parser("plan", help="per-device memory of every program of a run, compiled before renting (no TPU)")
    from jaxrl.train.plan import add_arguments

    add_arguments(p)
    p.add_argument("--prompt-length", type=int, default=1024, help="with --method eval: prompt tokens")
    p.add_argument("--kl", action="store_true", help="with --method eval: also the KL-to-base program")
    p.add_argument("--kl-length", type=int, default=2048, help="with --method eval --kl: tokens of a KL row")

    def run(args):
        from jaxrl.destinations import check_destination

        if args.json:
            check_destination(args.json, "file", "--json")  # before the planning process compiles
        if args.method == "eval":  # compiles here: a TPU topology needs no emulated devices
            import jax

            jax.config.update("jax_platforms", "cpu")  # JAX itself on the host; libtpu as the compiler only
            from jaxrl.eval.plan import eval_plan_cli

            return eval_plan_cli(args)
        from jaxrl.train.plan import plan_cli

        plan_cli(args)

    return run


@command
def _generate(sub):
    p = sub.add_parser("generate", help="sample completions from a HF directory or an Orbax checkpoint")
    p.add_argument("model", help="a HF model directory or an Orbax model checkpoint")
    p.add_argument("--prompt", action="append", help="a prompt (repeat for several)")
    p.add_argument("--prompts", default=None, help="text file, one prompt per line")
    p.add_argument("--num-samples", type=int, default=1, help="completions per prompt")
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stop", action="append", help="a stop string (repeat for several)")
    p.add_argument("--raw", action="store_true", help="do not apply the chat template")
    p.add_argument("--system", default=None, help="a system message for the chat template")
    p.add_argument("--tokenizer", default=None, help="tokenizer directory (default: beside the model)")
    _add_decoding_arguments(p)
    p.add_argument("--dtype", default=None, help="compute and parameter dtype: float32, bfloat16")
    p.add_argument("--json", action="store_true", help="one JSON object per completion")
    p.add_argument("--out", default=None, help="write the JSON objects (as --json prints them) to this file")

    def run(args):
        from jaxrl.models.generate import generate_cli

        generate_cli(args)

    return run


@command
def _reproduce(sub):
    p = sub.add_parser("reproduce", help="the whole study in miniature on a CPU: GRPO vs SFT, evaluation, analysis")
    p.add_argument("--preset", default="default", help="default (about 10 minutes on 2 cores) or fast")
    p.add_argument("--out", default="runs/reproduce", help="report directory (a killed run resumes from it)")
    p.add_argument("--base-cache", default=None, help="where a base model built here is kept between runs")
    p.add_argument(
        "--rebuild-base",
        action="store_true",
        help="pre-train the base model again and ship it in the package (how the shipped one was made)",
    )

    def run(args):
        from jaxrl.reproduce.pipeline import reproduce

        print(f"report: {reproduce(args.preset, args.out, args.base_cache, args.rebuild_base) / 'report.md'}")

    return run


# New sub-commands go above this line, each one `@command` function.


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxrl", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    runners = {}
    for command in COMMANDS:
        before = set(sub.choices)
        runner = command(sub)
        (name,) = set(sub.choices) - before
        runners[name] = runner
    parser.set_defaults(_runners=runners)
    return parser


def numeric_options(parser: argparse.ArgumentParser, args=None) -> Iterator[argparse.Action]:
    """The int and float options of `parser` and its sub-commands (only the chosen ones, given `args`)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            chosen = getattr(args, action.dest, None) if args is not None else None
            for name, child in action.choices.items():
                if args is None or name == chosen:
                    yield from numeric_options(child, args)
        elif action.type in (int, float) and action.option_strings:
            yield action


def check_options(parser: argparse.ArgumentParser, args) -> None:
    """Each numeric option the user gave against its domain (OPTION_DOMAINS), before any work."""
    for action in numeric_options(parser, args):
        name = action.option_strings[-1]
        value = getattr(args, action.dest, None)
        check_value(value, domain(OPTION_DOMAINS.get(name, "any")), action.type is int, name)


def _is_override(text: str) -> bool:
    return not text.startswith("-") and "=" in text


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # argparse fills positionals from the first run of them only, so `MODEL --recipe F a.b=1` leaves
    # the overrides over; dotted overrides after options still belong to a command that takes them
    args, extra = parser.parse_known_args(argv)
    if extra and isinstance(getattr(args, "overrides", None), list) and all(_is_override(e) for e in extra):
        args.overrides += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        check_options(parser, args)
        args._runners[args.command](args)
    except JaxrlError as e:
        print(f"jaxrl {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"jaxrl {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
