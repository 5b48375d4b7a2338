"""One generation thread over the engine, behind a bounded queue.

The engine (a model, its adapters, one active decoder) is not thread-safe, so every generation
runs on this thread, in arrival order. ``submit`` refuses work when the queue is full (the server
answers 429 with Retry-After) and after ``close`` (503). Each job carries a cancel flag and a
deadline that the decode loop checks before every token: a client that disconnects or a request
that times out stops its generation within one step.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from expertkit.serve.errors import APIError


@dataclass
class Job:
    run: Callable[[Job], Any]
    deadline: float
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop
    cancelled: threading.Event = field(default_factory=threading.Event)

    def should_stop(self) -> bool:
        return self.cancelled.is_set() or time.monotonic() > self.deadline

    def deliver(self, callback: Callable[..., Any], *args: Any) -> None:
        """Run ``callback(*args)`` on the event loop (from the worker thread)."""
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(callback, *args)


class GenerationWorker:
    def __init__(self, max_queue: int, on_depth: Callable[[int], None] | None = None) -> None:
        self.queue: queue.Queue[Job | None] = queue.Queue(maxsize=max_queue)
        self.on_depth = on_depth or (lambda depth: None)
        self.closing = False
        self.active = 0
        self.thread = threading.Thread(target=self._loop, name="expertkit-generation", daemon=True)
        self.thread.start()

    def depth(self) -> int:
        return self.queue.qsize() + self.active

    def submit(self, run: Callable[[Job], Any], timeout_s: float) -> Job:
        if self.closing:
            raise APIError(503, "the server is shutting down", code="shutting_down")
        loop = asyncio.get_running_loop()
        job = Job(run, time.monotonic() + timeout_s, loop.create_future(), loop)
        try:
            self.queue.put_nowait(job)
        except queue.Full:
            raise APIError(
                429, "too many requests are queued; retry shortly", code="queue_full", headers={"Retry-After": "1"}
            ) from None
        self.on_depth(self.depth())
        return job

    def _loop(self) -> None:
        while (job := self.queue.get()) is not None:
            self.active = 1
            try:
                if job.should_stop():
                    raise TimeoutError("the request waited past its deadline")
                result = job.run(job)
                job.deliver(_set_result, job.future, result)
            except BaseException as exc:  # delivered to the request, which maps it to an HTTP error
                job.deliver(_set_exception, job.future, exc)
            finally:
                self.active = 0
                self.on_depth(self.depth())

    def close(self, wait_s: float = 30.0) -> None:
        """Stop accepting, cancel what is queued, let the running generation finish (bounded)."""
        self.closing = True
        while True:
            try:
                job = self.queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.cancelled.set()
                job.deliver(
                    _set_exception, job.future, APIError(503, "the server is shutting down", code="shutting_down")
                )
        self.queue.put(None)
        self.thread.join(timeout=wait_s)


def _set_result(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
