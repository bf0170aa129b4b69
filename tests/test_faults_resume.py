"""Fault injection, processes: `jaxrl train sft|grpo` killed with SIGKILL at seeded random points,
stopped with SIGTERM, and resumed from damaged checkpoints ends bitwise equal to the same run left
alone (the Orbax params of the last checkpoint).

Each run is a child process running `jaxrl.cli.main(["train", ...])`, forked from a server that has
already imported jaxrl (saves ~10 s of imports per run on a loaded machine); the children share a
persistent compilation cache, so only the first run of each method compiles. Both methods' uninterrupted
reference runs start together when the module's fixture is set up; each interrupted chain starts
once its reference has compiled (so it finds the cache warm) and runs beside it, in threads;
tests/test_faults.py starts them all before its bad-input cases, which then run meanwhile.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import multiprocessing
import os
import random
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from jaxrl.models.tiny import build_tiny_model

from tests.runs import final_params

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests/fixtures/data/openr1_math_sample.jsonl"
DEVICES = 1  # one CPU device per child: the quickest compile (tests/test_train_resume.py covers fsdp=2)
SEED = 20260
SFT_STEPS, GRPO_STEPS = 10, 10  # >= 3 steps after the last signal: a fast machine cannot finish first
CHILD_TIMEOUT_S = 240

_FORKSERVER = multiprocessing.get_context("forkserver")
_FORKSERVER.set_forkserver_preload([
    "jaxrl.cli", "jaxrl.train.sft", "jaxrl.train.grpo", "torch", "transformers.models.auto.tokenization_auto",
])  # fmt: skip


def digit_share(prompts, completions, **columns):
    """A dense toy GRPO reward (rarely tied within a group): the share of digits in a completion."""
    return [sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]


def _child(argv: list[str], log: str, cache_dir: str, function=None) -> None:
    """Runs in the forked child: output to `log`, a shared compile cache, then `jaxrl argv` (or
    `function(*argv)`, whose exception exits with status 1 after its traceback)."""
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={DEVICES}"
    os.environ["JAX_PLATFORMS"] = "cpu"
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout.reconfigure(line_buffering=True)
    sys.stderr.reconfigure(line_buffering=True)
    import jax

    jax.config.update("jax_disable_most_optimizations", True)  # compiles in half the time; same for every run
    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    if function is None:
        from jaxrl import cli

        code = cli.main(argv)
    else:
        try:
            function(*argv)
            code = 0
        except BaseException:
            import traceback

            traceback.print_exc()
            code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


@dataclasses.dataclass
class Outcome:
    code: int
    log: str
    resumable: list[int]  # complete checkpoints when the run started
    complete_at_exit: list[int]  # and when it had ended
    signalled_at_step: int | None = None  # the step this run had logged when the signal was sent
    exit_after_signal_s: float | None = None


def logged_steps(run: Path, since: float) -> list[int]:
    """Steps in RUN/metrics.jsonl logged after `since` (this process's rows)."""
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    steps = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if row.get("time", 0) >= since:
            steps.append(row["step"])
    return steps


def launch(argv: list, run: Path, cache: Path, *, at_step: int | None = None, delay_s: float = 0.0,
           sig: int = signal.SIGKILL, function=None) -> Outcome:  # fmt: skip
    """Runs `jaxrl argv` (or `function(*argv)`) in a child; once the run logged `at_step` (and
    `delay_s` later), sends `sig`."""
    log = run.parent / f"{run.name}.log"
    offset = log.stat().st_size if log.exists() else 0
    started, resumable = time.time(), complete_steps(run)
    child = _FORKSERVER.Process(target=_child, args=(argv, str(log), str(cache), function))
    child.start()
    seen = sent = None
    if at_step is not None:
        deadline = time.monotonic() + CHILD_TIMEOUT_S
        while child.is_alive() and time.monotonic() < deadline:
            steps = logged_steps(run, started)
            if steps and max(steps) >= at_step:
                time.sleep(delay_s)
                seen = max(logged_steps(run, started))
                os.kill(child.pid, sig)
                sent = time.monotonic()
                break
            time.sleep(0.01)
    child.join(CHILD_TIMEOUT_S)
    exit_after_signal_s = None if sent is None else time.monotonic() - sent
    if child.is_alive():
        child.kill()
        child.join()
        raise AssertionError(f"jaxrl {' '.join(argv[:2])} hung; log:\n{log.read_text()[offset:]}")
    text = log.read_text()[offset:]
    assert at_step is None or sent is not None, f"the run ended before step {at_step}:\n{text}"
    return Outcome(child.exitcode, text, resumable, complete_steps(run), seen, exit_after_signal_s)


def complete_steps(run: Path) -> list[int]:
    """Checkpoint steps Orbax finished (renamed from their temporary directory)."""
    if not (run / "checkpoints").is_dir():
        return []
    return sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())


