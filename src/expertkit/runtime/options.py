"""How experts are loaded: dtype, quantisation, device, template drift, another base directory, trusted keys."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from expertkit.models.load import DType
from expertkit.package.signing import PublicKey
from expertkit.runtime.quantize import Quantize


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
    # Read the model and plain-LoRA experts straight from their files when the lean decoder covers
    # them (no transformers model or PEFT until something needs them); False: always through them.
    # EXPERTKIT_FAST_START=0 in the environment turns it off (the escape hatch, and the benchmark's anchor).
    fast_start: bool = field(default_factory=lambda: os.environ.get("EXPERTKIT_FAST_START", "1") != "0")
