"""The generation thread hands a step's deliveries to each event loop at once, in order; any other
thread's go at once; a closed loop loses them quietly."""

from __future__ import annotations

import threading
from typing import Any

from expertkit.serve.worker import Outbox


class Loop:
    def __init__(self, closed: bool = False) -> None:
        self.calls: list[tuple[Any, tuple[Any, ...]]] = []
        self.closed = closed

    def is_closed(self) -> bool:
        return self.closed

    def call_soon_threadsafe(self, callback: Any, *args: Any) -> None:
        if self.closed:
            raise RuntimeError("Event loop is closed")
        self.calls.append((callback, args))


def test_a_step_reaches_each_loop_in_one_call_in_order() -> None:
    outbox, seen = Outbox(), []
    first, second, closed = Loop(), Loop(), Loop(closed=True)

    def step() -> None:
        for index in range(5):
            outbox.put(first, seen.append, ("first", index))
        outbox.put(second, seen.append, ("second", 0))
        outbox.put(closed, seen.append, ("closed", 0))
        assert not first.calls and not second.calls  # nothing leaves before the step ends
        outbox.flush()

    worker = threading.Thread(target=step)
    outbox.thread = worker
    worker.start()
    worker.join()
    assert len(first.calls) == 1 and len(second.calls) == 1 and not closed.calls
    for loop in (first, second):
        callback, args = loop.calls[0]
        callback(*args)
    assert seen == [("first", i) for i in range(5)] + [("second", 0)]
    outbox.put(first, seen.append, ("direct", 0))  # not the generation thread: straight to the loop
    assert len(first.calls) == 2 and first.calls[1] == (seen.append, (("direct", 0),))
