"""A lean decoder for a PEFT adapter: merged into the weights, copied, and the weights restored exactly
(a snapshot of every adapted layer is put back), so switching experts leaves no rounding residue."""

from __future__ import annotations

from typing import Any

import torch

from expertkit.runtime.llama_decoder import LeanDecoder
from expertkit.runtime.options import Quantize


def _adapted_layers(model: Any) -> list[Any]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in model.modules() if isinstance(m, BaseTunerLayer)]


def peft_merged_decoder(model: Any, name: str, quantize: Quantize) -> LeanDecoder:
    """Merge ``name`` into the weights, copy them into a lean decoder, restore the weights exactly."""
    layers = _adapted_layers(model)
    snapshot = [layer.get_base_layer().weight.detach().clone() for layer in layers]
    model.set_adapter(name)
    model.merge_adapter([name])
    try:  # quantised (when asked) from the merged weights: the merge itself stays exact
        return LeanDecoder(model.get_base_model(), quantize)
    finally:
        model.unmerge_adapter()
        with torch.no_grad():
            for layer, weight in zip(layers, snapshot, strict=True):
                layer.get_base_layer().weight.copy_(weight)
