"""Reading an offline W&B run back from its files, and keeping W&B off the network in tests.

A run's `run-<id>.wandb` file is a LevelDB-style record log (what `wandb sync` uploads): a 7-byte
header (`:W&B`, magic 0xBEE1, version 0), then 32 KiB blocks of records, each a 7-byte header
(CRC-32 of the type byte and the data, little-endian length, type: 1 full, 2 first, 3 middle,
4 last piece) and its data; a block's last bytes are zeros when no header fits. Each record is a
`wandb_internal_pb2.Record` protobuf (wandb's own message types, installed with it). wandb itself
no longer ships a Python reader, so `records` reads the format and checks every CRC.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import zlib
from pathlib import Path
from typing import Any

BLOCK, HEADER = 32768, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: str | Path):
    """The protobuf Records of a .wandb file, in order; AssertionError on a bad header or CRC."""
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    assert struct.unpack("<4sHB", data[:HEADER]) == (b":W&B", 0xBEE1, 0), "not a W&B record log"
    pos, pieces = HEADER, []
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # the block's tail: padding
            pos += left
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if (crc, length, kind) == (0, 0, 0):  # zeros to the block's end
            pos += left
            continue
        body = data[pos + HEADER : pos + HEADER + length]
        assert zlib.crc32(body, zlib.crc32(bytes([kind]))) == crc, f"bad CRC at byte {pos}"
        assert kind in (FULL, FIRST, MIDDLE, LAST) and (kind in (FULL, FIRST)) == (not pieces), f"bad record at {pos}"
        pieces.append(body)
        pos += HEADER + length
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(pieces))
            pieces = []
            yield record
    assert not pieces, "the file ends inside a record"


def _item_key(item) -> str:
    return item.key or "/".join(item.nested_key)


class OfflineRun:
    """One offline run directory (`.../wandb/offline-run-<time>-<id>`): its id, project, config
    and history rows (`{key: value}`, values decoded from JSON)."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        (path,) = self.directory.glob("run-*.wandb")
        self.history: list[dict[str, Any]] = []
        self.config: dict[str, Any] = {}
        self.complete = False  # the run's exit record is in the file
        for record in records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                self.id, self.project, self.name = record.run.run_id, record.run.project, record.run.display_name
                self.config.update({_item_key(i): json.loads(i.value_json) for i in record.run.config.update})
            elif kind == "config":
                self.config.update({_item_key(i): json.loads(i.value_json) for i in record.config.update})
            elif kind == "history":
                self.history.append({_item_key(i): json.loads(i.value_json) for i in record.history.item})
            elif kind == "exit":
                self.complete = True


def offline_runs(root: str | Path) -> list[OfflineRun]:
    """Every offline run under `root` (a W&B dir holding `wandb/`), oldest first, each complete.

    `run.finish()` can return before wandb's service process has written the file out; stopping
    the service (`wandb.teardown()`, what a process does at exit) waits for it."""
    import wandb

    wandb.teardown()
    runs = [OfflineRun(d) for d in sorted(Path(root).glob("wandb/offline-run-*"))]
    assert all(r.complete for r in runs), "an offline run's file ends before its exit record"
    return runs


class NetworkTrap:
    """A local server every W&B URL and proxy points at while a test runs: a connection to it, or
    a Python socket reaching past the loopback, is recorded (`attempts`), and the test fails."""

    def __init__(self):
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen()
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        self.attempts: list[str] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                try:
                    self.attempts.append(conn.recv(200).decode("latin-1").splitlines()[0])
                except (OSError, IndexError):
                    self.attempts.append("a connection")

    def guard(self, monkeypatch) -> None:
        """W&B's base URL and every proxy to the trap; Python sockets kept to the loopback and Unix
        sockets (wandb talks to its own service process over one)."""
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
            monkeypatch.setenv(name, self.url)
        monkeypatch.setenv("NO_PROXY", "")
        monkeypatch.setenv("no_proxy", "")
        monkeypatch.setenv("WANDB_BASE_URL", self.url)
        connect, trap = socket.socket.connect, self

        def guarded(sock, address):
            if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in ("127.0.0.1", "::1", "localhost"):
                trap.attempts.append(f"connect {address}")
                raise OSError(f"test: no network ({address})")
            return connect(sock, address)

        monkeypatch.setattr(socket.socket, "connect", guarded)

    def close(self) -> None:
        self.server.close()
