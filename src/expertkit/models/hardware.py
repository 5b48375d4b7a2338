"""What the machine can run natively (used by training and the runtime to pick a dtype)."""

from __future__ import annotations

import os
from pathlib import Path


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 dot products (AVX512-BF16 or AMX), read from /proc/cpuinfo."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return False
    return any(flag in flags for flag in ("avx512_bf16", "amx_bf16"))


def device_memory_mib(device: str = "cpu") -> float | None:
    """Memory training can use on ``device``: the GPU's total, or this machine's RAM (cgroup-limited
    where a container sets a smaller limit); ``None`` when it cannot be read."""
    if device == "cuda":
        import torch

        return float(torch.cuda.mem_get_info()[1]) / (1 << 20)
    try:
        total = float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text(encoding="utf-8").strip()
        if limit.isdigit():
            total = min(total, float(limit))
    except OSError:
        pass
    return total / (1 << 20)


def dtype_reason(device: str = "cpu") -> str:
    """Why :func:`best_dtype` chose what it chose, for the notes chat and serve print."""
    if device == "cuda":
        return "the GPU's fastest supported half precision"
    if cpu_supports_bf16():
        return "this CPU has native bf16 dot products (avx512_bf16/amx_bf16)"
    return "this CPU has no native bf16 dot products"


def best_dtype(device: str = "cpu") -> str:
    """``bfloat16`` where the device runs it natively, else ``float32``."""
    if device == "cuda":
        import torch

        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "bfloat16" if cpu_supports_bf16() else "float32"
