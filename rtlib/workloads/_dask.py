"""Letting a workload split its own work over the dask cluster it runs on."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator


def client_used(requested: bool) -> bool:
    """True when splitting was requested and this code runs as a task on a dask worker."""
    if not requested:
        return False
    try:
        from distributed import get_worker

        get_worker()
        return True
    except (ImportError, ValueError):
        return False


@contextmanager
def cluster_client(requested: bool) -> Iterator[Any]:
    """The cluster this run is a task of (so its blocks can be tasks too), or None outside a dask worker."""
    if not client_used(requested):
        yield None
        return
    from distributed import worker_client

    # worker_client secedes this task from the worker's thread pool while its blocks run,
    # so they can use even the thread this task occupied
    with worker_client() as client:
        yield client
