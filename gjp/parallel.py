"""Parallelism for work that splits by file.

Per-file work (Parquet reading and writing, shapely's vectorised operations, the numba
kernels) runs in C++ with the GIL released, so a thread pool uses the cores without the
start-up cost of worker processes, which would dominate on city-sized inputs.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor


def default_workers() -> int:
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def map_jobs(fn, jobs: list, workers: int, progress=None):
    """``fn`` over ``jobs``, results in job order; ``progress.update()`` per finished job."""
    workers = min(workers, len(jobs))
    if workers <= 1:
        for job in jobs:
            result = fn(job)
            if progress is not None:
                progress.update()
            yield result
        return
    pool = ThreadPoolExecutor(workers)
    try:
        for result in pool.map(fn, jobs):
            if progress is not None:
                progress.update()
            yield result
    finally:
        # on an error or Ctrl-C, drop the jobs not started yet instead of finishing them
        pool.shutdown(wait=True, cancel_futures=True)
