"""Meshes, logical-axis rules, and multi-host start-up.

Sharding is declared once, by logical axis names on parameters and activations, and mapped to the
mesh axes `data`, `fsdp` and `tensor` by a rules table:

    mesh = make_mesh(MeshSpec.parse("data=1,fsdp=-1,tensor=1"))
    lm = LogicalMesh(mesh)                          # DEFAULT_RULES
    lm.sharding(("embed", "mlp"), shape=(4096, 11008))   # NamedSharding(P("fsdp", "tensor"))

A logical axis whose mesh axes do not divide the dimension is replicated instead (a 2-KV-head
model on tensor=4 keeps its KV heads whole); two logical axes of one tensor landing on the same
mesh axis is an error.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from jaxrl.errors import JaxrlError

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axes (None: replicated). Parameters shard `embed` over fsdp and the
# head/mlp/vocab dimensions over tensor; activations shard `batch` over data and fsdp.
DEFAULT_RULES: tuple[tuple[str, tuple[str, ...] | str | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("seq", None),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("layers", None),
)
# Decoding's layout: weights split only over `tensor` (whole on every data/fsdp shard, so a decode
# step reads its share from local memory instead of gathering every weight for every token); rows
# and the KV cache split over the batch axes.
TENSOR_PARALLEL_RULES = tuple((name, None if name == "embed" else target) for name, target in DEFAULT_RULES)
RULE_PRESETS = {"fsdp": DEFAULT_RULES, "tensor_parallel": TENSOR_PARALLEL_RULES}


def rules_preset(name: str):
    """A named logical-axis rules table: `fsdp` (training's default) or `tensor_parallel` (decoding)."""
    if name not in RULE_PRESETS:
        raise JaxrlError(f"unknown sharding rules {name!r}; choose one of {', '.join(RULE_PRESETS)}")
    return RULE_PRESETS[name]


@dataclasses.dataclass(frozen=True)
class MeshSpec:
    """Sizes of the three mesh axes; one of them may be -1 (the remaining devices)."""

    data: int = 1
    fsdp: int = -1
    tensor: int = 1

    @classmethod
    def parse(cls, text: str) -> MeshSpec:
        """Parses `data=1,fsdp=-1,tensor=1` (axes left out are 1, or -1 for fsdp if none is -1)."""
        sizes: dict[str, int] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, sep, value = part.partition("=")
            name = name.strip()
            if not sep or name not in MESH_AXES:
                raise JaxrlError(f"bad mesh spec {text!r}: expected axis=size with axes {MESH_AXES}")
            try:
                sizes[name] = int(value)
            except ValueError:
                raise JaxrlError(f"bad mesh spec {text!r}: size of {name!r} is not an integer") from None
        if not sizes:
            raise JaxrlError(f"bad mesh spec {text!r}: expected e.g. 'data=1,fsdp=-1,tensor=1'")
        defaults = {a: 1 for a in MESH_AXES}
        if -1 not in sizes.values() and "fsdp" not in sizes:
            defaults["fsdp"] = -1
        return cls(**{**defaults, **sizes})

    def __str__(self) -> str:
        return f"data={self.data},fsdp={self.fsdp},tensor={self.tensor}"

    def resolve(self, num_devices: int) -> tuple[int, int, int]:
        """Axis sizes with -1 filled in; raises if they do not multiply to `num_devices`."""
        sizes = [self.data, self.fsdp, self.tensor]
        if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
            raise JaxrlError(f"bad mesh spec {self}: sizes must be positive, at most one -1")
        known = int(np.prod([s for s in sizes if s != -1]))
        if -1 in sizes:
            if num_devices % known:
                raise JaxrlError(
                    f"mesh spec {self} does not divide {num_devices} devices (the fixed axes multiply to {known})"
                )
            sizes[sizes.index(-1)] = num_devices // known
        if int(np.prod(sizes)) != num_devices:
            raise JaxrlError(f"mesh spec {self} needs {int(np.prod(sizes))} devices but {num_devices} are available")
        return tuple(sizes)


def make_mesh(spec: MeshSpec | str = "", devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ("data", "fsdp", "tensor") mesh over `devices` (default: all devices of all hosts)."""
    if isinstance(spec, str):
        spec = MeshSpec.parse(spec) if spec else MeshSpec()
    devices = list(jax.devices() if devices is None else devices)
    shape = spec.resolve(len(devices))
    auto = (AxisType.Auto,) * len(MESH_AXES)  # the compiler propagates shardings inside jit
    if devices == list(jax.devices()):
        return jax.make_mesh(shape, MESH_AXES, devices=devices, axis_types=auto)
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=auto)


@dataclasses.dataclass(frozen=True)
class LogicalMesh:
    """A mesh with the rules that map logical axis names onto it."""

    mesh: Mesh
    rules: tuple[tuple[str, tuple[str, ...] | str | None], ...] = DEFAULT_RULES

    def spec(self, axes: Sequence[str | None], shape: Sequence[int] | None = None) -> PartitionSpec:
        """The PartitionSpec for a tensor whose dimensions carry `axes`.

        Dimensions the mapped mesh axes do not divide (given `shape`) stay replicated.
        """
        table = dict(self.rules)
        used: dict[str, str] = {}
        out = []
        for dim, name in enumerate(axes):
            if name is None:
                out.append(None)
                continue
            if name not in table:
                raise JaxrlError(f"no sharding rule for logical axis {name!r}; known: {sorted(table)}")
            target = table[name]
            mesh_axes = (target,) if isinstance(target, str) else tuple(target or ())
            mesh_axes = tuple(a for a in mesh_axes if self.mesh.shape[a] > 1)
            for a in mesh_axes:
                if a in used:
                    raise JaxrlError(
                        f"logical axes {used[a]!r} and {name!r} of one tensor both map to mesh "
                        f"axis {a!r}; change the sharding rules"
                    )
                used[a] = name
            size = int(np.prod([self.mesh.shape[a] for a in mesh_axes])) if mesh_axes else 1
            if shape is not None and shape[dim] % size:
                mesh_axes = ()
            out.append(mesh_axes[0] if len(mesh_axes) == 1 else (mesh_axes or None))
        return PartitionSpec(*out)

    def sharding(self, axes: Sequence[str | None], shape: Sequence[int] | None = None) -> NamedSharding:
        return NamedSharding(self.mesh, self.spec(axes, shape))

    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec())

    def constrain(self, x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
        """`with_sharding_constraint` by logical axes (inside jit)."""
        return jax.lax.with_sharding_constraint(x, self.sharding(axes, x.shape))


def constrain(lm: LogicalMesh | None, x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
    """Constrains `x` when a mesh is given; the identity on a single device."""
    return x if lm is None else lm.constrain(x, axes)


def target_platform(mesh: LogicalMesh | Mesh | None) -> str:
    """The platform a program on `mesh` is compiled for ("tpu", "gpu", "cpu"): its devices' (a TPU
    topology's devices on a CPU host say "tpu"), or the host's default backend without a mesh."""
    if mesh is None:
        return jax.default_backend()
    devices = mesh.mesh.devices if isinstance(mesh, LogicalMesh) else mesh.devices
    return devices.flat[0].platform


def put(array: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A host array placed with `sharding`; each host copies only the slices its devices hold."""
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def data_parallel_size(mesh: LogicalMesh | None) -> int:
    """How many ways the logical axis `batch` is split on `mesh` (1 without a mesh)."""
    if mesh is None:
        return 1
    target = dict(mesh.rules).get("batch") or ()
    axes = (target,) if isinstance(target, str) else tuple(target)
    return int(np.prod([mesh.mesh.shape[a] for a in axes]))


# -- across hosts: each function is the identity on one host


def to_host(x: jax.Array) -> np.ndarray:
    """The whole of a (possibly multi-host) array on this host."""
    if x.is_fully_addressable:
        return np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def gather_rows(x: np.ndarray) -> np.ndarray:
    """This host's rows [n, ...] -> every host's rows in host order [hosts * n, ...] (same n on all)."""
    return x if jax.process_count() == 1 else np.asarray(multihost_utils.process_allgather(x, tiled=True))


def gather_json(value: Any) -> list[Any]:
    """A JSON value from every host, in host order (values of any size)."""
    if jax.process_count() == 1:
        return [value]
    data = np.frombuffer(json.dumps(value).encode(), np.uint8).astype(np.int32)
    sizes = multihost_utils.process_allgather(np.array([data.size], np.int32), tiled=True)
    padded = np.zeros(int(sizes.max()), np.int32)
    padded[: data.size] = data
    everyone = multihost_utils.process_allgather(padded)  # [hosts, longest]
    return [json.loads(row[:n].astype(np.uint8).tobytes()) for row, n in zip(everyone, sizes, strict=True)]


def host_rows(n: int) -> slice:
    """This host's block of a global array of n rows (host h holds the h-th of equal blocks)."""
    per_host = n // jax.process_count()
    return slice(jax.process_index() * per_host, (jax.process_index() + 1) * per_host)


def init_distributed(
    coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> bool:
    """Starts `jax.distributed` when running on several hosts; returns whether it did.

    Pass the arguments, or set JAXRL_COORDINATOR (host:port of process 0), JAXRL_NUM_PROCESSES
    and JAXRL_PROCESS_ID (tpu_scripts/launch.sh sets all three on every TPU worker). Unset ones
    are left to JAX's own detection, which covers Cloud TPU VMs, SLURM and Open MPI; set
    JAXRL_DISTRIBUTED=1 to rely on it alone (e.g. a TPU pod started without launch.sh). With
    JAX_PLATFORMS=cpu the processes exchange collectives over gloo (tests, CPU clusters).
    """
    coordinator = coordinator or os.environ.get("JAXRL_COORDINATOR")
    try:
        if num_processes is None and os.environ.get("JAXRL_NUM_PROCESSES"):
            num_processes = int(os.environ["JAXRL_NUM_PROCESSES"])
        if process_id is None and os.environ.get("JAXRL_PROCESS_ID"):
            process_id = int(os.environ["JAXRL_PROCESS_ID"])
    except ValueError:
        raise JaxrlError("JAXRL_NUM_PROCESSES and JAXRL_PROCESS_ID must be integers") from None
    if num_processes is not None and process_id is not None and not 0 <= process_id < num_processes:
        raise JaxrlError(f"process id {process_id} is not in [0, {num_processes})")
    on_tpu_pod = "TPU_WORKER_HOSTNAMES" in os.environ and "," in os.environ["TPU_WORKER_HOSTNAMES"]
    asked = os.environ.get("JAXRL_DISTRIBUTED", "") not in ("", "0")
    if coordinator is None and not on_tpu_pod and not asked:
        return False
    if jax.distributed.is_initialized():
        return True
    if os.environ.get("JAX_PLATFORMS", "").strip() == "cpu":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)
    return True
