"""The OpenAPI 3.1 description of /rtlib/api/, served at GET /rtlib/api/openapi.json.

Its schemas are JSON Schema 2020-12 (as OpenAPI 3.1 has them). tests/test_jupyter_api.py
checks that every route the extension registers, with its methods, is described here
and nothing else, and validates real answers of every route against these schemas,
with no property beyond those described. The Queue schema is made from the config
model itself; job states from `rtlib.states.State`; the request bodies and the query
parameters from the models that validate them (rtlib.api_models), so what is described
is what is accepted.
"""

from __future__ import annotations

from typing import Any

from rtlib.api_models import LOCATION_SCHEMA, STORE_INT_MAX, EventsQuery, JobsQuery, SubmitRequest, TransferRequest
from rtlib.config import Queue
from rtlib.states import State

from .handlers import API_PREFIX


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "type": [schema["type"], "null"]}


def _record(properties: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """An object the server always sends whole: every property is required."""
    return {"type": "object", "required": sorted(properties), "properties": properties, **extra}


def _model_schema(model) -> dict[str, Any]:
    """A config model as the API sends it (`model_dump`: every field present), from the model itself so it stays true."""
    schema = model.model_json_schema(mode="serialization")
    assert "$defs" not in schema, f"{model.__name__} has nested models; describe them here"
    properties = {name: {k: v for k, v in prop.items() if k != "title"} for name, prop in schema["properties"].items()}
    return _record(properties)


def _tidy(node: Any, properties: bool = False) -> Any:
    """A pydantic JSON Schema as this document has it: no generated titles, every location a $ref to Location."""
    if node == LOCATION_SCHEMA:
        return _ref("Location")
    if isinstance(node, dict):
        return {k: _tidy(v, k == "properties") for k, v in node.items() if properties or k != "title"}
    if isinstance(node, list):
        return [_tidy(v) for v in node]
    return node


def _request_schema(model) -> dict[str, Any]:
    """A request body's schema, from the model that validates it."""
    return _tidy(model.model_json_schema())


def _parameters(model, headers: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Query parameters (and `headers`) from the model that validates them; absent rather than null."""
    out = []
    for name, prop in _tidy(model.model_json_schema())["properties"].items():
        schema = next((s for s in prop.get("anyOf", []) if s != {"type": "null"}), prop)
        schema = {**schema, **({"default": prop["default"]} if prop.get("default") is not None else {})}
        schema.pop("description", None)
        out.append({"name": name, "in": "header" if name in headers else "query", "schema": schema,
                    **({"description": prop["description"]} if "description" in prop else {})})
    return out


_ERROR = _json(_ref("Error"), "refused; `error` says why and what to do, `field` names the request field at fault")
_ID = {"in": "path", "required": True, "schema": {"type": "integer", "minimum": 1, "maximum": STORE_INT_MAX}}
_STATE = {"type": "string", "enum": [s.value for s in State]}
_TIME = {"type": "number", "description": "Unix time, seconds"}

_JOB = {
    "id": {"type": "integer"}, "workload": {"type": "string"}, "params": {"type": "object"},
    "beamline": _nullable({"type": "string"}), "source_endpoint": {"type": "string"},
    "inputs": {"type": "array", "items": {"type": "string"}, "description": "paths relative to the source endpoint's root"},
    "dest_endpoint": {"type": "string"}, "output_path": {"type": "string"}, "site": {"type": "string"},
    "queue": _nullable({"type": "string"}), "account": _nullable({"type": "string"}), "priority": {"type": "integer"},
    "state": {**_STATE, "description": "HELD: staged, waiting for its suballocation's node-hour budget (the reason is in `error`)"},
    "attempts": {"type": "integer"}, "max_attempts": {"type": "integer"}, "progress": {"type": "number", "minimum": 0, "maximum": 1},
    "created_at": _TIME, "updated_at": _TIME, "age_s": {"type": "number", "description": "seconds since it was submitted"},
    "summary": _nullable({"type": "object"}),
    "error": _nullable({"type": "string", "description": "why it FAILED, or why it is HELD"}),
}
_TRANSFER_TOTALS = _record({"files": {"type": "integer"}, "done": {"type": "integer"}, "bytes": {"type": "integer"}})

SCHEMAS: dict[str, Any] = {
    "Error": {"type": "object", "required": ["error"],
              "properties": {"error": {"type": "string"}, "field": {"type": "string", "description": "e.g. params.num_q_bins, input, limit"}}},
    "Location": LOCATION_SCHEMA,
    "Queue": _model_schema(Queue),
    "Site": _record({
        "name": {"type": "string"}, "compute": {"type": "string", "enum": ["local", "pbs", "slurm"]},
        "scratch_endpoint": {"type": "string"}, "queues": {"type": "array", "items": _ref("Queue")},
        "accounts": {"type": "object", "additionalProperties": {"type": "number"}, "description": "account -> node-hour budget"}}),
    "Endpoint": _record({
        "name": {"type": "string"}, "kind": {"type": "string", "enum": ["local", "globus"]},
        "facility": _nullable({"type": "string"}),
        "beamlines": {"type": "array", "items": {"type": "string"}, "description": "the beamlines whose data is on it"},
        "scratch": {"type": "boolean", "description": "it is a compute site's scratch: where jobs stage in, not an input"}},
        description="no roots, collection ids or credentials"),
    "Workload": _record({
        "name": {"type": "string"}, "description": {"type": "string"},
        "schema": {"type": "object", "description": "JSON Schema of the workload's parameters"}}),
    "Event": _record({
        "id": {"type": "integer"}, "job_id": {"type": "integer"},
        "state": {**_STATE, "description": "the state entered (the same as to_state)"}, "to_state": _STATE,
        "from_state": {"type": ["string", "null"], "enum": [s.value for s in State] + [None]},
        "reason": {"type": "string"}, "agent": _nullable({"type": "string", "description": "the agent that made the change; null for a person"}),
        "time": _TIME, "timestamp": {**_TIME, "description": "the same as time"}}),
    "Job": _record(_JOB),
    "JobDetail": _record({
        **_JOB, "events": {"type": "array", "items": _ref("Event"), "description": "its history, oldest first"},
        "transfers": _record({"in": _TRANSFER_TOTALS, "out": _TRANSFER_TOTALS}, description="files, done and bytes per direction")}),
    "JobPage": _record({
        "jobs": {"type": "array", "items": _ref("Job")}, "limit": {"type": "integer"}, "offset": {"type": "integer"},
        "total": {"type": "integer", "description": "jobs the filter matches, all pages"},
        "counts": {"type": "object", "additionalProperties": {"type": "integer"}, "description": "jobs per state, all jobs"}}),
    "SubmitRequest": _request_schema(SubmitRequest),
    "TransferRequest": _request_schema(TransferRequest),
    "Transfer": _record({
        "id": {"type": "integer"}, "source": {"type": "string"}, "destination": {"type": "string"},
        "state": {"type": "string", "enum": ["ACTIVE", "SUCCEEDED", "FAILED"]},
        "bytes_done": {"type": "integer"}, "bytes_total": {"type": "integer"}, "fraction": {"type": "number", "minimum": 0, "maximum": 1},
        "files_total": {"type": "integer"}, "files_done": {"type": "integer"}, "files_failed": {"type": "integer"},
        "errors": {"type": "array", "items": {"type": "string"}},
        "started_at": _TIME, "finished_at": _nullable(_TIME)}),
}

PATHS: dict[str, dict[str, Any]] = {
    "/openapi.json": {"get": {"summary": "this document", "operationId": "openapi",
                              "responses": {"200": {"description": "OpenAPI 3 document", "content": {"application/json": {}}}}}},
    "/sites": {"get": {"summary": "sites with their queues and accounts", "operationId": "listSites",
                       "responses": {"200": _json({"type": "object", "required": ["sites"], "properties": {"sites": {"type": "array", "items": _ref("Site")}}}, "sites")}}},
    "/endpoints": {"get": {"summary": "endpoints a job's input or a transfer can name, with the beamlines whose data each holds",
                           "operationId": "listEndpoints",
                           "responses": {"200": _json({"type": "object", "required": ["endpoints"], "properties": {
                               "endpoints": {"type": "array", "items": _ref("Endpoint")}}}, "endpoints")}}},
    "/workloads": {"get": {"summary": "installed workloads, each with the JSON Schema of its parameters", "operationId": "listWorkloads",
                           "responses": {"200": _json({"type": "object", "required": ["workloads"], "properties": {"workloads": {"type": "array", "items": _ref("Workload")}}},
                                                      "workloads")}}},
    "/jobs": {
        "get": {"summary": "jobs, oldest (or newest) first, filtered and paged", "operationId": "listJobs",
                "parameters": _parameters(JobsQuery),
                "responses": {"200": _json(_ref("JobPage"), "one page of jobs"), "400": _ERROR}},
        "post": {"summary": "submit a job (state CREATED; an agent of its site runs it)", "operationId": "submitJob",
                 "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("SubmitRequest")}}},
                 "responses": {"201": _json(_ref("JobDetail"), "the job as recorded"), "400": _ERROR,
                               "413": _ERROR}}},
    "/jobs/{job_id}": {"get": {"summary": "one job with its event history", "operationId": "getJob",
                               "parameters": [{"name": "job_id", **_ID}],
                               "responses": {"200": _json(_ref("JobDetail"), "the job"), "404": _ERROR}}},
    "/jobs/{job_id}/cancel": {"post": {"summary": "cancel a job that has not finished", "operationId": "cancelJob",
                                       "parameters": [{"name": "job_id", **_ID}],
                                       "responses": {"200": _json(_ref("JobDetail"), "the cancelled job"), "404": _ERROR, "409": _ERROR}}},
    "/jobs/{job_id}/retry": {"post": {"summary": "start a FAILED or CANCELLED job again", "operationId": "retryJob",
                                      "parameters": [{"name": "job_id", **_ID}],
                                      "responses": {"200": _json(_ref("JobDetail"), "the job, CREATED again"), "404": _ERROR, "409": _ERROR}}},
    "/transfers": {
        "get": {"summary": "ad-hoc transfers started by this server, newest first", "operationId": "listTransfers",
                "responses": {"200": _json({"type": "object", "required": ["transfers"], "properties": {"transfers": {"type": "array", "items": _ref("Transfer")}}},
                                           "transfers")}},
        "post": {"summary": "copy a file or directory between endpoints now, outside any job", "operationId": "startTransfer",
                 "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("TransferRequest")}}},
                 "responses": {"201": _json(_ref("Transfer"), "started; poll it for progress"), "400": _ERROR, "413": _ERROR}}},
    "/transfers/{transfer_id}": {"get": {"summary": "one ad-hoc transfer with its progress", "operationId": "getTransfer",
                                         "parameters": [{"name": "transfer_id", **_ID}],
                                         "responses": {"200": _json(_ref("Transfer"), "the transfer"), "404": _ERROR}}},
    "/events": {"get": {
        "summary": "live job events as server-sent events",
        "description": "Each message has `id:` (the event id), `event: job` and one `data:` line holding an Event (the schema) as JSON. Without `since` "
                       "(or a Last-Event-ID header) only new events are sent. Comments (`: keep-alive`) are sent while idle; "
                       "the server ends the stream after a bounded time and EventSource reconnects with Last-Event-ID.",
        "operationId": "streamEvents",
        "parameters": _parameters(EventsQuery, headers=("Last-Event-ID",)),
        "responses": {"200": {"description": "event stream", "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                      "400": _ERROR}}},
}


def openapi_document(base_url: str = "/") -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "rtlib Jupyter server API", "version": "1",
                 "description": "Jobs, workloads, sites, ad-hoc transfers and live job events of rtlib. "
                                "Authenticate as for any Jupyter server API (token or login cookie + XSRF token)."},
        "servers": [{"url": base_url.rstrip("/") + API_PREFIX}],
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"token": {"type": "apiKey", "in": "header", "name": "Authorization",
                                          "description": "token <jupyter server token>"}},
        },
        "security": [{"token": []}],
        "paths": PATHS,
    }
