"""The embedded compute backend: a dask distributed LocalCluster of worker processes."""

from __future__ import annotations

import itertools
import logging
import time
from typing import Any, Callable

import dask
from distributed import Client, LocalCluster
from distributed.client import FutureCancelledError

try:  # the class moved between distributed releases
    from distributed.scheduler import KilledWorker
except ImportError:  # pragma: no cover
    from distributed import KilledWorker  # type: ignore

from .. import logsafe
from ..errors import ComputeStartError, WorkerLost
from .base import ComputeBackend


class _Task:
    """A submitted task; after the cluster under it was replaced, it reports a lost worker."""

    def __init__(self, future: Any):
        self.future = future
        self.lost: str | None = None

    def done(self) -> bool:
        return self.lost is not None or self.future.done()

    def result(self) -> Any:
        if self.lost is not None:
            raise WorkerLost(self.lost)
        return self.future.result()

    def cancel(self) -> None:
        if self.lost is None:
            self.future.cancel()

log = logging.getLogger("rtlib.compute")
logsafe.protect(log)  # messages carry paths and exception text from users: one record, one line


class LocalDaskBackend(ComputeBackend):
    def __init__(self, workers: int = 2, threads_per_worker: int = 1, *, processes: bool = True, revive_after_s: float = 20.0,
                 start_timeout_s: float = 60.0):
        self.workers = workers
        self.start_timeout_s = start_timeout_s
        self.threads_per_worker = threads_per_worker
        self.processes = processes
        self.revive_after_s = revive_after_s
        self.cluster: LocalCluster | None = None
        self.client: Client | None = None
        self.restarts = 0
        self._tasks: list[_Task] = []
        self._next_check = 0.0
        self._workerless_since: float | None = None

    @property
    def slots(self) -> int:
        return self.workers * self.threads_per_worker

    def start(self) -> None:
        if self.client is not None:
            return
        # A worker that dies must surface as a lost attempt at once (the agent owns the retry
        # budget), not be silently rescheduled by dask up to `allowed-failures` times.
        dask.config.set({"distributed.scheduler.allowed-failures": 0})
        # A worker killed while it starts (a node failing, a preemption, a loaded machine timing out)
        # fails the whole cluster start: try again with backoff for `start_timeout_s` before giving up.
        give_up = time.monotonic() + self.start_timeout_s
        for attempt in itertools.count(1):
            try:
                self.cluster = LocalCluster(
                    n_workers=self.workers,
                    threads_per_worker=self.threads_per_worker,
                    processes=self.processes,
                    dashboard_address=None,
                    host="127.0.0.1",
                    silence_logs=logging.ERROR,
                )
                self.client = Client(self.cluster)
                return
            except Exception as err:  # distributed raises RuntimeError / TimeoutError / OSError here
                self.close()
                wait_s = min(2.0 ** (attempt - 1), 10.0)
                if time.monotonic() + wait_s > give_up:
                    raise ComputeStartError(
                        f"the dask LocalCluster did not start after {attempt} tries in {self.start_timeout_s:.0f} s: "
                        f"{type(err).__name__}: {err}; check the workers' log above (memory, ports, a killed process)") from err
                log.warning("dask LocalCluster failed to start (%s); trying again in %.0f s", err, wait_s)
                time.sleep(wait_s)

    def submit(self, fn: Callable[..., Any], *args: Any, key: str) -> Any:
        assert self.client is not None, "start() the backend first"
        # retries=0: a lost worker is reported to the agent, which owns the retry budget
        task = _Task(self.client.submit(fn, *args, key=key, pure=False, retries=0))
        self._tasks = [t for t in self._tasks if not t.done()] + [task]
        return task

    def tend(self) -> None:
        """Replace the cluster when it has had no worker for `revive_after_s`.

        A nanny restarts a killed worker; on an overloaded node the restart can time
        out and the nanny closes for good, leaving tasks queued on a scheduler with no
        worker forever. A fresh cluster cancels those tasks: the agent sees them as
        lost attempts (PREEMPTED, re-queued while the retry budget lasts).
        """
        if self.client is None or not self.processes:
            return
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + 1.0
        try:
            alive = len(self.client.nthreads())
        except Exception:  # the scheduler itself is going away; the next call will tell
            return
        if alive:
            self._workerless_since = None
            return
        if self._workerless_since is None:
            self._workerless_since = now
            return
        idle_s = now - self._workerless_since
        if idle_s >= self.revive_after_s:
            log.warning("the dask LocalCluster has had no worker for %.0f s (its nanny gave up); starting a new cluster, "
                        "the analyses it held count as lost attempts", idle_s)
            self._workerless_since = None
            self.restarts += 1
            why = f"the dask LocalCluster had no worker for {idle_s:.0f} s and was replaced; the attempt was lost with it"
            for task in self._tasks:
                if not task.done():
                    task.lost = why
            self._tasks = []
            self.close()
            self.start()

    def is_worker_lost(self, exc: BaseException) -> bool:
        return isinstance(exc, (KilledWorker, FutureCancelledError, WorkerLost)) or type(exc).__name__ in {"KilledWorker", "CommClosedError"}

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.cluster is not None:
            self.cluster.close()
            self.cluster = None