def truncate_largest_params_file(step_dir: Path) -> str:
    largest = max((p for p in (step_dir / "params").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    largest.write_bytes(largest.read_bytes()[: largest.stat().st_size // 3])
    return f"truncated {largest.relative_to(step_dir)}"


def delete_params_manifest(step_dir: Path) -> str:
    """(params/_METADATA is not needed when restoring onto a known tree; the OCDBT manifest is.)"""
    (step_dir / "params" / "manifest.ocdbt").unlink()
    return "deleted params/manifest.ocdbt"


def kill_points(rng: random.Random, windows: list[tuple[int, int]]) -> list[tuple[int, float]]:
    """One (step, delay in seconds) per window: signal once the run logged that step, after the delay."""
    return [(rng.randint(lo, hi), round(rng.uniform(0.0, 0.2), 3)) for lo, hi in windows]


def sft_argv(model: Path, run: Path) -> list[str]:
    return [
        "train", "sft", "--recipe", str(REPO / "train/recipes/sft-tiny.yaml"), f"model.path={model}",
        f"data.dataset_name={DATA}", f"loop.output_dir={run}", f"loop.max_steps={SFT_STEPS}",
        "sft.batch_size=2", "checkpoint.save_steps=2", "checkpoint.save_total_limit=2",
        f"loop.mesh=data=1,fsdp={DEVICES},tensor=1",
    ]  # fmt: skip


def grpo_argv(model: Path, run: Path) -> list[str]:
    return [
        "train", "grpo", "--recipe", str(REPO / "train/recipes/grpo-tiny.yaml"), f"model.path={model}",
        f"data.dataset_name={DATA}", f"loop.output_dir={run}", f"loop.max_steps={GRPO_STEPS}",
        "grpo.num_iterations=2", "grpo.max_completion_length=16", "grpo.mask_truncated_completions=false",
        "grpo.reward_funcs=[test_faults_resume:digit_share,format]",
        "checkpoint.save_steps=1", "checkpoint.save_total_limit=3", f"loop.mesh=data=1,fsdp={DEVICES},tensor=1",
    ]  # fmt: skip


SFT_POINTS = kill_points(random.Random(SEED), [(1, 2), (3, 4), (5, 6)])  # 3 x SIGKILL
SFT_TERM_POINT = kill_points(random.Random(SEED + 2), [(3, 6)])[0]  # SIGTERM, in a run of its own
GRPO_POINTS = kill_points(random.Random(SEED + 1), [(1, 3), (4, 5), (6, 7)])  # 3 x SIGKILL
# Before the 3rd and the 4th GRPO run the newest complete checkpoint is damaged (>= 2 exist by then:
# a run that logged step k >= 4 has finished the checkpoints of steps k - 3 and k - 2).
GRPO_DAMAGES = {2: truncate_largest_params_file, 3: delete_params_manifest}


def wait_until_compiled(run: Path, reference: concurrent.futures.Future) -> None:
    """Until the reference logged its first step (its compiled programs are in the cache)."""
    while not reference.done() and not logged_steps(run, 0):
        time.sleep(0.05)


def sft_chain(model: Path, run: Path, cache: Path) -> list[Outcome]:
    history = []
    for at_step, delay in SFT_POINTS:
        out = launch(sft_argv(model, run), run, cache, at_step=at_step, delay_s=delay)
        assert out.code == -signal.SIGKILL, out.log
        history.append(out)
    history.append(launch(sft_argv(model, run), run, cache))
    return history


def sft_term_chain(model: Path, run: Path, cache: Path) -> list[Outcome]:
    at_step, delay = SFT_TERM_POINT
    term = launch(sft_argv(model, run), run, cache, at_step=at_step, delay_s=delay, sig=signal.SIGTERM)
    return [term, launch(sft_argv(model, run), run, cache)]


def grpo_chain(model: Path, run: Path, cache: Path) -> tuple[list[Outcome], list[tuple[int, int, str]]]:
    history, damaged = [], []
    for i, (at_step, delay) in enumerate(GRPO_POINTS):
        if i in GRPO_DAMAGES:
            damaged.append(damage_newest(run, GRPO_DAMAGES[i]))
        out = launch(grpo_argv(model, run), run, cache, at_step=at_step, delay_s=delay)
        assert out.code == -signal.SIGKILL, out.log
        history.append(out)
    damaged.append(damage_newest(run, GRPO_DAMAGES[len(GRPO_POINTS)]))
    history.append(launch(grpo_argv(model, run), run, cache))
    return history, damaged


def damage_newest(run: Path, damage) -> tuple[int, int, str]:
    """(damaged step, the step before it, what was done)."""
    steps = complete_steps(run)
    assert len(steps) >= 2, steps
    return steps[-1], steps[-2], damage(run / "checkpoints" / str(steps[-1]))


def nonfinite_argv(model: Path, run: Path) -> list[str]:
    """SFT with a learning rate of 1e30: the first update blows the params up, the next losses are
    not finite; 2 in a row stop the run."""
    return sft_argv(model, run) + ["optimizer.learning_rate=1e30", "optimizer.warmup_ratio=0",
                                   "loop.max_nonfinite_steps=2", "checkpoint.save_steps=1"]  # fmt: skip


_TRACKS: dict | None = None


def start_tracks(root: Path) -> dict:
    """Starts, once per session, every run of this module and of test_faults_nonfinite.py in
    threads: SFT and GRPO each uninterrupted (the reference) and interrupted (the chain, which begins
    once its reference has compiled), the SFT run with a learning rate of 1e30, and the poisoned
    loop. tests/test_faults.py calls this first, so the runs go on while its bad-input cases run in
    the test process."""
    global _TRACKS
    if _TRACKS is not None:
        return _TRACKS
    model = build_tiny_model(root / "model", "tiny-olmo2", seed=0)
    cache = root / "jit-cache"
    pool = concurrent.futures.ThreadPoolExecutor(8)
    tracks = {}
    for method, argv, chains in (("sft", sft_argv, {"sft": sft_chain, "sft-term": sft_term_chain}),
                                 ("grpo", grpo_argv, {"grpo": grpo_chain})):  # fmt: skip
        straight = root / f"{method}-straight"
        reference = pool.submit(launch, argv(model, straight), straight, cache)
        for name, chain in chains.items():
            interrupted = root / f"{name}-interrupted"

            def track(chain=chain, straight=straight, interrupted=interrupted, reference=reference):
                wait_until_compiled(straight, reference)
                return chain(model, interrupted, cache)

            tracks[name] = (straight, interrupted, reference, pool.submit(track))
    nonfinite = root / "sft-nonfinite"
    tracks["nonfinite"] = (nonfinite, pool.submit(launch, nonfinite_argv(model, nonfinite), nonfinite, cache))
    from test_faults_nonfinite import poisoned_run

    poisoned = root / "poisoned"
    tracks["poisoned"] = (poisoned, pool.submit(launch, [str(model), str(poisoned)], poisoned, cache,
                                                function=poisoned_run))  # fmt: skip
    pool.shutdown(wait=False)  # the threads end with their runs
    _TRACKS = tracks
    return tracks


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return start_tracks(tmp_path_factory.mktemp("faults-resume"))


def assert_same_params(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    different = [k for k in expected if not np.array_equal(got[k], expected[k])]
    assert not different, f"params differ from the uninterrupted run: {different}"


def assert_one_story(run: Path, total: int) -> None:
    """metrics.jsonl of the interrupted run has every step once, in order."""
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, total + 1))


def assert_resumed_when_possible(history: list[Outcome]) -> None:
    for out in history:
        if out.resumable:
            assert "resumed from checkpoint step" in out.log, out.log
        else:
            assert "resumed from checkpoint step" not in out.log, out.log


@pytest.mark.slow
def test_sft_killed_at_random_points_resumes_bitwise(runs):
    """SIGKILL at 3 seeded points, each resumed: the final params equal the uninterrupted run's bitwise."""
    straight, run, reference, chain = runs["sft"]
    ref, history = reference.result(), chain.result()
    assert ref.code == 0, ref.log
    assert_resumed_when_possible(history)
    assert history[-1].code == 0, history[-1].log
    assert_same_params(final_params(run, SFT_STEPS), final_params(straight, SFT_STEPS))
    assert_one_story(run, SFT_STEPS)
    print("sft: SIGKILL at (step, delay s)", SFT_POINTS, "; killed after steps",
          [k.signalled_at_step for k in history[:-1]])  # fmt: skip


@pytest.mark.slow
def test_sft_sigterm_checkpoints_and_resumes_bitwise(runs):
    """SIGTERM: the step finishes, a checkpoint of it is written, exit 0 within 30 s; the next run
    resumes from that checkpoint and ends bitwise equal to the uninterrupted run."""
    straight, run, reference, chain = runs["sft-term"]
    ref, (term, last) = reference.result(), chain.result()
    assert ref.code == 0, ref.log
    assert term.code == 0, term.log
    assert term.exit_after_signal_s < 30, term.exit_after_signal_s
    saved = int(term.log.split("SIGTERM: saved checkpoint step ")[1].split(";")[0])
    assert term.signalled_at_step <= saved < SFT_STEPS, (saved, term.signalled_at_step)
    assert saved == term.complete_at_exit[-1], term.complete_at_exit
    assert f"resumed from checkpoint step {saved} " in last.log, last.log
    assert last.code == 0, last.log
    assert_same_params(final_params(run, SFT_STEPS), final_params(straight, SFT_STEPS))
    assert_one_story(run, SFT_STEPS)
    print(f"sft: SIGTERM after step {term.signalled_at_step} saved step {saved} and exited "
          f"{term.exit_after_signal_s:.1f} s after the signal")  # fmt: skip


@pytest.mark.slow
def test_grpo_killed_at_random_points_resumes_bitwise(runs):
    """SIGKILL at 3 seeded points (inside and between generation batches); before the last two resumes
    the newest checkpoint is damaged (a params file truncated, or params/manifest.ocdbt deleted): resume
    warns, moves it aside and continues from the one before; the final params equal the
    uninterrupted run's bitwise."""
    straight, run, reference, chain = runs["grpo"]
    ref, (history, damaged) = reference.result(), chain.result()
    assert ref.code == 0, ref.log
    assert_resumed_when_possible(history)
    assert history[-1].code == 0, history[-1].log
    for (bad, previous, what), out in zip(damaged, history[2:], strict=True):
        assert f"warning: checkpoint step {bad} in " in out.log, (what, out.log)
        assert f"resuming from step {previous}" in out.log, (what, out.log)
        assert f"resumed from checkpoint step {previous} " in out.log, (what, out.log)
    assert len(list((run / "checkpoints.corrupt").iterdir())) == len(damaged)
    assert_same_params(final_params(run, GRPO_STEPS), final_params(straight, GRPO_STEPS))
    assert_one_story(run, GRPO_STEPS)
    rows = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert any(r["grad_norm"] > 0 for r in rows), "the reward gave no signal: the comparison would be vacuous"
    print("grpo: signals at (step, delay s)", GRPO_POINTS, "; killed after steps",
          [k.signalled_at_step for k in history[:-1]], "; damaged (step, fell back to, how):", damaged)  # fmt: skip
