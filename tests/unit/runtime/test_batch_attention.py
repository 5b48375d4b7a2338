"""The batch step's attention in C: transformers' arithmetic, every row at its own slot and position."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

import expertkit.runtime.llama_decoder as llama_decoder
from expertkit.runtime import native_build, openmp
from expertkit.runtime.batch_attention import BatchAttention, batch_attention
from expertkit.runtime.engine import Engine
from expertkit.runtime.llama_decoder import LeanDecoder, PromptRows
from expertkit.runtime.lora_deltas import RowGroup
from expertkit.runtime.native_build import BATCH_ATTENTION, load_library
from expertkit.runtime.options import LoadOptions
from unit.runtime.test_engine import second_expert
from unit.runtime.test_native_decoder import portable_library


def kernel() -> BatchAttention:
    found = batch_attention()
    assert found is not None, "make test installs a C compiler: the kernel must build here"
    return found


def portable(tmp_path: Path) -> BatchAttention:
    """The same source built for a CPU without AVX-512: the portable C path."""
    return BatchAttention(portable_library(tmp_path, BATCH_ATTENTION))


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], -1) * sin


def reference(qk, v, rope, where, cache, scale):  # type: ignore[no-untyped-def]
    """Attention as transformers computes it, in float64, one row and head at a time."""
    (cos, sin), (slots, positions), (keys, values) = rope, where, cache
    kv_heads = v.shape[1]
    heads = qk.shape[1] - kv_heads
    keys, values = keys.double().clone(), values.double().clone()
    c, s = cos.double()[positions][:, None], sin.double()[positions][:, None]
    q, k = rotate(qk.double()[:, :heads], c, s), rotate(qk.double()[:, heads:], c, s)
    for row, (slot, position) in enumerate(zip(slots.tolist(), positions.tolist(), strict=True)):
        keys[slot, :, :, position] = k[row]
        values[slot, :, position] = v[row].double()
    out = torch.empty(len(slots), heads, v.shape[2], dtype=torch.float64)
    for row, (slot, position) in enumerate(zip(slots.tolist(), positions.tolist(), strict=True)):
        for head in range(heads):
            kv = head // (heads // kv_heads)
            weights = torch.softmax(q[row, head] @ keys[slot, kv, :, : position + 1] * scale, -1)
            out[row, head] = weights @ values[slot, kv, : position + 1]
    return out.reshape(len(slots), -1), keys, values


def case(heads: int, kv_heads: int, dim: int, seed: int = 0):  # type: ignore[no-untyped-def]
    """Rows of three slots: two decoding (one past 64 positions), and a prompt's three rows followed by
    its sequence's own row, all in one call (the prompt's rows attend causally to each other)."""
    generator = torch.Generator().manual_seed(seed)
    slots, capacity = 4, 96
    keys = torch.randn(slots, kv_heads, dim, capacity, generator=generator)
    values = torch.randn(slots, kv_heads, capacity, dim, generator=generator)
    where = (torch.tensor([0, 1, 3, 3, 3, 3]), torch.tensor([70, 9, 4, 5, 6, 7]))
    angles = torch.rand(128, dim, generator=generator) * 6
    rope = (angles.cos(), angles.sin())
    qk = torch.randn(6, heads + kv_heads, dim, generator=generator)
    v = torch.randn(6, kv_heads, dim, generator=generator)
    return qk, v, rope, where, (keys, values)


@pytest.mark.parametrize(("heads", "kv_heads", "dim"), [(9, 3, 64), (10, 2, 40), (4, 4, 128)])
@pytest.mark.parametrize("build", ["native", "portable"])
def test_the_kernel_is_transformers_attention(heads: int, kv_heads: int, dim: int, build: str, tmp_path: Path) -> None:
    """Grouped queries (3 and 5 per key head, and none), head sizes off the 64-wide vector path."""
    qk, v, rope, where, (keys, values) = case(heads, kv_heads, dim)
    expected, expected_keys, expected_values = reference(qk, v, rope, where, (keys, values), 0.125)
    attend = kernel() if build == "native" else portable(tmp_path)
    got = attend(qk.clone(), v, rope, where, (keys, values), 0.125)
    torch.testing.assert_close(got.double(), expected, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(keys.double(), expected_keys, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(values.double(), expected_values, atol=0, rtol=0)


def full_case(seed: int = 1):  # type: ignore[no-untyped-def]
    """Sixteen rows in sixteen slots at positions from 0 to 150, as a full batch step holds them."""
    generator = torch.Generator().manual_seed(seed)
    slots, capacity, heads, kv_heads, dim = 16, 160, 9, 3, 64
    keys = torch.randn(slots, kv_heads, dim, capacity, generator=generator)
    values = torch.randn(slots, kv_heads, capacity, dim, generator=generator)
    where = (torch.arange(16), torch.arange(16) * 10)
    angles = torch.rand(capacity, dim, generator=generator) * 6
    qk = torch.randn(16, heads + kv_heads, dim, generator=generator)
    v = torch.randn(16, kv_heads, dim, generator=generator)
    return qk, v, (angles.cos(), angles.sin()), where, (keys, values)


@pytest.mark.parametrize("build", ["native", "portable"])
def test_attention_split_over_torchs_openmp_threads_is_one_threads_bit_for_bit(build: str, tmp_path: Path) -> None:
    """Each (row, key head) pair is summed whole by one thread, so any team gives the same bits."""
    assert openmp.openmp_entry_points() is not None, "torch's Linux wheels run on libgomp: it must be found here"
    attend = kernel() if build == "native" else portable(tmp_path)
    results = []
    try:
        for threads in (1, 2, 3):
            qk, v, rope, where, cache = full_case()
            attend.threads = threads
            results.append((attend(qk, v, rope, where, cache, 0.125), *cache, attend.team))
    finally:
        attend.threads = 0
    assert [r[3] for r in results] == [1, 2, 3]  # the team that attended
    for got in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(got[:3], results[0][:3], strict=True))
    qk, v, rope, where, cache = full_case()
    expected, _, _ = reference(qk, v, rope, where, cache, 0.125)
    torch.testing.assert_close(results[0][0].double(), expected, atol=2e-5, rtol=1e-5)


def test_without_torchs_openmp_runtime_attention_runs_on_the_calling_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two OpenMP runtimes mapped, neither in torch's directory: neither is used (a wrong one would
    start a second team of threads beside torch's)."""
    monkeypatch.setattr(openmp, "_mapped_runtimes", lambda: ["/opt/a/libgomp.so.1", "/opt/b/libiomp5.so"])
    openmp.openmp_entry_points.cache_clear()
    try:
        assert openmp.openmp_entry_points() is None
        attend = BatchAttention(load_library(BATCH_ATTENTION))
        qk, v, rope, where, cache = full_case()
        expected, _, _ = reference(qk, v, rope, where, (cache[0].clone(), cache[1].clone()), 0.125)
        got = attend(qk, v, rope, where, cache, 0.125)
        assert attend.team == 1
        torch.testing.assert_close(got.double(), expected, atol=2e-5, rtol=1e-5)
    finally:
        openmp.openmp_entry_points.cache_clear()


