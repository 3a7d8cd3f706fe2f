"""Parallelism for work that splits by file: local threads, or a Dask cluster.

Per-file work (Parquet reading and writing, shapely's vectorised operations, the numba
kernels) runs in C++ with the GIL released, so a thread pool uses the cores without the
start-up cost of worker processes, which would dominate on city-sized inputs.

Beyond one machine, the same jobs run on a Dask distributed cluster (``--scheduler
ADDRESS``): :func:`executor` is the one place that chooses. The client (the ``gjp``
process) plans the jobs, stages and publishes the output; the workers only run the jobs,
which read and write the paths they are given, so on a real cluster the inputs and the
output must be on a shared file system under the same paths on every node (and gjp, the
same version, installed on every worker). Dask is imported only when a scheduler is given.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from gjp import __version__
from gjp.errors import GjpError


def default_workers() -> int:
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def map_jobs(fn, jobs: list, workers: int, progress=None):
    """``fn`` over ``jobs`` on ``workers`` local threads, results in job order;
    ``progress.update()`` per finished job."""
    workers = min(workers, len(jobs))
    if workers <= 1:
        for job in jobs:
            result = fn(job)
            if progress is not None:
                progress.update()
            yield result
        return
    pool = ThreadPoolExecutor(workers)
    # at most two jobs a thread in flight, not one future per job at once: a country has
    # ~10^5 group files, and a future per file held memory in proportion (~2 kB each)
    pending: collections.deque = collections.deque()
    try:
        for job in jobs:
            pending.append(pool.submit(fn, job))
            if len(pending) >= 2 * workers:
                yield _finished(pending.popleft(), progress)
        while pending:
            yield _finished(pending.popleft(), progress)
    finally:
        # on an error or Ctrl-C, drop the jobs not started yet instead of finishing them
        pool.shutdown(wait=True, cancel_futures=True)


def _finished(future, progress):
    result = future.result()
    if progress is not None:
        progress.update()
    return result


@dataclasses.dataclass
class LocalPool:
    """Jobs on this machine's threads (:func:`map_jobs`)."""

    workers: int

    def path(self, path: Path) -> Path:
        """``path`` as the jobs must see it: here, as given."""
        return path

    def map(self, fn: Callable, jobs: list, progress=None) -> Iterator:
        return map_jobs(fn, jobs, self.workers, progress)


@contextlib.contextmanager
def executor(workers: int = 1, scheduler: str | None = None):
    """Where a step's per-file jobs run: ``workers`` local threads, or, with ``scheduler``
    (a Dask scheduler's address, ``tcp://host:8786``), that cluster's workers.

    Yields an object with ``map(fn, jobs, progress) -> results in job order`` and
    ``path(p)``, the form of a path the jobs can open (absolute on a cluster, whose workers
    do not share this process's working directory). Connect before any work: a scheduler
    that cannot be reached, or workers without this gjp, fail the step at once."""
    if scheduler is None:
        yield LocalPool(workers)
        return
    with DaskPool.connect(scheduler) as pool:
        yield pool


# --------------------------------------------------------------------------- Dask


def worker_version() -> str:
    """Runs on each worker: the gjp it imports (a worker without gjp cannot even load this)."""
    return __version__


def run_job(fn: Callable, job, version: str):
    """Runs on a worker: ``fn(job)``, refused by a worker whose gjp is not the client's
    (one that joined after the check at connection)."""
    if __version__ != version:
        raise GjpError(f"a Dask worker has gjp {__version__}, this machine {version}; "
                       "install the same gjp version on every worker")
    return fn(job)


@dataclasses.dataclass
class DaskPool:
    """Jobs on the workers of a Dask distributed scheduler."""

    client: object
    address: str
    threads: int

    @classmethod
    @contextlib.contextmanager
    def connect(cls, address: str):
        """A client of the scheduler at ``address``, checked, closed at the end. The
        connection timeout is Dask's ``distributed.comm.timeouts.connect`` (30 s; set
        ``DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT=5s`` for less)."""
        import dask
        from dask.distributed import Client

        timeout = dask.config.get("distributed.comm.timeouts.connect")
        try:
            client = Client(address, timeout=timeout, set_as_default=False)
        except (OSError, ValueError, TypeError) as err:  # refused, timed out, a bad address
            raise GjpError(f"--scheduler {address}: cannot reach the Dask scheduler "
                           f"({' '.join(str(err).split()) or type(err).__name__})") from None
        try:
            pool = cls(client, address, _check_workers(client, address, timeout))
            yield pool
        finally:
            with contextlib.suppress(Exception):
                client.close()

    def path(self, path: Path) -> Path:
        """Absolute: the workers run elsewhere (on a shared file system, the same path)."""
        return Path(os.path.abspath(path))

    def map(self, fn: Callable, jobs: list, progress=None) -> Iterator:
        return _map_on_cluster(self, fn, jobs, progress)


def _check_workers(client, address: str, timeout) -> int:
    """Every worker imports this gjp: the number of worker threads. One-line errors for a
    scheduler without workers, or a worker with another gjp or none."""
    import dask

    seconds = dask.utils.parse_timedelta(timeout)
    try:
        client.wait_for_workers(1, timeout=seconds)
    except (TimeoutError, OSError):
        raise GjpError(f"--scheduler {address}: the scheduler has no workers after {seconds:g} s "
                       f"(start some with `dask worker {address}`)") from None
    versions = client.run(worker_version, on_error="return")
    for worker, version in sorted(versions.items()):
        if isinstance(version, BaseException):
            raise GjpError(f"--scheduler {address}: worker {worker} cannot run gjp "
                           f"({' '.join(str(version).split())}); install gjp {__version__} on every worker")
        if version != __version__:
            raise GjpError(f"--scheduler {address}: worker {worker} has gjp {version}, this machine "
                           f"{__version__}; install the same gjp version on every worker")
    return max(1, sum(client.nthreads().values()))


def _map_on_cluster(pool: DaskPool, fn: Callable, jobs: Iterable, progress=None) -> Iterator:
    """``fn`` over ``jobs`` on the cluster, results in job order. At most two jobs per
    worker thread are submitted at a time, so that after an error (or Ctrl-C) only those
    are waited for, as in the local pool: the rest never start, and no job writes into a
    staging directory after it was abandoned."""
    from distributed import KilledWorker, as_completed
    from distributed.comm import CommClosedError

    jobs = list(jobs)
    flying: dict[str, tuple[int, object]] = {}  # future key → (job number, future)
    finished = as_completed(loop=pool.client.loop)
    submitted, next_out = 0, 0
    done: dict[int, object] = {}

    def top_up():
        nonlocal submitted
        while submitted < len(jobs) and len(flying) < 2 * pool.threads:
            future = pool.client.submit(run_job, fn, jobs[submitted], __version__, pure=False)
            flying[future.key] = (submitted, future)
            finished.add(future)
            submitted += 1

    try:
        top_up()
        for future in finished:
            number, _ = flying[future.key]
            done[number] = future.result()  # a job's error is raised here, as the job raised it
            del flying[future.key]
            if progress is not None:
                progress.update()
            top_up()
            while next_out in done:
                yield done.pop(next_out)
                next_out += 1
    except KilledWorker as err:
        raise GjpError(f"--scheduler {pool.address}: a worker died running a job ({err})") from None
    except CommClosedError as err:
        raise GjpError(f"--scheduler {pool.address}: lost the connection to the scheduler ({err})") from None
    finally:
        if flying:  # let the jobs already given to workers end (their errors are not this one)
            with contextlib.suppress(Exception):
                pool.client.gather([future for _, future in flying.values()], errors="skip")
