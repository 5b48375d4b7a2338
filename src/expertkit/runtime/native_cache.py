"""The base model's packed blocks kept on disk, so a process after the first maps them (milliseconds)
instead of reading and rounding every weight again (about 3 s for SmolLM2-135M on 2 cores).

One directory per base model and quantisation under ``$EXPERTKIT_HOME/native/packed/<key>``: the
arrays back to back in ``arrays.bin`` and their names, dtypes, shapes and offsets in
``index.json``. The key hashes the model's weights (its fingerprint), the quantisation and the
packing code, so a changed model or layout packs anew. Written to a temporary directory, then
renamed. The C decoder reads these arrays without bounds of its own, so on load every array must be
exactly the size its matrix's rows and columns imply, and inside the file; anything else is
ignored and packed again.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from expertkit.home import expertkit_home
from expertkit.runtime import native_weights
from expertkit.runtime.native_decoder import NAMES, PROJECTIONS, NativeWeights
from expertkit.runtime.native_weights import BLOCK, LANES, PackedMatrix

FIELDS = ("codes", "scale", "low", "bias")
DTYPES = {"codes": "uint8", "scale": "float16", "low": "float16", "bias": "float32"}
REQUIRED = {4: ("codes", "scale", "low"), 8: ("codes", "scale")}
MAX_INDEX_BYTES = 4 << 20


def packed_dir(weights_sha256: str, quantize: str) -> Path:
    code = hashlib.sha256(Path(native_weights.__file__).read_bytes()).hexdigest()[:12]
    key = hashlib.sha256(f"{weights_sha256}:{quantize}:{code}".encode()).hexdigest()[:24]
    return expertkit_home() / "native" / "packed" / key


def _matrices(weights: NativeWeights) -> dict[str, PackedMatrix]:
    named = {f"layers.{i}.{key}": layer[key] for i, layer in enumerate(weights.layers) for key in PROJECTIONS}
    named["embed"] = weights.embed
    if weights.head is not weights.embed:
        named["head"] = weights.head
    return named


def save_packed(weights: NativeWeights, target: Path) -> None:
    """Write ``weights`` into ``target`` (atomically: a temporary directory renamed)."""
    arrays: dict[str, np.ndarray] = {}
    meta: dict[str, Any] = {}
    for name, matrix in _matrices(weights).items():
        meta[name] = {"rows": matrix.rows, "cols": matrix.cols, "kind": matrix.kind}
        for field in FIELDS:
            if (value := getattr(matrix, field)) is not None:
                arrays[f"{name}.{field}"] = value
    for i, (attn, ffn) in enumerate(weights.norms):
        arrays[f"norms.{i}.attn"], arrays[f"norms.{i}.ffn"] = attn, ffn
    arrays["final_norm"] = weights.final_norm
    target.parent.mkdir(parents=True, exist_ok=True)
    index: dict[str, Any] = {"matrices": meta, "arrays": {}}
    tmp = tempfile.mkdtemp(prefix=".pack-", dir=target.parent)
    try:
        offset = 0
        with (Path(tmp) / "arrays.bin").open("wb") as out:
            for name, value in arrays.items():
                data = np.ascontiguousarray(value)
                index["arrays"][name] = {"dtype": str(data.dtype), "shape": list(data.shape), "offset": offset}
                out.write(data.tobytes())
                offset += data.nbytes
                pad = -offset % 64
                out.write(b"\0" * pad)
                offset += pad
        (Path(tmp) / "index.json").write_text(json.dumps(index))
        if not target.exists():  # else another process packed the same model first: keep its copy
            Path(tmp).replace(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already when renamed


def _expected(field: str, rows: int, cols: int, kind: int) -> int | None:
    blocks = rows // LANES * (cols // BLOCK) * LANES
    sizes = {"codes": rows * cols // (2 if kind == 4 else 1), "scale": blocks, "bias": rows}
    sizes |= {"low": blocks} if kind == 4 else {}
    return sizes.get(field)


def load_packed(target: Path, config: Any, shapes: dict[str, tuple[int, ...]], quantize: str) -> NativeWeights | None:
    """The packed weights in ``target`` mapped read-only, or ``None`` when missing or not exactly what
    this model's shapes imply."""
    try:
        index = json.loads((target / "index.json").read_bytes()[:MAX_INDEX_BYTES])
        data = np.memmap(target / "arrays.bin", dtype=np.uint8, mode="r")
        arrays = {}
        for name, entry in index["arrays"].items():
            dtype, shape = np.dtype(entry["dtype"]), tuple(int(d) for d in entry["shape"])
            start, count = int(entry["offset"]), int(np.prod(shape, dtype=np.int64))
            if (
                dtype.name not in ("uint8", "float16", "float32")
                or not 0 <= start <= data.size - count * dtype.itemsize
            ):
                return None
            arrays[name] = data[start : start + count * dtype.itemsize].view(dtype).reshape(shape)
        return _assemble(index["matrices"], arrays, config, shapes, quantize)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _assemble(meta: dict[str, Any], arrays: dict[str, np.ndarray], config: Any, shapes: dict, quantize: str) -> Any:
    kind = 4 if quantize == "int4" else 8
    names = {f"layers.{i}.{key}": f"model.layers.{i}.{NAMES[key]}.weight"
             for i in range(int(config.num_hidden_layers)) for key in PROJECTIONS}  # fmt: skip
    names["embed"] = "model.embed_tokens.weight"
    if "lm_head.weight" in shapes:
        names["head"] = "lm_head.weight"
    matrices = {}
    for name, tensor in names.items():
        rows, cols = shapes[tensor]
        padded = rows + (-rows % LANES)
        want_kind = 8 if name == "embed" else kind
        if meta.get(name) != {"rows": padded, "cols": cols, "kind": want_kind}:
            return None
        parts: dict[str, Any] = {}
        for field in FIELDS:
            value = arrays.get(f"{name}.{field}")
            expected = _expected(field, padded, cols, want_kind)
            if value is None and field in REQUIRED[want_kind]:
                return None
            if field == "bias" and (value is not None) != (tensor.removesuffix("weight") + "bias" in shapes):
                return None
            if value is not None and (expected is None or value.dtype.name != DTYPES[field] or value.size != expected):
                return None
            parts[field] = value
        matrices[name] = PackedMatrix(padded, cols, want_kind, **parts)
    hidden = int(config.hidden_size)
    norms = [(arrays[f"norms.{i}.attn"], arrays[f"norms.{i}.ffn"]) for i in range(int(config.num_hidden_layers))]
    vectors = [v for pair in norms for v in pair] + [arrays["final_norm"]]
    if any(v.shape != (hidden,) or v.dtype != np.float32 for v in vectors):
        return None
    layers = [{key: matrices[f"layers.{i}.{key}"] for key in PROJECTIONS} for i in range(len(norms))]
    head = matrices.get("head", matrices["embed"])
    return NativeWeights(config, quantize, layers, matrices["embed"], head, norms, arrays["final_norm"])
