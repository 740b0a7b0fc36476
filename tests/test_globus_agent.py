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
    """Just enough of Globus Transfer: tasks succeed at once, except for files listed in `missing`.

    stall_tasks: the first N tasks submitted stay paused with no progress (and deliver nothing)
    until cancelled. expire_first_token_at: a Transfer path fragment (e.g. "/task/"); from the first
    call to such a path on, the first access token issued is rejected with 401, as an expired one is.
    """

    def __init__(self, scratch_root: Path, files: dict[str, int]):
        self.scratch_root = scratch_root
        self.files = files  # absolute path on the aps collection -> size
        self.missing: set[str] = set()
        self.submit_error: tuple[int, dict] | None = None
        self.tasks: dict[str, dict] = {}
        self.tokens: list[str] = []  # every access token issued, in order
        self.stall_tasks = 0
        self.stalled: set[str] = set()
        self.cancelled: list[str] = []
        self.expire_first_token_at: str | None = None
        self.rejected: list[str] = []  # "METHOD path" of each call refused for an expired token
        self.expired: str | None = None

    @property
    def tokens_issued(self) -> int:
        return len(self.tokens)

    def register(self) -> None:
        r = _JsonCallbacks()
        r.add_callback("POST", AUTH, callback=self._token)
        r.add_callback("GET", f"{TRANSFER}/submission_id", callback=self._authed(lambda req: (200, {}, json.dumps({"value": str(uuid.uuid4())}))))
        r.add_callback("POST", f"{TRANSFER}/transfer", callback=self._authed(self._submit))
        r.add_callback("GET", f"{TRANSFER}/operation/endpoint/{APS}/stat", callback=self._authed(self._stat))
        for suffix, fn in (("/successful_transfers", self._succeeded), ("/skipped_errors", self._skipped), ("/event_list", self._events)):
            r.add_callback("GET", _task_url(suffix), callback=self._authed(fn))
        r.add_callback("POST", _task_url("/cancel"), callback=self._authed(self._cancel))
        r.add_callback("GET", _task_url(""), callback=self._authed(self._task))

    def _authed(self, fn):
        """Refuse the first token once it has 'expired' (see expire_first_token_at), like Transfer does."""
        def callback(req):
            path = urlparse(req.url).path
            if self.expire_first_token_at and self.expire_first_token_at in path:
                self.expire_first_token_at, self.expired = None, self.tokens[0]
            if self.expired and req.headers.get("Authorization") == f"Bearer {self.expired}":
                self.rejected.append(f"{req.method} {path}")
                return 401, {}, json.dumps({"code": "AuthenticationFailed", "message": "Token is not active", "request_id": "x"})
            return fn(req)
        return callback

    def _token(self, req):
        token = f"AgTok{len(self.tokens) + 1}-{uuid.uuid4().hex}"  # long and unique: a leak would be found
        self.tokens.append(token)
        return 200, {}, json.dumps({"access_token": token, "expires_in": 172800, "token_type": "Bearer",
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
        if self.stall_tasks > 0:  # paused at once: nothing arrives
            self.stall_tasks -= 1
            self.stalled.add(task_id)
            return 202, {}, json.dumps({"DATA_TYPE": "transfer_result", "code": "Accepted", "task_id": task_id, "submission_id": doc["submission_id"]})
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
        if tid in self.stalled:
            status = "FAILED" if tid in self.cancelled else "ACTIVE"
            return 200, {}, json.dumps({"DATA_TYPE": "task", "task_id": tid, "status": status, "is_paused": True,
                                        "nice_status": "PAUSED", "bytes_transferred": 0, "files": n})
        return 200, {}, json.dumps({"DATA_TYPE": "task", "task_id": tid, "status": "SUCCEEDED", "is_paused": False,
                                    "bytes_transferred": 10 * n, "files": n})

    def _cancel(self, req):
        self.cancelled.append(self._task_id(req))
        return 200, {}, json.dumps({"DATA_TYPE": "result", "code": "Canceled", "message": "The task has been cancelled."})

    def _succeeded(self, req):
        tid = self._task_id(req)
        doc = self.tasks[tid]
        data = [{"DATA_TYPE": "successful_transfer", "source_path": i["source_path"], "destination_path": i["destination_path"]}
                for i in doc["DATA"] if i["source_path"] not in self.missing and tid not in self.stalled]
        return 200, {}, json.dumps({"DATA_TYPE": "successful_transfers", "marker": 0, "next_marker": None, "DATA": data})

    def _skipped(self, req):
        doc = self.tasks[self._task_id(req)]
        data = [{"DATA_TYPE": "skipped_error_info", "source_path": i["source_path"], "destination_path": i["destination_path"],
                 "error_code": "FILE_NOT_FOUND", "error_details": "No such file or directory", "is_directory": False}
                for i in doc["DATA"] if i["source_path"] in self.missing]
        return 200, {}, json.dumps({"DATA_TYPE": "skipped_errors", "marker": 0, "next_marker": None, "DATA": data})

    def _events(self, req):
        data = []
        if self._task_id(req) in self.stalled:
            data = [{"DATA_TYPE": "event", "code": "PAUSED", "is_error": True, "time": "2024-05-01 10:00:00+00:00",
                     "description": "paused by the collection administrator", "details": "pause rule 7: maintenance on /data/8id"}]
        return 200, {}, json.dumps({"DATA_TYPE": "event_list", "offset": 0, "limit": 100, "has_next_page": False, "DATA": data})


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


def run_agent(settings, store, *, until, timeout_s: float = 20.0, **globus_overrides) -> None:
    backend = make_transfer_backend(settings)
    assert isinstance(backend, RoutingTransferBackend)
    backend.globus = make_globus_backend(settings, retry_config=RetryConfig(max_retries=1, backoff=lambda ctx: 0.0), **globus_overrides)
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
    capture_all_logging(caplog)
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

    # the known secret and every access token are nowhere: log records, job rows, events, items, the database file
    assert_nowhere(settings, store, caplog, [SECRET, *fake.tokens])
    assert SECRET.encode() not in (settings.workspace / "globus-tokens.json").read_bytes()
    assert oct((settings.workspace / "globus-tokens.json").stat().st_mode & 0o777) == "0o600"


def capture_all_logging(caplog) -> None:
    caplog.set_level(logging.DEBUG)
    for name in ("", "globus_sdk", "rtlib", "urllib3"):
        logging.getLogger(name).setLevel(logging.DEBUG)


def assert_nowhere(settings, store, caplog, secrets: list[str]) -> None:
    """None of `secrets` in any log record (globus-sdk's DEBUG log included), job row, event, item or database file."""
    assert len(secrets) >= 2 and all(len(x) > 20 for x in secrets)  # the secret and at least one token, none trivially short
    assert any(r.name.startswith("globus_sdk") for r in caplog.records)  # the SDK's debug log was captured
    texts = [caplog.text] + [r.getMessage() for r in caplog.records] + [str(r.args) for r in caplog.records]
    for job in store.list_jobs():
        texts.append(repr(job))
        texts += [repr(e) for e in store.events(job.id)] + [repr(i) for i in store.items(job.id)]
    blobs = [p.read_bytes() for p in Path(settings.workspace).glob("rtlib.db*")]
    assert blobs and len(texts) > 10
    for secret in secrets:
        assert not [t for t in texts if secret in t], f"{secret[:6]}... leaked into a log record or the job store"
        assert not [b for b in blobs if secret.encode() in b], f"{secret[:6]}... is in the database file"


@pytest.mark.parametrize("marked", [True, False], ids=["data_access-set", "data_access-unset"])
def test_consent_required_fails_the_job_with_scopes_and_what_to_run(site, marked):
    settings, store, fake = site
    settings.endpoints["alcf"].data_access = marked
    scope = f"urn:globus:auth:scope:transfer.api.globus.org:all[*https://auth.globus.org/scopes/{ALCF}/data_access]"
    fake.submit_error = (403, {"code": "ConsentRequired", "message": "Missing required data_access consent", "required_scopes": [scope]})
    [jid] = [submit(settings, store, "a")]
    run_agent(settings, store, until=settled(store, [jid]))
    job = store.get_job(jid)
    assert job.state == State.FAILED
    assert f"consent to the scope(s) {scope}. To consent: " in job.error
    if marked:  # the token already asks for the scope: the collection must let the client identity in
        assert f"ask the administrator of alcf ({ALCF}) to let the client identity {CLIENT_ID}@clients.auth.globus.org" in job.error
    else:  # the config key whose setting makes the next token carry the scope
        assert f"set `data_access = true` under [endpoints.alcf] (collection {ALCF}) in the site config" in job.error
    assert "re-check with `rtlib transfer --beamline aps-demo aps:PATH alcf:DIR/`" in job.error
    assert "then `rtlib retry JOB_ID` for each failed job" in job.error
    assert [str(e.to_state) for e in store.events(jid)][-2:] == [str(State.STAGING_IN), str(State.FAILED)]
    assert store.items(jid)[0].state == "failed" and scope in store.items(jid)[0].error


def test_collection_not_found_on_submit_fails_naming_the_collection_and_files(site):
    settings, store, fake = site
    fake.submit_error = (404, {"code": "EndpointNotFound", "message": f"No such endpoint or collection: {ALCF}", "request_id": "x"})
    ids = [submit(settings, store, n) for n in ("a", "b")]
    run_agent(settings, store, until=settled(store, ids))
    for jid, name in zip(ids, ("a", "b")):
        job = store.get_job(jid)
        assert job.state == State.FAILED and "not found" in job.error and "EndpointNotFound" in job.error
        assert f"to alcf ({ALCF})" in job.error and "collection_id" in job.error
        assert f"(file aps:/data/8id/scan/{name}.h5 -> alcf:/eagle/rtlib/jobs/" in job.error  # each job names its own file
    assert not fake.tasks


def test_expired_token_is_renewed_once_and_the_job_finishes(site, caplog):
    settings, store, fake = site
    capture_all_logging(caplog)
    fake.expire_first_token_at = "/task/"  # the token dies while the stage-in task is being watched
    [jid] = [submit(settings, store, "a")]
    run_agent(settings, store, until=settled(store, [jid]))
    job = store.get_job(jid)
    assert job.state == State.DONE, job.error
    assert fake.rejected and fake.rejected[0].startswith("GET /v0.10/task/")
    assert fake.tokens_issued == 2  # the first grant, and exactly one renewal
    cached = json.loads((settings.workspace / "globus-tokens.json").read_text())
    assert [v["access_token"] for v in cached.values()] == [fake.tokens[1]]  # the renewed token replaced the dead one
    assert_nowhere(settings, store, caplog, [SECRET, *fake.tokens])


def test_stalled_task_is_cancelled_and_retried_and_the_job_finishes(site):
    settings, store, fake = site
    settings.globus.stall_limit_s, settings.globus.task_retries = 0.05, 1
    fake.stall_tasks = 1
    [jid] = [submit(settings, store, "a")]
    run_agent(settings, store, until=settled(store, [jid]))
    job = store.get_job(jid)
    assert job.state == State.DONE, job.error
    stage_in = [t for t, doc in fake.tasks.items() if doc["destination_endpoint"] == ALCF]
    assert len(stage_in) == 2 and fake.cancelled == [stage_in[0]]  # the stalled one cancelled, the retry not
    [item] = store.items(jid, direction="in")
    assert item.state == "done" and item.attempts == 2


def test_stalled_task_past_its_retries_fails_the_job_with_the_event_text(site):
    settings, store, fake = site
    settings.globus.stall_limit_s, settings.globus.task_retries = 0.05, 1
    fake.stall_tasks = 10
    [jid] = [submit(settings, store, "a")]
    run_agent(settings, store, until=settled(store, [jid]))
    job = store.get_job(jid)
    assert job.state == State.FAILED
    assert "gave up after 2 Globus task(s)" in job.error and "paused for" in job.error and "was cancelled" in job.error
    assert "PAUSED: paused by the collection administrator; pause rule 7: maintenance on /data/8id" in job.error
    assert len(fake.cancelled) == 2 and len(fake.tasks) == 2
    assert [str(e.to_state) for e in store.events(jid)][-2:] == [str(State.STAGING_IN), str(State.FAILED)]


def test_a_batch_of_jobs_split_by_bytes_into_tasks_maps_each_file_to_its_job(site):
    settings, store, fake = site
    names = ("a", "b", "c", "d")
    fake.files.update({f"/data/8id/scan/{n}.h5": 100 + i for i, n in enumerate(names)})  # 100, 101, 102, 103 bytes
    ids = [submit(settings, store, n) for n in names]
    run_agent(settings, store, until=settled(store, ids), batch_bytes=210)  # two files per Globus task
    assert [store.get_job(i).state for i in ids] == [State.DONE] * 4, [store.get_job(i).error for i in ids]
    stage_in = [doc for doc in fake.tasks.values() if doc["destination_endpoint"] == ALCF]
    sizes = [[fake.files[d["source_path"]] for d in doc["DATA"]] for doc in stage_in]
    assert sizes == [[100, 101], [102, 103]]  # one batch of four jobs' inputs, split by bytes into two Globus tasks
    scratch = Path(settings.endpoints["alcf"].root)
    for jid, name in zip(ids, names):
        [item] = store.items(jid, direction="in")
        assert item.state == "done" and item.src_path == f"scan/{name}.h5"
        assert f"{jid:08d}" in item.dst_path  # into this job's own directory
        assert (scratch / item.dst_path).stat().st_size == fake.files[f"/data/8id/scan/{name}.h5"]


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


def test_each_job_moves_its_files_as_its_own_beamline_service_account(site, monkeypatch):
    settings, store, fake = site
    other = "0d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6"
    monkeypatch.setenv("RTLIB_TEST_AGENT_SECRET_9ID", SECRET + "-9id")
    # a second APS beamline on the same collection, with its own service account
    settings.beamlines["aps-9id"] = cfg.Beamline(facility="aps", endpoint="aps", allowed_endpoints=["aps", "alcf"], account="rtlib::aps",
                                                service_account=cfg.ServiceAccount(client_id=other, secret_env="RTLIB_TEST_AGENT_SECRET_9ID"))
    grants = []
    original = fake._token

    def token(req):
        from base64 import b64decode

        grants.append(b64decode(req.headers["Authorization"].split()[1]).decode().split(":")[0])
        return original(req)

    fake._token = token
    responses.reset()
    fake.register()
    a = submit(settings, store, "a")
    b = jobops.submit(store, settings, "noop", source_endpoint="aps", inputs=["scan/b.h5"], beamline="aps-9id")
    run_agent(settings, store, until=settled(store, [a, b]))
    assert [store.get_job(i).state for i in (a, b)] == [State.DONE, State.DONE]
    assert sorted(set(grants)) == sorted({CLIENT_ID, other})
    token_of = dict(zip(fake.tokens, grants))  # access token -> the client it was issued to
    stage_in = [(c.request.headers["Authorization"].split()[1], [d["source_path"] for d in json.loads(c.request.body)["DATA"]])
                for c in responses.calls if c.request.method == "POST" and c.request.url.endswith("/v0.10/transfer")
                and json.loads(c.request.body)["destination_endpoint"] == ALCF]
    assert sorted((token_of[t], paths) for t, paths in stage_in) == sorted(
        [(CLIENT_ID, ["/data/8id/scan/a.h5"]), (other, ["/data/8id/scan/b.h5"])])  # one task per beamline, each as its own client
