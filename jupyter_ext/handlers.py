"""HTTP handlers of /rtlib/api/. Each one only turns a request into a JobManager call and back.

Every handler is a jupyter_server APIHandler whose methods are
``@tornado.web.authenticated``: a token or the login cookie is needed, and a
mutation authenticated by cookie must carry the XSRF token (APIHandler checks
it in ``prepare``). Bodies are streamed (``stream_request_body``), so
``prepare`` runs on the headers alone: a body declared over ``max_body_bytes``
is refused with 413, and an unauthenticated request with 403, before a byte of
it is read; the connection's own limit stops a chunked body at the same size.
Query values, path ids and bodies are validated by the models of
rtlib.api_models; a refusal is a JSON Error naming the field, never a
traceback. Any other URL under /rtlib/api/ is a JSON 404. CORS is closed
unless the extension's ``allow_origin`` is set; preflight (OPTIONS) requests
are answered by jupyter_server's APIHandler.options.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from http.client import responses
from typing import Any, Callable

import tornado.web
from jupyter_server.base.handlers import APIHandler
from tornado.iostream import StreamClosedError

from rtlib.api_models import EventsQuery, IdPath, JobsQuery
from rtlib.manager import ApiError, JobManager, ModelT, parse

API_PREFIX = "/rtlib/api"
_PLACEHOLDER = re.compile(r"\{(\w+)\}")
_AUTH_QUERY = {"token", "_xsrf", "no_track_activity"}  # read by jupyter_server itself, not fields of this API


@tornado.web.stream_request_body
class RtlibHandler(APIHandler):
    @property
    def manager(self) -> JobManager:
        return self.settings["rtlib_manager"]

    @property
    def rtlib_options(self) -> dict[str, Any]:
        # not `options`: that is the handler's OPTIONS method, which jupyter_server's CORS preflight needs
        return self.settings["rtlib_options"]

    def set_cors_headers(self) -> None:
        # jupyter_server answers any token-authenticated request with Access-Control-Allow-Origin: <its Origin>;
        # this API stays closed to other sites unless the extension's (or the server's) allow_origin says otherwise
        allowed = self.rtlib_options.get("allow_origin", "")
        origin = self.request.headers.get("Origin")
        if allowed:
            if origin and (allowed == "*" or origin == allowed):
                self.set_header("Access-Control-Allow-Origin", "*" if allowed == "*" else origin)
                self.set_header("Vary", "Origin")
        elif self.allow_origin or self.allow_origin_pat:
            super().set_cors_headers()

    async def prepare(self) -> None:
        self._body, self._body_over_limit = bytearray(), False
        refusal = self._size_refusal()
        if refusal is not None:
            self._reply_error(refusal)
            return
        if hasattr(self.request.connection, "set_max_body_size"):  # a chunked body has no Content-Length: cut it off there
            self.request.connection.set_max_body_size(self.rtlib_options["max_body_bytes"])
        await super().prepare()  # identity, CORS headers, XSRF; 403 for a request without a known user
        if self.current_user is None and self.request.method != "OPTIONS" and not self._finished:
            raise tornado.web.HTTPError(403)

    def _size_refusal(self) -> ApiError | None:
        """The body judged by its Content-Length, on the headers alone: nothing of it has been read yet."""
        limit = self.rtlib_options["max_body_bytes"]
        declared = self.request.headers.get("Content-Length")
        if declared is None:
            return None
        shown = declared[:20] + ("..." if len(declared) > 20 else "")
        if not re.fullmatch(r"[0-9]+", declared):
            return ApiError(400, f"Content-Length {shown!r} is not a number of bytes")
        if len(declared) > 18 or int(declared) > limit:
            return ApiError(413, f"request body of {shown} bytes is over the limit of {limit} bytes; "
                                 "send less (a job names its files, it does not carry them)")
        return None

    def data_received(self, chunk: bytes) -> None:
        if len(self._body) + len(chunk) > self.rtlib_options["max_body_bytes"]:
            self._body_over_limit = True  # only where the connection has no limit of its own; nothing more is kept
            return
        self._body += chunk

    # -- replies -------------------------------------------------------------
    def _reply_error(self, err: ApiError) -> None:
        self.set_status(err.status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(err.to_dict()))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Errors that did not come from the manager (403, 405, an unexpected exception): JSON, without a traceback."""
        err = kwargs.get("exc_info", (None, None, None))[1]
        message = err.log_message if isinstance(err, tornado.web.HTTPError) and err.log_message else responses.get(status_code, "error")
        if status_code >= 500:
            message = f"internal error of the rtlib API ({message}); the Jupyter server's log has the details"
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"error": message}))

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
        if self._body_over_limit:
            limit = self.rtlib_options["max_body_bytes"]
            raise ApiError(413, f"request body over the limit of {limit} bytes; send less")
        try:  # NaN and Infinity parse as floats: the models refuse them where a number must be finite
            return json.loads(bytes(self._body) or b"{}")
        except (ValueError, RecursionError) as err:  # also: an integer of over 4300 digits, nesting past the stack
            raise ApiError(400, f"the body is not valid JSON ({str(err)[:200]}); send a JSON object with Content-Type: application/json") from None

    def query(self, model: type[ModelT], **more: str) -> ModelT:
        """The query string as `model` (400 naming the field at fault); `more`: values from headers, by their alias."""
        values = {name: self.get_argument(name) for name in self.request.query_arguments if name not in _AUTH_QUERY}
        given = {name: value for name, value in {**values, **more}.items() if value != ""}  # `?state=`: no filter
        return parse(model, given, "a query")

    def path_id(self, name: str, text: str) -> int:
        return getattr(parse(IdPath, {name: text}, "a path"), name)


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
        self.reply(lambda: self.manager.list_jobs(**self.query(JobsQuery).model_dump()))

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
        self.reply(lambda: self.manager.get_job(self.path_id("job_id", job_id)))


