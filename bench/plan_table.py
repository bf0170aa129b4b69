"""Prints the memory-plan table of docs/tpu.md: the study's recipes on OLMo-2-7B over pod sizes.

    python bench/plan_table.py        # about 15 s a row on 2 cores, no accelerator

Each row is one `jaxrl plan ... --json` (the recipe's real step compiled for emulated devices).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GB, GIB = 1e9, 1024**3
# (recipe, chips, gradient accumulation steps)
ROWS = [("grpo.yaml", 32, 1), ("grpo.yaml", 32, 2), ("grpo.yaml", 32, 7), ("grpo.yaml", 64, 1),
        ("sft-3ep.yaml", 32, 1), ("sft-3ep.yaml", 32, 2), ("sft-3ep.yaml", 32, 7), ("sft-3ep.yaml", 64, 1),
        ("sft-only-qk.yaml", 32, 1)]  # fmt: skip
USABLE = {"v4": 32 * 0.9, "v5p": 95 * 0.9}  # GB per device with 10% kept free


def plan(recipe: str, chips: int, k: int) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        argv = [
            "plan",
            "--recipe",
            str(REPO / "train/recipes" / recipe),
            "--model",
            "olmo2-1124-7b",
            "--devices",
            str(chips),
            "--mesh",
            f"fsdp={chips}",
            "--json",
            out.name,
            f"loop.gradient_accumulation_steps={k}",
        ]
        subprocess.run([sys.executable, "-m", "jaxrl.cli", *argv], check=True, capture_output=True, cwd=REPO)
        return json.loads(Path(out.name).read_text())


def row(recipe: str, chips: int, k: int) -> str:
    p = plan(recipe, chips, k)
    need = p["need"] / GB
    kv = f"{p['kv_cache_bytes'] / GIB:.2f}" if p["kv_cache_bytes"] is not None else "-"
    copy = f"{p['sampling_copy_bytes'] / GIB:.2f}" if p["sampling_copy_bytes"] is not None else "-"
    fits = ["yes" if need <= usable else "no" for usable in USABLE.values()]
    cells = [
        recipe,
        chips,
        k,
        p["rows"] // p["accumulation"] // chips,
        f"{(p['params'] + p['opt_state']) / GIB:.2f}",
        f"{p['temporaries'] / GIB:.2f}",
        f"{p['peak'] / GIB:.2f}",
        kv,
        copy,
        f"{need:.1f}",
        *fits,
    ]
    return "| " + " | ".join(map(str, cells)) + " |"


def main() -> None:
    usable = " | ".join(f"{chip} ({gb:.1f} GB usable)" for chip, gb in USABLE.items())
    print(
        "| recipe | chips | k | rows / device / micro-batch | params + opt (GiB) | step temporaries (GiB) | "
        f"step peak (GiB) | KV cache (GiB) | sampling copy (GiB) | needs (GB) | {usable} |"
    )
    print("|" + "---|" * (10 + len(USABLE)))
    for recipe, chips, k in ROWS:
        print(row(recipe, chips, k), flush=True)


if __name__ == "__main__":
    main()
