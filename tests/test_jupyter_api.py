"""The rtlib Jupyter server extension, served by a real jupyter_server (pytest-jupyter)."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from pathlib import Path

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from traitlets.config import Config

from rtlib import config as cfg
from rtlib.synth.detector import write_detector_file

pytest_plugins = ["pytest_jupyter.jupyter_server"]


@pytest.fixture(autouse=True)
def stock_log_records():
    """napari's pytest plugin makes every LogRecord's args a tuple of strings, which breaks traitlets'
    `log.debug("Config changed: %r", config)` (a mapping argument) while the server starts; use the stock records."""
    previous = logging.getLogRecordFactory()
    logging.setLogRecordFactory(logging.LogRecord)
    yield
    logging.setLogRecordFactory(previous)


@pytest.fixture
def rtlib_workspace(tmp_path, monkeypatch):
    for var in ("RTLIB_CONFIG", "RTLIB_STORE_URL", "RTLIB_WORKSPACE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)  # no stray ./rtlib.toml
    return tmp_path / "ws"


@pytest.fixture
def jp_server_config(rtlib_workspace):
    return Config({
        "ServerApp": {"jpserver_extensions": {"jupyter_ext": True}},
        "RtlibExtensionApp": {"workspace": str(rtlib_workspace), "sse_keepalive_s": 0.3, "sse_max_s": 3.0, "sse_poll_s": 0.05},
    })


@pytest.fixture
def settings(rtlib_workspace):
    return cfg.load(workspace=rtlib_workspace)


@pytest.fixture
def manager(jp_serverapp):
    return jp_serverapp.web_app.settings["rtlib_manager"]


@pytest.fixture
def scan(settings) -> tuple[str, str]:
    rel = "raw/scan-001.h5"
    path = Path(settings.endpoints["aps"].root) / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    write_detector_file(path, frames=3, height=48, width=48, seed=1)
    return "aps", rel


def body(resp) -> dict:
    return json.loads(resp.body)


async def fetch_error(jp_fetch, *parts, **kwargs) -> tuple[int, dict]:
    with pytest.raises(HTTPClientError) as info:
        await jp_fetch(*parts, **kwargs)
    return info.value.code, json.loads(info.value.response.body)


def url(jp_http_port, jp_base_url, *parts: str) -> str:
    return f"http://127.0.0.1:{jp_http_port}{jp_base_url}rtlib/api/" + "/".join(parts)


# -- reading ---------------------------------------------------------------------------
async def test_sites_and_workloads(jp_fetch):
    sites = body(await jp_fetch("rtlib", "api", "sites"))["sites"]
    (local,) = sites
    assert local["name"] == "local" and {q["name"] for q in local["queues"]} == {"demand", "preemptable"}
    assert local["accounts"]["rtlib::aps"] == 100
    workloads = {w["name"]: w for w in body(await jp_fetch("rtlib", "api", "workloads"))["workloads"]}
    assert {"saxs", "noop"} <= set(workloads)
    assert workloads["saxs"]["schema"]["properties"]["num_q_bins"]["minimum"] == 2


# -- jobs --------------------------------------------------------------------------------
async def test_submit_get_list_cancel_retry(jp_fetch, scan, jp_base_url):
    ep, rel = scan
    resp = await jp_fetch("rtlib", "api", "jobs", method="POST", body=json.dumps({
        "workload": "saxs", "beamline": "aps-demo", "site": "local", "queue": "preemptable",
        "input": {"endpoint": ep, "path": rel}, "params": {"num_q_bins": 40}}))
    assert resp.code == 201
    job = body(resp)
    assert resp.headers["Location"].endswith(f"/rtlib/api/jobs/{job['id']}")
    assert job["state"] == "CREATED" and job["params"]["num_q_bins"] == 40 and job["queue"] == "preemptable"
    assert job["account"] == "rtlib::aps" and job["inputs"] == [rel]
    got = body(await jp_fetch("rtlib", "api", "jobs", str(job["id"])))
    assert [e["state"] for e in got["events"]] == ["CREATED"]

    page = body(await jp_fetch("rtlib", "api", "jobs", params={"state": "created", "workload": "saxs", "beamline": "aps-demo"}))
    assert [j["id"] for j in page["jobs"]] == [job["id"]] and page["counts"] == {"CREATED": 1}
    assert body(await jp_fetch("rtlib", "api", "jobs", params={"workload": "xpcs"}))["jobs"] == []
    assert body(await jp_fetch("rtlib", "api", "jobs", params={"offset": 1}))["jobs"] == []

    cancelled = body(await jp_fetch("rtlib", "api", "jobs", str(job["id"]), "cancel", method="POST", body="{}"))
    assert cancelled["state"] == "CANCELLED"
    assert [e["state"] for e in cancelled["events"]] == ["CREATED", "CANCELLED"]
    code, err = await fetch_error(jp_fetch, "rtlib", "api", "jobs", str(job["id"]), "cancel", method="POST", body="{}")
    assert code == 409 and "already CANCELLED" in err["error"]
    retried = body(await jp_fetch("rtlib", "api", "jobs", str(job["id"]), "retry", method="POST", body="{}"))
    assert retried["state"] == "CREATED"
    code, err = await fetch_error(jp_fetch, "rtlib", "api", "jobs", "999")
    assert code == 404 and "999" in err["error"]


async def test_submit_with_inputs_list(jp_fetch, scan):
    ep, rel = scan
    job = body(await jp_fetch("rtlib", "api", "jobs", method="POST", body=json.dumps({
        "workload": "noop", "inputs": [{"endpoint": ep, "path": rel}, {"endpoint": ep, "path": "raw"}]})))
    assert job["inputs"] == [rel, "raw"] and job["source_endpoint"] == ep


@pytest.mark.parametrize(
    "payload, field, words",
    [
        ({"workload": "saxs", "input": {"endpoint": "aps", "path": "raw/a.h5"}, "params": {"num_q_bins": 1}}, "params.num_q_bins", "num_q_bins"),
        ({"workload": "saxs", "input": {"endpoint": "aps", "path": "raw/a.h5"}, "params": {"num_q_binz": 3}}, "params.num_q_binz", "unknown parameter"),
        ({"workload": "saxs", "input": {"endpoint": "aps", "path": "raw/a.h5"}, "queue": "express"}, "queue", "express"),
        ({"workload": "saxs", "input": {"endpoint": "aps"}}, "input", "endpoint"),
        ({"workload": "saxs", "input": {"endpoint": "moon", "path": "a.h5"}}, "input", "unknown endpoint"),
        ({"workload": "saxs", "input": {"endpoint": "aps", "path": "raw/a.h5"}, "params": {"num_q_bins": 9}, "site": "mars"}, "site", "mars"),
    ],
)
async def test_bad_submission_is_400_naming_the_field(jp_fetch, manager, payload, field, words):
    code, err = await fetch_error(jp_fetch, "rtlib", "api", "jobs", method="POST", body=json.dumps(payload))
    assert code == 400 and err["field"] == field and words in err["error"]
    assert manager.list_jobs()["jobs"] == []


async def test_bad_query_and_body_are_400(jp_fetch):
    code, err = await fetch_error(jp_fetch, "rtlib", "api", "jobs", params={"limit": "lots"})
    assert code == 400 and err["field"] == "limit"
    code, err = await fetch_error(jp_fetch, "rtlib", "api", "jobs", params={"state": "RUNNIN"})
    assert code == 400 and err["field"] == "state"
    code, err = await fetch_error(jp_fetch, "rtlib", "api", "jobs", method="POST", body="{not json")
    assert code == 400 and "not valid JSON" in err["error"]


@pytest.mark.parametrize("bad_path", ["../../outside/scan.h5", "{tmp}/outside/scan.h5"])
async def test_paths_outside_an_endpoint_root_are_400_and_nothing_is_written(jp_fetch, manager, scan, tmp_path, bad_path):
    bad_path = bad_path.format(tmp=tmp_path)
    outside = tmp_path / "outside"
    code, err = await fetch_error(jp_fetch, "rtlib", "api", "jobs", method="POST", body=json.dumps(
        {"workload": "saxs", "input": {"endpoint": "aps", "path": bad_path}}))
    assert code == 400 and err["field"] == "input"
    code, err = await fetch_error(jp_fetch, "rtlib", "api", "transfers", method="POST", body=json.dumps(
        {"source": {"endpoint": scan[0], "path": scan[1]}, "destination": {"endpoint": "als", "path": bad_path}}))
    assert code == 400 and err["field"] == "destination" and "root" in err["error"]
    code, err = await fetch_error(jp_fetch, "rtlib", "api", "transfers", method="POST", body=json.dumps(
        {"source": {"endpoint": "aps", "path": bad_path}, "destination": {"endpoint": "als", "path": "copy.h5"}}))
    assert code == 400 and err["field"] == "source"
    assert manager.list_jobs()["jobs"] == [] and manager.list_transfers()["transfers"] == []
    assert not outside.exists()
    assert not (Path(manager.settings.endpoints["als"].root) / "copy.h5").exists()


# -- transfers -----------------------------------------------------------------------------
async def test_transfer_copies_with_progress(jp_fetch, scan, settings):
    src = Path(settings.endpoints["aps"].root) / scan[1]
    resp = await jp_fetch("rtlib", "api", "transfers", method="POST", body=json.dumps(
        {"source": {"endpoint": "aps", "path": "raw"}, "destination": "nsls2:incoming/"}))
    assert resp.code == 201
    tr = body(resp)
    assert tr["bytes_total"] == src.stat().st_size and tr["files_total"] == 1
    deadline = time.monotonic() + 30
    while tr["state"] == "ACTIVE" and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        tr = body(await jp_fetch("rtlib", "api", "transfers", str(tr["id"])))
    assert tr["state"] == "SUCCEEDED", tr
    assert tr["bytes_done"] == tr["bytes_total"] and tr["fraction"] == 1.0 and tr["files_done"] == 1
    copy = Path(settings.endpoints["nsls2"].root) / "incoming" / "scan-001.h5"
    assert copy.read_bytes() == src.read_bytes()
    listed = body(await jp_fetch("rtlib", "api", "transfers"))["transfers"]
    assert [t["id"] for t in listed] == [tr["id"]]
    code, err = await fetch_error(jp_fetch, "rtlib", "api", "transfers", "77")
    assert code == 404


async def test_transfer_of_a_missing_source_is_400(jp_fetch):
    code, err = await fetch_error(jp_fetch, "rtlib", "api", "transfers", method="POST", body=json.dumps(
        {"source": "aps:raw/none.h5", "destination": "als:x.h5"}))
    assert code == 400 and err["field"] == "source" and "does not exist" in err["error"]


# -- security --------------------------------------------------------------------------------
async def test_every_route_needs_authentication(http_server_client, jp_http_port, jp_base_url):
    client = AsyncHTTPClient()
    for method, parts in [("GET", ["sites"]), ("GET", ["workloads"]), ("GET", ["jobs"]), ("POST", ["jobs"]), ("GET", ["jobs", "1"]),
                          ("POST", ["jobs", "1", "cancel"]), ("POST", ["jobs", "1", "retry"]), ("GET", ["transfers"]),
                          ("POST", ["transfers"]), ("GET", ["transfers", "1"]), ("GET", ["events"]), ("GET", ["openapi.json"])]:
        req = HTTPRequest(url(jp_http_port, jp_base_url, *parts), method=method, body="{}" if method == "POST" else None,
                          follow_redirects=False)
        with pytest.raises(HTTPClientError) as info:
            await client.fetch(req)
        assert info.value.code in (401, 403), (method, parts, info.value.code)


async def _login_cookies(jp_serverapp, jp_http_port, jp_base_url) -> dict[str, str]:
    """Log in through the login form, as a browser does: returns the cookies (login and _xsrf)."""
    client = AsyncHTTPClient()
    login = f"http://127.0.0.1:{jp_http_port}{jp_base_url}login"
    page = await client.fetch(login)
    cookies = _cookies(page)
    resp = await client.fetch(HTTPRequest(
        login, method="POST", follow_redirects=False,
        body=f"password={jp_serverapp.identity_provider.token}&_xsrf={cookies['_xsrf']}",
        headers={"Cookie": _cookie_header(cookies)}), raise_error=False)
    assert resp.code == 302, resp.code
    cookies.update(_cookies(resp))
    assert any(name.startswith("username-") for name in cookies), cookies
    return cookies


def _cookies(resp) -> dict[str, str]:
    out = {}
    for header in resp.headers.get_list("Set-Cookie"):
        name, _, rest = header.partition("=")
        out[name] = rest.split(";", 1)[0]
    return out


def _cookie_header(cookies: dict[str, str]) -> str:
    return "; ".join(f"{k}={v}" for k, v in cookies.items())


async def test_mutation_with_cookie_auth_needs_the_xsrf_token(http_server_client, jp_serverapp, jp_http_port, jp_base_url, manager, scan):
    cookies = await _login_cookies(jp_serverapp, jp_http_port, jp_base_url)
    client = AsyncHTTPClient()
    payload = json.dumps({"workload": "noop", "input": {"endpoint": scan[0], "path": scan[1]}})
    # the login cookie alone reads...
    resp = await client.fetch(HTTPRequest(url(jp_http_port, jp_base_url, "sites"), headers={"Cookie": _cookie_header(cookies)}))
    assert resp.code == 200
    # ...but cannot change anything without the XSRF token
    resp = await client.fetch(HTTPRequest(url(jp_http_port, jp_base_url, "jobs"), method="POST", body=payload,
                                          headers={"Cookie": _cookie_header(cookies)}), raise_error=False)
    assert resp.code == 403 and manager.list_jobs()["jobs"] == []
    resp = await client.fetch(HTTPRequest(url(jp_http_port, jp_base_url, "jobs"), method="POST", body=payload,
                                          headers={"Cookie": _cookie_header(cookies), "X-XSRFToken": "forged"}), raise_error=False)
    assert resp.code == 403 and manager.list_jobs()["jobs"] == []
    resp = await client.fetch(HTTPRequest(url(jp_http_port, jp_base_url, "jobs"), method="POST", body=payload,
                                          headers={"Cookie": _cookie_header(cookies), "X-XSRFToken": cookies["_xsrf"]}))
    assert resp.code == 201 and len(manager.list_jobs()["jobs"]) == 1


async def test_oversized_body_is_413(jp_fetch, manager):
    payload = json.dumps({"workload": "noop", "input": "aps:raw/a.h5", "params": {"pad": "x" * (1 << 20)}})
    code, err = await fetch_error(jp_fetch, "rtlib", "api", "jobs", method="POST", body=payload)
    assert code == 413 and "limit" in err["error"]
    assert manager.list_jobs()["jobs"] == []


async def test_cors_is_closed_by_default(jp_fetch):
    for parts, kwargs in [(["sites"], {}), (["jobs"], {"method": "POST", "body": "{}"})]:
        try:
            resp = await jp_fetch("rtlib", "api", *parts, headers={"Origin": "https://evil.example"}, **kwargs)
        except HTTPClientError as err:
            resp = err.response
        assert "Access-Control-Allow-Origin" not in resp.headers, parts


@pytest.mark.parametrize("allowed", ["https://beamline.example"])
async def test_cors_opens_only_to_the_configured_origin(jp_fetch, jp_serverapp, allowed):
    jp_serverapp.web_app.settings["rtlib_options"]["allow_origin"] = allowed
    resp = await jp_fetch("rtlib", "api", "sites", headers={"Origin": allowed})
    assert resp.headers["Access-Control-Allow-Origin"] == allowed
    resp = await jp_fetch("rtlib", "api", "sites", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in resp.headers


# -- the event stream ------------------------------------------------------------------------
async def _read_stream(jp_http_port, jp_base_url, jp_auth_header, query: str = "", on_first_chunk=None) -> str:
    chunks: list[bytes] = []
    first = asyncio.Event()

    def collect(chunk: bytes) -> None:
        chunks.append(chunk)
        first.set()

    req = HTTPRequest(url(jp_http_port, jp_base_url, "events") + query, headers=jp_auth_header, streaming_callback=collect,
                      request_timeout=30)
    pending = asyncio.ensure_future(AsyncHTTPClient().fetch(req))
    await asyncio.wait_for(first.wait(), 10)
    if on_first_chunk is not None:
        await on_first_chunk()
    resp = await pending
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    return b"".join(chunks).decode()


def _events(text: str) -> list[dict]:
    return [json.loads(line[len("data: "):]) for line in text.splitlines() if line.startswith("data: ")]


async def test_event_stream_delivers_state_changes(http_server_client, jp_http_port, jp_base_url, jp_auth_header, manager, scan):
    before = manager.submit({"workload": "noop", "input": {"endpoint": scan[0], "path": scan[1]}})  # history: not sent

    async def change_state():
        await asyncio.sleep(0.2)
        job = manager.submit({"workload": "noop", "input": {"endpoint": scan[0], "path": scan[1]}})
        await asyncio.sleep(0.2)
        manager.cancel(job["id"])

    started = time.monotonic()
    text = await _read_stream(jp_http_port, jp_base_url, jp_auth_header, on_first_chunk=change_state)
    assert time.monotonic() - started < 10  # bounded: the server ends the stream (sse_max_s=3)
    events = _events(text)
    assert [(e["job_id"], e["state"]) for e in events] == [(before["id"] + 1, "CREATED"), (before["id"] + 1, "CANCELLED")]
    assert {"id", "job_id", "state", "reason", "time"} <= set(events[1]) and events[1]["reason"] == "cancelled by user"
    ids = [int(m) for m in re.findall(r"^id: (\d+)$", text, re.M)]
    assert ids == [e["id"] for e in events]
    assert ": keep-alive" in text  # idle stretches are kept alive

    # resuming from an event id replays what came after it
    replay = _events(await _read_stream(jp_http_port, jp_base_url, jp_auth_header, f"?since={events[0]['id'] - 1}"))
    assert [e["id"] for e in replay] == [e["id"] for e in events]


async def test_event_stream_refuses_a_bad_since(jp_fetch):
    code, err = await fetch_error(jp_fetch, "rtlib", "api", "events", params={"since": "-4"})
    assert code == 400 and err["field"] == "since"


# -- the OpenAPI document -----------------------------------------------------------------------
def _registered_routes(jp_serverapp, jp_base_url) -> dict[str, set[str]]:
    """Every route under /rtlib/api/ the running server has, as OpenAPI path -> methods its handler implements."""
    from jupyter_ext.handlers import NotFoundHandler, RtlibHandler

    prefix = re.escape(jp_base_url.rstrip("/")) + "/rtlib/api"
    found: dict[str, set[str]] = {}
    for rule in jp_serverapp.web_app.default_router.rules:
        for sub in getattr(rule.target, "rules", [rule]):
            pattern = getattr(sub.matcher, "regex", None)
            if pattern is None or not pattern.pattern.startswith(prefix.replace("\\%", "%")) and "rtlib/api" not in pattern.pattern:
                continue
            handler = sub.target
            assert issubclass(handler, RtlibHandler), handler
            if handler is NotFoundHandler:  # the JSON 404 for every other URL under the prefix: not an operation
                continue
            path = pattern.pattern.split("rtlib/api", 1)[1].rstrip("$")
            path = re.sub(r"\(\?P<(\w+)>[^)]*\)", r"{\1}", path).replace("\\", "")
            found[path] = {m for m in ("get", "post", "put", "patch", "delete") if getattr(handler, m) is not getattr(RtlibHandler, m)}
    return found


async def test_openapi_document_matches_the_registered_routes(jp_fetch, jp_serverapp, jp_base_url):
    doc = body(await jp_fetch("rtlib", "api", "openapi.json"))
    assert doc["openapi"].startswith("3.")
    assert doc["servers"][0]["url"].endswith("/rtlib/api")
    registered = _registered_routes(jp_serverapp, jp_base_url)
    assert len(registered) >= 10
    described = {path: {m for m in ops if m in ("get", "post", "put", "patch", "delete")} for path, ops in doc["paths"].items()}
    assert registered == described
    for path, ops in doc["paths"].items():  # every path parameter is declared
        for op in ops.values():
            declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert declared == set(re.findall(r"\{(\w+)\}", path)), path
    refs = set(re.findall(r'"#/components/schemas/(\w+)"', json.dumps(doc)))
    assert refs <= set(doc["components"]["schemas"])


# -- endpoints, HELD jobs, paging totals ---------------------------------------------------------
async def test_endpoints_lists_each_with_its_kind_and_beamlines_and_no_secrets(jp_fetch, settings):
    endpoints = {e["name"]: e for e in body(await jp_fetch("rtlib", "api", "endpoints"))["endpoints"]}
    assert set(endpoints) == set(settings.endpoints) == {"aps", "als", "nsls2", "alcf"}
    assert endpoints["aps"] == {"name": "aps", "kind": "local", "facility": "aps", "beamlines": ["aps-demo"], "scratch": False}
    assert endpoints["alcf"]["scratch"] is True and endpoints["alcf"]["beamlines"] == []
    text = json.dumps(endpoints)
    assert str(settings.workspace) not in text and "root" not in text  # nothing of this host's filesystem


def _hold(manager, job_id: int) -> str:
    """Put a CREATED job into HELD the way an agent does: staged in, then over its account's budget."""
    from rtlib import accounting
    from rtlib.compute.policy import request_for

    store = manager.store
    job = store.get_job(job_id)
    assert store.transition(job_id, "CREATED", "STAGING_IN", "staging in")
    assert store.transition(job_id, "STAGING_IN", "STAGED_IN", "staged in")
    store.set_budget(job.account, 0.0)
    reason = accounting.Ledger(manager.settings, store).hold_reason(job.account, request_for(manager.settings.sites[job.site], job.workload))
    assert reason and job.account in reason
    assert store.transition(job_id, "STAGED_IN", "HELD", reason, owner=None, error=reason)
    return reason