class JobCancelHandler(RtlibHandler):
    @tornado.web.authenticated
    def post(self, job_id: str) -> None:
        self.reply(lambda: self.manager.cancel(self.path_id("job_id", job_id)))


class JobRetryHandler(RtlibHandler):
    @tornado.web.authenticated
    def post(self, job_id: str) -> None:
        self.reply(lambda: self.manager.retry(self.path_id("job_id", job_id)))


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
        self.reply(lambda: self.manager.get_transfer(self.path_id("transfer_id", transfer_id)))


def sse_message(event: dict[str, Any]) -> str:
    """One server-sent event: its id (for Last-Event-ID) and the event (an OpenAPI `Event`) as one JSON `data:` line."""
    return f"id: {event['id']}\nevent: job\ndata: {json.dumps(event)}\n\n"


class EventsHandler(RtlibHandler):
    """GET /rtlib/api/events: job events as text/event-stream, resumable with ?since=ID or Last-Event-ID."""

    @tornado.web.authenticated
    async def get(self) -> None:
        try:
            header = self.request.headers.get("Last-Event-ID")
            q = self.query(EventsQuery, **({"Last-Event-ID": header} if header is not None else {}))
            since, job_id = (q.since if q.since is not None else q.last_event_id), q.job_id
            after = self.manager.last_event_id() if since is None else since
            self.manager.events(after, limit=1, job_id=job_id)  # validates `since` before the stream starts
        except ApiError as err:
            self._reply_error(err)
            return
        opts = self.rtlib_options
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


class NotFoundHandler(RtlibHandler):
    """Any other URL under /rtlib/api/ (jobs/abc, a typo): a JSON 404, not jupyter_server's HTML page."""

    async def prepare(self) -> None:
        await super().prepare()
        if not self._finished:
            self._reply_error(ApiError(404, f"no such API path {self.request.path[:200]!r}; GET {API_PREFIX}/openapi.json lists them"))


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
    """The API's routes, then the JSON 404 for everything else under the prefix (tornado takes the first match)."""
    return [*((route_pattern(path), handler) for path, handler in ROUTES), (API_PREFIX + r"(?:/.*)?", NotFoundHandler)]
