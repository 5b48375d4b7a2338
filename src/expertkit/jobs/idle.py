"""Is the device idle? What background jobs wait for.

A GPU is idle when NVML reports its utilisation below the threshold (``nvidia-ml-py``; without NVML a
GPU never counts as idle, so background work never competes blind); a CPU when the one-minute load
average per core is below it.
"""

from __future__ import annotations

import os
from collections.abc import Callable

DEFAULT_MAX_LOAD = 0.5  # CPU: load average per core; GPU: utilisation as a fraction


def gpu_utilisation(index: int) -> float | None:
    """NVML's utilisation of GPU ``index`` as a fraction, or ``None`` when NVML is not there."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        try:
            return float(pynvml.nvmlDeviceGetUtilizationRates(pynvml.nvmlDeviceGetHandleByIndex(index)).gpu) / 100
        finally:
            pynvml.nvmlShutdown()
    except pynvml.NVMLError:
        return None


def cpu_load() -> float:
    return os.getloadavg()[0] / max(os.cpu_count() or 1, 1)


def idle_check(device: str, max_load: float = DEFAULT_MAX_LOAD) -> Callable[[], bool]:
    """A check for ``device`` (``cpu`` or ``cuda:N``)."""
    if device.startswith("cuda"):
        index = int(device.split(":", 1)[1]) if ":" in device else 0

        def gpu_idle() -> bool:
            used = gpu_utilisation(index)
            return used is not None and used < max_load

        return gpu_idle
    return lambda: cpu_load() < max_load
