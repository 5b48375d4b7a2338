"""The memory calculator: ``expert-cli estimate``'s model (:func:`expertkit.train.estimate_report.estimate_shape`)
for any shape, against GPU presets or this machine's RAM, beside the measured peaks of past runs.

The estimate builds the model on PyTorch's ``meta`` device (no weights, but torch, transformers and
PEFT imported), so it runs in one spawned worker process kept for the dashboard's lifetime: torch never
enters the dashboard process, the first answer pays the import once (a few seconds) and later ones take
a fraction of a second. Only models that are ready on this machine can be picked (``models list``): a
request never names a path, and nothing is downloaded or converted for it.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from pydantic import ValidationError

from expertkit.errors import UsageError
from expertkit.models.hardware import device_memory_mib
from expertkit.models.info import list_models
from expertkit.train.estimate_report import GPU_PRESETS as PRESETS
from expertkit.train.estimate_report import ShapeRequest

ESTIMATE_TIMEOUT_S = 180.0
GPU_PRESETS: dict[str, float] = dict(PRESETS.values())  # shown name → MiB
CPU_PRESET = "CPU RAM (this machine)"


def presets() -> dict[str, float | None]:
    return {**GPU_PRESETS, CPU_PRESET: device_memory_mib("cpu")}


def ready_models() -> dict[str, str]:
    """Models ready on this machine: name → what to resolve (the name of an embedded model, else its directory)."""
    return {m.name: m.name if m.kind == "embedded" else str(m.path) for m in list_models() if m.ready}


def _exit_with_parent(parent: int) -> None:
    """In the worker: exit when the dashboard is gone (killed without a chance to stop its worker)."""
    import os
    import threading
    import time

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def _estimate_in_worker(request: dict[str, Any], available_mib: float | None) -> dict[str, Any]:
    """Runs in the worker process: the same function ``expert-cli estimate --base`` calls."""
    from expertkit.errors import ExpertkitError
    from expertkit.train.estimate_report import estimate_shape

    try:
        return {"report": estimate_shape(ShapeRequest(**request), available_mib, prepare=False).to_json()}
    except ExpertkitError as exc:
        return {"error": exc.message, "hint": exc.hint}


class CalculatorUnavailableError(Exception):
    """The worker process died or did not answer in time (the dashboard answers 503)."""


class Calculator:
    """One worker process, started on first use and stopped with the dashboard."""

    def __init__(self) -> None:
        self._pool: ProcessPoolExecutor | None = None

    async def estimate(self, values: dict[str, Any], preset: str) -> dict[str, Any]:
        """The report, with the preset it was checked against; :class:`UsageError` for bad input."""
        table = presets()
        if preset not in table:
            raise UsageError(f"unknown preset {preset!r}", f"one of: {', '.join(table)}")
        device = "cpu" if preset == CPU_PRESET else "cuda"
        try:
            shape = ShapeRequest.model_validate({**values, "device": device})
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise UsageError(f"{where}: {first['msg']}", "correct the field and estimate again") from exc
        models = await asyncio.to_thread(ready_models)
        if shape.model not in models:
            raise UsageError(
                f"model {shape.model!r} is not ready on this machine",
                f"pick one of: {', '.join(models) or '(none: expert-cli models pull NAME)'}",
            )
        request = {**shape.model_dump(), "model": models[shape.model]}  # a listed model's own location
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_exit_with_parent,
                initargs=(os.getpid(),),
            )
        future = self._pool.submit(_estimate_in_worker, request, table[preset])
        try:
            result = await asyncio.wait_for(asyncio.wrap_future(future), ESTIMATE_TIMEOUT_S)
        except (BrokenProcessPool, TimeoutError) as exc:
            self._kill()  # the next estimate starts a fresh worker
            raise CalculatorUnavailableError(f"the calculator's worker failed ({type(exc).__name__})") from exc
        if "error" in result:
            raise UsageError(result["error"], result.get("hint", ""))
        return {**result["report"], "preset": preset, "preset_mib": table[preset]}

    def _kill(self) -> None:
        """A worker that hung or died: its process ended by force (``shutdown`` would wait for it)."""
        if self._pool is not None:
            for process in list(getattr(self._pool, "_processes", {}).values()):
                process.kill()
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def close(self) -> None:
        """Stop the worker (waits for an estimate in progress: a second or so)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
