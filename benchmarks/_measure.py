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


def peak_memory_mib(fn: Callable[[], object], release: Callable[[], object] | None = None) -> float:
    """Peak memory above the starting point while ``fn`` runs.

    ``release`` runs first: it drops what a previous call left alive that ``fn`` would free anyway
    (Opacus keeps the per-sample gradients until the next ``zero_grad``; without this, their memory
    would count for nothing and Opacus' peak would look one B x P copy smaller).

    CUDA: ``max_memory_allocated``. CPU: resident set size sampled every 0.5 ms by a thread
    (free heap memory is returned to the OS first, so earlier runs do not hide later peaks).
    """
    if release is not None:
        release()
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


MMAP_THRESHOLD = "65536"


def memory_in_child(extra_args: list[str]) -> dict:
    """Run this script again with ``extra_args`` (its memory-only mode) and glibc's mmap threshold
    fixed at 64 KiB; return the JSON object it prints last.

    By default glibc raises its mmap threshold dynamically, so freed tensors may stay in the heap
    and RSS peaks depend on what ran before (seen here: the same step read 182 to 205 MiB). With a
    fixed threshold every tensor of 64 KiB or more is its own mapping, returned to the OS when
    freed, and the sampled RSS peak tracks live tensor memory (repeats agree to 1 MiB). It also
    makes every allocation a system call, so times are measured in the parent, never here.
    """
    import json
    import subprocess
    import sys

    environment = {**os.environ, "MALLOC_MMAP_THRESHOLD_": MMAP_THRESHOLD}
    process = subprocess.run([sys.executable, *sys.argv, *extra_args], env=environment, capture_output=True,
                             text=True, check=True)
    return json.loads(process.stdout.strip().splitlines()[-1])


def opacus_flat_step(model: torch.nn.Module, loss_fn: Callable, data: dict) -> Callable[[], None]:
    """One step of Opacus' stock DP-SGD (``make_private``: flat clipping, one noise) on ``data``,
    as a closure; the comparison point of every memory and time table."""
    import warnings

    from opacus import PrivacyEngine

    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    size = len(data["input_ids"])
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data["input_ids"]), batch_size=size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        private_model, private_optimizer, _ = PrivacyEngine().make_private(
            module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=1.0, max_grad_norm=1.0,
            poisson_sampling=False)

    def step() -> None:
        private_optimizer.zero_grad(set_to_none=True)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            # the task's own model (the hooks sit on its submodules), as the Task contract says
            loss_fn(private_model._module, data).mean().backward()
        private_optimizer.step()

    #: drops the per-sample gradients Opacus keeps between steps (see ``peak_memory_mib``)
    step.release = lambda: private_optimizer.zero_grad(set_to_none=True)
    return step
