"""Weight-change analysis: metrics worked by hand, mesh/source invariance, the CLI, bad inputs."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys

import jax
import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx
from jaxrl.models.checkpoint import save_model
from jaxrl.models.config import preset
from jaxrl.models.hf_io import export_hf
from jaxrl.models.keymap import hf_key_map
from jaxrl.models.params import abstract_decoder, init_decoder, state_shardings

from jaxrl import cli
from jaxrl.analysis import HFSource, OrbaxSource, diff_sources, diff_trees, specs_from_key_map, transpose
from jaxrl.analysis.naming import TensorSpec
from jaxrl.analysis.sources import block_plan
from jaxrl.analysis.stream import diff_many
from jaxrl.errors import JaxrlError
from jaxrl.sharding import LogicalMesh, make_mesh
from jaxrl.tensorfiles import write_safetensors

CONFIG = preset("tiny-olmo2")
SPECS = specs_from_key_map(hf_key_map(CONFIG), CONFIG.num_layers)
FLOAT_METRICS = ("rel_change", "delta_norm", "base_norm", "norm", "cosine")


def one_spec(name):
    (spec,) = [s for s in SPECS if s.name == name]
    return spec


def one(changes, tensor, layer=None):
    (c,) = [c for c in changes if c.tensor == tensor and c.layer == layer]
    return c


# --- metrics worked by hand ----------------------------------------------------------------------


def test_scaled_change():
    base = {"w": np.array([[3.0, 4.0]], np.float32)}  # ||W0|| = 5
    c = one(diff_trees(base, {"w": 2 * base["w"]}), "w")  # W - W0 = W0
    assert (c.rel_change, c.delta_norm, c.base_norm, c.norm) == (1.0, 5.0, 5.0, 10.0)
    assert c.cosine == 1.0 and c.frac_changed == 1.0 and c.num_changed == 2 and c.size == 2


def test_sparse_change():
    w0 = np.ones((4, 8), np.float32)  # ||W0||^2 = 32
    w = w0.copy()
    w[0, 1] = w[2, 3] = w[3, 7] = 3.0  # three entries move by 2: ||D||^2 = 12
    c = one(diff_trees({"w": w0}, {"w": w}), "w")
    assert c.num_changed == 3 and c.frac_changed == 3 / 32
    assert c.delta_norm == pytest.approx(math.sqrt(12), rel=1e-12)
    assert c.rel_change == pytest.approx(math.sqrt(12 / 32), rel=1e-12)
    # ||W||^2 = 29 + 27 = 56, W.W0 = 29 + 9 = 38
    assert c.norm == pytest.approx(math.sqrt(56), rel=1e-12)
    assert c.cosine == pytest.approx(38 / math.sqrt(56 * 32), rel=1e-12)


def test_opposite_and_orthogonal():
    w0 = np.array([[1.0, 0.0]], np.float32)
    assert one(diff_trees({"w": w0}, {"w": -w0}), "w").cosine == pytest.approx(-1.0, abs=1e-12)
    c = one(diff_trees({"w": w0}, {"w": np.array([[0.0, 1.0]], np.float32)}), "w")
    assert c.cosine == pytest.approx(0.0, abs=1e-12) and c.rel_change == pytest.approx(math.sqrt(2))


def test_low_rank_change_spectrum_per_layer():
    """Layer 0 moves by 2 e1 e2^T + e3 e4^T (singular values 2, 1), layer 1 by 3 e2 e1^T."""
    w0 = np.ones((2, 5, 4), np.float32)
    w = w0.copy()
    w[0, 0, 1] += 2.0
    w[0, 2, 3] += 1.0
    w[1, 1, 0] += 3.0
    changes = diff_trees({"layers": {"up": w0}}, {"layers": {"up": w}}, svd=3)
    c0, c1 = one(changes, "layers.up", 0), one(changes, "layers.up", 1)
    np.testing.assert_allclose(c0.singular_values, [2.0, 1.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(c1.singular_values, [3.0, 0.0, 0.0], atol=1e-6)
    assert c0.stable_rank == pytest.approx(5 / 4, rel=1e-6) and c1.stable_rank == pytest.approx(1.0, rel=1e-6)
    assert c0.delta_norm == pytest.approx(math.sqrt(5)) and c1.delta_norm == pytest.approx(3.0)
    assert (c0.num_changed, c1.num_changed, c0.size) == (2, 1, 20)


def test_matrix_view_of_a_three_axis_tensor():
    """o [H, E, D] is the matrix [H*E, D]: a rank-1 change stays rank 1 with rows=2."""
    u, v = np.arange(1.0, 7.0), np.array([1.0, -1.0, 2.0])  # ||u|| ||v|| = sqrt(91 * 6)
    delta = np.outer(u, v).reshape(2, 3, 3)
    w0 = np.zeros((1, 2, 3, 3), np.float32) + 1
    spec = TensorSpec(("layers", "o"), (1, 2, 3, 3), stacked=True, rows=2)
    (c,) = diff_trees({"layers": {"o": w0}}, {"layers": {"o": w0 + delta.astype(np.float32)}}, specs=[spec], svd=2)
    np.testing.assert_allclose(c.singular_values, [math.sqrt(91 * 6), 0.0], atol=1e-4)


def test_frac_changed_counts_in_the_stored_dtype():
    bf16 = ml_dtypes.bfloat16
    w0 = np.ones(4, np.float32)
    w = (w0 + np.array([1e-3, 0.5, 0.0, -1e-4], np.float32)).astype(bf16)  # 1 + 1e-3 rounds to 1
    c = one(diff_trees({"w": w0.astype(bf16)}, {"w": w}), "w")
    assert c.num_changed == 1 and c.frac_changed == 0.25
    assert c.delta_norm == 0.5


def test_nan_and_inf_are_not_lost():
    """The streaming kernel may reassociate its sums, but a NaN or an infinity still shows."""
    w0 = np.ones((2, 1024), ml_dtypes.bfloat16)
    for bad in (np.nan, np.inf):
        w = w0.copy()
        w[1, 7] = bad
        c = one(diff_trees({"w": w0}, {"w": w}), "w")
        assert not np.isfinite(c.rel_change) and not np.isfinite(c.norm) and c.num_changed == 1
        assert np.isnan(c.rel_change) == np.isnan(bad)


def test_long_sums_stay_accurate():
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal((4, 1 << 18)).astype(ml_dtypes.bfloat16)
    w = (w0.astype(np.float32) + 1e-2 * rng.standard_normal(w0.shape, np.float32)).astype(ml_dtypes.bfloat16)
    c = one(diff_trees({"w": w0}, {"w": w}), "w")
    w64, w064 = w.astype(np.float64), w0.astype(np.float64)
    assert c.base_norm == pytest.approx(np.linalg.norm(w064), rel=1e-6)
    assert c.norm == pytest.approx(np.linalg.norm(w64), rel=1e-6)
    assert c.delta_norm == pytest.approx(np.linalg.norm(w64 - w064), rel=1e-6)


def test_cosine_resolves_tiny_changes():
    """1 - cos ~ rel^2 / 2 = 5e-9 for a 1e-4 change orthogonal to W0: a fp32 dot product gives 1."""
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal(4096).astype(np.float32)
    d = rng.standard_normal(4096).astype(np.float32)
    d -= d @ w0 / (w0 @ w0) * w0
    d *= 1e-4 * np.linalg.norm(w0) / np.linalg.norm(d)
    w = w0 + d
    c = one(diff_trees({"w": w0}, {"w": w}), "w")
    w64, w064 = w.astype(np.float64), w0.astype(np.float64)
    exact = w64 @ w064 / np.linalg.norm(w64) / np.linalg.norm(w064)
    assert 1 - c.cosine == pytest.approx(1 - exact, rel=1e-2)
    assert c.rel_change == pytest.approx(np.linalg.norm(w64 - w064) / np.linalg.norm(w064), rel=1e-6)


def test_module_selection_and_shape_mismatch():
    base = {"layers": {"q": np.ones((2, 3)), "attn_norm": np.ones((2, 3))}, "embed": np.ones((4, 3))}
    assert {c.module for c in diff_trees(base, base, modules="default")} == {"q"}
    assert {c.module for c in diff_trees(base, base, modules="norms,embed")} == {"attn_norm", "embed"}
    with pytest.raises(JaxrlError, match="unknown module"):
        diff_trees(base, base, modules="qq")
    with pytest.raises(JaxrlError, match="shapes differ"):
        diff_trees(base, {**base, "embed": np.ones((5, 3))}, modules="all")


def test_block_plan_covers_each_chunk_once():
    spec = TensorSpec(("layers", "up"), (3, 8, 6), stacked=True, rows=1)
    assert len(block_plan(spec, None, None)) == 3  # one layer at a time
    blocks = block_plan(spec, (3, 4, 6), None, (3, 8, 3))  # union of two chunk grids
    assert len(blocks) == 4
    covered = np.zeros(spec.shape, int)
    for index in blocks:
        covered[index] += 1
    assert (covered == 1).all()


# --- the same numbers from every layout and source -----------------------------------------------


def perturbed(params, seed: int, scale: float):
    """params + scale * noise on half the entries of each tensor (a sparse, uneven change)."""
    rng = np.random.default_rng(seed)
    out = {}
    for k, v in params.items():
        if isinstance(v, dict):
            out[k] = perturbed(v, seed + 1, scale)
        else:
            noise = rng.standard_normal(v.shape).astype(v.dtype) * (rng.random(v.shape) < 0.5)
            out[k] = v + scale * noise * (1 + np.arange(v.shape[0]) % 3).reshape(-1, *([1] * (v.ndim - 1)))
    return out


@pytest.fixture(scope="module")
def weights():
    base = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(init_decoder(CONFIG, seed=0), nnx.Param)))
    return base, perturbed(base, 1, 1e-2)


def on_mesh(tree, spec: str):
    lm = LogicalMesh(make_mesh(spec))
    shardings = nnx.to_pure_dict(state_shardings(nnx.state(abstract_decoder(CONFIG, lm), nnx.Param), lm))
    return jax.tree.map(jax.device_put, tree, shardings)


def model_of(tree):
    model = init_decoder(CONFIG, seed=0)
    state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(state, tree)
    nnx.update(model, state)
    return model


@pytest.fixture(scope="module")
def saved(weights, tmp_path_factory):
    """The same weights as an Orbax run checkpoint (written from a 2x4 mesh) and as HF dirs."""
    root = tmp_path_factory.mktemp("saved")
    base, other = weights
    lm = LogicalMesh(make_mesh("data=1,fsdp=2,tensor=4"))
    sharded = init_decoder(CONFIG, lm, seed=0)
    state = nnx.state(sharded, nnx.Param)
    nnx.replace_by_pure_dict(state, on_mesh(other, "data=1,fsdp=2,tensor=4"))
    nnx.update(sharded, state)
    save_model(sharded, root / "run/checkpoints/7")
    shutil.copy(root / "run/checkpoints/7/config.json", root / "run/config.json")
    save_model(model_of(base), root / "base_orbax")
    # as other writers store it (and jaxrl did before): default chunks, one per shard over all layers
    legacy = ocp.StandardCheckpointer()
    legacy.save((root / "legacy/params").absolute(), nnx.to_pure_dict(state), force=True)
    legacy.wait_until_finished()
    export_hf(model_of(base), root / "base_hf")
    export_hf(model_of(other), root / "run_hf/checkpoint-7")
    return root


def assert_same(a, b, rtol, what=""):
    assert [(c.tensor, c.layer) for c in a] == [(c.tensor, c.layer) for c in b]
    for x, y in zip(a, b, strict=True):
        assert (x.num_changed, x.size) == (y.num_changed, y.size), x.tensor
        for m in FLOAT_METRICS:
            assert getattr(x, m) == pytest.approx(getattr(y, m), rel=rtol, abs=1e-12), (what, x.tensor, x.layer, m)
        if x.singular_values is not None:
            np.testing.assert_allclose(x.singular_values, y.singular_values, rtol=1e-4)


def test_same_numbers_on_every_mesh(weights):
    base, other = weights
    reference = diff_trees(base, other, specs=SPECS)
    assert 0 < min(c.frac_changed for c in reference if c.size > 1) < 1
    for spec in ("data=1,fsdp=2,tensor=4", "data=1,fsdp=8,tensor=1"):
        sharded = diff_trees(on_mesh(base, spec), on_mesh(other, spec), specs=SPECS)
        assert_same(reference, sharded, rtol=2e-6, what=spec)
    # spectra of sharded changes (each shape compiles an SVD: two module kinds keep it quick)
    specs = [s for s in SPECS if s.module in ("q", "o")]
    sharded = diff_trees(on_mesh(base, spec), on_mesh(other, spec), specs=specs, svd=2)
    assert_same(diff_trees(base, other, specs=specs, svd=2), sharded, rtol=2e-6)


def test_same_numbers_from_checkpoints(weights, saved):
    base, other = weights
    reference = diff_trees(base, other, specs=SPECS)
    orbax_run = OrbaxSource(saved / "run/checkpoints/7/params")
    q = one_spec("layers.q")
    assert orbax_run.chunks(q)[0] == 1 and orbax_run.chunks(q) != q.shape  # a chunk per layer and shard
    assert orbax_run._array(q).spec().to_json()["metadata"]["compressor"] is None
    legacy = OrbaxSource(saved / "legacy/params")
    assert legacy.chunks(q)[0] == CONFIG.num_layers  # chunks spanning layers: read by chunk grid
    hf_run, hf_base = HFSource(saved / "run_hf/checkpoint-7"), HFSource(saved / "base_hf")
    orbax_base = OrbaxSource(saved / "base_orbax/params")
    pairs = {
        "hf/orbax": (hf_base, orbax_run),
        "hf/hf": (hf_base, hf_run),
        "orbax/orbax": (orbax_base, orbax_run),
        "orbax/hf": (orbax_base, hf_run),
        "hf/legacy orbax": (hf_base, legacy),
        "orbax/legacy orbax": (orbax_base, legacy),
    }
    for name, (b, o) in pairs.items():
        assert_same(reference, diff_sources(b, o, SPECS), rtol=2e-6, what=name)
    specs = [one_spec("layers.q"), one_spec("layers.o")]  # spectra, in each layout they are read in
    with_svd = diff_trees(base, other, specs=specs, svd=2)
    for name in ("hf/orbax", "hf/hf", "orbax/hf", "hf/legacy orbax"):
        assert_same(with_svd, diff_sources(*pairs[name], specs, svd=2), rtol=2e-6, what=name)
    # a base against several checkpoints at once (read once) gives each pair's numbers
    many = diff_many(hf_base, [orbax_run, hf_run, legacy, orbax_run], SPECS)
    for changes in many:
        assert_same(reference, changes, rtol=2e-6, what="many")


@pytest.mark.parametrize(
    "band, block_bytes, short_reads",
    [(128, 1 << 20, False), (4, 1 << 20, False), (4, 64, False), (8, 500, True)],
)  # one band per block, bands in a block, blocks per thread, reads returning a few bytes at a time
def test_hf_matrix_transposed_as_it_is_read(tmp_path, monkeypatch, band, block_bytes, short_reads):
    monkeypatch.setattr(transpose, "BAND", band)
    monkeypatch.setattr(transpose, "BLOCK_BYTES", block_bytes)
    if short_reads:
        preadv = os.preadv
        monkeypatch.setattr(os, "preadv", lambda fd, buffers, offset: preadv(fd, [buffers[0][:7]], offset))
    shapes = {"m": (37, 53), "n": (5, 2), "v": (29,)}  # rows neither a multiple of the band nor of the threads
    tensors = {n: np.random.default_rng(1).standard_normal(s).astype(ml_dtypes.bfloat16) for n, s in shapes.items()}
    write_safetensors(tmp_path, [(n, t.shape, t.dtype) for n, t in tensors.items()], tensors.__getitem__)
    source = HFSource(tmp_path)
    for name, tensor in tensors.items():
        spec = TensorSpec((name,), tensor.shape[::-1], False, 1, name, tensor.shape, lambda x: x.T)
        ours = source.read_ours(spec, None)
        assert ours.flags.c_contiguous and np.array_equal(ours.view(np.uint16), tensor.T.view(np.uint16)), name
    with open(tmp_path / "model.safetensors", "r+b") as f:  # cut inside the first matrix
        f.truncate(f.seek(0, 2) - tensors["m"].nbytes // 2 - tensors["n"].nbytes - tensors["v"].nbytes)
    with pytest.raises(JaxrlError, match="ends early"):
        source.read_ours(TensorSpec(("m",), (53, 37), False, 1, "m", (37, 53), lambda x: x.T), None)
    short = tmp_path / "short.bin"  # shortened while being read (after the header was checked)
    short.write_bytes(tensors["m"][:30].tobytes())
    with pytest.raises(JaxrlError, match="ends early"):
        transpose.read_transposed(short, 0, (37, 53), tensors["m"].dtype, np.empty((53, 37), tensors["m"].dtype))


# --- the command ---------------------------------------------------------------------------------


def run_cli(args, capsys):
    code = cli.main(["analyze", *map(str, args)])
    return code, capsys.readouterr()


def test_cli_end_to_end(weights, saved, tmp_path, capsys):
    base, other = weights
    out = tmp_path / "out"
    code, io = run_cli([saved / "base_hf", saved / "run", saved / "run_hf", "--out", out, "--svd", "1"], capsys)
    assert code == 0, io.err
    rows = list(csv.DictReader(open(out / "changes.csv")))
    assert len(rows) == 2 * 7 * CONFIG.num_layers
    assert {r["run"] for r in rows} == {"run", "run_hf"} and {r["step"] for r in rows} == {"7"}
    reference = diff_trees(base, other, specs=SPECS)
    for r in rows:
        c = one(reference, f"layers.{r['module']}", int(r["layer"]))
        assert float(r["rel_change"]) == pytest.approx(c.rel_change, rel=2e-6)
        assert float(r["frac_changed"]) == c.frac_changed
        assert float(r["sv1"]) > 0 and float(r["stable_rank"]) >= 1
    data = json.loads((out / "changes.json").read_text())
    assert len(data["rows"]) == len(rows) and data["modules"] == sorted(["q", "k", "v", "o", "gate", "up", "down"])
    for name in ("summary.md", "compare_runs.png", "heatmap_run_7.png", "heatmap_run_hf_checkpoint-7.png",
                 "trajectory_q.png", "metrics.jsonl"):  # fmt: skip
        assert (out / name).stat().st_size > 0, name
    summary = (out / "summary.md").read_text()
    assert "Moved most" in summary and "Ratios to run" in summary and "| q | 1 |" in summary
    assert "GB" in io.err or "MB" in io.err  # progress with rate and ETA
    assert "ETA" in io.err


def test_cli_optional_modules(saved, tmp_path, capsys):
    out = tmp_path / "out"
    code, io = run_cli([saved / "base_orbax", saved / "run/checkpoints/7", "--out", out,
                        "--modules", "norms,embed,lm_head"], capsys)  # fmt: skip
    assert code == 0, io.err
    modules = {r["module"] for r in csv.DictReader(open(out / "changes.csv"))}
    assert modules == {"attn_norm", "mlp_norm", "q_norm", "k_norm", "final_norm", "embed", "lm_head"}


@pytest.mark.parametrize("case", ["missing base", "empty run", "other config", "bad shape", "bad module"])
def test_cli_bad_inputs(case, saved, tmp_path, capsys):
    base, run = saved / "base_hf", saved / "run"
    extra = []
    if case == "missing base":
        base = tmp_path / "nope"
    elif case == "empty run":
        run = tmp_path / "empty"
        run.mkdir()
    elif case == "other config":
        run = tmp_path / "wide"
        export_hf(init_decoder(CONFIG.replace(intermediate_size=96)), run)
    elif case == "bad shape":  # config.json says one size, the tensors another
        run = tmp_path / "lying"
        shutil.copytree(saved / "run_hf/checkpoint-7", run)
        hf = json.loads((run / "config.json").read_text())
        (run / "config.json").write_text(json.dumps({**hf, "intermediate_size": hf["intermediate_size"] * 2}))
        base = run  # a base that disagrees with its own tensors
    elif case == "bad module":
        extra = ["--modules", "attention"]
    code, io = run_cli([base, run, "--out", tmp_path / "out", *extra], capsys)
    assert code == 2
    lines = io.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jaxrl analyze: error:"), io.err


def test_core_floor_does_not_import_the_model_package():
    code = (
        "import sys, jaxrl.analysis, jaxrl.analysis.analyze, jaxrl.analysis.report; "
        "bad = [m for m in sys.modules if m.split('.')[:2] in (['jaxrl', 'models'], ['jaxrl', 'train'], "
        "['jaxrl', 'eval'])]; print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr[-1000:]
