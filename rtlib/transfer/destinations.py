"""Where a copy a person asks for (`rtlib transfer`, POST /rtlib/api/transfers, the widget) may not write.

A site's scratch endpoint holds the job area (``jobs/``, see rtlib.layout):
each job's staged inputs, attempts and results, written by the agent only.
A copy into it would make a job analyse, or deliver, other bytes than its
record names, so every planned destination on a scratch endpoint is refused
there, both as spelled and as the filesystem resolves it (a symlink or a bind
mount into ``jobs/``, an absolute path spelled through the root).
"""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path

from ..errors import EndpointError, PathOutsideRoot
from ..layout import JOB_AREA, in_job_area
from .base import TransferBackend


def scratch_endpoints(settings) -> frozenset[str]:
    """Every site's scratch endpoint: where the agent keeps its job area."""
    return frozenset(site.scratch_endpoint for site in settings.sites.values())


def rooted_backend(settings):
    """A local backend over every endpoint with a root on this machine, used only to resolve paths (it never copies)."""
    from .local import LocalTransferBackend

    return LocalTransferBackend({name: ep.root for name, ep in settings.endpoints.items() if ep.root is not None}, retries=0)


def check_output_path(settings, endpoint: str, output_path: str) -> None:
    """check_destination for a job's output path template, its {job_id} and {workload} filled in as any job's would be."""
    path = output_path.replace("{job_id}", "0").replace("{workload}", "w")
    check_destination(rooted_backend(settings), scratch_endpoints(settings), endpoint, path)


def check_destination(backend: TransferBackend, scratch: Collection[str], endpoint: str, path: str) -> None:
    """EndpointError unless ENDPOINT:PATH lies outside the job area of a scratch endpoint."""
    if endpoint not in scratch:
        return
    if in_job_area(path) or _resolves_into_job_area(backend, endpoint, path):
        raise EndpointError(
            f"destination {endpoint}:{path} is inside the job area {endpoint}:{JOB_AREA}/ of a site's scratch, where the agent "
            f"keeps each job's inputs and results, and only the agent may write there; copy to another folder of {endpoint} "
            f"(for example {endpoint}:transfers/...)"
        )


def _resolves_into_job_area(backend: TransferBackend, endpoint: str, path: str) -> bool:
    real = _local_path(backend, endpoint, path)
    if real is not None:
        return _same_or_below(real, _local_path(backend, endpoint, JOB_AREA))
    globus = getattr(backend, "globus", backend)  # a scratch this machine does not mount: compare collection paths
    if hasattr(globus, "globus_path"):
        full, area = globus.globus_path(endpoint, path), globus.globus_path(endpoint, JOB_AREA)
        return full == area or full.startswith(area.rstrip("/") + "/")
    return False


def _local_path(backend: TransferBackend, endpoint: str, path: str) -> Path | None:
    try:
        return Path(backend.local_path(endpoint, path))
    except NotImplementedError:
        return None
    except PathOutsideRoot:
        raise
    except EndpointError:  # no local root on this machine
        return None


def _same_or_below(real: Path, area: Path) -> bool:
    if real == area or area in real.parents:
        return True
    try:  # the same directory under another name (a bind mount, a case-insensitive filesystem)
        area_id = _file_id(area)
    except OSError:
        return False
    for folder in (real, *real.parents):
        try:
            if _file_id(folder) == area_id:
                return True
        except OSError:
            continue  # not created yet
    return False


def _file_id(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino

