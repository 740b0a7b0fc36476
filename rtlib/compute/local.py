"""The embedded compute backend: a dask distributed LocalCluster of worker processes."""

from __future__ import annotations

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

from ..errors import ComputeStartError
from .base import ComputeBackend

log = logging.getLogger("rtlib.compute")


class LocalDaskBackend(ComputeBackend):
    def __init__(self, workers: int = 2, threads_per_worker: int = 1, *, processes: bool = True):
        self.workers = workers
        self.threads_per_worker = threads_per_worker
        self.processes = processes
        self.cluster: LocalCluster | None = None
        self.client: Client | None = None

    @property
    def slots(self) -> int:
        return self.workers * self.threads_per_worker

    def start(self) -> None:
        if self.client is not None:
            return
        # A worker that dies must surface as a lost attempt at once (the agent owns the retry
        # budget), not be silently rescheduled by dask up to `allowed-failures` times.
        dask.config.set({"distributed.scheduler.allowed-failures": 0})
        # A worker killed while it starts (a node failing, a loaded machine timing out) fails the
        # whole cluster start: try again a few times before giving up with the cause.
        for attempt in range(1, 4):
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
                if attempt == 3:
                    raise ComputeStartError(f"the dask LocalCluster did not start after 3 tries: {type(err).__name__}: {err}") from err
                log.warning("dask LocalCluster failed to start (%s); trying again", err)
                time.sleep(1.0 * attempt)

    def submit(self, fn: Callable[..., Any], *args: Any, key: str) -> Any:
        assert self.client is not None, "start() the backend first"
        # retries=0: a lost worker is reported to the agent, which owns the retry budget
        return self.client.submit(fn, *args, key=key, pure=False, retries=0)

    def is_worker_lost(self, exc: BaseException) -> bool:
        return isinstance(exc, (KilledWorker, FutureCancelledError)) or type(exc).__name__ in {"KilledWorker", "CommClosedError"}

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.cluster is not None:
            self.cluster.close()
            self.cluster = None
