"""HTTP handlers of /rtlib/api/. Each one only turns a request into a JobManager call and back.

Every handler is a jupyter_server APIHandler whose methods are
``@tornado.web.authenticated``: a token or the login cookie is needed, and a
mutation authenticated by cookie must carry the XSRF token (APIHandler checks
it in ``prepare``). Bodies over ``max_body_bytes`` are refused with 413.
CORS is closed unless the extension's ``allow_origin`` is set.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any, Callable

import tornado.web
from jupyter_server.base.handlers import APIHandler
from tornado.iostream import StreamClosedError

from rtlib.manager import ApiError, JobManager

API_PREFIX = "/rtlib/api"
_PLACEHOLDER = re.compile(r"\{(\w+)\}")


class RtlibHandler(APIHandler):
    @property
    def manager(self) -> JobManager:
        return self.settings["rtlib_manager"]

    @property
    def options(self) -> dict[str, Any]:
        return self.settings["rtlib_options"]

    def set_cors_headers(self) -> None:
        # jupyter_server answers any token-authenticated request with Access-Control-Allow-Origin: <its Origin>;
        # this API stays closed to other sites unless the extension's (or the server's) allow_origin says otherwise
        allowed = self.options.get("allow_origin", "")
        origin = self.request.headers.get("Origin")
        if allowed:
            if origin and (allowed == "*" or origin == allowed):
                self.set_header("Access-Control-Allow-Origin", "*" if allowed == "*" else origin)
                self.set_header("Vary", "Origin")
        elif self.allow_origin or self.allow_origin_pat:
            super().set_cors_headers()

    async def prepare(self) -> None:
        limit = self.options["max_body_bytes"]
        declared = self.request.headers.get("Content-Length")
        size = int(declared) if declared and declared.isdigit() else len(self.request.body or b"")
        if size > limit:
            self._reply_error(ApiError(413, f"request body of {size} bytes is over the limit of {limit} bytes; send less (a job names its files, it does not carry them)"))
            return
        await super().prepare()

    # -- replies -------------------------------------------------------------
    def _reply_error(self, err: ApiError) -> None:
        self.set_status(err.status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(err.to_dict()))

    def reply(self, call: Callable[[], Any], status: int = 200) -> None:
        try:
            result = call()
        except ApiError as err:
            self._reply_error(err)
            return
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(result, default=str))

    def json_body(self) -> Any:
        try:
            return json.loads(self.request.body or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ApiError(400, f"the body is not valid JSON ({err}); send a JSON object with Content-Type: application/json") from None

    def int_argument(self, name: str, default: int | None = None) -> int | None:
        text = self.get_argument(name, None)
        if text is None or text == "":
            return default
        try:
            return int(text)
        except ValueError:
            raise ApiError(400, f"{name} must be an integer, got {text!r}", name) from None


# -- handlers ------------------------------------------------------------------
class OpenApiHandler(RtlibHandler):
    @tornado.web.authenticated
    def get(self) -> None:
        from .openapi import openapi_document

        self.reply(lambda: openapi_document(self.base_url))


class SitesHandler(RtlibHandler):
    @tornado.web.authenticated
    def get(self) -> None:
        self.reply(lambda: {"sites": self.manager.sites()})


class EndpointsHandler(RtlibHandler):
    @tornado.web.authenticated
    def get(self) -> None:
        self.reply(lambda: {"endpoints": self.manager.endpoints()})


class WorkloadsHandler(RtlibHandler):
    @tornado.web.authenticated
    def get(self) -> None:
        self.reply(lambda: {"workloads": self.manager.workloads()})


class JobsHandler(RtlibHandler):
    @tornado.web.authenticated
    def get(self) -> None:
        self.reply(lambda: self.manager.list_jobs(
            state=self.get_argument("state", None) or None,
            workload=self.get_argument("workload", None) or None,
            beamline=self.get_argument("beamline", None) or None,
            limit=self.int_argument("limit", 100),
            offset=self.int_argument("offset", 0),
            order=self.get_argument("order", None) or "oldest",
        ))

    @tornado.web.authenticated
    def post(self) -> None:
        def submit() -> dict:
            job = self.manager.submit(self.json_body())
            self.set_header("Location", f"{self.base_url.rstrip('/')}{API_PREFIX}/jobs/{job['id']}")
            return job

        self.reply(submit, status=201)


class JobHandler(RtlibHandler):
    @tornado.web.authenticated
    def get(self, job_id: str) -> None:
        self.reply(lambda: self.manager.get_job(int(job_id)))


class JobCancelHandler(RtlibHandler):
    @tornado.web.authenticated
    def post(self, job_id: str) -> None:
        self.reply(lambda: self.manager.cancel(int(job_id)))


class JobRetryHandler(RtlibHandler):
    @tornado.web.authenticated
    def post(self, job_id: str) -> None:
        self.reply(lambda: self.manager.retry(int(job_id)))


class TransfersHandler(RtlibHandler):
    @tornado.web.authenticated
    def get(self) -> None:
        self.reply(self.manager.list_transfers)

    @tornado.web.authenticated
    def post(self) -> None:
        self.reply(lambda: self.manager.start_transfer(self.json_body()), status=201)


class TransferHandler(RtlibHandler):
    @tornado.web.authenticated
    def get(self, transfer_id: str) -> None:
        self.reply(lambda: self.manager.get_transfer(int(transfer_id)))


def sse_message(event: dict[str, Any]) -> str:
    """One server-sent event: its id (for Last-Event-ID) and the event (an OpenAPI `Event`) as one JSON `data:` line."""
    return f"id: {event['id']}\nevent: job\ndata: {json.dumps(event)}\n\n"


class EventsHandler(RtlibHandler):
    """GET /rtlib/api/events: job events as text/event-stream, resumable with ?since=ID or Last-Event-ID."""

    @tornado.web.authenticated
    async def get(self) -> None:
        try:
            since = self.int_argument("since", None)
            if since is None and self.request.headers.get("Last-Event-ID", "").isdigit():
                since = int(self.request.headers["Last-Event-ID"])
            job_id = self.int_argument("job_id", None)
            after = self.manager.last_event_id() if since is None else since
            self.manager.events(after, limit=1, job_id=job_id)  # validates `since` before the stream starts
        except ApiError as err:
            self._reply_error(err)
            return
        opts = self.options
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")  # a proxy must not hold events back
        started = last_sent = time.monotonic()
        try:
            self.write(f"retry: 2000\n: stream of job events after id {after}\n\n")
            await self.flush()
            while time.monotonic() - started < opts["sse_max_s"]:
                events = self.manager.events(after, job_id=job_id)
                for event in events:
                    self.write(sse_message(event))
                    after = event["id"]
                if events:
                    await self.flush()
                    last_sent = time.monotonic()
                elif time.monotonic() - last_sent >= opts["sse_keepalive_s"]:
                    self.write(": keep-alive\n\n")
                    await self.flush()
                    last_sent = time.monotonic()
                await asyncio.sleep(opts["sse_poll_s"])
        except StreamClosedError:
            return  # the client went away
        self.finish()


# -- routing -------------------------------------------------------------------
ROUTES: list[tuple[str, type[RtlibHandler]]] = [
    ("/openapi.json", OpenApiHandler),
    ("/sites", SitesHandler),
    ("/endpoints", EndpointsHandler),
    ("/workloads", WorkloadsHandler),
    ("/jobs", JobsHandler),
    ("/jobs/{job_id}", JobHandler),
    ("/jobs/{job_id}/cancel", JobCancelHandler),
    ("/jobs/{job_id}/retry", JobRetryHandler),
    ("/transfers", TransfersHandler),
    ("/transfers/{transfer_id}", TransferHandler),
    ("/events", EventsHandler),
]


def route_pattern(path: str) -> str:
    """/jobs/{job_id} -> /rtlib/api/jobs/(?P<job_id>[0-9]+) (ids are integers)."""
    return API_PREFIX + _PLACEHOLDER.sub(lambda m: f"(?P<{m.group(1)}>[0-9]+)", re.escape(path).replace(r"\{", "{").replace(r"\}", "}"))


def routes() -> list[tuple[str, type[RtlibHandler]]]:
    return [(route_pattern(path), handler) for path, handler in ROUTES]
