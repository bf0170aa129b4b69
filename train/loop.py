"""The training loop shared by SFT and GRPO.

`Trainer` holds the parameters (a pure nested dict, the layout checkpoints store) and the optax
state on a mesh, and runs one jitted, pure optimizer step with explicit in/out shardings:

    trainer = Trainer(model, loss_fn, optimizer_config, total_steps, freeze=..., accumulation=k)
    metrics = trainer.step(batch, step)      # batch: dict of host arrays [B, ...]

A loss function maps (model, micro-batch) to a numerator, a denominator and auxiliary sums:

    loss_fn(model: Decoder, batch: dict[str, jax.Array]) -> (num: f32[], den: f32[], aux: dict[str, f32[]])

The step splits the batch into k micro-batches, sums numerators, denominators, aux values and the
gradients of the numerators over them in fp32 (an aux value whose name ends in `_max`: their max),
and divides once: loss = sum(num) / sum(den), so k micro-batches give the same update as one batch
k times larger (SFT: num = summed token NLL, den = loss tokens; GRPO's dr_grpo: den = completions x
max_completion_length).

Then: frozen gradients zeroed, global-norm clipping, AdamW, lr(step) scaling, and the update is
applied only when the loss and gradient norm are finite (otherwise params and optimizer state stay
as they were and `metrics["skipped"]` is 1). `fit` drives the steps: resume, checkpoints, SIGTERM,
non-finite stops, metrics.
"""

from __future__ import annotations

import dataclasses
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec
from jaxrl.models.decoder import Decoder
from jaxrl.models.params import abstract_decoder, state_shardings
from jaxrl.train.checkpointing import Checkpoints, rng_from_json, rng_to_json
from jaxrl.train.config import FreezeConfig, OptimizerConfig
from jaxrl.train.freeze import FreezePlan
from jaxrl.train.optim import adamw_direction, make_schedule

from jaxrl.errors import JaxrlError
from jaxrl.metrics import MetricsLogger
from jaxrl.metrics import peak_flops_per_device as peak_flops
from jaxrl.sharding import LogicalMesh, data_parallel_size, make_mesh

LossFn = Callable[[Decoder, dict[str, jax.Array]], tuple[jax.Array, jax.Array, dict[str, jax.Array]]]


class ResumableIterator(Protocol):
    """What `fit` needs from a batch source: host batches and a JSON-able position. A source may
    also hold `metrics`, a dict of floats about the batch it gave last, and `samples`, a list of
    JSON-able dicts (e.g. GRPO's completions with their rewards); `fit` logs both at logging steps."""

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]: ...
    def __next__(self) -> dict[str, np.ndarray]: ...
    def state(self) -> dict[str, Any]: ...
    def restore(self, state: dict[str, Any]) -> None: ...


def check_batch_size(batch_size: int, accumulation: int, dp: int, what: str = "batch size") -> int:
    """Rows per micro-batch; raises a JaxrlError (before any compile) when they do not divide."""
    if batch_size % accumulation:
        raise JaxrlError(f"{what} {batch_size} is not divisible by gradient_accumulation_steps={accumulation}")
    micro = batch_size // accumulation
    if micro % dp:
        raise JaxrlError(
            f"micro-batch of {micro} rows ({what} {batch_size} / {accumulation} accumulation steps) is not "
            f"divisible by the data-parallel size {dp} of the mesh; change the batch size or the mesh"
        )
    return micro


def _like_params(state, params, mesh: LogicalMesh):
    """Shardings for an optimizer state: a leaf whose path ends with a parameter's path and has its
    shape (Adam's moments, wherever optax nests them) is sharded like that parameter; the rest
    (step counts) is replicated."""
    by_path = {tuple(k.key for k in p): x for p, x in jax.tree_util.tree_leaves_with_path(params)}

    def one(path, leaf):
        keys = [getattr(k, "key", None) for k in path]
        for start in range(len(keys)):
            param = by_path.get(tuple(keys[start:]))
            if param is not None and param.shape == leaf.shape:
                return param.sharding
        return mesh.replicated()

    return jax.tree_util.tree_map_with_path(one, state)


def _abstract(x, sharding) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)


def _combine(name: str, total, value):
    """An auxiliary value summed over micro-batches, or their max for a name ending in `_max`."""
    return jnp.maximum(total, value) if name.endswith("_max") else total + value


def _tree_select(pred, new, old):
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), new, old)


