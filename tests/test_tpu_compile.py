"""Programs compiled by the real TPU compiler for a TPU topology, on this CPU host (libtpu, no chip).

Each compile of a tiny model takes ~5-15 s on 2 cores, so the file keeps to four of them. They
skip, saying why, only where libtpu is absent (the `tpu` extra; `.ci/run` installs it).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jaxrl.cli import main as cli_main
from jaxrl.errors import JaxrlError

REPO = Path(__file__).resolve().parents[1]


def _libtpu() -> str | None:
    from jaxrl.topology import libtpu_version

    try:
        return libtpu_version()
    except JaxrlError as e:
        return str(e)


pytestmark = pytest.mark.skipif(
    not (_libtpu() or "").replace(".", "").isdigit(), reason=f"no TPU compiler here: {_libtpu()}"
)


def test_the_target_not_the_host_picks_splash_and_it_compiles_as_mosaic_kernels_per_shard():
    """SFT with `auto` attention on 1024 tokens, on a v5p mesh split over rows and heads: the TPU
    compiler gets splash as Mosaic kernels (interpreted, it would hold none; unsharded, Mosaic
    refuses to compile: 'cannot be automatically partitioned')."""
    import jax
    from jaxrl.train.plan import make_plan

    assert jax.default_backend() == "cpu"
    recipe = REPO / "train/recipes/sft-tiny.yaml"
    overrides = ["sft.max_length=1024", "sft.batch_size=8", "model.dtype=bfloat16"]
    with jax.default_matmul_precision("default"):  # conftest's 'highest' is for CPU checks; Mosaic refuses it
        plan = make_plan(str(recipe), "fsdp=2,tensor=2", overrides=overrides, model="tiny-olmo2", topology="v5p-8")
    assert plan.target["platform"] == "tpu" and plan.target["attention"] == "splash"
    assert plan.target["mosaic_kernels"] >= 3  # forward, dq and dkv
    assert [p["name"] for p in plan.programs] == ["train step"] and plan.fits is True


def test_grpo_plan_compiles_every_program_of_a_step_for_the_topology(tmp_path, capsys):
    out = tmp_path / "plan.json"
    argv = ["plan", "--recipe", str(REPO / "train/recipes/grpo-tiny.yaml"), "--model", "tiny-olmo2",
            "--topology", "v5p-8", "--mesh", "fsdp=4", "--json", str(out),
            "grpo.num_generations=16",  # 32 slots, 8 a shard: the engine halves them
            "grpo.num_iterations=2"]  # two updates per batch: the run scores the old log-probs  # fmt: skip
    assert cli_main(argv) == 0
    text = capsys.readouterr().out
    assert "compiled by the TPU compiler (libtpu" in text and "v5p-8 (v5p:2x2x1, 4 devices)" in text
    plan = json.loads(out.read_text())
    programs = {p["name"]: p for p in plan["programs"]}
    assert list(programs) == ["train step", "reshard", "engine", "engine shrink", "scoring"]
    assert all(p["peak"] > 0 and p["refused"] is None for p in programs.values())
    # the engine decodes on the sampling layout: every weight local, none gathered per token
    assert programs["engine"]["collectives"]["weight all-gather"] == 0
    assert programs["train step"]["collectives"]["all-gather"] > 0  # fsdp gathers weights to train
    # halving the slots keeps each shard's rows on it: no collective, half the cache out (a gather
    # across shards made the compiler hold the whole cache on every device: 160 GiB on a v5p-64)
    shrink = programs["engine shrink"]
    assert not any(shrink["collectives"].values()) and shrink["outputs"] < 0.6 * shrink["arguments"]
    assert plan["fits"] is True and plan["target"]["platform"] == "tpu"


def test_a_program_too_large_for_the_chip_is_reported_as_not_fitting(tmp_path, capsys):
    """The compiler refuses it (RESOURCE_EXHAUSTED); the plan says so with its figures, exit 0."""
    out = tmp_path / "plan.json"
    argv = ["plan", "--recipe", str(REPO / "train/recipes/sft-tiny.yaml"), "--model", "tiny-olmo2",
            "--topology", "v5e-1", "--mesh", "fsdp=1", "--json", str(out),
            "sft.batch_size=4096", "sft.max_length=4096", "model.attention=xla"]  # fmt: skip
    assert cli_main(argv) == 0
    assert "does NOT fit" in capsys.readouterr().out
    plan = json.loads(out.read_text())
    assert plan["fits"] is False and plan["refused"] == ["train step"]
    assert "exceeds available HBM (15.75G)" in plan["programs"][0]["refused"]


def test_topology_names_and_errors(capsys):
    from jaxrl.topology import tpu_pod

    assert (tpu_pod("v5p-64").topology, tpu_pod("v5p-64").chips) == ("v5p:2x4x4", 32)
    assert (tpu_pod("v4-64").topology, tpu_pod("v6e-16").topology, tpu_pod("v5e-16").topology) == (
        "v4:2x4x4",
        "v6e:4x4",
        "v5e:4x4",
    )
    assert tpu_pod("v5p-128", slices=2).devices == 128
    with pytest.raises(JaxrlError, match="unknown TPU pod type 'v5p-63'"):
        tpu_pod("v5p-63")
    argv = ["plan", "--recipe", str(REPO / "train/recipes/sft-tiny.yaml"), "--model", "tiny-olmo2"]
    assert cli_main([*argv, "--topology", "v5p-8", "--devices", "4"]) == 2
    assert "not both" in capsys.readouterr().err
    assert cli_main([*argv, "--topology", "v5p-8", "--mesh", "fsdp=8"]) == 2
    assert "needs 8 devices but 4 are available" in capsys.readouterr().err


def test_eval_plan_compiles_generation_forced_scoring_and_kl(tmp_path, capsys):
    out = tmp_path / "plan.json"
    argv = ["plan", "--method", "eval", "--model", "tiny-olmo2", "--topology", "v5p-8", "--mesh", "fsdp=4",
            "--kl", "--kl-length", "256", "--prompt-length", "128", "--json", str(out),
            "max_new_tokens=32", "batch_size=4", "num_samples=2"]  # fmt: skip
    assert cli_main(argv) == 0
    assert "-> fits" in capsys.readouterr().out
    plan = json.loads(out.read_text())
    programs = {p["name"]: p for p in plan["programs"]}
    assert list(programs) == ["engine", "forced scoring", "kl"]  # 8 slots on 4 shards: never halved
    assert all(p["peak"] > 0 for p in programs.values()) and plan["fits"] is True
    assert programs["engine"]["collectives"]["weight all-gather"] == 0  # eval loads weights in the sampling layout
    assert programs["kl"]["arguments"] > programs["forced scoring"]["arguments"]  # two models resident
    assert cli_main([*argv[:5], "--devices", "4"]) == 2
    assert "--method eval plans with the TPU compiler" in capsys.readouterr().err
