"""Where built ONNX decoder graphs live, and the key that names one: found without importing torch.

A graph is ``$EXPERTKIT_HOME/onnx/<key>/model.onnx``; the key hashes everything the graph depends
on: the base model's weights (its fingerprint), the expert's adapter file (its SHA-256, scale and
DoRA flag), the quantisation, how it is built, and the versions of onnxruntime and its model
builder. A changed expert or library builds anew (:mod:`expertkit.runtime.onnx_build`); a cached
graph opens with no tensor read, which is what keeps a one-shot ONNX answer free of torch.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from expertkit.home import expertkit_home
from expertkit.runtime.lora_file import LoraFile
from expertkit.runtime.options import Quantize

ONNX_DIR = "onnx"  # $EXPERTKIT_HOME/onnx/<key>/model.onnx
# Asymmetric blocks (uint8/uint4 codes with a zero point) by default: on the embedded model, whose
# weights come from an asymmetric Q4_1 GGUF, the SQL expert scored 23.6 % on GeoQuery with symmetric
# int8 blocks and 27.5 % with asymmetric ones (lean bf16: 26.4 %; README). EXPERTKIT_ONNX_SYMMETRIC=1 switches.
SYMMETRIC = os.environ.get("EXPERTKIT_ONNX_SYMMETRIC", "0") == "1"


@dataclass(frozen=True)
class OnnxModel:
    """A built decoder graph: ``directory/model.onnx`` (weights in ``model.onnx.data``)."""

    directory: Path
    quantize: Quantize
    built_s: float  # seconds spent building it now (0.0: it was cached)

    @property
    def path(self) -> Path:
        return self.directory / "model.onnx"


def versions() -> str:
    return f"onnxruntime {metadata.version('onnxruntime')}, onnxruntime-genai {metadata.version('onnxruntime-genai')}"


def merges(quantize: Quantize) -> bool:
    """Whether the expert is merged into the weights before the build: in fp32 (exact) and int8 (a
    grid of 255 steps per block of 32 keeps a low-rank change: measured, see the README), not int4,
    whose 16 steps round a change smaller than a step away (it keeps its own product instead)."""
    return quantize != "int4"


def build_key(base_sha256: str, lora: LoraFile | None, quantize: Quantize) -> str:
    """A hash of everything the graph depends on."""
    recipe = f"{base_sha256}|{quantize}|merged={merges(quantize)}|symmetric={SYMMETRIC}|{versions()}|v2"
    digest = hashlib.sha256(recipe.encode())
    if lora is not None:
        digest.update(f"|scale={lora.scale!r}|dora={lora.dora}|adapter={lora.sha256}".encode())
    return digest.hexdigest()[:24]


def graph_dir(base_sha256: str, lora: LoraFile | None, quantize: Quantize) -> Path:
    """Where the graph for this base model, expert and quantisation is (or will be) kept."""
    return expertkit_home() / ONNX_DIR / build_key(base_sha256, lora, quantize)


def cached_onnx_model(base_sha256: str, lora: LoraFile | None, quantize: Quantize) -> OnnxModel | None:
    """The graph already built for this base model, expert and quantisation (``None``: not yet)."""
    target = graph_dir(base_sha256, lora, quantize)
    if not (target / "model.onnx").is_file():
        return None
    target.touch()  # recently used: pruned last
    return OnnxModel(target, quantize, 0.0)
