"""Jobs through the real agent with Globus endpoints: job states and error texts, and no secret anywhere.

The beamline `aps` is a Globus collection reached only through the API; the
facility scratch `alcf` is a Globus collection this machine also mounts
(`root`). A small fake of the Transfer API, registered with `responses`
callbacks, accepts tasks, "delivers" files into the scratch root as Globus
would, and answers the task, successful-transfers, skipped-errors and event
calls, so the agent drives globus-sdk's real TransferClient end to end.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
import responses
from globus_sdk.transport import RetryConfig

from rtlib import config as cfg
from rtlib import jobs as jobops
from rtlib.agent import Agent
from rtlib.states import State
from rtlib.store import JobStore
from rtlib.transfer.factory import make_globus_backend, make_transfer_backend
from rtlib.transfer.routing import RoutingTransferBackend

APS = "6c54cade-bde5-45c1-bdea-f4bd71dba2cc"
ALCF = "1c6c2a8c-9d4a-4a55-8d9a-3e1f3b8b7a10"
CLIENT_ID = "9f3a0b8e-58b2-4a5c-9a1e-0f4f4c2b7d11"
SECRET = "agent-s3cr3t-Wk7!never-log-me"
TRANSFER = "https://transfer.api.globus.org/v0.10"
AUTH = "https://auth.globus.org/v2/oauth2/token"


class FakeGlobus:
    """Just enough of Globus Transfer: tasks succeed at once, except for files listed in `missing`."""

    def __init__(self, scratch_root: Path, files: dict[str, int]):
        self.scratch_root = scratch_root
        self.files = files  # absolute path on the aps collection -> size
        self.missing: set[str] = set()
        self.submit_error: tuple[int, dict] | None = None
        self.tasks: dict[str, dict] = {}
        self.tokens_issued = 0

    def register(self) -> None:
        r = _JsonCallbacks()
        r.add_callback("POST", AUTH, callback=self._token)
        r.add_callback("GET", f"{TRANSFER}/submission_id", callback=lambda req: (200, {}, json.dumps({"value": str(uuid.uuid4())})))
        r.add_callback("POST", f"{TRANSFER}/transfer", callback=self._submit)
        r.add_callback("GET", f"{TRANSFER}/operation/endpoint/{APS}/stat", callback=self._stat)
        for suffix, fn in (("/successful_transfers", self._succeeded), ("/skipped_errors", self._skipped), ("/event_list", self._events)):
            r.add_callback("GET", _task_url(suffix), callback=fn)
        r.add_callback("GET", _task_url(""), callback=self._task)

    def _token(self, req):
        self.tokens_issued += 1
        return 200, {}, json.dumps({"access_token": f"tok-{self.tokens_issued}", "expires_in": 172800, "token_type": "Bearer",
                                    "scope": "urn:globus:auth:scope:transfer.api.globus.org:all",
                                    "resource_server": "transfer.api.globus.org", "other_tokens": []})

    def _stat(self, req):
        path = parse_qs(urlparse(req.url).query)["path"][0]
        if path not in self.files:
            return 404, {}, json.dumps({"code": "ClientError.NotFound", "message": f"Path '{path}' not found", "request_id": "x"})
        return 200, {}, json.dumps({"DATA_TYPE": "file", "name": path.rsplit("/", 1)[-1], "type": "file", "size": self.files[path]})

    def _submit(self, req):
        if self.submit_error is not None:
            status, body = self.submit_error
            return status, {}, json.dumps(body)
        doc = json.loads(req.body)
        task_id = str(uuid.uuid4())
        self.tasks[task_id] = doc
        for item in doc["DATA"]:  # Globus delivers into the mounted scratch collection
            if doc["destination_endpoint"] == ALCF and item["source_path"] not in self.missing:
                dst = self.scratch_root / item["destination_path"].removeprefix("/eagle/rtlib/")
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.write_bytes(b"x" * self.files[item["source_path"]])
        return 202, {}, json.dumps({"DATA_TYPE": "transfer_result", "code": "Accepted", "task_id": task_id, "submission_id": doc["submission_id"]})

    def _task_id(self, req) -> str:
        return urlparse(req.url).path.split("/task/")[1].split("/")[0]

    def _task(self, req):
        tid = self._task_id(req)
        n = len(self.tasks[tid]["DATA"])
        return 200, {}, json.dumps({"DATA_TYPE": "task", "task_id": tid, "status": "SUCCEEDED", "is_paused": False,
                                    "bytes_transferred": 10 * n, "files": n})

    def _succeeded(self, req):
        doc = self.tasks[self._task_id(req)]
        data = [{"DATA_TYPE": "successful_transfer", "source_path": i["source_path"], "destination_path": i["destination_path"]}
                for i in doc["DATA"] if i["source_path"] not in self.missing]
        return 200, {}, json.dumps({"DATA_TYPE": "successful_transfers", "marker": 0, "next_marker": None, "DATA": data})

    def _skipped(self, req):
        doc = self.tasks[self._task_id(req)]
        data = [{"DATA_TYPE": "skipped_error_info", "source_path": i["source_path"], "destination_path": i["destination_path"],
                 "error_code": "FILE_NOT_FOUND", "error_details": "No such file or directory", "is_directory": False}
                for i in doc["DATA"] if i["source_path"] in self.missing]
        return 200, {}, json.dumps({"DATA_TYPE": "skipped_errors", "marker": 0, "next_marker": None, "DATA": data})

    def _events(self, req):
        return 200, {}, json.dumps({"DATA_TYPE": "event_list", "offset": 0, "limit": 100, "has_next_page": False, "DATA": []})


class _JsonCallbacks:
    def add_callback(self, method, url, callback):
        responses.add_callback(method, url, callback=callback, content_type="application/json")


def _task_url(suffix: str):
    import re

    return re.compile(re.escape(TRANSFER) + r"/task/[0-9a-f-]+" + re.escape(suffix) + r"(\?.*)?$")


class ThreadCompute:
    """Runs analyses on threads: the compute side is not under test here."""

    slots = 2

    def __init__(self):
        self.pool = ThreadPoolExecutor(2)

    def submit(self, fn, *args, key):
        return self.pool.submit(fn, *args)

    def is_worker_lost(self, exc):
        return False

    def close(self):
        self.pool.shutdown()


@pytest.fixture
def site(tmp_path, monkeypatch):
    monkeypatch.setenv("RTLIB_TEST_AGENT_SECRET", SECRET)
    raw = cfg.default_config(tmp_path / "ws")
    raw["endpoints"]["aps"] = {"kind": "globus", "collection_id": APS, "base_path": "/data/8id", "facility": "aps"}
    raw["endpoints"]["alcf"] |= {"kind": "globus", "collection_id": ALCF, "base_path": "/eagle/rtlib", "data_access": True}
    raw["beamlines"]["aps-demo"]["service_account"] = {"client_id": CLIENT_ID, "secret_env": "RTLIB_TEST_AGENT_SECRET"}
    raw["agent"] = {"poll_s": 0.005, "transfers_in_flight": 1}
    raw["globus"] = {"poll_initial_s": 0.001, "poll_max_s": 0.005, "stall_limit_s": 5, "task_retries": 0, "network_retries": 1}
    settings = cfg.validate(raw)
    cfg.ensure_workspace(settings)
    files = {f"/data/8id/scan/{n}.h5": 100 + i for i, n in enumerate(("a", "b", "c"))}
    fake = FakeGlobus(Path(settings.endpoints["alcf"].root), files)
    responses.start()
    fake.register()
    store = JobStore(settings.store)
    try:
        yield settings, store, fake
    finally:
        store.close() if hasattr(store, "close") else None
        responses.stop()
        responses.reset()


def run_agent(settings, store, *, until, timeout_s: float = 20.0) -> None:
    backend = make_transfer_backend(settings)
    assert isinstance(backend, RoutingTransferBackend)
    backend.globus = make_globus_backend(settings, retry_config=RetryConfig(max_retries=1, backoff=lambda ctx: 0.0))
    compute = ThreadCompute()
    agent = Agent(settings, store, backend, compute)
    deadline = time.monotonic() + timeout_s
    try:
        while not until() and time.monotonic() < deadline:
            if not agent.step():
                time.sleep(0.005)
    finally:
        agent.close()
        compute.close()
    assert until(), [(j.id, j.state, j.error) for j in store.list_jobs()]


def submit(settings, store, name: str) -> int:
    return jobops.submit(store, settings, "noop", source_endpoint="aps", inputs=[f"scan/{name}.h5"], beamline="aps-demo")


def settled(store, ids):
    return lambda: all(store.get_job(i).state in (State.DONE, State.FAILED) for i in ids)


def test_jobs_share_one_task_each_file_maps_back_to_its_job(site, caplog):
    settings, store, fake = site
    caplog.set_level(logging.DEBUG)
    logging.getLogger("globus_sdk").setLevel(logging.DEBUG)
    fake.missing = {"/data/8id/scan/c.h5"}
    fake.files["/data/8id/scan/c.h5"] = 5  # listed, but gone by the time Globus reads it
    ids = [submit(settings, store, n) for n in ("a", "b", "c")]
    run_agent(settings, store, until=settled(store, ids))

    a, b, c = (store.get_job(i) for i in ids)
    assert (a.state, b.state, c.state) == (State.DONE, State.DONE, State.FAILED)
    assert "FILE_NOT_FOUND" in c.error and "aps:/data/8id/scan/c.h5" in c.error
    stage_in = [t for t in fake.tasks.values() if t["destination_endpoint"] == ALCF]
    assert len(stage_in) == 1 and len(stage_in[0]["DATA"]) == 3  # three jobs' inputs in one Globus task
    assert all(t["sync_level"] == 3 and t["verify_checksum"] for t in fake.tasks.values())
    results_home = [t for t in fake.tasks.values() if t["destination_endpoint"] == APS]
    assert results_home and all(i["destination_path"].startswith("/data/8id/results/noop/job-") for t in results_home for i in t["DATA"])

    # the known secret is nowhere: log records, job rows, events, items, the database file, the token cache
    texts = [caplog.text] + [r.getMessage() for r in caplog.records]
    for job in store.list_jobs():
        texts.append(repr(job))
        texts += [repr(e) for e in store.events(job.id)] + [repr(i) for i in store.items(job.id)]
    db = Path(settings.workspace / "rtlib.db")
    blobs = [p.read_bytes() for p in db.parent.glob("rtlib.db*")] + [(settings.workspace / "globus-tokens.json").read_bytes()]
    assert any(r.name.startswith("globus_sdk") for r in caplog.records)
    assert not [t for t in texts if SECRET in t]
    assert not [b for b in blobs if SECRET.encode() in b]
    assert oct((settings.workspace / "globus-tokens.json").stat().st_mode & 0o777) == "0o600"


def test_consent_required_fails_the_job_with_scopes_and_command(site):
    settings, store, fake = site
    scope = f"urn:globus:auth:scope:transfer.api.globus.org:all[*https://auth.globus.org/scopes/{ALCF}/data_access]"
    fake.submit_error = (403, {"code": "ConsentRequired", "message": "Missing required data_access consent", "required_scopes": [scope]})
    [jid] = [submit(settings, store, "a")]
    run_agent(settings, store, until=settled(store, [jid]))
    job = store.get_job(jid)
    assert job.state == State.FAILED and scope in job.error and "data_access = true" in job.error
    assert [str(e.to_state) for e in store.events(jid)][-2:] == [str(State.STAGING_IN), str(State.FAILED)]
    assert store.items(jid)[0].state == "failed" and scope in store.items(jid)[0].error


def test_missing_input_path_fails_the_job_naming_the_path(site):
    settings, store, fake = site
    jid = submit(settings, store, "nope")
    run_agent(settings, store, until=settled(store, [jid]))
    job = store.get_job(jid)
    assert job.state == State.FAILED and "scan/nope.h5" in job.error and "/data/8id/scan/nope.h5" in job.error
    assert not fake.tasks


def test_permission_denied_fails_the_job_naming_the_identity(site):
    settings, store, fake = site
    fake.submit_error = (403, {"code": "PermissionDenied", "message": "No write permission on /eagle/rtlib", "request_id": "x"})
    jid = submit(settings, store, "b")
    run_agent(settings, store, until=settled(store, [jid]))
    job = store.get_job(jid)
    assert job.state == State.FAILED and "permission denied" in job.error and CLIENT_ID in job.error and "aps-demo" in job.error
