"""Building the transfer backend the config asks for."""

from __future__ import annotations

from ..config import Settings
from ..errors import ConfigError
from .base import TransferBackend
from .faults import FaultInjector
from .globus import GlobusEndpoint, GlobusTransferBackend
from .local import LocalTransferBackend
from .routing import RoutingTransferBackend


def make_transfer_backend(
    settings: Settings,
    *,
    link_mbps: float | None = None,
    faults: FaultInjector | None = None,
    retries: int | None = None,
) -> TransferBackend:
    """The local backend over every `kind = "local"` endpoint; with Globus endpoints, a router over both.

    link_mbps: one cap shared by every copy (e.g. the demo's simulated WAN).
    Each endpoint's own `link_mbps` caps copies *from* that endpoint.
    retries: attempts per file after the first; default `agent.transfer_retries`.
    With `kind = "globus"` endpoints, transfers between two Globus endpoints go
    through Globus Transfer (see rtlib/transfer/globus.py), as the beamline's
    service account (or the `rtlib login` user); local pairs are still copied locally.
    """
    if not settings.endpoints:
        raise ConfigError("the config has no endpoints; add at least one [endpoints.<name>] with kind = \"local\" and a `root`")
    # endpoints this machine mounts: every local one, and Globus collections given a `root`
    rooted = {name: ep for name, ep in settings.endpoints.items() if ep.root is not None}
    local = LocalTransferBackend(
        {name: ep.root for name, ep in rooted.items()},
        link_mbps=link_mbps,
        endpoint_mbps={name: ep.link_mbps for name, ep in rooted.items() if ep.link_mbps} or None,
        retries=settings.agent.transfer_retries if retries is None else retries,
        faults=faults,
    ) if rooted else None
    if not any(ep.kind == "globus" for ep in settings.endpoints.values()):
        return local
    return RoutingTransferBackend(local, make_globus_backend(settings), {name: ep.kind for name, ep in settings.endpoints.items()})


def make_globus_backend(settings: Settings, **overrides) -> GlobusTransferBackend:
    """The Globus backend over every `kind = "globus"` endpoint, with [agent] batching and [globus] polling limits."""
    from .identity import identity_for_endpoints

    g = settings.globus
    endpoints = {
        name: GlobusEndpoint(name, ep.collection_id, ep.base_path)
        for name, ep in settings.endpoints.items() if ep.kind == "globus"
    }
    opts = dict(
        batch_bytes=settings.agent.batch_bytes,
        batch_max_items=settings.agent.batch_max_items,
        tasks_in_flight=settings.agent.transfers_in_flight,
        poll_initial_s=g.poll_initial_s,
        poll_max_s=g.poll_max_s,
        stall_limit_s=g.stall_limit_s,
        task_retries=g.task_retries,
        network_retries=g.network_retries,
    )
    opts.update(overrides)
    return GlobusTransferBackend(endpoints, lambda src, dst, beamline=None: identity_for_endpoints(settings, src, dst, beamline), **opts)
