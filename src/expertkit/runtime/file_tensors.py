"""A model's safetensors files read tensor by tensor: shapes from the headers, tensors on first use.

The headers are parsed here (an 8-byte length, then a JSON index of names, dtypes, shapes and byte
ranges: the safetensors format) rather than through ``safetensors``' numpy loader, which needs
``ml_dtypes`` for bf16 (its import alone is about 0.55 s) and reads whole files. Parsing them costs
no torch import, so the ONNX decoder's one-shot path learns the shapes and reads the embedding rows
it needs (bf16 widened to fp32 exactly, by a bit shift) without loading torch; torch tensors
(:meth:`FileTensors.__getitem__`) are read with ``safetensors`` itself, torch imported then.
Headers are bounded in size, and every byte range must lie inside its file.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from expertkit.errors import ModelLoadError

MAX_HEADER_BYTES = 100 << 20  # the safetensors format's own limit
DAMAGED = "the file is damaged or not what it claims: restore it (re-install the expert, or pull the model again)"
NUMPY_DTYPES = {"F32": "<f4", "F16": "<f2", "BF16": "<u2"}  # safetensors stores little-endian


@dataclass(frozen=True)
class TensorEntry:
    path: Path
    dtype: str  # the safetensors dtype name (F32, BF16, ...)
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    end: int


def safetensors_index(path: Path) -> dict[str, TensorEntry]:
    """Each tensor of one safetensors file by name, from its header alone.

    Raises:
        ModelLoadError: the header is not a safetensors header, or a range lies outside the file.
    """
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(8)
        length = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if not 2 <= length <= min(MAX_HEADER_BYTES, size - 8):
            raise ModelLoadError(f"{path} is not a safetensors file (header length {length})", DAMAGED)
        try:
            header = json.loads(handle.read(length))
        except ValueError as exc:
            raise ModelLoadError(f"{path}: its safetensors header is not JSON: {exc}", DAMAGED) from exc
    if not isinstance(header, dict):
        raise ModelLoadError(f"{path}: its safetensors header is not a JSON object", DAMAGED)
    entries = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            start, end = (8 + length + int(o) for o in info["data_offsets"])
            entry = TensorEntry(path, str(info["dtype"]), tuple(int(d) for d in info["shape"]), start, end)
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelLoadError(f"{path}: tensor {name!r} has no valid dtype, shape and offsets", DAMAGED) from exc
        if not 8 + length <= start <= end <= size:
            raise ModelLoadError(f"{path}: tensor {name!r} lies outside the file", DAMAGED)
        entries[name] = entry
    return entries


class FloatRows:
    """One float tensor of a safetensors file, memory-mapped once; indexing it (rows along the first
    axis) reads those rows as fp32 numpy: F32 and F16 as numpy reads them, BF16 widened exactly (its
    16 bits are the top half of an fp32). An embedding table is looked up this way, row by row."""

    def __init__(self, entry: TensorEntry) -> None:
        if entry.dtype not in NUMPY_DTYPES:
            raise ModelLoadError(f"{entry.path}: a {entry.dtype} tensor where a float tensor was expected", DAMAGED)
        kind = np.dtype(NUMPY_DTYPES[entry.dtype])
        if entry.end - entry.start != int(np.prod(entry.shape, dtype=np.int64)) * kind.itemsize:
            raise ModelLoadError(f"{entry.path}: a tensor's byte range does not match its shape {entry.shape}", DAMAGED)
        self.entry, self.shape = entry, entry.shape
        self._stored = np.memmap(entry.path, dtype=kind, mode="r", offset=entry.start, shape=entry.shape)

    def __getitem__(self, rows: Any) -> np.ndarray:
        picked = np.asarray(self._stored[rows])
        if self.entry.dtype == "BF16":
            return (picked.astype(np.uint32) << 16).view(np.float32)
        return picked.astype(np.float32)


class FileTensors(Mapping[str, Any]):
    """The model's safetensors tensors by name, each read (memory-mapped) and cast to ``dtype`` (a
    torch dtype's name) on first use and kept: a decoder that needs only some of them (the ONNX
    decoder: embedding rows) never pays for casting the rest. Shapes come from the files' headers."""

    def __init__(self, model_dir: Path, dtype: str) -> None:
        self.dtype = dtype
        self.entries: dict[str, TensorEntry] = {}
        for path in sorted(model_dir.glob("*.safetensors")):
            self.entries.update(safetensors_index(path))
        self.shapes: dict[str, tuple[int, ...]] = {name: e.shape for name, e in self.entries.items()}
        self._read: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        """Tensor ``name`` as a torch tensor in ``dtype`` (imports torch)."""
        if name not in self._read:
            import torch

            self._read[name] = self.stored(name).to(getattr(torch, self.dtype))
        return self._read[name]

    def stored(self, name: str) -> Any:
        """Tensor ``name`` as the file stores it, a torch tensor (not cast, not kept; imports torch)."""
        from safetensors import safe_open

        with safe_open(str(self.entries[name].path), "pt") as handle:
            return handle.get_tensor(name)

    def float_rows(self, name: str) -> FloatRows:
        """Tensor ``name`` read row by row as fp32 numpy (no torch)."""
        return FloatRows(self.entries[name])

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)