async def test_held_job_is_listed_by_state_and_shows_its_reason(jp_fetch, manager, scan):
    ep, rel = scan
    held = manager.submit({"workload": "noop", "beamline": "aps-demo", "input": {"endpoint": ep, "path": rel}})
    other = manager.submit({"workload": "noop", "beamline": "aps-demo", "input": {"endpoint": ep, "path": rel}})
    reason = _hold(manager, held["id"])
    page = body(await jp_fetch("rtlib", "api", "jobs", params={"state": "HELD"}))
    assert [j["id"] for j in page["jobs"]] == [held["id"]] and page["jobs"][0]["state"] == "HELD"
    assert page["total"] == 1 and page["counts"] == {"HELD": 1, "CREATED": 1}
    assert body(await jp_fetch("rtlib", "api", "jobs", params={"state": "held"}))["jobs"][0]["id"] == held["id"]
    got = body(await jp_fetch("rtlib", "api", "jobs", str(held["id"])))
    assert got["state"] == "HELD" and got["error"] == reason and "node-hours" in reason
    assert got["events"][-1]["state"] == "HELD" and got["events"][-1]["reason"] == reason
    assert body(await jp_fetch("rtlib", "api", "jobs", str(other["id"])))["state"] == "CREATED"
    doc = body(await jp_fetch("rtlib", "api", "openapi.json"))
    assert "HELD" in doc["components"]["schemas"]["Job"]["properties"]["state"]["enum"]


