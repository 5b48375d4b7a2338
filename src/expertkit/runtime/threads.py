"""Torch's intra-op threads given to one thread: the one that decodes.

PyTorch's CPU wheels run their parallel operators on libgomp (GNU OpenMP), which keeps a team of
worker threads for every thread that starts a parallel region. Once a process holds more OpenMP
threads than there are CPUs, libgomp stops letting idle workers spin between regions, so every
parallel operator then waits for a futex wake-up. Measured on a 2-core CPU: a 16-row batch step ran
in 22.0 ms on a thread of its own, and in 45.8 ms once the main thread had run one parallel matrix
product first; the in-process batcher served 23 requests/s against 12. A server embeds prompts for
its router on other threads (and did so on the main thread at start-up), which was enough.

So the thread that decodes keeps the intra-op threads (:func:`use_intra_op_threads`), and every
other thread that may compute with torch runs its operators on itself alone (:func:`serial_torch`,
or ``use_intra_op_threads(1)`` for a helper thread's whole life): a single-threaded region starts
no team. ``torch.set_num_threads`` sets the calling thread's OpenMP and MKL thread counts, and a
process-wide count too: a thread's first parallel operator applies that process-wide count to it
(ATen's lazy per-thread initialisation), whatever the thread set before. So a decoding thread that
set 2 and then waited for its first request ran single-threaded once a helper thread had set 1 in
the meantime (measured in ``serve``: a 16-row step 50 ms instead of 25). :func:`use_intra_op_threads`
runs that initialisation first, so the count it sets is the thread's for good.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


def intra_op_threads() -> int:
    """The calling thread's intra-op thread count (imports torch)."""
    import torch

    return int(torch.get_num_threads())


def use_intra_op_threads(count: int) -> None:
    """Torch operators started on the calling thread use ``count`` threads from now on."""
    import torch

    torch.get_num_threads()  # this thread's one-time initialisation now, not at its first operator
    torch.set_num_threads(max(1, count))


@contextlib.contextmanager
def serial_torch() -> Iterator[None]:
    """Torch operators started on the calling thread within the block run on it alone."""
    previous = intra_op_threads()
    use_intra_op_threads(1)
    try:
        yield
    finally:
        use_intra_op_threads(previous)
