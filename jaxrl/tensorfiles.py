"""Safetensors directories read and written one tensor at a time.

A Hugging Face checkpoint directory holds one `model.safetensors`, or several shards listed by
`model.safetensors.index.json`. `SafetensorsDir` maps every tensor name to its file and byte range
and reads one tensor (or one slice of it) through a memory map, so reading a model never holds more
than the tensor at hand. `write_safetensors` streams tensors into shards the same way.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Iterable
from pathlib import Path

import ml_dtypes
import numpy as np

from jaxrl.errors import JaxrlError

DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


class TensorInfo:
    """Where one tensor lives: file, dtype, shape and byte offset of its data."""

    __slots__ = ("path", "dtype", "shape", "offset")

    def __init__(self, path: Path, dtype: np.dtype, shape: tuple[int, ...], offset: int):
        self.path, self.dtype, self.shape, self.offset = path, dtype, shape, offset

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


def read_header(path: Path) -> dict[str, TensorInfo]:
    """The tensors of one .safetensors file (its metadata entry dropped)."""
    try:
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
    except FileNotFoundError:
        raise JaxrlError(f"missing safetensors file {path}") from None
    except (struct.error, json.JSONDecodeError, UnicodeDecodeError, MemoryError, OverflowError):
        raise JaxrlError(f"{path} is not a valid safetensors file (bad header)") from None
    file_size = os.path.getsize(path)
    infos = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if entry.get("dtype") not in DTYPES:
            raise JaxrlError(f"{path}: tensor {name!r} has unsupported dtype {entry.get('dtype')!r}")
        start, end = entry["data_offsets"]
        info = TensorInfo(path, DTYPES[entry["dtype"]], tuple(entry["shape"]), 8 + size + start)
        if end - start != info.nbytes or info.offset + info.nbytes > file_size:
            raise JaxrlError(f"{path}: tensor {name!r} is truncated or its offsets are wrong")
        infos[name] = info
    return infos


class SafetensorsDir:
    """The tensors of a HF checkpoint directory, read lazily one at a time."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise JaxrlError(f"model directory {self.directory} does not exist")
        index = self.directory / INDEX_NAME
        if index.exists():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError):
                raise JaxrlError(f"{index} is not a valid safetensors index") from None
            files = sorted(set(weight_map.values()))
        else:
            files = sorted(p.name for p in self.directory.glob("*.safetensors"))
            if not files:
                raise JaxrlError(f"no *.safetensors files in {self.directory}")
        self.tensors: dict[str, TensorInfo] = {}
        for name in files:
            self.tensors.update(read_header(self.directory / name))
        if index.exists():
            missing = sorted(set(weight_map) - set(self.tensors))
            if missing:
                raise JaxrlError(f"{index} lists tensors no shard holds, e.g. {missing[0]!r}")

    def names(self) -> list[str]:
        return list(self.tensors)

    def info(self, name: str) -> TensorInfo:
        try:
            return self.tensors[name]
        except KeyError:
            raise JaxrlError(f"missing tensor {name!r} in {self.directory}") from None

    def read(self, name: str, index: tuple[slice, ...] | None = None) -> np.ndarray:
        """The tensor (or `tensor[index]`), copied out of a memory map in its stored dtype."""
        info = self.info(name)
        if info.nbytes == 0:
            return np.zeros(info.shape, info.dtype)
        mm = np.memmap(info.path, dtype=info.dtype, mode="r", offset=info.offset, shape=info.shape)
        try:
            return np.array(mm if index is None else mm[index])
        finally:
            del mm


def write_safetensors(
    directory: str | os.PathLike,
    specs: Iterable[tuple[str, tuple[int, ...], np.dtype]],
    produce: Callable[[str], np.ndarray],
    max_shard_bytes: int = 5 * 2**30,
) -> list[Path]:
    """Writes tensors into `model.safetensors` or numbered shards plus an index.

    `specs` lists (name, shape, dtype) in order; `produce(name)` returns that tensor when it is
    written, so only one tensor is in host memory at a time. Returns the files written.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    specs = [(n, tuple(s), np.dtype(d)) for n, s, d in specs]
    shards: list[list[tuple[str, tuple[int, ...], np.dtype]]] = [[]]
    size = 0
    for spec in specs:
        nbytes = int(np.prod(spec[1], dtype=np.int64)) * spec[2].itemsize
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += nbytes
    names = (
        [SINGLE_NAME]
        if len(shards) == 1
        else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )
    weight_map = {}
    for file_name, shard in zip(names, shards, strict=True):
        header, offset = {"__metadata__": {"format": "pt"}}, 0
        for name, shape, dtype in shard:
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            header[name] = {
                "dtype": DTYPE_NAMES[dtype],
                "shape": list(shape),
                "data_offsets": [offset, offset + nbytes],
            }
            offset += nbytes
            weight_map[name] = file_name
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)
        tmp = directory / (file_name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(blob)))
            f.write(blob)
            for name, shape, dtype in shard:
                array = np.ascontiguousarray(produce(name), dtype=dtype)
                if array.shape != shape:
                    raise JaxrlError(f"tensor {name!r} has shape {array.shape}, expected {shape}")
                f.write(array.reshape(-1).view(np.uint8).data)
        os.replace(tmp, directory / file_name)
    if len(shards) > 1:
        total = sum(int(np.prod(s, dtype=np.int64)) * d.itemsize for _, s, d in specs)
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (directory / INDEX_NAME).write_text(json.dumps(index, indent=2))
    return [directory / n for n in names]
