"""One generation thread over the engine: a bounded queue in front of a continuous batcher.

The engine (a model, its adapters, one active decoder) is not thread-safe, so all decoding runs
on this thread. Requests wait in a bounded queue (``submit`` refuses work when it is full, and
the server answers 429 with Retry-After; after ``close`` it answers 503). Each request's
generations join the :class:`BatchScheduler`, which steps every running sequence of the active
expert together. A request carries a cancel flag and a deadline that the decode loop checks
before every token, so a client that disconnects or a request that times out stops within one
step. What a step decides for the event loop (streamed text, results) is handed over once per step
(:class:`Outbox`): one wake-up of the loop for a whole batch's tokens, not one per token.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from expertkit.runtime.batch import BatchScheduler
from expertkit.runtime.engine import Engine
from expertkit.runtime.prefix_cache import PrefixCache
from expertkit.runtime.threads import intra_op_threads, use_intra_op_threads
from expertkit.serve.errors import APIError


class Outbox:
    """Calls for event loops, gathered on the generation thread during a step and handed over in one
    ``call_soon_threadsafe`` per loop (in order); from any other thread a call goes at once."""

    def __init__(self) -> None:
        self.thread: threading.Thread | None = None
        self._pending: dict[asyncio.AbstractEventLoop, list[tuple[Callable[..., Any], tuple[Any, ...]]]] = {}

    def put(self, loop: asyncio.AbstractEventLoop, callback: Callable[..., Any], *args: Any) -> None:
        if threading.current_thread() is not self.thread:
            if not loop.is_closed():
                loop.call_soon_threadsafe(callback, *args)
            return
        self._pending.setdefault(loop, []).append((callback, args))

    def flush(self) -> None:
        pending, self._pending = self._pending, {}
        for loop, calls in pending.items():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody is waiting
                loop.call_soon_threadsafe(_run_all, calls)


def _run_all(calls: list[tuple[Callable[..., Any], tuple[Any, ...]]]) -> None:
    for callback, args in calls:
        callback(*args)


@dataclass
class Job:
    start: Callable[[Job, BatchScheduler], None]
    deadline: float
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop
    cancelled: threading.Event = field(default_factory=threading.Event)
    finished: bool = False
    outbox: Outbox | None = None

    def should_stop(self) -> bool:
        return self.cancelled.is_set() or time.monotonic() > self.deadline

    def deliver(self, callback: Callable[..., Any], *args: Any) -> None:
        """Run ``callback(*args)`` on the event loop (from the worker thread: after this step)."""
        if self.outbox is not None:
            self.outbox.put(self.loop, callback, *args)
        elif not self.loop.is_closed():
            self.loop.call_soon_threadsafe(callback, *args)

    def complete(self, value: Any) -> None:
        if not self.finished:
            self.finished = True
            self.deliver(_set_result, self.future, value)

    def fail(self, exc: BaseException) -> None:
        if not self.finished:
            self.finished = True
            self.deliver(_set_exception, self.future, exc)


class GenerationWorker:
    def __init__(
        self,
        engine: Engine,
        max_queue: int,
        max_batch: int = 8,
        on_depth: Callable[[int], None] | None = None,
        mixed: bool = True,
        prefix_cache_bytes: int = 128 * 2**20,
    ) -> None:
        self.queue: queue.Queue[Job | None] = queue.Queue(maxsize=max_queue)
        positions = min(engine.context_length, 2048)
        prefixes = PrefixCache(max_bytes=prefix_cache_bytes)
        self.scheduler = BatchScheduler(engine, max_batch, positions, mixing=mixed, prefixes=prefixes)
        self.on_depth = on_depth or (lambda depth: None)
        self.capacity = max_batch + max_queue
        self.closing = False
        self.draining = False
        self.in_flight = 0
        self.outbox = Outbox()
        # Decoding keeps torch's intra-op threads; every other thread computes on its own (runtime.threads).
        self.intra_op_threads = intra_op_threads()
        self.decode_threads = 0  # what the generation thread's last step ran with (/metrics)
        self.ready = threading.Event()  # set once the generation thread has warmed up (or failed to)
        self.warm_up_error: Exception | None = None
        self.thread = threading.Thread(target=self._loop, name="expertkit-generation", daemon=True)
        self.outbox.thread = self.thread
        self.thread.start()

    def depth(self) -> int:
        return self.queue.qsize() + self.in_flight

    def submit(self, start: Callable[[Job, BatchScheduler], None], timeout_s: float) -> Job:
        if self.closing:
            raise APIError(503, "the server is shutting down", code="shutting_down")
        loop = asyncio.get_running_loop()
        job = Job(start, time.monotonic() + timeout_s, loop.create_future(), loop, outbox=self.outbox)
        try:
            if self.depth() >= self.capacity:  # running batch + waiting requests
                raise queue.Full
            self.queue.put_nowait(job)
        except queue.Full:
            raise APIError(
                429, "too many requests are queued; retry shortly", code="queue_full", headers={"Retry-After": "1"}
            ) from None
        self.on_depth(self.depth())
        return job

    def _take(self) -> bool:
        """Move queued jobs into the scheduler; False when the worker should exit."""
        block = not self.scheduler.busy
        while True:
            try:
                job = self.queue.get(timeout=0.05) if block else self.queue.get_nowait()
            except queue.Empty:
                return True
            if job is None:  # close(): finish what is running, then stop
                self.draining = True
                return True
            block = False
            self._start(job)

    def _start(self, job: Job) -> None:
        if job.should_stop():
            job.fail(TimeoutError("the request waited past its deadline"))
            return
        self.in_flight += 1
        original = job.future

        def finished(_: Any) -> None:
            self.in_flight -= 1
            self.on_depth(self.depth())

        original.get_loop().call_soon_threadsafe(original.add_done_callback, finished)
        try:
            job.start(job, self.scheduler)
        except Exception as exc:  # a request that cannot even start: its own error
            job.fail(exc)

    def _loop(self) -> None:
        use_intra_op_threads(self.intra_op_threads)
        try:
            self.scheduler.warm_up()  # here, on the thread that decodes: its torch threads build it
        except Exception as exc:  # the first request meets it again and gets its own error
            self.warm_up_error = exc
        finally:
            self.ready.set()
        try:
            while self._take():
                self.outbox.flush()
                if self.draining and not self.scheduler.busy:
                    return
                stepping = self.scheduler.busy
                self._step()
                if stepping:  # the count this step's operators ran with (only then: see runtime.threads)
                    self.decode_threads = intra_op_threads()
                self.outbox.flush()
                self.on_depth(self.depth())
        finally:
            self.outbox.flush()

    def _step(self) -> None:
        try:
            self.scheduler.step()
        except Exception as exc:  # never let one bad step kill the worker; fail what was running
            for item in [*self.scheduler.running, *self.scheduler.waiting]:
                item.done(exc)
            self.scheduler.running.clear()
            self.scheduler.waiting.clear()

    def close(self, wait_s: float = 30.0) -> None:
        """Stop accepting, cancel what is queued, let running generations finish (bounded)."""
        self.closing = True
        while True:
            try:
                job = self.queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.cancelled.set()
                job.fail(APIError(503, "the server is shutting down", code="shutting_down"))
        self.queue.put(None)
        self.thread.join(timeout=wait_s)


def _set_result(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
