"""Process pools for work that splits by file.

Workers come from a fork server that has already imported gjp and its numeric libraries,
so each worker starts in milliseconds, and no worker inherits the threads (pyarrow,
numba, BLAS) of the main process, which a plain fork could deadlock on.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import Executor, ProcessPoolExecutor

def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def process_pool(workers: int, preload: list[str]) -> Executor:
    """A pool whose workers have already imported the modules in ``preload``."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(preload)
    return ProcessPoolExecutor(workers, mp_context=context)


def map_jobs(fn, jobs: list, workers: int, progress=None):
    """``fn`` over ``jobs`` in order, in a pool when it helps; ``progress.update()`` per job."""
    workers = min(workers, len(jobs))
    if workers <= 1:
        for job in jobs:
            result = fn(job)
            if progress is not None:
                progress.update()
            yield result
        return
    with process_pool(workers, [fn.__module__]) as pool:
        for result in pool.map(fn, jobs):
            if progress is not None:
                progress.update()
            yield result
