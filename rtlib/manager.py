"""The operations the REST API, the widgets and the magics offer, as JSON-shaped data.

The Jupyter layer only wires HTTP (or a widget, or a magic) to a `JobManager`;
every rule lives here or below, and is tested without a server. Errors are
`ApiError`s carrying an HTTP status and, for a bad field, its name.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from . import jobs as jobops
from .config import Settings
from .errors import EndpointError, IllegalTransition, JobNotFound, ParameterError, RtlibError, UnknownWorkload
from .states import State
from .store import Job, JobStore
from .workloads import get_workload, workload_names

MAX_PAGE = 500


@dataclass
class ApiError(Exception):
    status: int
    message: str
    field: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"error": self.message, **({"field": self.field} if self.field else {})}


def job_to_dict(job: Job, now: float | None = None) -> dict[str, Any]:
    d = job.to_dict()
    d.pop("lease_owner", None)  # internal: which agent process holds it
    d.pop("lease_expires", None)
    d["age_s"] = round((now or time.time()) - job.created_at, 3)
    return d


class JobManager:
    def __init__(self, settings: Settings, store: JobStore):
        self.settings = settings
        self.store = store

    # -- reading -----------------------------------------------------------
    def sites(self) -> list[dict[str, Any]]:
        accounts = {name: acc.node_hours for name, acc in self.settings.accounts.items()}
        return [
            {"name": name, "compute": site.compute, "scratch_endpoint": site.scratch_endpoint,
             "queues": [q.model_dump() for q in site.queues], "accounts": accounts}
            for name, site in sorted(self.settings.sites.items())
        ]

    def workloads(self) -> list[dict[str, Any]]:
        return [{"name": n, "description": get_workload(n).description, "schema": get_workload(n).json_schema()} for n in workload_names()]

    def list_jobs(self, *, state: str | None = None, workload: str | None = None, beamline: str | None = None,
                  limit: int = 100, offset: int = 0) -> dict[str, Any]:
        if not 1 <= limit <= MAX_PAGE:
            raise ApiError(400, f"limit must be between 1 and {MAX_PAGE}, got {limit}", "limit")
        if offset < 0:
            raise ApiError(400, f"offset must be >= 0, got {offset}", "offset")
        states = None
        if state:
            try:
                states = [State(state.upper())]
            except ValueError:
                raise ApiError(400, f"unknown state {state!r}; states: {', '.join(s.value for s in State)}", "state") from None
        rows = self.store.list_jobs(states=states, workload=workload, beamline=beamline, limit=limit, offset=offset)
        now = time.time()
        return {"jobs": [job_to_dict(j, now) for j in rows], "limit": limit, "offset": offset, "counts": self.store.count_by_state()}

    def get_job(self, job_id: int) -> dict[str, Any]:
        try:
            job = self.store.get_job(job_id)
        except JobNotFound as err:
            raise ApiError(404, str(err)) from None
        items = self.store.items(job_id)
        return {
            **job_to_dict(job),
            "events": [e.__dict__ for e in self.store.events(job_id)],
            "transfers": {
                direction: {"files": sum(1 for i in items if i.direction == direction),
                            "done": sum(1 for i in items if i.direction == direction and i.state == "done"),
                            "bytes": sum(i.size_bytes for i in items if i.direction == direction)}
                for direction in ("in", "out")
            },
        }

    def events(self, after_id: int = 0, limit: int = 500) -> list[dict[str, Any]]:
        return [e.__dict__ for e in self.store.events(after_id=after_id, limit=min(limit, MAX_PAGE))]

    # -- changing ----------------------------------------------------------
    def submit(self, body: dict[str, Any]) -> dict[str, Any]:
        """Body: workload, source (ENDPOINT:PATH or a list of them), optional dest, params, site, queue, account, beamline, priority."""
        allowed = {"workload", "source", "dest", "params", "site", "queue", "account", "beamline", "priority"}
        unknown = sorted(set(body) - allowed)
        if unknown:
            raise ApiError(400, f"unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}", unknown[0])
        for required in ("workload", "source"):
            if not body.get(required):
                raise ApiError(400, f"{required} is required", required)
        sources = body["source"] if isinstance(body["source"], list) else [body["source"]]
        try:
            locs = [jobops.parse_location(str(s)) for s in sources]
        except EndpointError as err:
            raise ApiError(400, str(err), "source") from None
        if len({ep for ep, _ in locs}) != 1:
            raise ApiError(400, "all inputs of one job must be on one endpoint", "source")
        kwargs: dict[str, Any] = {}
        if body.get("dest"):
            try:
                kwargs["dest_endpoint"], kwargs["output_path"] = jobops.parse_location(str(body["dest"]))
            except EndpointError as err:
                raise ApiError(400, str(err), "dest") from None
        params = body.get("params") or {}
        if not isinstance(params, dict):
            raise ApiError(400, "params must be an object of parameter names to values", "params")
        try:
            job_id = jobops.submit(
                self.store, self.settings, str(body["workload"]), source_endpoint=locs[0][0], inputs=[p for _, p in locs],
                params=params, site=body.get("site") or "local", queue=body.get("queue"), account=body.get("account"),
                beamline=body.get("beamline"), priority=int(body.get("priority") or 0), **kwargs,
            )
        except UnknownWorkload as err:
            raise ApiError(400, str(err), "workload") from None
        except ParameterError as err:
            raise ApiError(400, str(err), _parameter_field(err, params)) from None
        except EndpointError as err:
            raise ApiError(400, str(err), "source") from None
        except RtlibError as err:
            raise ApiError(400, str(err)) from None
        return self.get_job(job_id)

    def cancel(self, job_id: int) -> dict[str, Any]:
        return self._change(job_id, jobops.cancel)

    def retry(self, job_id: int) -> dict[str, Any]:
        return self._change(job_id, jobops.retry)

    def _change(self, job_id: int, op) -> dict[str, Any]:
        try:
            op(self.store, job_id)
        except JobNotFound as err:
            raise ApiError(404, str(err)) from None
        except IllegalTransition as err:
            raise ApiError(409, str(err)) from None
        except RtlibError as err:
            raise ApiError(409, str(err)) from None
        return self.get_job(job_id)


def _parameter_field(err: ParameterError, params: dict[str, Any]) -> str:
    """The first parameter the message names, as params.NAME, so a form can mark it."""
    text = str(err)
    named = [name for name in params if f"'{name}'" in text]
    return f"params.{named[0]}" if named else "params"
