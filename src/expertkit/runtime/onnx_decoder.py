"""The decoder interface over an ONNX Runtime session (:mod:`expertkit.runtime.onnx_build` builds it).

One ``run`` per step: the graph takes the step's embeddings (looked up here, so a soft prompt's
virtual tokens go in front as they do in the lean decoder), the attention mask and the previous
keys/values, and returns the logits and the grown keys/values, which stay ONNX Runtime values and
are bound straight back in on the next step (no copy through numpy). Logits come back as a torch
tensor (a view of ONNX Runtime's buffer) for the shared decode loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from expertkit.runtime.onnx_build import OnnxModel


@dataclass
class OnnxCache:
    capacity: int
    past: list[Any] = field(default_factory=list)  # OrtValues, in the session's input order
    length: int = 0


class OnnxDecoder:
    """Decodes with an ONNX Runtime model of the base model (and one expert), embeddings outside the graph."""

    def __init__(self, model: OnnxModel, embeddings: torch.Tensor, config: Any, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        self.model = model
        self.session = ort.InferenceSession(str(model.path), options, providers=["CPUExecutionProvider"])
        self.embeddings = embeddings.float().numpy()  # a view when the table is fp32 already
        self.max_positions = int(getattr(config, "max_position_embeddings", 1 << 30))
        names = [i.name for i in self.session.get_inputs()]
        self.past_names = [n for n in names if n.startswith("past_key_values.")]
        self.present_names = ["present." + n.removeprefix("past_key_values.") for n in self.past_names]
        heads = int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
        head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)
        self._empty = np.zeros((1, heads, 0, head_dim), dtype=np.float32)

    def nbytes(self) -> int:
        data = self.model.directory / "model.onnx.data"
        return data.stat().st_size if data.is_file() else 0

    def new_cache(self, capacity: int) -> OnnxCache:
        import onnxruntime as ort

        empty = ort.OrtValue.ortvalue_from_numpy(self._empty)
        return OnnxCache(min(capacity, self.max_positions), [empty] * len(self.past_names))

    @torch.inference_mode()
    def forward(self, cache: OnnxCache, ids: torch.Tensor, prefix: torch.Tensor | None = None) -> torch.Tensor:
        embeds = self.embeddings[ids.numpy()]
        if prefix is not None:
            embeds = np.concatenate([prefix.float().numpy(), embeds])
        tokens = embeds.shape[0]
        if cache.length + tokens > cache.capacity:
            raise ValueError(f"context of {cache.length + tokens} tokens exceeds the cache ({cache.capacity})")
        binding = self.session.io_binding()
        binding.bind_cpu_input("inputs_embeds", np.ascontiguousarray(embeds[None]))
        binding.bind_cpu_input("attention_mask", np.ones((1, cache.length + tokens), dtype=np.int64))
        for name, value in zip(self.past_names, cache.past, strict=True):
            binding.bind_ortvalue_input(name, value)
        binding.bind_output("logits", "cpu")
        for name in self.present_names:
            binding.bind_output(name, "cpu")
        self.session.run_with_iobinding(binding)
        outputs = binding.get_outputs()
        cache.past, cache.length = list(outputs[1:]), cache.length + tokens
        return torch.from_numpy(outputs[0].numpy()[0, -1])
