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
into ``$EXPERTKIT_HOME/onnx/<key>`` when complete (:mod:`expertkit.runtime.onnx_cache` names it), so
a changed expert or library builds anew and nothing half-written is ever read.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from expertkit.errors import ExpertkitError
from expertkit.runtime.lora_deltas import dora_rescale
from expertkit.runtime.lora_file import LoraFactors, LoraFile
from expertkit.runtime.onnx_cache import SYMMETRIC, OnnxModel, cached_onnx_model, graph_dir, merges, versions
from expertkit.runtime.options import Quantize

BUILD_TIMEOUT_S = 900
KEPT_GRAPHS = 8  # built graphs kept in the cache (the least recently used go first; an fp32 one is ~0.5 GB)
PRECISION: dict[Quantize, str] = {"none": "fp32", "int8": "int8", "int4": "int4"}
BASE_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
              "special_tokens_map.json", "chat_template.jinja")  # fmt: skip


class OnnxBuildError(ExpertkitError):
    """The ONNX Runtime model could not be built (the builder failed or timed out)."""


def onnx_model(
    base_dir: Path, base_sha256: str, lora: LoraFile | None, quantize: Quantize, log: bool = True
) -> OnnxModel:
    """The ONNX decoder for the base model at ``base_dir`` with ``lora`` (``None``: the base alone),
    quantised as asked: from the cache, else built now (seconds to a minute, once)."""
    if (cached := cached_onnx_model(base_sha256, lora, quantize)) is not None:
        return cached
    target = graph_dir(base_sha256, lora, quantize)
    root = target.parent
    root.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if log:
        print(f"building the ONNX Runtime decoder ({quantize}; once, cached in {target})", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix=".build-", dir=root) as tmp:
        work = Path(tmp)
        adapter = None
        factors = lora.factors() if lora is not None else None
        if factors is not None and merges(quantize):
            _write_model(work / "model", base_dir, factors, merge=True)
        elif factors is not None:
            adapter = work / "adapter"
            _write_adapter(adapter, factors, _write_model(work / "model", base_dir, factors, merge=False))
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
    in progress: those are hidden ``.build-*`` directories, removed only when older than two build
    time limits, as a killed build leaves them)."""
    for stale in root.glob(".build-*"):
        if stale.is_dir() and time.time() - stale.stat().st_mtime > 2 * BUILD_TIMEOUT_S:
            shutil.rmtree(stale, ignore_errors=True)
    others = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and p != keep]
    others.sort(key=lambda p: p.stat().st_mtime)
    for old in others[: max(0, len(others) + 1 - KEPT_GRAPHS)]:
        shutil.rmtree(old, ignore_errors=True)


def _link_model(model: Path, base_dir: Path) -> None:
    """The base model's config, tokenizer and safetensors, linked into ``model``."""
    model.mkdir(parents=True)
    for name in BASE_FILES:
        if (base_dir / name).is_file():
            shutil.copyfile(base_dir / name, model / name)
    for weights in sorted(base_dir.glob("*.safetensors")):
        (model / weights.name).symlink_to(weights.resolve())


def _write_model(model: Path, base_dir: Path, lora: LoraFactors, merge: bool) -> dict[str, torch.Tensor]:
    """The base model for the expert, in ``model``: merged (``W + s·B·A``, a DoRA's rows rescaled
    after) or, unmerged, linked as it is (a LoRA) or with a DoRA's adapted rows rescaled by ``r``.
    A changed model is written whole in fp32. Returns the per-row rescale of each DoRA weight."""
    _link_model(model, base_dir)
    if not lora.dora and not merge:
        return {}
    from safetensors.torch import load_file, save_file

    tensors: dict[str, torch.Tensor] = {}
    for weights in sorted(model.glob("*.safetensors")):
        tensors.update({k: v.float() for k, v in load_file(str(weights)).items()})
        weights.unlink()
    rescales = {}
    for name, (a, b) in lora.factors.items():
        if lora.dora:
            rescales[name] = dora_rescale(tensors[name], a, b * lora.scale, lora.magnitudes[name])
        if merge:
            tensors[name] = torch.addmm(tensors[name], b, a, alpha=lora.scale)
        if lora.dora:
            tensors[name] = tensors[name] * rescales[name][:, None]
    save_file(tensors, str(model / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((model / "config.json").read_text())
    config["torch_dtype"] = config["dtype"] = "float32"
    (model / "config.json").write_text(json.dumps(config))
    return rescales


def _write_adapter(adapter: Path, lora: LoraFactors, rescales: dict[str, torch.Tensor]) -> None:
    """``lora`` as a PEFT LoRA directory (a DoRA's B rows rescaled, see the module docstring)."""
    from safetensors.torch import save_file

    adapter.mkdir(parents=True)
    tensors, modules, rank = {}, set(), 0
    for name, (a, b) in lora.factors.items():
        stem = "base_model.model." + name.removesuffix(".weight")
        rescale = rescales.get(name)
        tensors[f"{stem}.lora_A.weight"] = a.float().contiguous()
        tensors[f"{stem}.lora_B.weight"] = (b.float() if rescale is None else b.float() * rescale[:, None]).contiguous()
        modules.add(name.split(".")[-2])
        rank = int(a.shape[0])
    save_file(tensors, str(adapter / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": rank,
        "lora_alpha": lora.scale * rank,
        "target_modules": sorted(modules),
        "lora_dropout": 0.0,
        "bias": "none",
        "use_rslora": False,
        "use_dora": False,
    }
    (adapter / "adapter_config.json").write_text(json.dumps(config))


def _run_builder(model: Path, out: Path, cache: Path, adapter: Path | None, quantize: Quantize) -> None:
    options = ["exclude_embeds=true", "filename=model.onnx", f"is_symmetric={str(SYMMETRIC).lower()}"]
    if adapter is not None:
        options.append(f"adapter_path={adapter}")
    command = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(model), "-o", str(out)]
    command += ["-p", PRECISION[quantize], "-e", "cpu", "-c", str(cache), "--extra_options", *options]
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TQDM_DISABLE": "1"}
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, env=env)
    except subprocess.TimeoutExpired as exc:
        raise OnnxBuildError(
            f"building the ONNX decoder took over {BUILD_TIMEOUT_S} s", "use --decoder lean for now"
        ) from exc
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-8:])
        raise OnnxBuildError(f"the ONNX builder failed ({versions()}):\n{tail}", "use --decoder lean meanwhile")
