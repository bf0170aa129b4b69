"""The study's recipes on OLMo-2-7B over TPU pods, compiled by the TPU compiler (docs/tpu.md).

    python bench/tpu_plan_table.py [--out DIR]   # 3-8 min a row on 2 cores; needs the `tpu` extra

Each row is one `jaxrl plan --topology POD ... --json`: every program of the run (SFT: the step;
GRPO: the step, the reshard into the sampling layout, the engine, its shrink, the scoring pass)
compiled for the pod's devices on this host, no chip. Prints a markdown table, one row as each
plan ends, then the FLOPs cross-check of the time plan against the compiler's cost analysis.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GIB = 1024**3
# (recipe, pod type, gradient accumulation steps): k = 1 where it fits, else the smallest that does
# and the one below it, which does not
ROWS = [("sft-3ep.yaml", "v5p-64", 1), ("sft-3ep.yaml", "v5p-128", 1), ("sft-3ep.yaml", "v4-64", 2),
        ("sft-3ep.yaml", "v4-64", 7), ("sft-3ep.yaml", "v6e-64", 1), ("grpo.yaml", "v5p-64", 1),
        ("grpo.yaml", "v5p-128", 1), ("grpo.yaml", "v4-64", 1), ("grpo.yaml", "v4-64", 2),
        ("grpo.yaml", "v6e-64", 1),
        ("grpo.yaml", "v4-64", 2, ("rollout.slots=128",))]  # where no k fits: fewer decode slots  # fmt: skip
LAYERS = 32  # OLMo-2-7B
CHIPS = {"v4": 2, "v5p": 2, "v5e": 1, "v6e": 1}  # pod-type count per chip


def plan(recipe: str, pod: str, k: int, out: Path, overrides: tuple[str, ...] = ()) -> dict:
    chips = int(pod.split("-")[1]) // CHIPS[pod.split("-")[0]]
    path = out / f"{recipe.removesuffix('.yaml')}-{pod}-k{k}{''.join('-' + o for o in overrides)}.json"
    argv = ["plan", "--recipe", str(REPO / "train/recipes" / recipe), "--model", "olmo2-1124-7b",
            "--topology", pod, "--mesh", f"fsdp={chips}", "--json", str(path),
            f"loop.gradient_accumulation_steps={k}", *overrides]  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "jaxrl.cli", *argv], capture_output=True, text=True, cwd=REPO)
    if done.returncode:
        raise SystemExit(f"{recipe} on {pod}: {done.stderr.strip().splitlines()[-1]}")
    return json.loads(path.read_text())


def row(recipe: str, pod: str, k: int, p: dict, overrides: tuple[str, ...] = ()) -> str:
    g = lambda n: f"{n / GIB:.2f}"
    programs = {q["name"]: q for q in p["programs"]}
    generation = [q for name, q in programs.items() if name != "train step"]
    largest = max(generation, key=lambda q: q["peak"], default=None)
    step = programs["train step"]
    cells = [
        " ".join((recipe, *overrides)),
        pod,
        k,
        p["rows"] // k // p["devices"],
        g(p["params"] + p["opt_state"]),
        "refused" if step["refused"] else g(step["temporaries"]),
        "refused" if step["refused"] else g(step["peak"]),
        f"{largest['name']} {g(largest['peak'])}" if largest else "-",
        g(p["need"]),
        f"{p['capacity'] / GIB:.2f}",
        "yes" if p["fits"] else "no",
        p["target"]["mosaic_kernels"],
    ]
    return "| " + " | ".join(map(str, cells)) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/tpu-plans", help="where the plans' JSON files go")
    parser.add_argument("--only", action="append", help="RECIPE:POD:K[:OVERRIDE,...] rows to run (default: every row)")
    args = parser.parse_args()
    out = Path(args.out)
    parse = lambda r, pod, k, extra="": (r, pod, int(k), tuple(filter(None, extra.split(","))))
    rows = [parse(*o.split(":")) for o in args.only] if args.only else [r if len(r) == 4 else (*r, ()) for r in ROWS]
    out.mkdir(parents=True, exist_ok=True)
    print("| recipe | pod | k | rows / device / micro-batch | params + opt (GiB) | step temporaries (GiB) | "
          "step peak (GiB) | largest generation program, peak (GiB) | needs (GiB) | HBM (GiB) | fits | "
          "Mosaic kernels |")  # fmt: skip
    print("|" + "---|" * 12)
    flops = []
    for recipe, pod, k, overrides in rows:
        p = plan(recipe, pod, k, out, overrides)
        print(row(recipe, pod, k, p, overrides), flush=True)
        count = p["target"]["step_flops_per_device"]
        # the compiler counts a loop body once: one layer of the scan, one micro-batch
        scaled = count["compiler"] * LAYERS * k
        flops.append(
            f"{recipe} {pod} k={k}: time plan {count['time plan']:.3e}, compiler {count['compiler']:.3e} "
            f"x {LAYERS} layers x {k} micro-batches = {scaled:.3e} ({scaled / count['time plan']:.2f}x)"
        )
    print("\nstep FLOPs per device:\n" + "\n".join(flops))


if __name__ == "__main__":
    main()
