"""The accelerator figures `jaxrl plan` uses, each from its vendor's public page.

| chip | memory | bf16 peak | HBM | link per chip | source (public pages) |
|---|---|---|---|---|---|
| v4 | 32 GiB | 275 TFLOP/s | 1200 GB/s | 268 GB/s: all-reduce 1.1 PB/s / 4096 chips | cloud.google.com/tpu/docs/v4 |
| v5e | 16 GB | 197 TFLOP/s | 819 GB/s | 200 GB/s: all-reduce 51.2 TB/s / 256 chips | cloud.google.com/tpu/docs/v5e |
| v5p | 95 GB | 459 TFLOP/s | 2765 GB/s | 600 GB/s: ICI 4800 Gbps | cloud.google.com/tpu/docs/v5p |
| v6e | 32 GB | 918 TFLOP/s | 1638 GB/s | 400 GB/s: all-reduce 102.4 TB/s / 256 chips | cloud.google.com/tpu/docs/v6e |
| h100 | 80 GB | 989 TFLOP/s dense | 3350 GB/s | 450 GB/s: NVLink 900 GB/s both ways | NVIDIA H100 SXM5 data sheet |

Memory is counted in GB (10^9 bytes) as vendors quote it (v4's 32 GiB as 32 GB, the conservative
side). Interconnect is the per-chip bandwidth a ring collective sees, one direction.
"""

from __future__ import annotations

import dataclasses

from jaxrl.errors import JaxrlError


@dataclasses.dataclass(frozen=True)
class Chip:
    name: str
    memory_gb: float
    bf16_flops: float  # per second
    hbm_bytes_s: float
    link_bytes_s: float


CHIPS = {
    c.name: c
    for c in (
        Chip("v4", 32, 275e12, 1200e9, 268e9),
        Chip("v5e", 16, 197e12, 819e9, 200e9),
        Chip("v5p", 95, 459e12, 2765e9, 600e9),
        Chip("v6e", 32, 918e12, 1638e9, 400e9),
        Chip("h100", 80, 989e12, 3350e9, 450e9),
    )
}


def chip(name: str) -> Chip:
    if name.lower() not in CHIPS:
        raise JaxrlError(f"unknown chip {name!r}; choose one of {', '.join(CHIPS)}")
    return CHIPS[name.lower()]