class Trainer:
    """Parameters, optimizer state and the jitted step of one model on one mesh."""

    def __init__(
        self,
        model: Decoder,
        loss_fn: LossFn,
        optimizer: OptimizerConfig,
        total_steps: int,
        *,
        freeze: FreezeConfig | None = None,
        accumulation: int = 1,
        mesh: LogicalMesh | None = None,
        seed: int = 0,
    ):
        mesh = mesh or model.mesh or LogicalMesh(make_mesh())
        graphdef, state = nnx.split(model)
        # placed by the logical-axis rules (a no-op for a model created or loaded on this mesh)
        params = jax.device_put(nnx.to_pure_dict(state), nnx.to_pure_dict(state_shardings(state, mesh)))
        self._setup(model.config, graphdef, params, loss_fn, optimizer, total_steps, freeze, accumulation, mesh)
        self.opt_state = jax.jit(self.tx.init, out_shardings=self.opt_shardings)(self.params)
        self.rng = jax.random.key(seed)  # saved and restored with checkpoints (GRPO samples with it)

    @classmethod
    def abstract(
        cls,
        config,
        loss_fn: LossFn,
        optimizer: OptimizerConfig,
        total_steps: int,
        *,
        freeze: FreezeConfig | None = None,
        accumulation: int = 1,
        mesh: LogicalMesh,
    ) -> Trainer:
        """A Trainer of the model `config` describes whose params and optimizer state are
        ShapeDtypeStructs with shardings: nothing is allocated, and `lower` gives exactly the step a
        real Trainer runs (what `jaxrl plan` measures)."""
        graphdef, state = nnx.split(abstract_decoder(config, mesh))
        shardings = nnx.to_pure_dict(state_shardings(state, mesh))
        params = jax.tree.map(_abstract, nnx.to_pure_dict(state), shardings)
        trainer = cls.__new__(cls)
        trainer._setup(config, graphdef, params, loss_fn, optimizer, total_steps, freeze, accumulation, mesh)
        trainer.opt_state = jax.tree.map(_abstract, jax.eval_shape(trainer.tx.init, params), trainer.opt_shardings)
        trainer.rng = None
        return trainer

    def _setup(self, config, graphdef, params, loss_fn, optimizer, total_steps, freeze, accumulation, mesh):
        """Everything but the optimizer state's values, for real and abstract params alike."""
        self.config, self.graphdef, self.params, self.loss_fn = config, graphdef, params, loss_fn
        self.mesh, self.accumulation, self.total_steps = mesh, accumulation, total_steps
        self.plan = FreezePlan.build(freeze or FreezeConfig(), params, config.num_layers)
        self.schedule = make_schedule(optimizer, total_steps)
        # AdamW's direction without the lr: the step multiplies by -lr(step), so a skipped update
        # never shifts the schedule; frozen tensors get set_to_zero (no state) via multi_transform.
        self.tx = adamw_direction(optimizer, None if self.plan.is_trivial else self.plan.labels(params))
        self.param_shardings = jax.tree.map(lambda x: x.sharding, params)
        self.opt_shardings = _like_params(jax.eval_shape(self.tx.init, params), params, mesh)
        self._step_fn = None
        self._apply_fn = None
        self._gradients_fn = None
        self._batch_shardings = None

    # -- state ------------------------------------------------------------------------------------

    @property
    def model(self) -> Decoder:
        """A Decoder view of the current parameters (no copy), e.g. for sampling."""
        return nnx.merge(self.graphdef, self.params)

    def abstract_state(self):
        """(params, opt_state) as ShapeDtypeStructs with shardings: the restore targets."""
        to_abstract = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
        return jax.tree.map(to_abstract, self.params), jax.tree.map(to_abstract, self.opt_state)

    def set_state(self, params, opt_state):
        self.params, self.opt_state = params, opt_state

    # -- the step ---------------------------------------------------------------------------------

    def _accumulate(self, params, batch):
        """(loss, fp32 gradients of the loss with frozen values zeroed, denominator, aux sums) of a
        device batch [k, B/k, ...]: the micro-batches' numerators, denominators and gradients summed,
        divided once. Traced inside the step (and `gradients`)."""
        graphdef, loss_fn = self.graphdef, self.loss_fn

        def micro(carry, mb):
            grads, num, den, aux = carry

            def numerator(p):
                n, d, a = loss_fn(nnx.merge(graphdef, p), mb)
                return n.astype(jnp.float32), (d.astype(jnp.float32), a)

            (n, (d, a)), g = jax.value_and_grad(numerator, has_aux=True)(params)
            grads = jax.tree.map(lambda s, x: s + x.astype(jnp.float32), grads, g)
            aux = {k: _combine(k, aux[k], a[k].astype(jnp.float32)) for k in aux}
            return (grads, num + n, den + d, aux), None

        first = jax.tree.map(lambda x: x[0], batch)
        aux_shape = jax.eval_shape(lambda: loss_fn(nnx.merge(graphdef, params), first)[2])
        zeros = (
            jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params),
            jnp.zeros((), jnp.float32),
            jnp.zeros((), jnp.float32),
            {k: jnp.zeros((), jnp.float32) for k in aux_shape},
        )
        (grads, num, den, aux), _ = jax.lax.scan(micro, zeros, batch)
        safe_den = jnp.maximum(den, 1e-12)
        grads = self.plan.mask_grads(jax.tree.map(lambda g: g / safe_den, grads))
        return num / safe_den, grads, den, aux

    def _apply(self, params, opt_state, loss, grads, step):
        """(params, opt_state, metrics) after the update of `grads` (clipped here) at `step`, or
        the same params and state when the loss or the gradient norm is not finite."""
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        lr = self.schedule(step)
        updates, new_opt_state = self.tx.update(grads, opt_state, params)
        updates = jax.tree.map(lambda u: -lr * u, updates)
        new_params = self.plan.apply_updates(params, updates)
        params = _tree_select(finite, new_params, params)
        opt_state = _tree_select(finite, new_opt_state, opt_state)
        metrics = {"loss": loss, "grad_norm": grad_norm, "lr": lr, "skipped": 1 - finite.astype(jnp.int32)}
        return params, opt_state, metrics

    def _build(self, batch: Mapping[str, np.ndarray]):
        def step_fn(params, opt_state, batch, step):
            loss, grads, den, aux = self._accumulate(params, batch)
            params, opt_state, metrics = self._apply(params, opt_state, loss, grads, step)
            return params, opt_state, {**metrics, "loss_denominator": den, **aux}

        replicated = self.mesh.replicated()
        self._batch_shardings = {k: self._batch_sharding(v.ndim + 1) for k, v in batch.items()}
        return jax.jit(
            step_fn,
            in_shardings=(self.param_shardings, self.opt_shardings, self._batch_shardings, replicated),
            out_shardings=(self.param_shardings, self.opt_shardings, replicated),
            donate_argnums=(0, 1),
        )

    def lower(self, host_batch: Mapping[str, jax.ShapeDtypeStruct]):
        """(the step lowered for host batches of these shapes ([B, ...] each), the device batch's
        shapes [k, B/k, ...] with their shardings)."""
        step_fn = self._build(host_batch)
        k = self.accumulation
        batch = {
            name: jax.ShapeDtypeStruct(
                (k, v.shape[0] // k, *v.shape[1:]), v.dtype, sharding=self._batch_shardings[name]
            )
            for name, v in host_batch.items()
        }
        step = jax.ShapeDtypeStruct((), jnp.int32, sharding=self.mesh.replicated())
        return step_fn.lower(self.params, self.opt_state, batch, step), batch

    def _batch_sharding(self, ndim: int) -> NamedSharding:
        """[k, b, ...]: micro-batch axis unsplit, rows over the data-parallel axes."""
        spec = self.mesh.spec(("batch",))
        return NamedSharding(self.mesh.mesh, PartitionSpec(None, spec[0], *([None] * (ndim - 2))))

    def device_batch(self, batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
        """Host arrays [B, ...] -> device arrays [k, B/k, ...] sharded over the batch axes."""
        k = self.accumulation
        rows = {v.shape[0] for v in batch.values()}
        if len(rows) != 1:
            raise JaxrlError(f"batch arrays disagree on the number of rows: {sorted(rows)}")
        global_rows = rows.pop() * jax.process_count()
        check_batch_size(global_rows, k, data_parallel_size(self.mesh))
        check_rows = getattr(self.loss_fn, "check_batch", None)  # what the loss needs of its rows
        if check_rows is not None:
            check_rows(batch, self.mesh, global_rows // k)
        if self._step_fn is None:
            self._step_fn = self._build(batch)
        out = {}
        for name, v in batch.items():  # this host's rows; on one host, the whole batch
            v = np.asarray(v)
            local = v.reshape(k, v.shape[0] // k, *v.shape[1:])
            sharding = self._batch_shardings[name]
            global_shape = (k, local.shape[1] * jax.process_count(), *local.shape[2:])
            out[name] = jax.make_array_from_process_local_data(sharding, local, global_shape)
        return out

    def gradients(self, batch: Mapping[str, np.ndarray]) -> tuple[jax.Array, Any]:
        """(loss, gradients) of this batch before clipping: fp32 arrays like the params, frozen
        values zeroed; the parameters stay as they are (`jaxrl compare-step` reads them)."""
        device_batch = self.device_batch(batch)
        if self._gradients_fn is None:  # one jitted function, so later calls reuse its compilation
            self._gradients_fn = jax.jit(
                lambda params, b: self._accumulate(params, b)[:2],
                out_shardings=(self.mesh.replicated(), self.param_shardings),
            )
        return self._gradients_fn(self.params, device_batch)

    def updated(self, loss, grads, step: int):
        """(params, opt_state, metrics) that the update of `step` from (loss, grads) gives:
        clipping, AdamW, lr(step), frozen values kept; the trainer itself stays as it is. metrics:
        loss, grad_norm (before clipping), lr and skipped."""
        if self._apply_fn is None:
            self._apply_fn = jax.jit(
                self._apply, out_shardings=(self.param_shardings, self.opt_shardings, self.mesh.replicated())
            )
        step_arr = jax.device_put(jnp.asarray(step, jnp.int32), self.mesh.replicated())
        return self._apply_fn(self.params, self.opt_state, loss, grads, step_arr)

    def apply_gradients(self, loss, grads, step: int) -> dict[str, jax.Array]:
        """`updated`, kept: with `gradients` it is `step` in two calls, so the gradients can be
        read (or replaced) in between. Returns the metrics."""
        self.params, self.opt_state, metrics = self.updated(loss, grads, step)
        return metrics

    def step(self, batch: Mapping[str, np.ndarray], step: int) -> dict[str, jax.Array]:
        """One optimizer update (step = updates already done, which indexes the lr schedule).

        Returns device scalars: loss, grad_norm (before clipping), lr, skipped, loss_denominator and
        the loss function's aux sums.
        """
        device_batch = self.device_batch(batch)
        step_arr = jax.device_put(jnp.asarray(step, jnp.int32), self.mesh.replicated())
        self.params, self.opt_state, metrics = self._step_fn(self.params, self.opt_state, device_batch, step_arr)
        return metrics


def flops_per_token(config, seq_len: int) -> float:
    """Training FLOPs per token: 6 x matmul parameters + causal attention (forward and backward).

    The input embedding is a lookup, not a matmul; a tied embedding counts once, as the lm_head.
    Attention: 12 * L * H * E * T per token for full attention, halved for causal.
    """
    c = config
    matmul_params = c.num_params() - (0 if c.tie_word_embeddings else c.vocab_size * c.hidden_size)
    return 6.0 * matmul_params + 6.0 * c.num_layers * c.num_heads * c.head_dim * seq_len


class PreemptionGuard:
    """While active, SIGTERM (what spot VMs and schedulers send) only sets `requested`; the loop
    checkpoints at the end of the current step and returns. Outside the main thread it is inert."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame):
        self.requested = True

    def __enter__(self) -> PreemptionGuard:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


@dataclasses.dataclass(frozen=True)
class FitResult:
    step: int  # updates done when the loop returned
    preempted: bool  # stopped by SIGTERM after checkpointing `step`
    resumed_from: int | None  # the checkpoint step the run continued from
    skipped_updates: int  # non-finite updates skipped in total


def count_tokens(batch: Mapping[str, np.ndarray]) -> int:
    """Non-padding tokens of a batch (segment id > 0), or every token without segment ids."""
    if "segment_ids" in batch:
        return int(np.count_nonzero(np.asarray(batch["segment_ids"])))
    return int(np.asarray(batch["tokens"]).size)


def fit(
    trainer: Trainer,
    batches: ResumableIterator,
    total_steps: int,
    checkpoints: Checkpoints,
    logger: MetricsLogger,
    *,
    save_interval: int,
    resume: bool = True,
    max_nonfinite_steps: int = 5,
    logging_steps: int = 1,
    peak_flops_per_device: float | None = None,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> FitResult:
    """Runs optimizer steps until `total_steps`, resuming from the newest good checkpoint.

    Checkpoints every `save_interval` steps, at the end, and on SIGTERM (then returns with
    `preempted=True`). A non-finite loss or gradient skips that update; `max_nonfinite_steps`
    in a row stop the run with a JaxrlError (the last good checkpoint is kept). `trainer.rng`
    and `batches.state()` are saved with every checkpoint and restored on resume.
    """
    start, resumed_from, skipped_total = 0, None, 0
    if not resume and checkpoints.steps():
        raise JaxrlError(
            f"{checkpoints.directory} already holds checkpoints {checkpoints.steps()} and resume is off; "
            "use a new output_dir, or resume"
        )
    if resume:
        restored = checkpoints.restore_latest(*trainer.abstract_state(), warn=lambda m: logger.message(f"warning: {m}"))
        if restored is not None:
            params, opt_state, train_state = restored
            trainer.set_state(params, opt_state)
            batches.restore(train_state["data"])
            trainer.rng = rng_from_json(train_state["rng"])
            start = resumed_from = int(train_state["step"])
            skipped_total = int(train_state.get("skipped_updates", 0))
            logger.message(f"resumed from checkpoint step {start} in {checkpoints.directory}")
    logger.start(start)
    if start >= total_steps:
        logger.message(f"nothing to do: the run already has {start} of {total_steps} steps")
        return FitResult(start, False, resumed_from, skipped_total)

    def save(step: int) -> None:
        state = {"data": batches.state(), "rng": rng_to_json(trainer.rng), "skipped_updates": skipped_total}
        checkpoints.save(step, trainer.params, trainer.opt_state, state)

    peak = peak_flops_per_device or peak_flops(jax.devices()[0])
    flops_seq = None
    in_a_row, done = 0, start
    with PreemptionGuard() as guard:
        for step in range(start, total_steps):
            try:
                batch = next(batches)
            except StopIteration:
                raise JaxrlError(
                    f"the data ran out after {step} of {total_steps} steps; lower max_steps or add epochs"
                ) from None
            batch = batch._asdict() if hasattr(batch, "_asdict") else dict(batch)
            began = time.perf_counter()
            metrics = {k: v.item() for k, v in jax.device_get(trainer.step(batch, step)).items()}
            elapsed = time.perf_counter() - began
            metrics.update(getattr(batches, "metrics", {}))  # e.g. a GRPO generation batch's rewards
            done = step + 1
            skipped = bool(metrics.pop("skipped"))
            in_a_row = in_a_row + 1 if skipped else 0
            skipped_total += skipped
            tokens = count_tokens(batch) * jax.process_count()
            metrics.update(
                step_time=elapsed, tokens=tokens, tokens_per_s=tokens / elapsed, skipped_updates=skipped_total
            )
            if peak:
                flops_seq = flops_per_token(trainer.config, batch["tokens"].shape[1])
                metrics["mfu"] = flops_seq * tokens / elapsed / (peak * jax.device_count())
            if skipped:
                logger.message(
                    f"step {done}: non-finite loss or gradient (loss={metrics['loss']}, "
                    f"grad_norm={metrics['grad_norm']}); update skipped"
                )
            if done % logging_steps == 0 or done == total_steps or skipped:
                logger.log(done, metrics)
                logger.log_samples(done, getattr(batches, "samples", []))
            if on_step is not None:
                on_step(done, metrics)
            if in_a_row >= max_nonfinite_steps:
                checkpoints.wait()
                last = checkpoints.steps()
                kept = (
                    f"the last good checkpoint is step {last[-1]} in {checkpoints.directory}"
                    if last
                    else ("no checkpoint was written yet")
                )
                raise JaxrlError(
                    f"{in_a_row} non-finite updates in a row (steps {done - in_a_row + 1}-{done}); "
                    f"stopped, {kept}; lower the learning rate or check the data"
                )
            if guard.requested:
                save(done)
                checkpoints.wait()
                logger.message(f"SIGTERM: saved checkpoint step {done}; run the same command to resume")
                return FitResult(done, True, resumed_from, skipped_total)
            if (done % save_interval == 0 or done == total_steps) and not in_a_row:
                save(done)  # never in the middle of a non-finite streak: the last checkpoint stays a good one
    checkpoints.wait()
    return FitResult(done, False, resumed_from, skipped_total)
