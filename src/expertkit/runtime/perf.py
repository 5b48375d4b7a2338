"""Measure what an expert costs on this machine, as ``expert-cli package`` records it in ``perf``.

The figures come from expertkit's own runtime (the decoder ``chat`` and ``serve`` use), base model
and expert side by side in one process, on a fixed request shape so experts compare with each other:
one fixed user prompt, exactly ``new_tokens`` generated (end tokens and stops ignored), greedy.

- ``tokens_per_s``: decode throughput of the expert at each batch size (all streams, wall clock);
  ``base_tokens_per_s`` the base model's at batch 1;
- ``latency_ms_overhead``: the expert's median request time minus the base model's (batch 1; a
  difference below zero is timing noise and recorded as 0);
- ``memory_mb_overhead``: what the expert's own tensors hold once it decodes: its adapter, plus the
  merged weight copy the lean decoder keeps for it (counted tensor by tensor, so it does not move
  with the allocator's retention as resident memory would); ``vram_mb_overhead``: CUDA's allocated
  memory grown by attaching the expert and building its decoder beside the base model's;
- ``adapter_parameters``: the adapter's parameter count as loaded.
"""

from __future__ import annotations

import gc
import os
import platform
import statistics
import time
from dataclasses import dataclass, replace
from typing import Any

from expertkit.manifest.sections import Perf, PerfMachine
from expertkit.models.resolve import resolve_model
from expertkit.package.references import ExpertFiles
from expertkit.runtime.batch import BatchScheduler
from expertkit.runtime.engine import Engine
from expertkit.runtime.options import LoadOptions
from expertkit.runtime.settings import DecodingOverrides, resolve_settings
from expertkit.version import __version__

PROMPT = "In one paragraph, explain what an index in a relational database is for."


@dataclass(frozen=True)
class PerfPlan:
    new_tokens: int = 32
    batch_sizes: tuple[int, ...] = (1, 4)
    repeats: int = 3  # timed runs per system and batch size (after one warm-up); the median is kept


@dataclass(frozen=True)
class PerfReport:
    tokens_per_s: dict[int, float]
    base_tokens_per_s: float
    latency_ms_overhead: float
    memory_mb_overhead: float
    vram_mb_overhead: float | None
    adapter_parameters: int
    measured_on: dict[str, Any]

    def to_manifest(self) -> Perf:
        """The manifest's ``perf`` section (``adapter_bytes`` is the packager's to fill)."""
        return Perf(
            latency_ms_overhead=self.latency_ms_overhead,
            vram_mb_overhead=self.vram_mb_overhead,
            memory_mb_overhead=self.memory_mb_overhead,
            supported_batch_sizes=sorted(self.tokens_per_s),
            tokens_per_s={str(batch): rate for batch, rate in sorted(self.tokens_per_s.items())},
            base_tokens_per_s=self.base_tokens_per_s,
            adapter_parameters=self.adapter_parameters,
            measured_on=PerfMachine.model_validate(self.measured_on),
        )


def _cuda_mib(device: str) -> float | None:
    if not device.startswith("cuda"):
        return None
    import torch

    torch.cuda.synchronize()
    return torch.cuda.memory_allocated() / 2**20


def _growth(before: float | None, after: float | None) -> float | None:
    return None if before is None or after is None else round(max(after - before, 0.0), 1)


def _timed_run(engine: Engine, name: str | None, prompt_ids: list[int], batch: int, new_tokens: int) -> float:
    """Seconds to decode ``batch`` copies of the prompt to exactly ``new_tokens`` each."""
    overrides = DecodingOverrides(temperature=0.0, max_tokens=new_tokens, seed=0)
    settings = resolve_settings(overrides, None)
    request = replace(engine.request(name, prompt_ids, settings), end_ids=set())
    scheduler = BatchScheduler(engine, max_batch=batch, max_positions=len(prompt_ids) + new_tokens + 64)
    failures: list[BaseException] = []
    started = time.perf_counter()
    for _ in range(batch):
        scheduler.submit(request, lambda result: failures.append(result) if isinstance(result, BaseException) else None)
    while scheduler.busy:
        scheduler.step()
    if failures:
        raise failures[0]
    return time.perf_counter() - started


def _median_seconds(engine: Engine, name: str | None, ids: list[int], batch: int, plan: PerfPlan) -> float:
    _timed_run(engine, name, ids, batch, plan.new_tokens)  # warm-up: decoder built, caches allocated
    return statistics.median(_timed_run(engine, name, ids, batch, plan.new_tokens) for _ in range(plan.repeats))


def _machine(engine: Engine, options: LoadOptions, plan: PerfPlan, prompt_tokens: int) -> dict[str, Any]:
    import torch

    device = options.device
    name = torch.cuda.get_device_name() if device.startswith("cuda") else (platform.processor() or platform.machine())
    return {
        "device": device,
        "device_name": name,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(terse=True),
        "dtype": str(engine.model.dtype).removeprefix("torch."),
        "torch": torch.__version__,
        "expertkit": __version__,
        "prompt_tokens": prompt_tokens,
        "new_tokens": plan.new_tokens,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def measure_perf(files: ExpertFiles, options: LoadOptions, plan: PerfPlan | None = None) -> PerfReport:
    """Load the base model, time it, attach the expert, time it; see the module docstring."""
    plan = plan or PerfPlan()
    name = files.loaded.manifest.name
    engine = Engine(resolve_model(files.loaded.manifest.base_models[0].name, files.model_base_dir), options)
    ids = engine.prompt_ids([{"role": "user", "content": PROMPT}])
    base_one = _median_seconds(engine, None, ids, 1, plan)
    gc.collect()
    cuda_before = _cuda_mib(options.device)
    engine.attach(files)  # drops the cached decoders: rebuild the base model's, then the expert's beside it
    engine.activate(None)
    engine.activate(name)
    gc.collect()
    cuda_after = _cuda_mib(options.device)
    memory = round(engine.expert_nbytes(name) / 2**20, 1)
    seconds = {batch: _median_seconds(engine, name, ids, batch, plan) for batch in plan.batch_sizes}
    expert_one = seconds.get(1) or _median_seconds(engine, name, ids, 1, plan)
    adapter = sum(p.numel() for n, p in engine.model.named_parameters() if f".{name}." in n)
    return PerfReport(
        tokens_per_s={batch: round(batch * plan.new_tokens / s, 1) for batch, s in seconds.items()},
        base_tokens_per_s=round(plan.new_tokens / base_one, 1),
        latency_ms_overhead=round(max(expert_one - base_one, 0.0) * 1000, 2),
        memory_mb_overhead=memory,
        vram_mb_overhead=_growth(cuda_before, cuda_after),
        adapter_parameters=adapter,
        measured_on=_machine(engine, options, plan, len(ids)),
    )
