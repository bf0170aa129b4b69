"""Time-bounded answer verification with math-verify, in a pool of worker processes.

math-verify bounds its own run time with `signal.alarm`, which works only in a main thread, and a
pathological answer (`9^{9^{9^{9}}}`) can keep sympy busy for hours. So verification runs in
separate worker processes (`verify_worker.py`, which imports only math-verify) with math-verify's
time-outs off; the pool gives each pair a deadline and kills and replaces a worker that misses
it. `MathVerifier.judge` works from any thread; calls are serialised by a lock.

A verdict is one of `VERDICTS`; only "correct" earns an accuracy reward, and the reward layer
counts everything that is not "correct" or "wrong".
"""

from __future__ import annotations

import atexit
import json
import os
import selectors
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path

VERDICTS = (
    "correct",
    "wrong",
    "no_answer",
    "answer_too_long",
    "answer_unparseable",
    "gold_unparseable",
    "timeout",
    "error",
)

WORKER_SCRIPT = Path(__file__).with_name("verify_worker.py")


class _Worker:
    """One worker process and the bytes it has sent that do not yet form a line."""

    def __init__(self, memory_limit_bytes: int):
        env = dict(os.environ, JAXRL_VERIFIER_MEMORY_BYTES=str(memory_limit_bytes))
        self.process = subprocess.Popen(
            [sys.executable, str(WORKER_SCRIPT)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        self.fd = self.process.stdout.fileno()
        self.buffer = b""
        self.ready = False
        self.started = time.monotonic()

    def send(self, request) -> None:
        self.process.stdin.write((json.dumps(request) + "\n").encode())
        self.process.stdin.flush()

    def read_lines(self) -> list | None:
        """Complete messages available now; None when the worker has exited."""
        chunk = os.read(self.fd, 1 << 16)
        if not chunk:
            return None
        self.buffer += chunk
        *lines, self.buffer = self.buffer.split(b"\n")
        messages = []
        for line in lines:
            try:
                messages.append(json.loads(line))
            except ValueError:  # not ours: the protocol has its own descriptor, but never crash on it
                continue
        return messages

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        for pipe in (self.process.stdin, self.process.stdout):
            try:
                pipe.close()
            except OSError:
                pass


class MathVerifier:
    """A pool of math-verify workers with a per-pair deadline.

    num_workers: worker processes (default: min(4, CPU count)).
    timeout_s: seconds one pair may take once a worker has it; past that the worker is killed
        and the pair's verdict is "timeout".
    max_answer_chars: longer answers are not verified ("answer_too_long").
    memory_limit_mb: address-space limit of each worker (0: none).
    start_timeout_s: how long to wait for a first worker to start before giving up ("error").
    """

    def __init__(
        self,
        num_workers: int | None = None,
        timeout_s: float = 5.0,
        max_answer_chars: int = 1000,
        memory_limit_mb: int = 4096,
        start_timeout_s: float = 120.0,
    ):
        self.num_workers = num_workers or max(1, min(4, os.cpu_count() or 1))
        self.timeout_s = timeout_s
        self.max_answer_chars = max_answer_chars
        self.memory_limit_bytes = memory_limit_mb * (1 << 20)
        self.start_timeout_s = start_timeout_s
        self.restarts = 0  # workers killed for missing a deadline or that died
        self._lock = threading.Lock()
        self._workers: list[_Worker] = []
        self._start_workers()  # they import math-verify while the caller does other work

    def _start_workers(self) -> None:
        while len(self._workers) < self.num_workers:
            self._workers.append(_Worker(self.memory_limit_bytes))

    def _replace(self, worker: _Worker) -> None:
        worker.kill()
        self._workers.remove(worker)
        self.restarts += 1
        self._start_workers()

    def judge(self, requests: Sequence[tuple[str, str, bool]]) -> list[str]:
        """Verdicts for (gold, answer, answer_is_boxed) triples; each is one of `VERDICTS`.

        gold and answer are the text inside a box (or a free-text answer when answer_is_boxed is
        False). Never raises for any input text.
        """
        verdicts: list[str | None] = [None] * len(requests)
        queue = deque()
        for i, (gold, answer, _) in enumerate(requests):
            if len(answer) > self.max_answer_chars:
                verdicts[i] = "answer_too_long"
            elif len(gold) > self.max_answer_chars:
                verdicts[i] = "gold_unparseable"
            else:
                queue.append(i)
        with self._lock:
            self._run(requests, queue, verdicts)
        return verdicts  # type: ignore[return-value]

    def _run(self, requests, queue: deque, verdicts: list) -> None:
        self._start_workers()
        running: dict[_Worker, tuple[int, float]] = {}
        give_up_starting = time.monotonic() + self.start_timeout_s
        with selectors.DefaultSelector() as selector:
            for w in self._workers:
                selector.register(w.fd, selectors.EVENT_READ, w)
            while queue or running:
                now = time.monotonic()
                for w in self._workers:
                    if queue and w.ready and w not in running:
                        i = queue.popleft()
                        try:
                            w.send(list(requests[i]))
                        except OSError:  # it died between requests; it is replaced below
                            queue.appendleft(i)
                            continue
                        running[w] = (i, now + self.timeout_s)
                if running:
                    wait = min(deadline for _, deadline in running.values()) - now
                elif not any(w.ready for w in self._workers):
                    if now > give_up_starting:
                        while queue:
                            verdicts[queue.popleft()] = "error"
                        break
                    wait = give_up_starting - now
                else:
                    wait = 0.0
                for key, _ in selector.select(timeout=max(wait, 0.0)):
                    w = key.data
                    messages = w.read_lines()
                    if messages is None:  # the worker died (out of memory, killed)
                        if w in running:
                            verdicts[running.pop(w)[0]] = "error"
                        if not w.ready:  # it could not even start (math-verify missing?): do not respawn forever
                            selector.unregister(w.fd)
                            w.kill()
                            self._workers.remove(w)
                            if not self._workers:
                                while queue:
                                    verdicts[queue.popleft()] = "error"
                                break
                            continue
                        selector.unregister(w.fd)
                        self._replace(w)
                        selector.register(self._workers[-1].fd, selectors.EVENT_READ, self._workers[-1])
                        continue
                    for message in messages:
                        if message == ["ready"]:
                            w.ready = True
                        elif w in running:
                            verdicts[running.pop(w)[0]] = message[0]
                now = time.monotonic()
                for w, (i, deadline) in list(running.items()):
                    if now >= deadline:
                        verdicts[i] = "timeout"
                        del running[w]
                        selector.unregister(w.fd)
                        self._replace(w)
                        selector.register(self._workers[-1].fd, selectors.EVENT_READ, self._workers[-1])

    def close(self) -> None:
        with self._lock:
            for w in self._workers:
                w.kill()
            self._workers = []

    def __enter__(self) -> MathVerifier:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_default: MathVerifier | None = None
_default_lock = threading.Lock()


def default_verifier() -> MathVerifier:
    """The process-wide verifier the built-in accuracy reward uses (created on first use)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = MathVerifier()
            atexit.register(_default.close)
        return _default


def set_default_verifier(verifier: MathVerifier | None) -> None:
    """Replaces the process-wide verifier (e.g. with a different time-out); closes the old one."""
    global _default
    with _default_lock:
        if _default is not None and _default is not verifier:
            _default.close()
        _default = verifier
