"""The OpenAPI 3 description of /rtlib/api/, served at GET /rtlib/api/openapi.json.

tests/test_jupyter_api.py checks that every route the extension registers,
with its methods, is described here and that nothing else is.
"""

from __future__ import annotations

from typing import Any

from .handlers import API_PREFIX


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERROR = _json(_ref("Error"), "refused; `error` says why and what to do, `field` names the request field at fault")
_ID = {"in": "path", "required": True, "schema": {"type": "integer", "minimum": 1}}
_LOCATION = {
    "oneOf": [
        {"type": "object", "required": ["endpoint", "path"], "additionalProperties": False,
         "properties": {"endpoint": {"type": "string"}, "path": {"type": "string", "description": "relative to the endpoint root"}}},
        {"type": "string", "description": "ENDPOINT:PATH", "example": "aps:raw/scan-001.h5"},
    ]
}

SCHEMAS: dict[str, Any] = {
    "Error": {"type": "object", "required": ["error"],
              "properties": {"error": {"type": "string"}, "field": {"type": "string", "description": "e.g. params.num_q_bins, input, limit"}}},
    "Location": _LOCATION,
    "Queue": {"type": "object", "properties": {"name": {"type": "string"}, "max_nodes": {"type": "integer"},
                                                "max_walltime_min": {"type": "number"}, "preemptable": {"type": "boolean"}}},
    "Site": {"type": "object", "properties": {
        "name": {"type": "string"}, "compute": {"type": "string", "enum": ["local", "pbs", "slurm"]},
        "scratch_endpoint": {"type": "string"}, "queues": {"type": "array", "items": _ref("Queue")},
        "accounts": {"type": "object", "additionalProperties": {"type": "number"}, "description": "account -> node-hour budget"}}},
    "Workload": {"type": "object", "properties": {
        "name": {"type": "string"}, "description": {"type": "string"},
        "schema": {"type": "object", "description": "JSON Schema of the workload's parameters"}}},
    "Event": {"type": "object", "properties": {
        "id": {"type": "integer"}, "job_id": {"type": "integer"}, "state": {"type": "string", "description": "the state entered"},
        "from_state": {"type": "string", "nullable": True}, "reason": {"type": "string"}, "time": {"type": "number", "description": "Unix time"}}},
    "Job": {"type": "object", "properties": {
        "id": {"type": "integer"}, "workload": {"type": "string"}, "params": {"type": "object"}, "beamline": {"type": "string", "nullable": True},
        "source_endpoint": {"type": "string"}, "inputs": {"type": "array", "items": {"type": "string"}},
        "dest_endpoint": {"type": "string"}, "output_path": {"type": "string"}, "site": {"type": "string"},
        "queue": {"type": "string", "nullable": True}, "account": {"type": "string", "nullable": True}, "priority": {"type": "integer"},
        "state": {"type": "string", "enum": ["CREATED", "STAGING_IN", "STAGED_IN", "RUNNING", "RUN_DONE", "STAGING_OUT", "DONE",
                                             "FAILED", "PREEMPTED", "CANCELLED"]},
        "attempts": {"type": "integer"}, "max_attempts": {"type": "integer"}, "progress": {"type": "number"},
        "created_at": {"type": "number"}, "updated_at": {"type": "number"}, "age_s": {"type": "number"},
        "summary": {"type": "object", "nullable": True}, "error": {"type": "string", "nullable": True}}},
    "JobDetail": {"allOf": [_ref("Job"), {"type": "object", "properties": {
        "events": {"type": "array", "items": _ref("Event")},
        "transfers": {"type": "object", "description": "per direction (in, out): files, done, bytes"}}}]},
    "JobPage": {"type": "object", "properties": {
        "jobs": {"type": "array", "items": _ref("Job")}, "limit": {"type": "integer"}, "offset": {"type": "integer"},
        "counts": {"type": "object", "additionalProperties": {"type": "integer"}, "description": "jobs per state, all jobs"}}},
    "SubmitRequest": {"type": "object", "required": ["workload"], "additionalProperties": False, "properties": {
        "workload": {"type": "string"}, "beamline": {"type": "string"}, "site": {"type": "string", "default": "local"},
        "queue": {"type": "string"}, "account": {"type": "string", "description": "project or project::suballocation"},
        "input": _ref("Location"), "inputs": {"type": "array", "items": _ref("Location")},
        "source": {"description": "ENDPOINT:PATH or a list of them (as the CLI takes it)"},
        "dest": _ref("Location"), "params": {"type": "object", "description": "validated against the workload's schema"},
        "priority": {"type": "integer", "default": 0}},
        "description": "exactly one of input, inputs, source; all inputs on one endpoint"},
    "TransferRequest": {"type": "object", "required": ["source", "destination"], "additionalProperties": False,
                        "properties": {"source": _ref("Location"), "destination": _ref("Location")}},
    "Transfer": {"type": "object", "properties": {
        "id": {"type": "integer"}, "source": {"type": "string"}, "destination": {"type": "string"},
        "state": {"type": "string", "enum": ["ACTIVE", "SUCCEEDED", "FAILED"]},
        "bytes_done": {"type": "integer"}, "bytes_total": {"type": "integer"}, "fraction": {"type": "number"},
        "files_total": {"type": "integer"}, "files_done": {"type": "integer"}, "files_failed": {"type": "integer"},
        "errors": {"type": "array", "items": {"type": "string"}},
        "started_at": {"type": "number"}, "finished_at": {"type": "number", "nullable": True}}},
}

