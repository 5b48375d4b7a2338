"""What a job is: its kind and options (the command it runs), priority, state and history."""

from __future__ import annotations

import time
from typing import Literal

from pydantic import BaseModel, Field

JobKind = Literal["train", "eval", "package", "prepare", "spar", "verify"]  # verify: every installed expert
Level = Literal["high", "normal", "low", "background"]
JobState = Literal["waiting", "queued", "running", "succeeded", "failed", "cancelled"]

KINDS: tuple[str, ...] = ("train", "eval", "package", "prepare", "spar")  # what `jobs submit` takes


def default_level(kind: str) -> str:
    """Sparring data is specific to the checkpoint that made the mistakes: it runs ahead of other work."""
    return "high" if kind == "spar" else "normal"


LEVELS: tuple[str, ...] = ("high", "normal", "low", "background")
FINISHED: tuple[str, ...] = ("succeeded", "failed", "cancelled")
# Each level's band of queue priorities; within a band, a smaller order comes first (FIFO unless moved).
LEVEL_BASE = {"high": 3e12, "normal": 2e12, "low": 1e12, "background": 0.0}


class Step(BaseModel):
    """One step of a pipeline (``--then``): a job waiting on the step before it."""

    kind: JobKind
    options: list[str] = Field(default_factory=list)


def pipeline(steps: list[str]) -> list[Step]:
    """``eval,gate,package`` → eval with ``--gate`` (a missed threshold fails it and stops the
    pipeline), then package with ``--require-gate``; ``gate`` alone is an eval with the gate."""
    planned: list[Step] = []
    for name in steps:
        if name == "gate":
            if planned and planned[-1].kind == "eval":
                planned[-1] = Step(kind="eval", options=[*planned[-1].options, "--gate"])
            else:
                planned.append(Step(kind="eval", options=["--gate"]))
        elif name == "package" and any("--gate" in s.options for s in planned):
            planned.append(Step(kind="package", options=["--require-gate"]))
        elif name in KINDS:
            planned.append(Step.model_validate({"kind": name}))
        else:
            raise ValueError(f"unknown pipeline step {name!r} (steps: {', '.join(KINDS)}, gate)")
    return planned


class Attempt(BaseModel):
    number: int
    worker: str
    started_at: float
    finished_at: float | None = None
    exit_code: int | None = None
    outcome: str | None = None  # succeeded, failed, interrupted, lost, cancelled


class Job(BaseModel):
    """One job's record in the queue backend (``job:<id>``); its message in the queue holds only
    ``id`` and ``token`` (a changed token retires an older message: priority change, move, retry)."""

    id: int
    kind: JobKind
    manifest: str  # absolute path of the expert directory or manifest file: every worker must see it
    options: list[str] = Field(default_factory=list)  # the command's options, as given
    level: Level = "normal"
    order: float = 0.0
    state: JobState = "queued"
    token: int = 0
    max_retries: int = 2
    after: int | None = None  # runs once this job succeeded
    submitted_at: float = Field(default_factory=time.time)
    retry_at: float | None = None
    attempts: list[Attempt] = Field(default_factory=list)
    error: str | None = None
    log: str | None = None
    cancel_requested: bool = False

    @property
    def priority(self) -> float:
        """The queue priority: the level's band, then the order within it (higher runs first)."""
        return LEVEL_BASE[self.level] + 1e12 - 1 - self.order

    @property
    def worker(self) -> str | None:
        return self.attempts[-1].worker if self.attempts and self.state == "running" else None