def test_torch_on_its_own_thread_pool_gives_the_kernels_no_openmp_team(monkeypatch: pytest.MonkeyPatch) -> None:
    """Built with OpenMP but running ATen on its native pool, torch's threads are not an OpenMP team."""
    info = "ATen parallel backend: native thread pool\nOpenMP 201511 (a.k.a. OpenMP 4.5)\n"
    monkeypatch.setattr(torch.__config__, "parallel_info", lambda: info)
    openmp.openmp_entry_points.cache_clear()
    try:
        assert openmp.openmp_entry_points() is None
    finally:
        openmp.openmp_entry_points.cache_clear()


def test_a_strided_query_and_value_are_read_through_their_row_stride() -> None:
    """Slices of one projection's output, as the decoder passes them (no copy)."""
    qk, v, rope, where, cache = case(9, 3, 64)
    fused = torch.cat([qk.reshape(6, -1), v.reshape(6, -1)], 1)
    expected, _, _ = reference(qk, v, rope, where, (cache[0].clone(), cache[1].clone()), 0.125)
    got = kernel()(fused[:, : 12 * 64].view(6, 12, 64), fused[:, 12 * 64 :].view(6, 3, 64), rope, where, cache, 0.125)
    torch.testing.assert_close(got.double(), expected, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("where", [(torch.tensor([4]), torch.tensor([3])), (torch.tensor([0]), torch.tensor([96]))])
def test_a_row_outside_the_cache_is_refused_and_nothing_is_written(where) -> None:  # type: ignore[no-untyped-def]
    qk, v, rope, _, (keys, values) = case(9, 3, 64)
    before = keys.clone(), values.clone()
    with pytest.raises(ValueError, match="outside the batch cache"):
        kernel()(qk[:1].clone(), v[:1], rope, where, (keys, values), 0.125)
    assert torch.equal(keys, before[0]) and torch.equal(values, before[1])


def test_tensors_the_kernel_cannot_read_are_refused() -> None:
    qk, v, rope, where, (keys, values) = case(9, 3, 64)
    with pytest.raises(ValueError, match="unexpected"):
        kernel()(qk, v.double(), rope, where, (keys, values), 0.125)
    with pytest.raises(ValueError, match="unexpected"):
        kernel()(qk, v, rope, where, (keys.transpose(-1, -2), values), 0.125)
    with pytest.raises(ValueError, match="unexpected"):
        kernel()(qk, v, rope, (where[0].int(), where[1]), (keys, values), 0.125)


def test_batch_steps_through_the_kernel_equal_pytorchs(
    trained_source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mixed step (two experts' deltas, a joining prompt) gives PyTorch's logits and cache."""
    engine = Engine.for_experts([str(trained_source), str(second_expert(trained_source, tmp_path))], LoadOptions())
    decoder = engine.activate(None)
    assert isinstance(decoder, LeanDecoder)
    tiny, other = engine.deltas_of("expert-tiny"), engine.deltas_of("expert-other")
    assert tiny is not None and other is not None
    tokens, lengths = torch.tensor([4, 6, 9]), torch.tensor([5, 3, 4])
    prompts = [PromptRows(2, 0, torch.tensor([7, 3, 12, 5]))]
    groups = [RowGroup(torch.tensor([0, 2, 3, 4, 5, 6]), tiny), RowGroup(torch.tensor([1]), other)]

    def step() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cache = decoder.new_batch_cache(3, 16)
        for slot, ids in enumerate(([5, 9, 14, 3, 7], [11, 2, 8])):
            decoder.forward(LeanDecoder.slot_view(cache, slot), torch.tensor(ids))
        return decoder.step_batch(cache, tokens, lengths, groups, prompts), cache.keys, cache.values

    native = step()
    monkeypatch.setattr(llama_decoder, "batch_attention", lambda: None)
    expected = step()
    for got, want in zip(native, expected, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert torch.equal(native[1][..., 6:], torch.zeros_like(native[1][..., 6:]))  # nothing past the rows


def test_without_a_compiler_batch_steps_attend_through_pytorch(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("EXPERTKIT_HOME", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-compiler"))
    batch_attention.cache_clear()
    load_library.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger=native_build.__name__):
            assert batch_attention() is None
        assert "attend through PyTorch (slower)" in caplog.text and "apt-get install gcc" in caplog.text
        assert "--decoder" not in caplog.text  # the lean decoder is what runs: nothing to switch
        batch_attention.cache_clear()
        monkeypatch.delenv("CC")
        monkeypatch.setenv("EXPERTKIT_BATCH_KERNELS", "0")
        assert batch_attention() is None
    finally:
        batch_attention.cache_clear()
        load_library.cache_clear()
