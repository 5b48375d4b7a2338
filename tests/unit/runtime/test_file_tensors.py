"""Safetensors read without torch: shapes from the headers, rows widened to fp32 exactly, and a
hostile header refused before anything is read past it."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from expertkit.errors import ModelLoadError
from expertkit.runtime.file_tensors import FileTensors, safetensors_index
from expertkit.runtime.lora_file import plain_lora_file


def test_rows_read_from_the_file_equal_what_torch_reads(tmp_path: Path) -> None:
    torch.manual_seed(0)
    tensors = {name: torch.randn(7, 5).to(dtype) for name, dtype in
               (("bf16", torch.bfloat16), ("f16", torch.float16), ("f32", torch.float32))}  # fmt: skip
    save_file(tensors, str(tmp_path / "model.safetensors"))
    files = FileTensors(tmp_path, "float32")
    assert files.shapes == {name: (7, 5) for name in tensors} and len(files) == 3
    rows = np.array([4, 0, 4, 6])
    for name, tensor in tensors.items():
        read = files.float_rows(name)[rows]
        assert read.dtype == np.float32
        assert np.array_equal(read, tensor.float().numpy()[rows]), name  # bit for bit: bf16 widens exactly
        assert torch.equal(files[name], tensor.float())  # torch's view of the same file


def header_file(path: Path, header: bytes, data: bytes = b"") -> Path:
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)
    return path


def test_a_hostile_header_is_refused(tmp_path: Path) -> None:
    def entry(offsets: list[int], shape: list[int] | None = None) -> bytes:
        return json.dumps({"t": {"dtype": "F32", "shape": shape or [2], "data_offsets": offsets}}).encode()

    (tmp_path / "huge").write_bytes(struct.pack("<Q", 1 << 62) + b"{}")  # a header length past the file
    header_file(tmp_path / "not_json", b"{not json")
    header_file(tmp_path / "outside", entry([0, 64]), b"\0" * 8)  # the range runs past the end
    header_file(tmp_path / "backwards", entry([8, 0]), b"\0" * 8)
    for name in ("huge", "not_json", "outside", "backwards"):
        with pytest.raises(ModelLoadError):
            safetensors_index(tmp_path / name)
    (tmp_path / "shape").mkdir()
    header_file(tmp_path / "shape" / "model.safetensors", entry([0, 8], [3]), b"\0" * 8)  # 3 floats in 8 bytes
    with pytest.raises(ModelLoadError, match="does not match its shape"):
        FileTensors(tmp_path / "shape", "float32").float_rows("t")


def test_an_adapter_changed_after_its_check_is_refused_when_read(tmp_path: Path) -> None:
    key = "base_model.model.model.layers.0.self_attn.q_proj"
    config = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"], "bias": "none"}
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    save_file({f"{key}.lora_A.weight": torch.ones(2, 4), f"{key}.lora_B.weight": torch.ones(8, 2)},
              str(tmp_path / "adapter_model.safetensors"))  # fmt: skip
    lora = plain_lora_file(tmp_path, {"model.layers.0.self_attn.q_proj.weight": (8, 4)})
    assert lora is not None and lora.nbytes() == 4 * (8 + 16) and len(lora.sha256) == 64
    save_file({f"{key}.lora_A.weight": torch.ones(3, 4), f"{key}.lora_B.weight": torch.ones(8, 3)},
              str(tmp_path / "adapter_model.safetensors"))  # fmt: skip
    with pytest.raises(ModelLoadError, match="changed while it was loaded"):
        lora.factors()
