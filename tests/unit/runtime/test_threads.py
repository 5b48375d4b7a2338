"""Torch's intra-op threads belong to the thread that decodes: other threads compute on their own,
so libgomp never holds more OpenMP threads than CPUs (runtime.threads says what that costs)."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import torch

from expertkit.runtime.threads import serial_torch, use_intra_op_threads
from expertkit.serve.state import _serial_pool


def test_serial_torch_is_the_calling_threads_alone_and_restored() -> None:
    before = torch.get_num_threads()
    with serial_torch():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    pool = _serial_pool(1, "test")
    assert pool.submit(torch.get_num_threads).result() == 1  # a server's helper threads
    pool.shutdown()
    with ThreadPoolExecutor(1, initializer=use_intra_op_threads, initargs=(2,)) as other:
        assert other.submit(torch.get_num_threads).result() == 2


PROBE = """
import os, torch
from expertkit.runtime.threads import serial_torch
a = torch.randn(1500, 1500)
with serial_torch():
    a @ a  # on the main thread, as a server builds its router
print(len(os.listdir("/proc/self/task")))
"""


def test_serial_work_on_the_main_thread_starts_no_thread_team() -> None:
    """Serial work on the main thread (how a server builds its engine and router) leaves no OpenMP
    team behind; a parallel product there would, and the decoding thread's team would be a second."""
    serial = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, check=True)
    parallel = subprocess.run(
        [sys.executable, "-c", PROBE.replace("with serial_torch():\n    a @ a", "a @ a")],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    team = 1 if torch.get_num_threads() > 1 else 0  # the main thread's OpenMP worker(s) left behind
    assert int(parallel.stdout) == int(serial.stdout) + team


KEPT = """
import threading, torch
from expertkit.runtime.threads import use_intra_op_threads
set_, helper_done, seen = threading.Event(), threading.Event(), []
def decoding():
    use_intra_op_threads(2)  # as the generation thread starts, long before its first request
    set_.set()
    helper_done.wait()
    torch.randn(300, 300) @ torch.randn(300, 300)  # its first operator
    seen.append(torch.get_num_threads())
thread = threading.Thread(target=decoding)
thread.start()
set_.wait()
helper = threading.Thread(target=use_intra_op_threads, args=(1,))  # a helper pool's initializer
helper.start(); helper.join(); helper_done.set(); thread.join()
print(seen[0])
"""


def test_a_thread_keeps_its_count_when_another_thread_sets_its_own_before_its_first_operator() -> None:
    """ATen applies the process-wide count to a thread at its first parallel operator: without the
    early initialisation, the decoding thread took the helper's 1 (a server decoded on one core)."""
    out = subprocess.run([sys.executable, "-c", KEPT], capture_output=True, text=True, timeout=120, check=True)
    assert int(out.stdout) == 2
