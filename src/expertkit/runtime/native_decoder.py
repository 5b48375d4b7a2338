"""The native decoder: a whole decode step as one call into ``native/decoder.c``, over Q4_1/Q8_0
weight blocks, with a LoRA or DoRA expert kept apart as fp32 low-rank products.

Why hand-written C (the issue's last resort, taken after the libraries were measured): a step of
a 135M model is ~1,000 operators. Through PyTorch their fixed costs bound the lean decoder (its int4
reached 86 tokens/s here), and ONNX Runtime, one graph call per step, reached 139 tokens/s in int8
against llama.cpp's 231 (Q4_0). ONNX Runtime's 4-bit blocks have an integer zero point: the
embedded model's own Q4_1 grid (a float offset per 32 weights) does not fit it, and rounding to it
dropped the SQL expert from 27.5 % to 3.3 %. Its float zero points are exact but ran 50x slower.
Here the base model's blocks are exactly its GGUF's (Q4_1 projections, a Q8_0 embedding table),
products use AVX512-VNNI on int8 activations, and the expert's change is never rounded. The cache
keeps keys and values in fp16, as llama.cpp's does.

The decoder follows :class:`~expertkit.runtime.onnx_decoder.OnnxDecoder`'s interface (``new_cache``,
``forward`` returning the last position's logits as numpy), so the shared decode loop, grammars and
stops work unchanged; nothing here imports torch.
"""

from __future__ import annotations

import ctypes
import functools
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from expertkit.runtime.native_build import load_library
from expertkit.runtime.native_weights import PACKERS, PackedMatrix, pack_q8_0, packable

PROJECTIONS = ("q", "k", "v", "o", "gate", "up", "down")
NAMES = {
    "q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
    "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj",
}  # fmt: skip
CHUNK = 64  # prompt tokens per call (the scratch's size)
F32 = ctypes.POINTER(ctypes.c_float)
HALF = ctypes.POINTER(ctypes.c_uint16)  # fp16 bits: the cache's keys and values


class Mat(ctypes.Structure):
    _fields_ = [
        ("rows", ctypes.c_int32), ("cols", ctypes.c_int32), ("kind", ctypes.c_int32),
        ("codes", ctypes.c_void_p), ("scale", ctypes.c_void_p), ("low", ctypes.c_void_p),
        ("bias", ctypes.c_void_p), ("rank", ctypes.c_int32),
        ("lora_a", ctypes.c_void_p), ("lora_b", ctypes.c_void_p), ("rescale", ctypes.c_void_p),
    ]  # fmt: skip


class Layer(ctypes.Structure):
    _fields_ = [(name, Mat) for name in PROJECTIONS] + [("attn_norm", ctypes.c_void_p), ("ffn_norm", ctypes.c_void_p)]


class Model(ctypes.Structure):
    _fields_ = [
        *((name, ctypes.c_int32) for name in ("layers", "hidden", "heads", "kv_heads", "head_dim", "inter", "vocab")),
        ("positions", ctypes.c_int32), ("eps", ctypes.c_float), ("rope_cos", ctypes.c_void_p),
        ("rope_sin", ctypes.c_void_p), ("embed", Mat), ("head", Mat), ("final_norm", ctypes.c_void_p),
        ("layer", ctypes.POINTER(Layer)),
    ]  # fmt: skip


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    lib.ek_threads.argtypes, lib.ek_threads.restype = [ctypes.c_int], ctypes.c_int
    lib.ek_vnni.restype = ctypes.c_int
    lib.ek_scratch_new.argtypes = [ctypes.POINTER(Model), ctypes.c_int, ctypes.c_int]
    lib.ek_scratch_new.restype = ctypes.c_void_p
    lib.ek_scratch_free.argtypes, lib.ek_scratch_free.restype = [ctypes.c_void_p], None
    lib.ek_forward.restype = ctypes.c_int
    lib.ek_forward.argtypes = [ctypes.POINTER(Model), ctypes.c_void_p, HALF, HALF, ctypes.c_int, ctypes.c_int,
                               ctypes.c_int, ctypes.POINTER(ctypes.c_int32), F32, F32]  # fmt: skip
    return lib


def _ptr(array: np.ndarray | None) -> int | None:
    return None if array is None else int(array.ctypes.data)


def _mat(packed: PackedMatrix) -> Mat:
    rank = 0 if packed.lora_a is None else int(packed.lora_a.shape[0])
    return Mat(packed.rows, packed.cols, packed.kind, _ptr(packed.codes), _ptr(packed.scale), _ptr(packed.low),
               _ptr(packed.bias), rank, _ptr(packed.lora_a), _ptr(packed.lora_b),
               _ptr(packed.rescale))  # fmt: skip


