"""The OpenMP runtime PyTorch runs its CPU operators on, for expertkit's C kernels to split their
work over the same threads.

Why: a batch step's attention (:mod:`expertkit.runtime.batch_attention`) ran on the calling thread
alone, about half of it waiting on reads of the fp32 cache, while torch's other OpenMP worker spun
idle beside it (16 rows at position 60: 0.19 ms a layer, 0.09 ms with the same layer's data in L2).
A pool of the kernel's own would compete for the cores with libgomp's workers, which spin between
PyTorch's operators (:mod:`expertkit.runtime.threads`); starting the C code's parallel part with
the runtime's own ``GOMP_parallel`` runs it on those workers instead, as an operator of PyTorch's
would. ``GOMP_parallel`` and ``omp_get_thread_num`` are the GNU OpenMP ABI that GCC compiles
``#pragma omp parallel`` to; Intel's OpenMP runtime exports them too.

The runtime is found by the path the process mapped it from (``/proc/self/maps``, Linux), preferring
the one inside torch's own directory; not found (another platform, or torch built on its own thread
pool), :func:`openmp_entry_points` is ``None`` and the kernels run on the calling thread alone.
"""

from __future__ import annotations

import ctypes
from functools import cache
from pathlib import Path

RUNTIMES = ("libgomp", "libiomp5")  # GNU's (PyTorch's Linux wheels bundle one) and Intel's


def _mapped_runtimes() -> list[str]:
    """Paths of the OpenMP runtimes this process has loaded, in the order they were mapped."""
    try:
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return []
    found: list[str] = []
    for line in lines:
        path = line.split(maxsplit=5)[-1] if line.count(" ") >= 5 else ""
        if path.startswith("/") and Path(path).name.startswith(RUNTIMES) and path not in found:
            found.append(path)
    return found


@cache
def openmp_entry_points() -> tuple[int, int] | None:
    """Addresses of ``GOMP_parallel`` and ``omp_get_thread_num`` in the OpenMP runtime torch runs on,
    or ``None`` where it runs on none this can find (looked up once per process)."""
    import torch

    if "ATen parallel backend: OpenMP" not in torch.__config__.parallel_info():
        return None  # torch's operators run on its own thread pool: an OpenMP team would be a second one
    paths = _mapped_runtimes()
    torch_dir = str(Path(torch.__file__).resolve().parent)
    own = [p for p in paths if p.startswith(torch_dir)]
    chosen = own[0] if own else paths[0] if len(paths) == 1 else None
    if chosen is None:
        return None  # several runtimes and none of them torch's: the wrong one would start a second team
    try:
        library = ctypes.CDLL(chosen)  # already loaded: the same handle, nothing runs
        parallel, thread_num = library.GOMP_parallel, library.omp_get_thread_num
    except (OSError, AttributeError):
        return None
    addresses = (ctypes.cast(parallel, ctypes.c_void_p).value, ctypes.cast(thread_num, ctypes.c_void_p).value)
    return (addresses[0], addresses[1]) if addresses[0] and addresses[1] else None


def give_openmp(library: ctypes.CDLL) -> bool:
    """Hand torch's OpenMP entry points to a kernel library (its ``ek_set_openmp``, ``native/openmp.h``);
    whether there were any (else the library's work stays on the calling thread)."""
    entry = openmp_entry_points()
    if entry is None:
        return False
    library.ek_set_openmp.argtypes, library.ek_set_openmp.restype = [ctypes.c_void_p, ctypes.c_void_p], None
    library.ek_set_openmp(*entry)
    return True
