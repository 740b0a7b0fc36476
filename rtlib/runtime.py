"""Building the pieces an agent needs from the config: store, transfer backend, compute backend."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

from sqlalchemy import exc as sa_exc

from . import logsafe
from .agent import Agent
from .compute import ComputeBackend, make_backend
from .config import Settings, ensure_workspace
from .errors import RtlibError
from .store import JobStore, _redact_url
from .transfer.base import TransferBackend

log = logging.getLogger("rtlib.runtime")
logsafe.protect(log)  # messages carry paths and exception text from users: one record, one line


@dataclass
class Runtime:
    settings: Settings
    store: JobStore
    transfer: TransferBackend
    compute: ComputeBackend | None = None

    def agent(self, site: str = "local", **kwargs) -> Agent:
        self.store.require_writable()  # before starting workers: a read-only store is a clear error at once
        if self.compute is None:
            self.compute = make_backend(self.settings.site(site))
            self.compute.start()
        return Agent(self.settings, self.store, self.transfer, self.compute, site=site, **kwargs)

    def close(self) -> None:
        if self.compute is not None:
            self.compute.close()
            self.compute = None
        self.transfer.close()
        self.store.close()


def open_store(url: str, *, wait_s: float = 0.0) -> JobStore:
    """Open the job store, waiting up to `wait_s` seconds for it to become reachable (a database restarting)."""
    if url.startswith("sqlite"):
        wait_s = 0.0  # a file on this machine does not come back by waiting: say so at once
    deadline = time.monotonic() + wait_s
    delay = 0.5
    while True:
        try:
            return JobStore(url)
        except sa_exc.OperationalError as err:
            if time.monotonic() + delay > deadline:
                shown = _redact_url(url)  # also ?password= in the query, which psycopg reads
                raise RtlibError(
                    f"job store {shown} unreachable{f' for {wait_s:g} s' if wait_s else ''}: {str(err.orig or err).splitlines()[0]}; "
                    "check that the database is running and the URL is right"
                ) from None
            log.warning("job store unreachable (%s); retrying in %.1f s", type(err.orig or err).__name__, delay)
            time.sleep(delay)
            delay = min(delay * 2, 10.0)


def open_runtime(
    settings: Settings, *, link_mbps: float | None = None, faults: str | None = None, store_wait_s: float = 0.0
) -> Runtime:
    """Store + transfer backend (compute starts lazily with the first agent). Faults: RTLIB_FAULTS spec."""
    from .transfer.factory import make_transfer_backend
    from .transfer.faults import FaultInjector

    ensure_workspace(settings)
    spec = faults if faults is not None else os.environ.get("RTLIB_FAULTS")
    injector = FaultInjector.from_spec(spec) if spec else None
    store = open_store(settings.store, wait_s=store_wait_s)
    return Runtime(settings, store, make_transfer_backend(settings, link_mbps=link_mbps, faults=injector))
