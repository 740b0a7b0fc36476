"""A backend that sends each transfer to the backend that can do it: local copy or Globus.

A config may mix endpoint kinds: beamlines reached through Globus, a local
test endpoint, and a facility scratch that is a Globus collection *and* a
directory this machine mounts (kind "globus" with a `root`). Copies between
two endpoints with local roots, at least one of them of kind "local", are
local copies; everything else goes through Globus. Listings and local paths
use the local root when the endpoint has one (no API round trip).
"""

from __future__ import annotations

from ..errors import EndpointError
from .base import OutcomeCallback, ProgressCallback, TransferBackend, TransferOutcome, TransferRequest
from .globus import GlobusTransferBackend
from .local import LocalTransferBackend


class RoutingTransferBackend(TransferBackend):
    def __init__(self, local: LocalTransferBackend | None, globus: GlobusTransferBackend | None, kinds: dict[str, str]):
        self.local, self.globus, self.kinds = local, globus, dict(kinds)
        self._local_roots = set(local.roots) if local is not None else set()

    def _has_root(self, endpoint: str) -> bool:
        return endpoint in self._local_roots

    def backend_for(self, src: str, dst: str) -> TransferBackend:
        for name in (src, dst):
            if name not in self.kinds:
                raise EndpointError(f"unknown endpoint {name!r}; configured endpoints: {', '.join(sorted(self.kinds))}")
        local_kind = "local" in (self.kinds[src], self.kinds[dst])
        if local_kind and self._has_root(src) and self._has_root(dst):
            return self.local
        if self.globus is not None and self.kinds[src] == "globus" and self.kinds[dst] == "globus":
            return self.globus
        plain = src if self.kinds[src] == "local" else dst
        raise EndpointError(
            f"cannot transfer between {src!r} ({self.kinds[src]}) and {dst!r} ({self.kinds[dst]}): endpoint {plain!r} is a local "
            "directory that Globus cannot reach; give it kind = \"globus\" with its collection_id (keeping `root` if this "
            "machine mounts it)"
        )

    def list_files(self, endpoint: str, path: str, *, beamline: str | None = None) -> list[tuple[str, int]]:
        """`beamline`: whose service account lists a Globus-only endpoint (a local listing needs none)."""
        if self._has_root(endpoint):
            return self.local.list_files(endpoint, path)
        if self.globus is None or self.kinds.get(endpoint) != "globus":
            raise EndpointError(f"unknown endpoint {endpoint!r}; configured endpoints: {', '.join(sorted(self.kinds))}")
        return self.globus.list_files(endpoint, path, beamline=beamline)

    def transfer_batch(
        self,
        requests: list[TransferRequest],
        progress: ProgressCallback | None = None,
        *,
        on_outcome: OutcomeCallback | None = None,
    ) -> list[TransferOutcome]:
        outcomes: dict[int, TransferOutcome] = {}
        groups: dict[int, tuple[TransferBackend, list[TransferRequest]]] = {}
        for req in requests:
            try:
                backend = self.backend_for(req.src_endpoint, req.dst_endpoint)
            except EndpointError as err:
                outcome = TransferOutcome(req.item_id, False, attempts=0, error=str(err), permanent=True)
                outcomes[req.item_id] = outcome
                if on_outcome is not None:
                    on_outcome(outcome)
                continue
            groups.setdefault(id(backend), (backend, []))[1].append(req)
        for backend, reqs in groups.values():
            for outcome in backend.transfer_batch(reqs, progress, on_outcome=on_outcome):
                outcomes[outcome.item_id] = outcome
        return [outcomes[r.item_id] for r in requests]

    def local_path(self, endpoint: str, path: str):
        if not self._has_root(endpoint):
            raise EndpointError(f"endpoint {endpoint!r} has no local `root` on this machine; give it one where it is mounted")
        return self.local.local_path(endpoint, path)

    def clean_temporaries(self, endpoint: str, path: str = "") -> int:
        return self.local.clean_temporaries(endpoint, path) if self._has_root(endpoint) else 0

    def close(self) -> None:
        for backend in (self.local, self.globus):
            if backend is not None:
                backend.close()
