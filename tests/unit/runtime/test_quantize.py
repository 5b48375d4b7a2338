"""Weight-only int8/int4 decoding: the kernels' arithmetic, the merged-then-quantised decoder, and
where the choice comes from (CLI > manifest runtime.quantize > default)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from expertkit.errors import UsageError
from expertkit.runtime.engine import Engine
from expertkit.runtime.llama_weights import Linear
from expertkit.runtime.options import LoadOptions, parse_quantize
from expertkit.runtime.quantize import INT4_GROUP, Int4Linear, Int8Linear, quantize_linear

IDS = torch.tensor([1, 5, 7, 9, 11, 13])


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got.float() - expected.float()).norm() / expected.float().norm())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_quantised_linears_match_the_float_product_within_their_precision(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    weight, bias = (torch.randn(96, 128) * 0.05).to(dtype), torch.randn(96).to(dtype)
    x = torch.randn(3, 1, 128).to(dtype)
    expected = x.float() @ weight.float().T + bias.float()
    int8, int4 = quantize_linear(weight, bias, "int8"), quantize_linear(weight, bias, "int4")
    assert isinstance(int8, Int8Linear) and isinstance(int4, Int4Linear)
    assert int8(x).shape == (3, 1, 96) and int8(x).dtype == dtype and int4(x).dtype == dtype
    # Round-to-nearest noise: 1/254 of a channel's range for int8, 1/30 of a group's for int4.
    assert relative_error(int8(x) - bias, expected - bias.float()) < 0.01
    assert 0.02 < relative_error(int4(x) - bias, expected - bias.float()) < 0.1
    assert int8.weight.dtype == torch.int8 and int4.weight.numel() == 96 * 128 // 2  # two codes a byte


def test_int4_reproduces_weights_already_on_a_4_bit_grid() -> None:
    """Weights stored as q * scale + min per group of 32 (GGUF Q4_1, as the embedded model ships)
    come back exact up to the bf16 scales: quantising them again loses nothing more."""
    torch.manual_seed(1)
    codes = torch.randint(0, 16, (64, 4, INT4_GROUP)).float()
    codes[..., 0], codes[..., 1] = 0, 15  # each group spans the whole grid
    scale, low = torch.rand(64, 4, 1) * 0.01 + 0.001, torch.randn(64, 4, 1) * 0.05
    scale, low = scale.bfloat16().float(), low.bfloat16().float()
    weight = (codes * scale + low).reshape(64, 4 * INT4_GROUP)
    x = torch.randn(2, 4 * INT4_GROUP)
    got = Int4Linear(weight, None, torch.float32)(x)
    assert relative_error(got, x @ weight.T) < 0.01


def test_a_quantised_decoder_keeps_the_logits_and_reads_fewer_bytes(trained_source: Path) -> None:
    plain = Engine.for_experts([str(trained_source)], LoadOptions(quantize="none"))
    reference = plain.activate("expert-tiny")
    expected = reference.forward(reference.new_cache(16), IDS)
    for mode, tolerance in (("int8", 0.02), ("int4", 0.15)):
        engine = Engine.for_experts([str(trained_source)], LoadOptions(quantize=mode))  # type: ignore[arg-type]
        decoder = engine.activate("expert-tiny")
        assert engine.quantize_of("expert-tiny") == (mode, "cli")
        got = decoder.forward(decoder.new_cache(16), IDS)
        assert relative_error(got, expected) < tolerance, mode
        assert decoder.nbytes() < reference.nbytes()  # type: ignore[attr-defined]
        kinds = {type(m) for layer in decoder.layers for m in (layer.qkv, layer.out, layer.gate_up, layer.down)}  # type: ignore[attr-defined]
        assert kinds == {Int8Linear if mode == "int8" else Int4Linear}
        # Switching away and back reuses the cached quantised decoder (the merge is not redone).
        engine.activate(None)
        assert engine.activate("expert-tiny") is decoder


def test_the_quantisation_comes_from_the_flag_then_the_manifest_then_the_default(expert_dir: Path) -> None:
    assert Engine.for_experts([str(expert_dir)]).quantize_of("expert-tiny") == ("none", "default")
    manifest = json.loads((expert_dir / "manifest.json").read_text())
    manifest["runtime"] = {"quantize": "int8"}
    (expert_dir / "manifest.json").write_text(json.dumps(manifest))
    engine = Engine.for_experts([str(expert_dir)])
    assert engine.quantize_of("expert-tiny") == ("int8", "manifest")
    assert "expert-tiny: lean decoder, float32, quantize int8 (manifest)" in engine.decoder_notes()
    assert isinstance(engine.activate("expert-tiny").layers[0].qkv, Int8Linear)  # type: ignore[attr-defined]
    overridden = Engine.for_experts([str(expert_dir)], LoadOptions(quantize="none"))
    assert overridden.quantize_of("expert-tiny") == ("none", "cli")
    assert isinstance(overridden.activate("expert-tiny").layers[0].qkv, Linear)  # type: ignore[attr-defined]


def test_an_unknown_quantisation_is_a_usage_error() -> None:
    assert parse_quantize(None) is None and parse_quantize("int4") == "int4"
    with pytest.raises(UsageError, match="--quantize 'int3'") as caught:
        parse_quantize("int3")
    assert "none, int8, int4" in caught.value.hint


def test_rounding_merged_weights_to_the_grid_would_erase_a_small_lora() -> None:
    """Why a quantised LoRA expert keeps its deltas unmerged: weights already on a 4-bit grid (the
    embedded model's GGUF is Q4_1) plus a low-rank change smaller than the grid step round back to
    the base weights, so a merged-then-quantised expert decodes like the base model."""
    torch.manual_seed(2)
    codes = torch.randint(0, 16, (64, 2, INT4_GROUP)).float()
    codes[..., 0], codes[..., 1] = 0, 15
    base = (codes * 0.01 - 0.08).reshape(64, 2 * INT4_GROUP)
    delta = torch.randn(64, 2) @ torch.randn(2, 2 * INT4_GROUP) * 5e-4  # rank 2, well under the 0.01 step
    x = torch.randn(4, 2 * INT4_GROUP)
    merged = Int4Linear(base + delta, None, torch.float32)(x)
    base_only = Int4Linear(base, None, torch.float32)(x)
    kept = base_only + x @ delta.T  # what the deltas path computes
    change = x @ delta.T
    assert relative_error(merged - base_only, change) > 0.5  # most of the change is gone
    assert relative_error(kept - base_only, change) < 1e-5


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_a_quantised_lora_expert_keeps_its_change_as_deltas(trained_source: Path, mode: str) -> None:
    plain = Engine.for_experts([str(trained_source)], LoadOptions(quantize="none"))
    expected = logits_of(plain, "expert-tiny") - logits_of(plain, None)
    engine = Engine.for_experts([str(trained_source)], LoadOptions(quantize=mode))  # type: ignore[arg-type]
    decoder = engine.activate("expert-tiny")
    assert decoder.deltas is not None  # type: ignore[attr-defined]
    assert decoder.layers is engine.activate(None).layers  # type: ignore[attr-defined]  # one quantised copy
    got = logits_of(engine, "expert-tiny") - logits_of(engine, None)
    assert relative_error(got, expected) < (0.05 if mode == "int8" else 0.3)


def logits_of(engine: Engine, name: str | None) -> torch.Tensor:
    decoder = engine.activate(name)
    return decoder.forward(decoder.new_cache(16), IDS)
