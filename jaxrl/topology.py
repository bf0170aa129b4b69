"""TPU pods as the TPU compiler sees them, on any host and without a chip.

    pod = tpu_pod("v5p-64")                 # 32 chips, topology "v5p:2x4x4", megacore
    devices = topology_devices(pod)         # 32 TPU devices a jitted program can be compiled for

With the `tpu` extra installed (libtpu), `jax.experimental.topologies` hands out the devices of a
TPU topology on a CPU host; a program lowered over a mesh of them is compiled by the real TPU
compiler (memory_analysis, cost_analysis, the TPU HLO, Mosaic kernels), which also refuses a
program that does not fit the chip's HBM. Pod types count TensorCores for v4 and v5p (two per
chip, one device per chip in megacore mode) and chips for v5e and v6e, as Cloud TPU names them.
"""

from __future__ import annotations

import dataclasses
import os
import re

from jaxrl.errors import JaxrlError


@dataclasses.dataclass(frozen=True)
class TpuGeneration:
    """One TPU generation. hbm_gib: the HBM per device the compiler lets a program use (its own
    'available HBM' figure, measured by compiling a program too large for it)."""

    name: str
    cores_per_chip: int  # what the pod type's number counts per chip (v4-64: 32 chips)
    torus_3d: bool
    megacore: bool
    hbm_gib: float


GENERATIONS = {
    "v4": TpuGeneration("v4", 2, True, True, 30.75),
    "v5p": TpuGeneration("v5p", 2, True, True, 95.74),
    "v5e": TpuGeneration("v5e", 1, False, False, 15.75),
    "v6e": TpuGeneration("v6e", 1, False, False, 31.25),
}
# chips -> the slice shape Cloud TPU gives a pod of that size
SHAPES_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8", 256: "4x8x8", 512: "8x8x8"}
SHAPES_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}
CHIPS_PER_HOST = (2, 2, 1)  # a host's share of the torus; decides process ids, not the per-device program


@dataclasses.dataclass(frozen=True)
class TpuPod:
    """A pod type (`v5p-64`) as the compiler's topology: generation, chips, slice shape, slices."""

    name: str
    generation: TpuGeneration
    chips: int
    shape: str
    slices: int = 1

    @property
    def topology(self) -> str:
        return f"{self.generation.name}:{self.shape}"

    @property
    def devices(self) -> int:
        return self.chips * self.slices

    @property
    def hbm_bytes(self) -> int:
        return int(self.generation.hbm_gib * 1024**3)


def pod_names() -> list[str]:
    names = []
    for g in GENERATIONS.values():
        shapes = SHAPES_3D if g.torus_3d else SHAPES_2D
        names += [f"{g.name}-{chips * g.cores_per_chip}" for chips in shapes]
    return names


def tpu_pod(name: str, slices: int = 1) -> TpuPod:
    """`v5p-64`, `v4-64`, `v5e-16`, `v6e-16`, ... (see `pod_names`); `slices` identical slices."""
    match = re.fullmatch(r"(v4|v5p|v5e|v6e)-(\d+)", name.strip().lower())
    generation = GENERATIONS.get(match.group(1)) if match else None
    shapes = SHAPES_3D if generation is None or generation.torus_3d else SHAPES_2D
    chips = int(match.group(2)) // generation.cores_per_chip if generation else 0
    if generation is None or chips not in shapes or int(match.group(2)) % generation.cores_per_chip:
        raise JaxrlError(f"unknown TPU pod type {name!r}; choose one of {', '.join(pod_names())}")
    if slices < 1:
        raise JaxrlError(f"--slices {slices}: must be at least 1")
    return TpuPod(name.strip().lower(), generation, chips, shapes[chips], slices)


def libtpu_version() -> str:
    """The installed libtpu's version, or a one-line error naming the extra that brings it."""
    from importlib import metadata

    for dist in ("libtpu", "libtpu-nightly"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    raise JaxrlError("compiling for a TPU topology needs libtpu: pip install 'jaxrl[tpu]' (the `tpu` extra)")


# libtpu takes a lock file so that one process owns the chips; a host with no chips compiles only,
# so any number of processes may load it (and none asks a metadata server about its VM).
SHARED_LIBTPU = {"ALLOW_MULTIPLE_LIBTPU_LOAD": "1", "TPU_SKIP_MDS_QUERY": "1"}


def allow_shared_libtpu() -> None:
    """This process's environment set for `SHARED_LIBTPU`, before libtpu loads."""
    for name, value in SHARED_LIBTPU.items():
        os.environ.setdefault(name, value)


def topology_devices(pod: TpuPod) -> list:
    """The pod's devices (one per chip; megacore on v4 and v5p) for compiling, in mesh order."""
    libtpu_version()
    allow_shared_libtpu()
    from jax.experimental import topologies

    g = pod.generation
    options = {"chip_config_name": "megacore" if g.megacore else "default"}
    options["chips_per_host_bounds"] = CHIPS_PER_HOST if g.torus_3d else (min(2, pod.chips), min(2, pod.chips), 1)
    if pod.slices > 1:
        options["num_slices"] = pod.slices
    try:
        topology = topologies.get_topology_desc(topology_name=pod.topology, platform="tpu", **options)
    except Exception as e:  # libtpu's own errors carry no stable type
        raise JaxrlError(f"the TPU compiler has no topology {pod.topology!r}: {str(e).splitlines()[0]}") from None
    return list(topology.devices)