PATHS: dict[str, dict[str, Any]] = {
    "/openapi.json": {"get": {"summary": "this document", "operationId": "openapi",
                              "responses": {"200": {"description": "OpenAPI 3 document", "content": {"application/json": {}}}}}},
    "/sites": {"get": {"summary": "sites with their queues and accounts", "operationId": "listSites",
                       "responses": {"200": _json({"type": "object", "properties": {"sites": {"type": "array", "items": _ref("Site")}}}, "sites")}}},
    "/workloads": {"get": {"summary": "installed workloads, each with the JSON Schema of its parameters", "operationId": "listWorkloads",
                           "responses": {"200": _json({"type": "object", "properties": {"workloads": {"type": "array", "items": _ref("Workload")}}},
                                                      "workloads")}}},
    "/jobs": {
        "get": {"summary": "jobs, oldest first, filtered and paged", "operationId": "listJobs",
                "parameters": [
                    {"name": "state", "in": "query", "schema": {"type": "string"}, "description": "a job state (any case)"},
                    {"name": "workload", "in": "query", "schema": {"type": "string"}},
                    {"name": "beamline", "in": "query", "schema": {"type": "string"}},
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 100}},
                    {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0, "default": 0}}],
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
                "responses": {"200": _json({"type": "object", "properties": {"transfers": {"type": "array", "items": _ref("Transfer")}}},
                                           "transfers")}},
        "post": {"summary": "copy a file or directory between endpoints now, outside any job", "operationId": "startTransfer",
                 "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("TransferRequest")}}},
                 "responses": {"201": _json(_ref("Transfer"), "started; poll it for progress"), "400": _ERROR, "413": _ERROR}}},
    "/transfers/{transfer_id}": {"get": {"summary": "one ad-hoc transfer with its progress", "operationId": "getTransfer",
                                         "parameters": [{"name": "transfer_id", **_ID}],
                                         "responses": {"200": _json(_ref("Transfer"), "the transfer"), "404": _ERROR}}},
    "/events": {"get": {
        "summary": "live job events as server-sent events",
        "description": "Each message has `id:` (the event id) and one `data:` line holding an Event as JSON. Without `since` "
                       "(or a Last-Event-ID header) only new events are sent. Comments (`: keep-alive`) are sent while idle; "
                       "the server ends the stream after a bounded time and EventSource reconnects with Last-Event-ID.",
        "operationId": "streamEvents",
        "parameters": [{"name": "since", "in": "query", "schema": {"type": "integer", "minimum": 0},
                        "description": "send events with an id greater than this one first"},
                       {"name": "job_id", "in": "query", "schema": {"type": "integer"}, "description": "only this job's events"},
                       {"name": "Last-Event-ID", "in": "header", "schema": {"type": "integer"}}],
        "responses": {"200": {"description": "event stream", "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                      "400": _ERROR}}},
}


def openapi_document(base_url: str = "/") -> dict[str, Any]:
    return {
        "openapi": "3.0.3",
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
