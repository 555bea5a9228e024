"""Timing and peak-memory helpers shared by the benchmark scripts."""

from __future__ import annotations

import ctypes
import gc
import os
import threading
import time
from collections.abc import Callable

import numpy as np
import torch

_PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * _PAGE


def _release_free_memory() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc: peaks are then upper bounds
        pass


def peak_memory_mib(fn: Callable[[], object]) -> float:
    """Peak memory above the starting point while ``fn`` runs.

    CUDA: ``max_memory_allocated``. CPU: resident set size sampled every 0.5 ms by a thread
    (free heap memory is returned to the OS first, so earlier runs do not hide later peaks).
    """
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - start) / 2**20
    _release_free_memory()
    start = _rss_bytes()
    peak = start
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _rss_bytes())
            time.sleep(0.0005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    fn()
    done.set()
    thread.join()
    return (max(peak, _rss_bytes()) - start) / 2**20


def median_ms(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


def peak_allocated_mib(fn: Callable[[], object]) -> float:
    """Peak of the bytes held by torch tensors while ``fn`` runs, above the start.

    CUDA: ``max_memory_allocated``. CPU: replayed from ``torch.profiler``'s memory records (each
    op's own allocations at its start, frees as they happen): the CPU analogue of the CUDA number,
    deterministic where RSS depends on the allocator.
    """
    if torch.cuda.is_available():
        return peak_memory_mib(fn)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    current = peak = 0
    for event in sorted(prof.events(), key=lambda e: (e.time_range.start, e.time_range.end)):
        current += event.cpu_memory_usage if event.name == "[memory]" else event.self_cpu_memory_usage
        peak = max(peak, current)
    return peak / 2**20
