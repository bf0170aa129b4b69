"""`jaxrl plan --method eval`: every program of an evaluation, compiled by the TPU compiler.

    jaxrl plan --method eval --model olmo2-1124-7b --topology v5p-8 --mesh tensor=4 max_new_tokens=4096

An evaluation runs three kinds of program on the model loaded in its layout (`rules`, default
`tensor_parallel`: weights split only over `tensor`, rows over the batch axes):
- generation: the sampler's engine (`engine`, `engine shrink`) on `slots` decode slots (default:
  one per completion of a batch, batch_size x num_samples; the static path `slots=None` holds a
  cache of the same size), prompts of `--prompt-length` tokens and `max_new_tokens` new ones;
- forced scoring (`forced scoring`): log-probs of multiple-choice continuations, `batch_size`
  sequences of `--prompt-length` tokens, up to 10 options each (MMLU-Pro's count);
- KL to a base (`kl`, with `--kl`): base and tuned models both resident, `kl_batch_size` rows of
  prompt plus reference solution (`--kl-length`, default 2048 tokens).
Each is lowered on shapes only (no weight is read) and measured by `jaxrl.models.compiled`. The
settings are `EvalConfig`'s, as `key=value` words (the names `jaxrl eval`'s options set).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from jaxrl.errors import JaxrlError

CHOICES = 10  # continuations scored per forced row: MMLU-Pro's options


def eval_settings(words) -> Any:
    """An EvalConfig from `key=value` words (ints, floats and strings by the field's default)."""
    from jaxrl.eval.runner import EvalConfig

    fields = {f.name: f for f in dataclasses.fields(EvalConfig)}
    changes = {}
    for word in words:
        key, sep, value = word.partition("=")
        if not sep or key not in fields:
            raise JaxrlError(f"{word!r}: expected key=value with a key of EvalConfig ({', '.join(sorted(fields))})")
        default = fields[key].default
        kind = int if key in ("slots", "limit") else type(default) if default is not None else str
        try:
            changes[key] = None if value.lower() == "none" else kind(value)
        except ValueError:
            raise JaxrlError(f"{word!r}: {key} takes a {kind.__name__}") from None
    return EvalConfig(**changes)


def _abstract_params(config, lm):
    """(graphdef, params as ShapeDtypeStructs in `lm`'s layout) of the decoder `config` describes."""
    from flax import nnx
    from jaxrl.models.compiled import abstract
    from jaxrl.models.params import abstract_decoder, state_shardings

    graphdef, state = nnx.split(abstract_decoder(config, lm))
    return graphdef, abstract(nnx.to_pure_dict(state), nnx.to_pure_dict(state_shardings(state, lm)))


def eval_programs(model_config, lm, settings, prompt_length: int, kl_length: int | None) -> list:
    """[engine, engine shrink, forced scoring(, kl)] of an evaluation (see the module docstring)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx
    from jax.sharding import NamedSharding, PartitionSpec
    from jaxrl.eval.kl import _kl_sums
    from jaxrl.eval.runner import sampling_config
    from jaxrl.models.compiled import engine_programs, measure
    from jaxrl.models.engine import slot_count
    from jaxrl.models.logprobs import logprobs_at

    from jaxrl.shapes import bucket

    graphdef, params = _abstract_params(model_config, lm)
    sampling = sampling_config(settings)  # the run's own
    completions = settings.batch_size * settings.num_samples
    slots = slot_count(settings.slots or 0, completions, lm)
    programs = engine_programs(model_config, lm, params, settings.batch_size, prompt_length, sampling, slots)

    def rows(n: int, t: int, dtype):
        spec = PartitionSpec(lm.spec(("batch",), (n,))[0], None)
        return jax.ShapeDtypeStruct((n, t), dtype, sharding=NamedSharding(lm.mesh, spec))

    n, t = settings.batch_size, bucket(prompt_length, 64)
    forced = jax.jit(lambda p, *a: logprobs_at(nnx.merge(graphdef, p), *a))
    args = (rows(n, t, jnp.int32), rows(n, t, jnp.int32), rows(n, CHOICES, jnp.int32), rows(n, CHOICES, jnp.int32))
    programs.append(measure("forced scoring", forced.lower(params, *args))[0])
    if kl_length:
        n, t = settings.kl_batch_size, bucket(kl_length, 128)
        kl = jax.jit(lambda b, p, *a: _kl_sums(nnx.merge(graphdef, b), nnx.merge(graphdef, p), *a, chunk=128))
        args = (rows(n, t, jnp.int32), rows(n, t, jnp.int32), rows(n, t, jnp.bool_))
        programs.append(measure("kl", kl.lower(params, params, *args))[0])
    return programs


def make_eval_plan(
    model: str,
    mesh: str,
    topology: str,
    *,
    slices: int = 1,
    words=(),
    prompt_length: int = 1024,
    kl_length: int | None = None,
) -> dict[str, Any]:
    """Compiles an evaluation's programs for the pod `topology` (see the module docstring)."""
    import jax
    from jaxrl.models.compiled import config_of

    from jaxrl.sharding import LogicalMesh, MeshSpec, make_mesh, rules_preset
    from jaxrl.topology import libtpu_version, topology_devices, tpu_pod

    settings = eval_settings(words)
    config = config_of(model).replace(
        param_dtype=settings.param_dtype or "float32", dtype=settings.compute_dtype or "float32"
    )
    pod = tpu_pod(topology, slices)
    spec = MeshSpec.parse(mesh) if mesh else MeshSpec()
    lm = LogicalMesh(make_mesh(spec, topology_devices(pod)), rules_preset(settings.rules))
    programs = [dataclasses.asdict(p) for p in eval_programs(config, lm, settings, prompt_length, kl_length)]
    # the models stay loaded while every program runs: the KL's base beside the tuned model
    need = max(p["peak"] for p in programs) if programs else 0
    refused = [p["name"] for p in programs if p["refused"]]
    return {
        "method": "eval",
        "model": model,
        "mesh": str(spec),
        "devices": pod.devices,
        "settings": dataclasses.asdict(settings),
        "target": {
            "platform": "tpu",
            "compiler": f"the TPU compiler (libtpu {libtpu_version()}, jax {jax.__version__})",
            "topology": f"{pod.name} ({pod.topology}, {pod.devices} devices)",
            "mosaic_kernels": sum(p["mosaic_kernels"] for p in programs),
        },
        "programs": programs,
        "capacity": pod.hbm_bytes,
        "need": need,
        "refused": refused,
        "fits": not refused and need <= pod.hbm_bytes,
    }


def eval_plan_cli(args) -> dict[str, Any]:
    """`jaxrl plan --method eval`: compiles in this process (a topology needs no emulated devices)."""
    from jaxrl.models.compiled import GIB, program_lines

    if not args.topology:
        raise JaxrlError("--method eval plans with the TPU compiler: pass --topology POD (e.g. v5p-8)")
    if not args.model:
        raise JaxrlError("--method eval needs --model PRESET_OR_DIR")
    plan = make_eval_plan(
        args.model,
        args.mesh,
        args.topology,
        slices=args.slices,
        words=args.overrides,
        prompt_length=args.prompt_length,
        kl_length=args.kl_length if args.kl else None,
    )
    s = plan["settings"]
    print(f"eval of {plan['model']} on mesh {plan['mesh']} ({plan['devices']} devices), rules {s['rules']}")
    print(f"generation: {s['batch_size']} prompts x {s['num_samples']} samples, {args.prompt_length} prompt tokens, "
          f"{s['max_new_tokens']} new; slots {s['slots'] or 'one per completion'}")  # fmt: skip
    print(f"compiled by {plan['target']['compiler']} for {plan['target']['topology']}")
    print("\n".join(program_lines(plan["programs"])))
    verdict = "fits" if plan["fits"] else "does NOT fit"
    print(f"{args.topology}: {plan['capacity'] / GIB:.2f} GiB per device as the TPU compiler counts it; needs "
          f"{plan['need'] / GIB:.2f} GiB (the largest program) -> {verdict}")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(plan, indent=2) + "\n")
    return plan