async def test_a_filtered_page_carries_the_total_the_filter_matches(jp_fetch, manager, scan):
    ep, rel = scan
    for workload in ("noop", "noop", "noop", "saxs"):
        manager.submit({"workload": workload, "input": {"endpoint": ep, "path": rel}})
    page = body(await jp_fetch("rtlib", "api", "jobs", params={"workload": "noop", "limit": "2", "offset": "0"}))
    assert len(page["jobs"]) == 2 and page["total"] == 3
    page = body(await jp_fetch("rtlib", "api", "jobs", params={"workload": "noop", "limit": "2", "offset": "2"}))
    assert len(page["jobs"]) == 1 and page["total"] == 3
    assert body(await jp_fetch("rtlib", "api", "jobs"))["total"] == 4
    assert body(await jp_fetch("rtlib", "api", "jobs", params={"state": "DONE"}))["total"] == 0


# -- real answers against the served OpenAPI schemas ---------------------------------------------
def _strict(node):
    """The document with `additionalProperties: false` wherever a schema lists properties and says nothing else."""
    if isinstance(node, list):
        return [_strict(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _strict(v) for k, v in node.items()}
    if isinstance(node.get("properties"), dict) and "additionalProperties" not in node:
        out["additionalProperties"] = False
    return out


class OpenApiChecker:
    """Validates answers against the served document's response schemas ($refs resolved, jsonschema 2020-12)."""

    URI = "urn:rtlib-openapi"

    def __init__(self, doc: dict):
        from jsonschema import Draft202012Validator
        from referencing import Registry, Resource
        from referencing.jsonschema import DRAFT202012

        self.doc = doc
        self.registry = Registry().with_resource(self.URI, Resource.from_contents(_strict(doc), default_specification=DRAFT202012))
        self.validator_class = Draft202012Validator
        self.checked: set[tuple[str, str, str]] = set()

    def _validator(self, pointer: str):
        return self.validator_class({"$ref": f"{self.URI}#{pointer}"}, registry=self.registry)

    def response(self, path: str, method: str, status: int, payload) -> None:
        responses = self.doc["paths"][path][method]["responses"]
        assert str(status) in responses, f"{method.upper()} {path} answered {status}, which the document does not describe"
        escaped = path.replace("~", "~0").replace("/", "~1")
        self._validator(f"/paths/{escaped}/{method}/responses/{status}/content/application~1json/schema").validate(payload)
        self.checked.add((path, method, str(status)))

    def schema(self, name: str, payload) -> None:
        self._validator(f"/components/schemas/{name}").validate(payload)


async def test_every_answer_matches_the_served_openapi_schemas(http_server_client, jp_fetch, jp_http_port, jp_base_url, jp_auth_header,
                                                              manager, scan, settings):
    from jsonschema import Draft202012Validator, ValidationError

    doc = body(await jp_fetch("rtlib", "api", "openapi.json"))
    assert doc["openapi"].startswith("3.1")
    check = OpenApiChecker(doc)

    async def call(path: str, method: str = "get", *, params=None, payload=None, **ids):
        parts = path.format(**ids).strip("/").split("/")
        kwargs = {"method": method.upper()}
        if method == "post":
            kwargs["body"] = json.dumps(payload if payload is not None else {})
        if params:
            kwargs["params"] = params
        try:
            resp = await jp_fetch("rtlib", "api", *parts, **kwargs)
        except HTTPClientError as err:
            resp = err.response
        data = json.loads(resp.body)
        check.response(path, method, resp.code, data)
        return resp.code, data

    ep, rel = scan
    assert (await call("/sites"))[0] == 200
    code, workloads = await call("/workloads")
    for w in workloads["workloads"]:  # each parameter schema is itself a valid JSON Schema
        Draft202012Validator.check_schema(w["schema"])
    assert (await call("/endpoints"))[0] == 200

    code, job = await call("/jobs", "post", payload={"workload": "saxs", "beamline": "aps-demo", "input": {"endpoint": ep, "path": rel},
                                                     "params": {"num_q_bins": 30}})
    assert code == 201
    code, other = await call("/jobs", "post", payload={"workload": "noop", "beamline": "aps-demo", "input": f"{ep}:{rel}"})
    assert code == 201
    _hold(manager, other["id"])
    assert (await call("/jobs", "post", payload={"workload": "saxs", "input": {"endpoint": ep, "path": rel},
                                                 "params": {"num_q_bins": 1}}))[0] == 400
    for params in (None, {"state": "HELD"}, {"workload": "saxs", "beamline": "aps-demo", "limit": "1"}, {"order": "newest", "limit": "1"}):
        assert (await call("/jobs", params=params))[0] == 200
    assert (await call("/jobs", params={"limit": "0"}))[0] == 400
    for job_id in (job["id"], other["id"]):
        assert (await call("/jobs/{job_id}", job_id=job_id))[0] == 200
    assert (await call("/jobs/{job_id}", job_id=999))[0] == 404
    assert (await call("/jobs/{job_id}/cancel", "post", job_id=job["id"]))[0] == 200
    assert (await call("/jobs/{job_id}/cancel", "post", job_id=job["id"]))[0] == 409
    assert (await call("/jobs/{job_id}/retry", "post", job_id=job["id"]))[0] == 200
    assert (await call("/jobs/{job_id}/retry", "post", job_id=job["id"]))[0] == 409
    assert (await call("/jobs/{job_id}/cancel", "post", job_id=999))[0] == 404

    code, tr = await call("/transfers", "post", payload={"source": {"endpoint": ep, "path": rel}, "destination": "als:copies/"})
    assert code == 201
    assert (await call("/transfers", "post", payload={"source": f"{ep}:raw/none.h5", "destination": "als:x"}))[0] == 400
    deadline = time.monotonic() + 30
    while tr["state"] == "ACTIVE" and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        tr = (await call("/transfers/{transfer_id}", transfer_id=tr["id"]))[1]
    assert tr["state"] == "SUCCEEDED" and tr["finished_at"] is not None
    assert (await call("/transfers"))[0] == 200
    assert (await call("/transfers/{transfer_id}", transfer_id=99))[0] == 404

    # the event stream's messages are Events; its refusal is an Error
    assert (await call("/events", params={"since": "-1"}))[0] == 400
    events = _events(await _read_stream(jp_http_port, jp_base_url, jp_auth_header, "?since=0"))
    assert {e["state"] for e in events} >= {"CREATED", "HELD", "CANCELLED"}
    for event in events:
        check.schema("Event", event)

    # every JSON route and method was exercised; the strict reading is not vacuous
    json_ops = {(p, m) for p, ops in doc["paths"].items() for m, op in ops.items()
                if any("application/json" in r.get("content", {}) and r["content"]["application/json"] for r in op["responses"].values())}
    assert json_ops == {(p, m) for p, m, _ in check.checked}
    with pytest.raises(ValidationError, match="surprise"):
        check.schema("JobDetail", {**job, "surprise": 1})
    with pytest.raises(ValidationError, match="'state' is a required property"):
        check.schema("Job", {k: v for k, v in job.items() if k not in ("events", "transfers", "state")})
    site = body(await jp_fetch("rtlib", "api", "sites"))["sites"][0]
    with pytest.raises(ValidationError):
        check.schema("Queue", {**site["queues"][0], "unlisted": True})
