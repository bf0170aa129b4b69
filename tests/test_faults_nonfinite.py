"""Fault injection, non-finite values: a NaN/Inf loss or gradient skips that update (params and
optimizer state unchanged), is counted and logged, and K in a row stop the run with a one-line
error while the last good checkpoint stays. Shown through the loop (an injected infinite loss on
chosen steps) and through `jaxrl train sft` (a learning rate of 1e30)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jax
import numpy as np
import pytest
from jaxrl.models.checkpoint import load_model
from jaxrl.train.checkpointing import Checkpoints
from jaxrl.train.config import OptimizerConfig
from jaxrl.train.loop import Trainer, fit
from jaxrl.train.sft import sft_loss

from jaxrl.data.batching import padded_rows
from jaxrl.errors import JaxrlError
from jaxrl.metrics import MetricsLogger
from jaxrl.sharding import LogicalMesh, make_mesh


class PoisonedBatches:
    """Random-token SFT batches; the batch of each step in `poisoned` scales the loss by inf."""

    def __init__(self, poisoned: set[int], rows: int = 4, length: int = 32):
        self.poisoned, self.rows, self.length, self.position = poisoned, rows, length, 0

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(self.position)
        examples = [(rng.integers(2, 384, self.length).astype(np.int32), np.ones(self.length, bool))
                    for _ in range(self.rows)]  # fmt: skip
        batch = padded_rows(examples, self.length, pad_id=1)._asdict()
        self.position += 1
        batch["scale"] = np.full(self.rows, np.inf if self.position in self.poisoned else 1.0, np.float32)
        return batch

    def state(self) -> dict[str, int]:
        return {"position": self.position}

    def restore(self, state) -> None:
        self.position = state["position"]


def scaled_sft_loss(model, batch):
    num, den, aux = sft_loss(model, batch)
    return num * batch["scale"][0], den, aux


def poisoned_run(model_dir: str, run: str) -> None:
    """Inf on steps 2, 4 and 5 with K=2 (runs in a child process, beside the other fault runs);
    writes what the test checks to RUN/result.json."""
    run = Path(run)
    mesh = LogicalMesh(make_mesh("data=1,fsdp=1,tensor=1"))
    trainer = Trainer(load_model(model_dir, mesh), scaled_sft_loss, OptimizerConfig(learning_rate=1e-3), 6, mesh=mesh)
    checkpoints = Checkpoints(run / "checkpoints")
    logger = MetricsLogger(run, 6, tensorboard=False, progress=False)
    params_after = {0: jax.tree.map(np.asarray, trainer.params)}

    def on_step(step, metrics):
        params_after[step] = jax.tree.map(np.asarray, trainer.params)

    def same(a, b):
        return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))

    try:
        fit(trainer, PoisonedBatches({2, 4, 5}), 6, checkpoints, logger, save_interval=1, max_nonfinite_steps=2,
            on_step=on_step)  # fmt: skip
        stopped = None
    except JaxrlError as e:
        stopped = str(e)
    checkpoints.close()
    logger.close()
    _, _, state = Checkpoints(run / "checkpoints").restore(3, *trainer.abstract_state())
    result = {
        "stopped": stopped, "steps_run": sorted(params_after), "checkpoints": checkpoints.steps(),
        "skipped_in_checkpoint_3": state["skipped_updates"],
        "unchanged": {f"{b} vs {a}": same(params_after[b], params_after[a])
                      for a, b in ((0, 1), (1, 2), (2, 3), (3, 5))},
    }  # fmt: skip
    (run / "result.json").write_text(json.dumps(result))


@pytest.mark.slow
def test_poisoned_steps_are_skipped_counted_and_recovered(runs):
    """Inf on steps 2, 4 and 5 with K=2: step 2 is skipped (params bitwise unchanged) and the run
    recovers at step 3; steps 4-5 stop it; checkpoints exist only after good steps."""
    run, future = runs["poisoned"]
    out = future.result()
    assert out.code == 0, out.log
    result = json.loads((run / "result.json").read_text())
    message = result["stopped"]
    assert message is not None and "\n" not in message
    assert re.search(r"2 non-finite updates in a row \(steps 4-5\); stopped, the last good checkpoint is step 3 ",
                     message), message  # fmt: skip
    assert result["steps_run"] == [0, 1, 2, 3, 4, 5]
    assert result["unchanged"] == {"1 vs 0": False, "2 vs 1": True, "3 vs 2": False, "5 vs 3": True}
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_updates"] for r in rows] == [0, 1, 1, 2, 3]
    assert [r["step"] for r in rows if r["loss"] in ("inf", "nan", "-inf")] == [2, 4, 5]
    assert len(re.findall(r"step \d: non-finite loss or gradient .* update skipped", out.log)) == 3
    assert result["checkpoints"] == [1, 3]  # never a checkpoint inside a non-finite streak
    assert result["skipped_in_checkpoint_3"] == 1


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from test_faults_resume import start_tracks

    return start_tracks(tmp_path_factory.mktemp("faults-resume"))


@pytest.mark.slow
def test_huge_learning_rate_skips_then_stops(runs):
    """`jaxrl train sft optimizer.learning_rate=1e30 loop.max_nonfinite_steps=2`: exit 2 with one
    error line naming the streak and the last good checkpoint; skips counted in metrics.jsonl."""
    run, future = runs["nonfinite"]
    out = future.result()
    assert out.code == 2, out.log
    error = out.log.strip().splitlines()[-1]
    found = re.fullmatch(r"jaxrl train: error: 2 non-finite updates in a row \(steps (\d+)-(\d+)\); stopped, "
                         r"the last good checkpoint is step (\d+) in \S+; lower the learning rate or check the data",
                         error)  # fmt: skip
    assert found, out.log
    first, last, kept = map(int, found.groups())
    assert last == first + 1 and kept == first - 1
    assert "Traceback" not in out.log
    assert len(re.findall(r"non-finite loss or gradient .* update skipped", out.log)) == 2
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_updates"] for r in rows][-3:] == [0, 1, 2]
    steps = sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())
    assert steps[-1] == kept
