"""Building the pieces an agent needs from the config: store, transfer backend, compute backend."""

from __future__ import annotations

import os
from dataclasses import dataclass

from .agent import Agent
from .compute import ComputeBackend, make_backend
from .config import Settings, ensure_workspace
from .store import JobStore
from .transfer.base import TransferBackend


@dataclass
class Runtime:
    settings: Settings
    store: JobStore
    transfer: TransferBackend
    compute: ComputeBackend | None = None

    def agent(self, site: str = "local", **kwargs) -> Agent:
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


def open_runtime(settings: Settings, *, link_mbps: float | None = None, faults: str | None = None) -> Runtime:
    """Store + transfer backend (compute starts lazily with the first agent). Faults: RTLIB_FAULTS spec."""
    from .transfer.factory import make_transfer_backend
    from .transfer.faults import FaultInjector

    ensure_workspace(settings)
    spec = faults if faults is not None else os.environ.get("RTLIB_FAULTS")
    injector = FaultInjector.from_spec(spec) if spec else None
    return Runtime(settings, JobStore(settings.store), make_transfer_backend(settings, link_mbps=link_mbps, faults=injector))
