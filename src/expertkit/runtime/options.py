"""How experts are loaded: dtype, quantisation, decoder, device, template drift, another base
directory, trusted keys. Nothing here imports torch (the ONNX decoder's one-shot path reads it)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal, get_args

from expertkit.errors import checked_choice
from expertkit.models.load import DType
from expertkit.package.signing import PublicKey

Quantize = Literal["none", "int8", "int4"]
QUANTIZE_CHOICES: tuple[str, ...] = get_args(Quantize)
DEFAULT_QUANTIZE: Quantize = "none"  # see benchmarks/decode_speed.py and the eval tables before changing it
DecoderKind = Literal["lean", "onnx", "native"]
DECODER_CHOICES: tuple[str, ...] = get_args(DecoderKind)
DEFAULT_DECODER: DecoderKind = "lean"  # see benchmarks/decode_speed.py and the eval tables before changing it


def parse_quantize(value: str | None) -> Quantize | None:
    """A ``--quantize`` value checked (``None``: not given, the manifest or the default decides)."""
    return checked_choice("--quantize", value, QUANTIZE_CHOICES)  # type: ignore[return-value]


def parse_decoder(value: str | None) -> DecoderKind | None:
    """A ``--decoder`` value checked (``None``: not given, the manifest or the default decides)."""
    return checked_choice("--decoder", value, DECODER_CHOICES)  # type: ignore[return-value]


@dataclass(frozen=True)
class LoadOptions:
    dtype: DType = "float32"
    device: str = "cpu"
    allow_template_drift: bool = False
    base: str | None = None  # another directory holding the same base model (checked by the lock)
    keys: list[PublicKey] | None = None
    require_signature: bool = False
    cached_decoders: int = 4  # merged expert decoders kept in memory for fast switching
    # Weight-only quantisation of the lean decoder; None: each expert's manifest runtime.quantize,
    # else DEFAULT_QUANTIZE. A value here (a CLI flag) wins over the manifests.
    quantize: Quantize | None = None
    # What runs a decode step: "lean" (PyTorch, :mod:`expertkit.runtime.llama_decoder`) or "onnx"
    # (ONNX Runtime, :mod:`expertkit.runtime.onnx_build`); None: the manifest's runtime.decoder, else
    # DEFAULT_DECODER. "native" (:mod:`expertkit.runtime.native_decoder`): one C call per step over
    # Q4_1/Q8_0 blocks. Experts a path does not cover decode lean (the engine says so).
    decoder: DecoderKind | None = None
    # Read the model and plain-LoRA experts straight from their files when the lean decoder covers
    # them (no transformers model or PEFT until something needs them); False: always through them.
    # EXPERTKIT_FAST_START=0 in the environment turns it off (the escape hatch, and the benchmark's anchor).
    # Merge a LoRA or DoRA expert into a copy of the weights (the fastest decode steps), or add it as
    # deltas beside the shared base weights (False: no merge to pay for, about 0.35 s for SmolLM2-135M
    # on a 2-core CPU, against ~1 ms more per token: the better choice for one answer).
    merge_experts: bool = True
    fast_start: bool = field(default_factory=lambda: os.environ.get("EXPERTKIT_FAST_START", "1") != "0")
