"""Handing the model's computation from one thread to another without slowing it down.

torch's CPU kernels, our kernels and the AOTInductor graphs run their parallel loops on OpenMP (GNU libgomp,
shipped with torch). libgomp gives each thread that opens a parallel region a worker pool of its own, kept until
that thread exits, and counts the workers of all pools together; once they outnumber the CPUs it stops spinning
between regions (its throttled spin count: 100 iterations, 1000 with OMP_WAIT_POLICY=active, whatever
GOMP_SPINCOUNT says), so every region starts by waking its workers from a futex. A decode step opens hundreds of
short regions: a model loaded (or first run) on the main thread and stepped on the server's engine thread has two
pools, and the real SmolLM2 ran at 34 tokens/s there against 123 on the main thread (37 on both with
OMP_WAIT_POLICY=passive, which is what throttling amounts to).

So the rule: one thread at a time computes with the model, and whoever moves that work to another thread calls
`hand_over()` on the old thread first, which releases its pool (`omp_pause_resource_all`, OpenMP 5.0): the new
thread's pool is then the process's only one. A thread cannot release another's pool, so the offline `LLM` called
from a thread other than the one that loaded it stays throttled: load it on the thread that runs it. (The thread count needs no handing over: torch.set_num_threads
records it process-wide and each thread applies it before its first parallel region.)
"""
from __future__ import annotations

import ctypes
import functools
import logging

logger = logging.getLogger(__name__)

OPENMP_RUNTIMES = ("libgomp", "libiomp", "libomp")  # GNU, Intel, LLVM: all export omp_pause_resource_all
OMP_PAUSE_SOFT = 1  # omp_pause_soft: free the threads, keep what a later region needs to start them again


def hand_over() -> int:
    """On the thread giving up the model's computation, before the next thread computes: frees this thread's
    OpenMP worker pool in every OpenMP runtime loaded in the process (a later parallel region on this thread
    would make a new one). Returns how many runtimes released one."""
    released = 0
    for pause_all in _pause_functions():
        if pause_all(OMP_PAUSE_SOFT) == 0:
            released += 1
    return released


@functools.cache
def _pause_functions() -> tuple:
    """omp_pause_resource_all of each OpenMP runtime mapped into this process (torch loads its own libgomp; a
    process may also hold the system's). Looked up once: the runtimes are loaded with torch."""
    functions = []
    for path in _mapped_openmp_libraries():
        try:
            function = ctypes.CDLL(path).omp_pause_resource_all
        except (OSError, AttributeError):  # an OpenMP older than 5.0: no pause, nothing to release
            logger.debug("%s has no omp_pause_resource_all", path)
            continue
        function.argtypes = [ctypes.c_int]
        function.restype = ctypes.c_int
        functions.append(function)
    return tuple(functions)


def _mapped_openmp_libraries() -> list[str]:
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "/" in line}
    except OSError:  # not Linux: no libgomp pools to worry about
        return []
    return sorted(p for p in paths if any(p.rsplit("/", 1)[-1].startswith(name) for name in OPENMP_RUNTIMES))
