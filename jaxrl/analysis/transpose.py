"""Laying a HF matrix [out, in] out as ours ([in, out] viewed in our shape), on every core.

numpy copies a transposed view element by element in one call, cache-unfriendly on both sides.
Here the HF rows are copied in bands of `BAND` rows (contiguous reads, short strided writes, the
band and its destination lines stay in cache), and the bands are shared out among threads:
numpy's copies release the GIL. Read from a file, each thread reads its rows a block at a time
(`os.preadv`, also without the GIL) and transposes the block while it is still in cache, so the
matrix as stored is never held whole. On 2 cores, 1.2 GB of bf16 matrices took 1.06 s in one
thread and 0.57 s in two, against 3.7 s for numpy's one-call copy.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

import numpy as np

from jaxrl.errors import JaxrlError

BAND = 16  # HF rows per strided copy
BLOCK_BYTES = 1 << 20  # rows read from a file per thread at a time: stays in a core's cache
THREADS = min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


@cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(THREADS, thread_name_prefix="jaxrl-transpose")


def _shared_out(rows: int, work) -> None:
    """Runs work(first_row, end_row) on THREADS row ranges (multiples of BAND) and waits."""
    share = -(-rows // THREADS // BAND) * BAND or BAND
    parts = [_pool().submit(work, lo, min(rows, lo + share)) for lo in range(0, rows, share)]
    for part in parts:
        part.result()  # re-raises a worker's error


def _copy_bands(dst: np.ndarray, src: np.ndarray, first_row: int) -> None:
    """dst[:, first_row + i] = src[i] for every row i of src, a band at a time."""
    for i in range(0, src.shape[0], BAND):
        dst[:, first_row + i : first_row + i + BAND] = src[i : i + BAND].T


def transpose_into(dst: np.ndarray, src: np.ndarray) -> None:
    """dst[...] = src.T for a 2-D src and a C-contiguous dst [cols, rows]."""
    _shared_out(src.shape[0], lambda lo, hi: _copy_bands(dst, src[lo:hi], lo))


def read_transposed(path: Path, offset: int, shape: tuple[int, int], dtype: np.dtype, dst: np.ndarray) -> None:
    """dst[...] = M.T for the C-order matrix M of `shape` stored in `path` at byte `offset`."""
    rows, cols = shape
    row_bytes = cols * dtype.itemsize
    block_rows = max(BAND, BLOCK_BYTES // max(1, row_bytes) // BAND * BAND)

    def work(lo: int, hi: int) -> None:
        block = np.empty((block_rows, cols), dtype)
        fd = os.open(path, os.O_RDONLY)
        try:
            for start in range(lo, hi, block_rows):
                n = min(block_rows, hi - start)
                view, done, want = memoryview(block.reshape(-1).view(np.uint8)), 0, n * row_bytes
                while done < want:
                    got = os.preadv(fd, [view[done:want]], offset + start * row_bytes + done)
                    if not got:
                        raise JaxrlError(f"{path} ends early (truncated while being read?)")
                    done += got
                _copy_bands(dst, block[:n], start)
        finally:
            os.close(fd)

    _shared_out(rows, work)
