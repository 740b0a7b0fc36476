"""The operations the REST API, the widgets and the magics offer, as JSON-shaped data.

The Jupyter layer only wires HTTP (or a widget, or a magic) to a `JobManager`;
every rule lives here or below, and is tested without a server. Errors are
`ApiError`s carrying an HTTP status and, for a bad field, its name.

A request's fields are first validated by the models of rtlib.api_models
(strict types, unknown fields refused, integers within the store's range).
Every path a request names is checked against its endpoint's root here,
before anything is recorded or copied; no copy or job result may land in a
site scratch's job area (rtlib.transfer.destinations). Ad-hoc transfers (outside any job)
are tracked in memory by `rtlib.transfer.adhoc`; job events come from the
store's append-only event log, newest id last, for the live event stream.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from . import jobs as jobops
from .api_models import STORE_INT_MAX, SubmitRequest, TransferRequest, refusal
from .config import Settings
from .errors import EndpointError, IllegalTransition, InputDataError, JobNotFound, ParameterError, RtlibError, UnknownWorkload
from .states import TERMINAL, State
from .store import Event, Job, JobStore
from .transfer.base import TransferBackend
from .transfer.destinations import check_destination, rooted_backend, scratch_endpoints
from .workloads import get_workload, workload_names

MAX_PAGE = 500
ModelT = TypeVar("ModelT", bound=BaseModel)


@dataclass
class ApiError(Exception):
    status: int
    message: str
    field: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"error": self.message, **({"field": self.field} if self.field else {})}


def parse(model: type[ModelT], body: Any, what: str) -> ModelT:
    """`body` as `model`, or a 400 naming the first field at fault (rtlib.api_models.refusal)."""
    if not isinstance(body, dict):
        raise ApiError(400, f"{what}; got {type(body).__name__}")
    try:
        return model.model_validate(body)
    except ValidationError as err:
        raise ApiError(400, *refusal(err)) from None


def event_to_dict(event: Event) -> dict[str, Any]:
    """An event row, with `state` (the state entered) and `time` as the live stream names them."""
    return {**event.__dict__, "state": event.to_state, "time": event.timestamp}


def job_to_dict(job: Job, now: float | None = None) -> dict[str, Any]:
    d = job.to_dict()
    d.pop("lease_owner", None)  # internal: which agent process holds it
    d.pop("lease_expires", None)
    d["age_s"] = round((now or time.time()) - job.created_at, 3)
    return d


class JobManager:
    """One per process that serves people (Jupyter server, kernel). `transfer`: default, the configured backend."""

    def __init__(self, settings: Settings, store: JobStore, transfer: TransferBackend | None = None):
        self.settings = settings
        self.store = store
        self._transfer = transfer
        self._adhoc = None
        self._lock = threading.Lock()
        self._roots = rooted_backend(settings)  # only for path checks: it never copies

    @classmethod
    def from_config(cls, config: str | Path | None = None, workspace: str | Path | None = None) -> "JobManager":
        """The manager of the effective config: --config, $RTLIB_CONFIG, ./rtlib.toml, else the embedded default."""
        from . import config as cfg
        from .runtime import open_store

        settings = cfg.load(config or None, workspace=workspace or None)
        cfg.ensure_workspace(settings)
        return cls(settings, open_store(settings.store))

    @property
    def transfer_backend(self) -> TransferBackend:
        with self._lock:
            if self._transfer is None:
                from .transfer.factory import make_transfer_backend

                self._transfer = make_transfer_backend(self.settings)
            return self._transfer

    def close(self) -> None:
        if self._adhoc is not None:
            self._adhoc.close()
        if self._transfer is not None:
            self._transfer.close()
        self.store.close()

    def check_path(self, endpoint: str, path: str, field: str) -> None:
        """400 naming `field` unless `path` stays inside the root of `endpoint` (when this machine mounts it)."""
        try:
            ep = self.settings.endpoint(endpoint)
            if not path or not str(path).strip():
                raise EndpointError(f"empty path on endpoint {endpoint!r}; give a path relative to its root")
            if ".." in str(path).replace("\\", "/").split("/"):
                raise EndpointError(f"{endpoint}:{path}: '..' is not allowed; give a path inside the endpoint's root")
            if ep.root is not None:  # absolute paths and symlinks leading out of the root
                self._roots.resolve(endpoint, str(path))
        except EndpointError as err:
            raise ApiError(400, str(err), field) from None

    def check_destination(self, endpoint: str, path: str, field: str) -> None:
        """check_path, and 400 naming `field` if ENDPOINT:PATH is in the job area of a site's scratch (only the agent writes there)."""
        self.check_path(endpoint, path, field)
        try:
            check_destination(self._roots, scratch_endpoints(self.settings), endpoint, path)
        except EndpointError as err:
            raise ApiError(400, str(err), field) from None

    # -- reading -----------------------------------------------------------
    def sites(self) -> list[dict[str, Any]]:
        accounts = {name: acc.node_hours for name, acc in self.settings.accounts.items()}
        return [
            {"name": name, "compute": site.compute, "scratch_endpoint": site.scratch_endpoint,
             "queues": [q.model_dump() for q in site.queues], "accounts": accounts}
            for name, site in sorted(self.settings.sites.items())
        ]

    def endpoints(self) -> list[dict[str, Any]]:
        """Endpoints a job's input or a transfer can name: name, kind, facility, the beamlines whose data it holds,
        and whether it is a site's scratch. Nothing secret or host-specific: no roots, collection ids or credentials."""
        scratch = {site.scratch_endpoint for site in self.settings.sites.values()}
        return [
            {"name": name, "kind": ep.kind, "facility": ep.facility,
             "beamlines": sorted(b for b, bl in self.settings.beamlines.items() if bl.endpoint == name),
             "scratch": name in scratch}
            for name, ep in sorted(self.settings.endpoints.items())
        ]

    def workloads(self) -> list[dict[str, Any]]:
        return [{"name": n, "description": get_workload(n).description, "schema": get_workload(n).json_schema()} for n in workload_names()]

    def list_jobs(self, *, state: str | None = None, workload: str | None = None, beamline: str | None = None,
                  limit: int = 100, offset: int = 0, order: str = "oldest") -> dict[str, Any]:
        """One page of jobs matching the filter, oldest first (`order="newest"`: newest first, offset from the newest),
        with `total` (jobs the filter matches) and `counts` (all jobs per state)."""
        if not 1 <= limit <= MAX_PAGE:
            raise ApiError(400, f"limit must be between 1 and {MAX_PAGE}, got {limit}", "limit")
        if not 0 <= offset <= STORE_INT_MAX:
            raise ApiError(400, f"offset must be between 0 and {STORE_INT_MAX}, got {offset}", "offset")
        states = None
        if state:
            try:
                states = [State(state.upper())]
            except ValueError:
                raise ApiError(400, f"unknown state {state!r}; states: {', '.join(s.value for s in State)}", "state") from None
        if order not in ("oldest", "newest"):
            raise ApiError(400, f"order must be oldest or newest, got {order!r}", "order")
        total = self._count_jobs(states, workload, beamline)
        if order == "oldest":
            rows = self.store.list_jobs(states=states, workload=workload, beamline=beamline, limit=limit, offset=offset)
        else:  # the store pages oldest first: take the same rows from the other end
            start, count = max(0, total - offset - limit), min(limit, total - offset)
            rows = [] if count <= 0 else self.store.list_jobs(states=states, workload=workload, beamline=beamline, limit=count, offset=start)[::-1]
        now = time.time()
        return {"jobs": [job_to_dict(j, now) for j in rows], "limit": limit, "offset": offset,
                "total": total, "counts": self.store.count_by_state()}

    def _count_jobs(self, states: list[State] | None, workload: str | None, beamline: str | None) -> int:
        """How many jobs the filter matches in all (`total` of a page, for paging)."""
        import sqlalchemy as sa

        from .store import jobs_t

        q = sa.select(sa.func.count()).select_from(jobs_t)
        if states is not None:
            q = q.where(jobs_t.c.state.in_([s.value for s in states]))
        if workload:
            q = q.where(jobs_t.c.workload == workload)
        if beamline:
            q = q.where(jobs_t.c.beamline == beamline)
        with self.store.engine.connect() as conn:
            return int(conn.execute(q).scalar() or 0)

    def get_job(self, job_id: int) -> dict[str, Any]:
        try:
            job = self.store.get_job(_stored_id(job_id))
        except JobNotFound as err:
            raise ApiError(404, str(err)) from None
        items = self.store.items(job_id)
        return {
            **job_to_dict(job),
            "events": [event_to_dict(e) for e in self.store.events(job_id)],
            "transfers": {
                direction: {"files": sum(1 for i in items if i.direction == direction),
                            "done": sum(1 for i in items if i.direction == direction and i.state == "done"),
                            "bytes": sum(i.size_bytes for i in items if i.direction == direction)}
                for direction in ("in", "out")
            },
        }

    def events(self, after_id: int = 0, limit: int = 500, job_id: int | None = None) -> list[dict[str, Any]]:
        """Events with id > after_id, oldest first: what a stream resumed at `after_id` sends next."""
        if not 0 <= after_id <= STORE_INT_MAX:
            raise ApiError(400, f"since must be an event id between 0 and {STORE_INT_MAX}, got {after_id}", "since")
        if job_id is not None and not 1 <= job_id <= STORE_INT_MAX:
            raise ApiError(400, f"job_id must be a job id between 1 and {STORE_INT_MAX}, got {job_id}", "job_id")
        return [event_to_dict(e) for e in self.store.events(job_id, after_id=after_id, limit=min(limit, MAX_PAGE))]

    def last_event_id(self) -> int:
        """Where a live stream with no `since` starts: only events after this one are new."""
        import sqlalchemy as sa

        from .store import events_t

        with self.store.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.max(events_t.c.id))).scalar() or 0)

    def wait_for(self, job_id: int, *, timeout_s: float | None = None, poll_s: float = 0.25) -> dict[str, Any]:
        """Block until the job reaches DONE, FAILED or CANCELLED; ApiError 408 after timeout_s."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            job = self.get_job(job_id)
            if State(job["state"]) in TERMINAL:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise ApiError(408, f"job {job_id} is still {job['state']} after {timeout_s:g} s; "
                                    "is an agent running for its site? (`rtlib agent`, or `%rtlib agent start`)")
            time.sleep(poll_s)

    # -- changing ----------------------------------------------------------
    def submit(self, body: dict[str, Any]) -> dict[str, Any]:
        """Body (rtlib.api_models.SubmitRequest): workload; the input as `input` {endpoint, path}, `inputs` [{endpoint, path}, ...]
        or `source` (ENDPOINT:PATH or a list of them); optional dest, params, site, queue, account, beamline, priority."""
        req = parse(SubmitRequest, body, "the body must be a JSON object with at least workload and input")
        given = [k for k in ("input", "inputs", "source") if getattr(req, k) is not None]
        if not given:
            raise ApiError(400, "source is required: give input {endpoint, path}, inputs [...] or source ENDPOINT:PATH", "source")
        if len(given) > 1:
            raise ApiError(400, f"give only one of input, inputs and source (got {', '.join(given)})", given[1])
        key = given[0]
        locs = [req.input] if key == "input" else list(getattr(req, key))
        if len({ep for ep, _ in locs}) != 1:
            raise ApiError(400, "all inputs of one job must be on one endpoint", key)
        for ep, path in locs:
            self.check_path(ep, path, key)
        kwargs: dict[str, Any] = {}
        if req.dest is not None:
            kwargs["dest_endpoint"], kwargs["output_path"] = req.dest
            self.check_destination(kwargs["dest_endpoint"], kwargs["output_path"].replace("{job_id}", "0").replace("{workload}", "w"), "dest")
        params = dict(req.params or {})
        try:
            job_id = jobops.submit(
                self.store, self.settings, req.workload, source_endpoint=locs[0][0], inputs=[p for _, p in locs],
                params=params, site=req.site or "local", queue=req.queue, account=req.account,
                beamline=req.beamline, priority=req.priority or 0, **kwargs,
            )
        except UnknownWorkload as err:
            raise ApiError(400, str(err), "workload") from None
        except ParameterError as err:
            raise ApiError(400, str(err), _parameter_field(err, params)) from None
        except EndpointError as err:
            raise ApiError(400, str(err), key) from None
        except RtlibError as err:
            raise ApiError(400, str(err), _config_field(str(err))) from None
        return self.get_job(job_id)

    def cancel(self, job_id: int) -> dict[str, Any]:
        return self._change(job_id, jobops.cancel)

    def retry(self, job_id: int) -> dict[str, Any]:
        return self._change(job_id, jobops.retry)

    def _change(self, job_id: int, op) -> dict[str, Any]:
        try:
            op(self.store, _stored_id(job_id))
        except JobNotFound as err:
            raise ApiError(404, str(err)) from None
        except IllegalTransition as err:
            raise ApiError(409, str(err)) from None
        except RtlibError as err:
            raise ApiError(409, str(err)) from None
        return self.get_job(job_id)


    # -- ad-hoc transfers ---------------------------------------------------
    @property
    def adhoc(self):
        from .transfer.adhoc import AdhocTransfers

        backend = self.transfer_backend  # takes the lock itself
        with self._lock:
            if self._adhoc is None:
                self._adhoc = AdhocTransfers(backend, scratch=scratch_endpoints(self.settings))
            return self._adhoc

    def start_transfer(self, body: dict[str, Any]) -> dict[str, Any]:
        """Body (rtlib.api_models.TransferRequest): source and destination, each {endpoint, path} or ENDPOINT:PATH.
        Refused (400) before anything is written; no destination may lie in a scratch's job area."""
        req = parse(TransferRequest, body, "the body must be a JSON object with source and destination")
        self.check_path(*req.source, "source")
        self.check_destination(*req.destination, "destination")
        where = {key: ":".join(getattr(req, key)) for key in ("source", "destination")}
        try:
            return self.adhoc.start(where["source"], where["destination"])
        except InputDataError as err:  # nothing at the source path
            raise ApiError(400, str(err), "source") from None
        except EndpointError as err:
            field = "destination" if where["destination"].split(":", 1)[0] in str(err) and "destination" in str(err) else "source"
            raise ApiError(400, str(err), field) from None
        except RtlibError as err:
            raise ApiError(400, str(err), "source") from None

    def get_transfer(self, transfer_id: int) -> dict[str, Any]:
        try:
            return self.adhoc.get(transfer_id)
        except RtlibError as err:
            raise ApiError(404, str(err)) from None

    def list_transfers(self) -> dict[str, Any]:
        return {"transfers": self.adhoc.list()}

    def wait_transfer(self, transfer_id: int, timeout_s: float | None = None) -> dict[str, Any]:
        self.get_transfer(transfer_id)
        return self.adhoc.wait(transfer_id, timeout_s)


def _stored_id(job_id: int) -> int:
    """A job id the store can hold, else JobNotFound (no job has it): a bigger one would overflow the store's INTEGER."""
    if not 1 <= job_id <= STORE_INT_MAX:
        raise JobNotFound(f"no job with id {job_id}; ids run from 1 to {STORE_INT_MAX}")
    return job_id


def _config_field(message: str) -> str | None:
    """The request field a config refusal is about (unknown site, queue, beamline, account)."""
    for word in ("queue", "site", "beamline", "account"):
        if message.startswith(f"unknown {word}") or f"has no {word}" in message:
            return word
    return None


def _parameter_field(err: ParameterError, params: dict[str, Any]) -> str:
    """The first parameter the message names, as params.NAME, so a form can mark it."""
    text = str(err)
    named = [name for name in params if f"'{name}'" in text]
    return f"params.{named[0]}" if named else "params"
