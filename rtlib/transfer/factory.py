"""Building the transfer backend the config asks for."""

from __future__ import annotations

from ..config import Settings
from ..errors import ConfigError
from .base import TransferBackend
from .faults import FaultInjector
from .local import LocalTransferBackend


def make_transfer_backend(
    settings: Settings,
    *,
    link_mbps: float | None = None,
    faults: FaultInjector | None = None,
    retries: int | None = None,
) -> TransferBackend:
    """The local backend over every `kind = "local"` endpoint.

    link_mbps: one cap shared by every copy (e.g. the demo's simulated WAN).
    Each endpoint's own `link_mbps` caps copies *from* that endpoint.
    retries: attempts per file after the first; default `agent.transfer_retries`.
    """
    globus = sorted(name for name, ep in settings.endpoints.items() if ep.kind == "globus")
    if globus:
        raise ConfigError(
            f"endpoint(s) {', '.join(globus)} have kind = \"globus\", but the Globus transfer backend is not "
            "installed yet (a later release adds it); use kind = \"local\" endpoints with a `root` directory for now"
        )
    local = {name: ep for name, ep in settings.endpoints.items() if ep.kind == "local"}
    if not local:
        raise ConfigError("the config has no endpoints; add at least one [endpoints.<name>] with kind = \"local\" and a `root`")
    return LocalTransferBackend(
        {name: ep.root for name, ep in local.items()},
        link_mbps=link_mbps,
        endpoint_mbps={name: ep.link_mbps for name, ep in local.items() if ep.link_mbps} or None,
        retries=settings.agent.transfer_retries if retries is None else retries,
        faults=faults,
    )
