"""An expert's decoder as an ONNX Runtime model (int4/int8 weight-only, or fp32), built once and cached.

Why ONNX Runtime: a decode step of a 135M model is ~1,000 small operators. Through PyTorch each one
pays Python and dispatcher overhead, and on a 2-core CPU that overhead, not the bytes of weights, is
what a step costs (``benchmarks/decode_speed.py``: the lean decoder's int4 gained 1.4x for a quarter
of the bytes). ONNX Runtime runs the whole step as one C++ graph call with its fused CPU kernels
(``MatMulNBits``: int4/int8 weights in blocks of 32 with int8 activations, ``GroupQueryAttention``
with rotary embedding, ``SkipSimplifiedLayerNormalization``). The graph is written by
onnxruntime-genai's model builder (the tool Microsoft ships for exactly this), not by hand.

What is built, from files expertkit has already read and checked:

* the base model's ``config.json``, tokenizer files and safetensors (linked, not copied), without
  the embedding table in the graph (``exclude_embeds``): the decoder looks embeddings up itself, so
  a soft prompt's virtual tokens go in front like any other embedding;
* in fp32 and int8, the expert merged into the weights in fp32 first (``W + s·B·A``): the graph is
  then exactly the base model's, with no extra operators per step. int8 keeps a low-rank change
  (255 steps per block of 32; measured on the example experts, see the README);
* in int4, a LoRA expert's factors rewritten here into a fresh PEFT adapter directory
  (``adapter_config.json`` and ``adapter_model.safetensors`` only: nothing from the expert's own
  directory is handed to PEFT or to the builder). The builder keeps them as their own fp32
  ``MatMul`` pair beside each quantised projection: the base is rounded, the expert's change is not
  (rounded after a merge, a low-rank change smaller than a 16-step grid disappears; see
  :mod:`expertkit.runtime.quantize`);
* a DoRA expert merged and then rescaled row by row, or, in int4, as the same LoRA over a base whose
  adapted rows are rescaled: DoRA computes
  ``r ⊙ (W·x + s·B·A·x)`` with ``r = m / ‖W + s·B·A‖`` per output row, which is exactly
  ``(diag(r)·W)·x + s·(diag(r)·B)·A·x``. Row scaling commutes with per-block quantisation (the
  codes are the same, each block's scale is multiplied by ``r``), so the expert is exact up to the
  same rounding the base gets.

The build runs the builder in a subprocess with a time limit, into a temporary directory renamed
into ``$EXPERTKIT_HOME/onnx/<key>`` when complete; the key hashes the base model's fingerprint, the
expert's factors, the quantisation and the two libraries' versions, so a changed expert or library
builds anew and nothing half-written is ever read.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch

from expertkit.errors import ExpertkitError
from expertkit.home import expertkit_home
from expertkit.runtime.lora_deltas import dora_rescale
from expertkit.runtime.model_files import LoraFactors
from expertkit.runtime.quantize import Quantize

ONNX_DIR = "onnx"  # $EXPERTKIT_HOME/onnx/<key>/model.onnx
BUILD_TIMEOUT_S = 900
KEPT_GRAPHS = 8  # built graphs kept in the cache (the least recently used go first; an fp32 one is ~0.5 GB)
PRECISION: dict[Quantize, str] = {"none": "fp32", "int8": "int8", "int4": "int4"}
SYMMETRIC = os.environ.get("EXPERTKIT_ONNX_SYMMETRIC", "1") != "0"
BASE_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
              "special_tokens_map.json", "chat_template.jinja")  # fmt: skip


class OnnxBuildError(ExpertkitError):
    """The ONNX Runtime model could not be built (the builder failed or timed out)."""


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


def build_key(base_sha256: str, lora: LoraFactors | None, quantize: Quantize) -> str:
    """A hash of everything the graph depends on."""
    recipe = f"{base_sha256}|{quantize}|merged={merges(quantize)}|symmetric={SYMMETRIC}|{versions()}|v1"
    digest = hashlib.sha256(recipe.encode())
    if lora is not None:
        digest.update(f"scale={lora.scale!r}".encode())
        for name in sorted(lora.factors):
            for tensor in (*lora.factors[name], lora.magnitudes.get(name)):
                if tensor is not None:
                    digest.update(name.encode())
                    digest.update(tensor.detach().float().contiguous().numpy().tobytes())
    return digest.hexdigest()[:24]


def onnx_model(
    base_dir: Path, base_sha256: str, lora: LoraFactors | None, quantize: Quantize, log: bool = True
) -> OnnxModel:
    """The ONNX decoder for the base model at ``base_dir`` with ``lora`` (``None``: the base alone),
    quantised as asked: from the cache, else built now (seconds to a minute, once)."""
    root = expertkit_home() / ONNX_DIR
    target = root / build_key(base_sha256, lora, quantize)
    if (target / "model.onnx").is_file():
        target.touch()  # recently used: pruned last
        return OnnxModel(target, quantize, 0.0)
    root.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if log:
        print(f"building the ONNX Runtime decoder ({quantize}; once, cached in {target})", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix=".build-", dir=root) as tmp:
        work = Path(tmp)
        adapter = None
        if lora is not None and merges(quantize):
            _write_model(work / "model", base_dir, lora, merge=True)
        elif lora is not None:
            adapter = work / "adapter"
            _write_adapter(adapter, lora, _write_model(work / "model", base_dir, lora, merge=False))
        else:
            _link_model(work / "model", base_dir)
        out = work / "out"
        _run_builder(work / "model", out, work / "cache", adapter, quantize)
        if not (out / "model.onnx").is_file():
            raise OnnxBuildError("the ONNX builder wrote no model.onnx", f"use --decoder lean meanwhile ({versions()})")
        try:
            out.replace(target)
        except OSError:  # another process finished the same build first: theirs is identical
            if not (target / "model.onnx").is_file():
                raise
    _prune(root, keep=target)
    return OnnxModel(target, quantize, time.perf_counter() - started)


def _prune(root: Path, keep: Path) -> None:
    """Remove the least recently used graphs beyond :data:`KEPT_GRAPHS` (never ``keep``, never a build
    in progress: those are hidden ``.build-*`` directories)."""
    others = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and p != keep]
    others.sort(key=lambda p: p.stat().st_mtime)
    for old in others[: max(0, len(others) + 1 - KEPT_GRAPHS)]:
        shutil.rmtree(old, ignore_errors=True)
