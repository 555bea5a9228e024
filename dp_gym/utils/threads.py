"""An explicit thread count for torch.

On a small shared machine torch's default (one intra-op thread per core, in every process)
oversubscribes the cores as soon as two processes compute: a DP step then runs up to 10x slower
with identical results. dp-gym sets the count explicitly: one per environment process when several
run, otherwise ``$DP_GYM_THREADS`` or the cores this process may use.
"""

from __future__ import annotations

import os

import torch

THREADS_ENV = "DP_GYM_THREADS"


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def configure_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads to ``threads``, else ``$DP_GYM_THREADS``, else the available
    cores; returns the count set.

    Raises:
        ValueError: for a count < 1 (naming where it came from).
    """
    source = "threads"
    if threads is None and os.environ.get(THREADS_ENV):
        source, threads = f"${THREADS_ENV}", os.environ[THREADS_ENV]
    try:
        count = int(threads) if threads is not None else available_cores()
    except ValueError:
        raise ValueError(f"{source} must be a positive integer, got {threads!r}") from None
    if count < 1:
        raise ValueError(f"{source} must be a positive integer, got {threads!r}")
    torch.set_num_threads(count)
    return count