@dataclass
class NativeWeights:
    """A model packed for the native decoder: shared by every expert decoded over it."""

    config: Any
    quantize: str
    layers: list[dict[str, PackedMatrix]]
    embed: PackedMatrix
    head: PackedMatrix
    norms: list[tuple[np.ndarray, np.ndarray]]  # (attention, MLP) per layer
    final_norm: np.ndarray

    def nbytes(self) -> int:
        matrices = [m for layer in self.layers for m in layer.values()] + [self.embed]
        if self.head is not self.embed:
            matrices.append(self.head)
        return sum(m.nbytes() for m in matrices)


def native_unsupported(config: Any, shapes: Mapping[str, tuple[int, ...]]) -> str | None:
    """Why the native decoder cannot run this model (``None``: it can)."""
    if config.model_type not in ("llama", "mistral", "qwen2"):
        return f"a {config.model_type} model (the native decoder runs llama, mistral and qwen2)"
    if any(".q_norm." in name or ".k_norm." in name for name in shapes):
        return "per-head query/key norms"
    for name, shape in shapes.items():
        if name.endswith(".weight") and len(shape) == 2 and "norm" not in name:
            rows = 16 if name in ("model.embed_tokens.weight", "lm_head.weight") else shape[0]  # padded
            if not packable(rows, shape[1]):
                return f"{name} {shape}: rows in groups of 16 and inputs in blocks of 32 are needed"
    return None


def pack_model(tensors: Callable[[str], np.ndarray], names: set[str], config: Any, quantize: str) -> NativeWeights:
    """The base model's weights (``tensors(name)``: fp32 numpy) packed as ``quantize`` asks: ``int4``
    projections in Q4_1, ``int8`` in Q8_0; the embedding table in Q8_0 either way."""
    packer = PACKERS[quantize]

    def optional(name: str) -> np.ndarray | None:
        return tensors(name) if name in names else None

    layers, norms = [], []
    for index in range(int(config.num_hidden_layers)):
        prefix = f"model.layers.{index}."
        layers.append({
            key: packer(tensors(prefix + NAMES[key] + ".weight"), optional(prefix + NAMES[key] + ".bias"))
            for key in PROJECTIONS
        })  # fmt: skip
        norms.append((tensors(prefix + "input_layernorm.weight"), tensors(prefix + "post_attention_layernorm.weight")))
    embed = pack_q8_0(tensors("model.embed_tokens.weight"))
    head = packer(tensors("lm_head.weight")) if "lm_head.weight" in names else embed
    return NativeWeights(config, quantize, layers, embed, head, norms, tensors("model.norm.weight"))


