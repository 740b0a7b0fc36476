"""The ComputeBackend contract: submit a task, learn when it finishes, and whether its worker was lost."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable

from ..config import Site
from ..errors import ConfigError


class ComputeBackend(ABC):
    """Runs Python callables on workers. Futures follow the distributed.Future API."""

    @property
    @abstractmethod
    def slots(self) -> int:
        """How many tasks may run at once now (the agent keeps this many in flight)."""

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def submit(self, fn: Callable[..., Any], *args: Any, key: str) -> Any: ...

    @abstractmethod
    def is_worker_lost(self, exc: BaseException) -> bool:
        """True when a task failed because its worker vanished, not because of the task."""

    @abstractmethod
    def close(self) -> None: ...

    def tend(self) -> None:
        """Called often while tasks run: repair what the backend can (default: nothing). Must be cheap."""

    def submit_job(
        self, fn: Callable[..., Any], *args: Any, key: str, queue: str | None = None, account: str | None = None, scheduler_account: str | None = None
    ) -> Any:
        """Submit one job's task to a queue, charged to `account` (`scheduler_account` is its -A). Backends without queues ignore them."""
        return self.submit(fn, *args, key=key)

    def set_usage_sink(self, sink: Callable[..., None] | None) -> None:
        """Where to report worker run time: sink(account=, queue=, started_at=, ended_at=, nodes=, batch_job=, worker=).

        Backends whose workers cost nothing (the LocalCluster) report nothing."""

    def __enter__(self) -> "ComputeBackend":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def make_backend(site: Site) -> ComputeBackend:
    if site.compute == "local":
        from .local import LocalDaskBackend

        return LocalDaskBackend(workers=site.workers, threads_per_worker=site.threads_per_worker)
    if site.compute in ("slurm", "pbs"):
        from .jobqueue import JobqueueBackend

        return JobqueueBackend(site)
    raise ConfigError(f"compute backend {site.compute!r} is not available in this version; use compute = \"local\"")
