"""The decoder interface over an ONNX Runtime session (:mod:`expertkit.runtime.onnx_build` builds it).

One ``run`` per step: the graph takes the step's embeddings (looked up here, so a soft prompt's
virtual tokens go in front as they do in the lean decoder) and the attention mask, and returns the
logits. Keys and values live in one buffer per layer allocated at the generation's capacity and
bound as both the past input and the present output: ``GroupQueryAttention`` writes each step's
keys in place (its shared-buffer mode, as onnxruntime-genai runs it), so a step copies nothing
that grows with the context. Logits come back as a numpy row for the shared decode loop.

Nothing here imports torch: with the embedding table read as numpy (``FileTensors.float_rows``)
and the graph already built, a one-shot answer through this decoder never loads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from expertkit.runtime.onnx_cache import OnnxModel


@dataclass
class OnnxCache:
    capacity: int
    buffers: list[Any] = field(default_factory=list)  # OrtValues [1, kv_heads, capacity, head_dim], input order
    length: int = 0
    binding: Any = None  # the session's IO binding, the buffers bound once (a step rebinds only its inputs)


class OnnxDecoder:
    """Decodes with an ONNX Runtime model of the base model (and one expert), embeddings outside the graph."""

    def __init__(self, model: OnnxModel, embeddings: Any, config: Any, threads: int | None = None) -> None:
        """``embeddings``: the embedding table, indexed by an int64 id array into fp32 rows (a
        :class:`~expertkit.runtime.file_tensors.FloatRows` reads only those rows from the file)."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        self.model = model
        self.session = ort.InferenceSession(str(model.path), options, providers=["CPUExecutionProvider"])
        self.embeddings = embeddings
        self.max_positions = int(getattr(config, "max_position_embeddings", 1 << 30))
        names = [i.name for i in self.session.get_inputs()]
        self.past_names = [n for n in names if n.startswith("past_key_values.")]
        self.present_names = ["present." + n.removeprefix("past_key_values.") for n in self.past_names]
        self.kv_heads = int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
        self.head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)

    def nbytes(self) -> int:
        data = self.model.directory / "model.onnx.data"
        return data.stat().st_size if data.is_file() else 0

    def new_cache(self, capacity: int) -> OnnxCache:
        import onnxruntime as ort

        capacity = min(capacity, self.max_positions)
        shape = (1, self.kv_heads, capacity, self.head_dim)
        buffers = [ort.OrtValue.ortvalue_from_shape_and_type(shape, np.float32) for _ in self.past_names]
        return OnnxCache(capacity, buffers)

    def forward(self, cache: OnnxCache, ids: Any, prefix: Any = None) -> np.ndarray:
        embeds = np.asarray(self.embeddings[np.asarray(ids, dtype=np.int64)], dtype=np.float32)
        if prefix is not None:
            embeds = np.concatenate([np.asarray(prefix, dtype=np.float32), embeds])
        tokens = embeds.shape[0]
        if cache.length + tokens > cache.capacity:
            raise ValueError(f"context of {cache.length + tokens} tokens exceeds the cache ({cache.capacity})")
        if cache.binding is None:
            cache.binding = self.session.io_binding()
            for past, present, buffer in zip(self.past_names, self.present_names, cache.buffers, strict=True):
                cache.binding.bind_ortvalue_input(past, buffer)
                cache.binding.bind_ortvalue_output(present, buffer)
        binding = cache.binding
        binding.bind_cpu_input("inputs_embeds", np.ascontiguousarray(embeds[None]))
        binding.bind_cpu_input("attention_mask", np.ones((1, cache.length + tokens), dtype=np.int64))
        binding.bind_output("logits", "cpu")  # bound last: rebinding a name keeps its place
        self.session.run_with_iobinding(binding)
        cache.length += tokens
        return binding.get_outputs()[-1].numpy()[0, -1].copy()  # owned, not a view