def rope_tables(config: Any) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin ``[positions, head_dim / 2]`` as transformers' default rotary embedding makes them
    (made once per model shape: every expert's decoder reads the same tables)."""
    heads = int(config.num_attention_heads)
    dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    return _rope(float(config.rope_theta_value), dim, int(config.max_position_embeddings))


@functools.lru_cache(maxsize=4)
def _rope(theta: float, dim: int, positions_count: int) -> tuple[np.ndarray, np.ndarray]:
    exponents = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
    inv = (np.float32(1.0) / (np.float32(theta) ** exponents)).astype(np.float32)
    positions = np.arange(positions_count, dtype=np.float32)
    freqs = positions[:, None] * inv[None, :]
    tables = np.ascontiguousarray(np.cos(freqs), np.float32), np.ascontiguousarray(np.sin(freqs), np.float32)
    for table in tables:
        table.flags.writeable = False  # shared between decoders
    return tables


@dataclass
class NativeCache:
    capacity: int
    keys: np.ndarray  # float16 [layers, kv_heads, capacity, head_dim], as llama.cpp keeps its cache
    values: np.ndarray
    length: int = 0


class NativeDecoder:
    """Decodes one sequence at a time through ``native/decoder.c``; ``expert`` maps (layer, projection)
    to ``(A [r, in], B·scale [out, r], DoRA rescale or None)``."""

    def __init__(
        self,
        weights: NativeWeights,
        expert: Mapping[tuple[int, str], tuple[np.ndarray, np.ndarray, np.ndarray | None]] | None = None,
        threads: int | None = None,
    ) -> None:
        self.lib = _bind(load_library())
        self.weights, config = weights, weights.config
        self.threads = self.lib.ek_threads(threads or _cpu_count())
        self.vnni = bool(self.lib.ek_vnni())
        heads = int(config.num_attention_heads)
        self.kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
        self.head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
        self.max_positions = int(config.max_position_embeddings)
        self._keep: list[Any] = []  # everything the C structures point into
        self._expert_bytes = 0
        layers = (Layer * len(weights.layers))()
        for index, packed in enumerate(weights.layers):
            mats = {}
            for key in PROJECTIONS:
                matrix = packed[key]
                if expert and (index, key) in expert:
                    a, b, rescale = expert[(index, key)]
                    _check_factors(f"layer {index} {key}", matrix, a, b, rescale)
                    matrix = matrix.with_expert(a, b, rescale)
                    self._keep.append(matrix)
                    self._expert_bytes += matrix.nbytes() - packed[key].nbytes()
                mats[key] = _mat(matrix)
            attn, ffn = weights.norms[index]
            layers[index] = Layer(**mats, attn_norm=_ptr(attn), ffn_norm=_ptr(ffn))
        self.cos, self.sin = rope_tables(config)
        self.model = Model(
            int(config.num_hidden_layers), int(config.hidden_size), heads, self.kv_heads, self.head_dim,
            int(config.intermediate_size), int(weights.head.rows), self.max_positions, float(config.rms_norm_eps),
            _ptr(self.cos), _ptr(self.sin), _mat(weights.embed), _mat(weights.head), _ptr(weights.final_norm), layers,
        )  # fmt: skip
        self._keep.append(layers)
        self._scratch: int | None = None
        self._lock = threading.Lock()
        self._scratch_capacity = 0
        self._logits = np.zeros(int(weights.head.rows), dtype=np.float32)  # padded rows past the vocabulary
        self.vocab = int(config.vocab_size)

    def nbytes(self) -> int:
        return self._expert_bytes

    def new_cache(self, capacity: int) -> NativeCache:
        capacity = min(capacity, self.max_positions)
        shape = (int(self.weights.config.num_hidden_layers), self.kv_heads, capacity, self.head_dim)
        return NativeCache(capacity, np.zeros(shape, np.float16), np.zeros(shape, np.float16))

    def _scratch_for(self, capacity: int) -> int:
        if self._scratch is None or capacity > self._scratch_capacity:
            if self._scratch is not None:
                self.lib.ek_scratch_free(self._scratch)
            self._scratch = self.lib.ek_scratch_new(ctypes.byref(self.model), CHUNK, capacity)
            if not self._scratch:
                raise MemoryError(f"the native decoder could not allocate its buffers for {capacity} positions")
            self._scratch_capacity = capacity
        return self._scratch

    def forward(self, cache: NativeCache, ids: Any, prefix: Any = None) -> np.ndarray:
        """Run ``ids`` (after ``prefix`` embeddings, a soft prompt's) and return the last position's logits."""
        pieces: list[tuple[bool, np.ndarray]] = []  # (token ids?, rows), at most CHUNK rows each
        if prefix is not None:
            embeds = np.ascontiguousarray(np.asarray(prefix, dtype=np.float32).reshape(-1, self.model.hidden))
            pieces += [(False, embeds[i : i + CHUNK]) for i in range(0, len(embeds), CHUNK)]
        ids = np.ascontiguousarray(np.asarray(ids, dtype=np.int32).reshape(-1))
        pieces += [(True, ids[i : i + CHUNK]) for i in range(0, len(ids), CHUNK)]
        tokens = sum(len(rows) for _, rows in pieces)
        if cache.length + tokens > cache.capacity:
            raise ValueError(f"context of {cache.length + tokens} tokens exceeds the cache ({cache.capacity})")
        with self._lock:  # one scratch and one logits row per decoder: a second thread waits
            return self._run(cache, pieces)

    def _run(self, cache: NativeCache, pieces: list[tuple[bool, np.ndarray]]) -> np.ndarray:
        scratch = self._scratch_for(cache.capacity)
        if cache.keys.dtype != np.float16 or cache.values.dtype != np.float16:  # the C code reads fp16 bits
            raise ValueError("a native decoder's cache holds float16 keys and values (made by new_cache)")
        keys, values = cache.keys.ctypes.data_as(HALF), cache.values.ctypes.data_as(HALF)
        for are_ids, rows in pieces:
            status = self.lib.ek_forward(
                ctypes.byref(self.model), scratch, keys, values, cache.capacity, cache.length, len(rows),
                rows.ctypes.data_as(ctypes.POINTER(ctypes.c_int32)) if are_ids else None,
                None if are_ids else rows.ctypes.data_as(F32), self._logits.ctypes.data_as(F32),
            )  # fmt: skip
            if status != 0:
                raise ValueError(f"the native decoder refused a step at position {cache.length} ({len(rows)} tokens)")
            cache.length += len(rows)
        return self._logits[: self.vocab].copy()

    def __del__(self) -> None:
        scratch, self._scratch = getattr(self, "_scratch", None), None
        if scratch:
            self.lib.ek_scratch_free(scratch)


def _check_factors(where: str, matrix: PackedMatrix, a: Any, b: Any, rescale: Any) -> None:
    """The C code reads ``rank x cols`` of A and ``rows x rank`` of B: shapes are checked here, whatever
    checked them before (an expert's files are untrusted)."""
    rank = a.shape[0] if getattr(a, "ndim", 0) == 2 else -1
    if rank < 1 or a.shape[1] != matrix.cols or b.shape != (matrix.rows, rank) or (
        rescale is not None and rescale.shape != (matrix.rows,)
    ):  # fmt: skip
        raise ValueError(
            f"{where}: expert factors of shapes {a.shape}, {b.shape} do not fit {matrix.rows}x{matrix.cols}"
        )


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
