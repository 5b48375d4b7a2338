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
