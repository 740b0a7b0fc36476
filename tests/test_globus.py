"""The Globus backend, driven through globus-sdk's real TransferClient against registered responses.

No network: `responses` (via globus_sdk.testing) answers every HTTP call with
payloads shaped like the Transfer and Auth APIs' documented ones. Poll and
stall limits are milliseconds so the whole file runs in seconds.
"""

from __future__ import annotations

import json
import logging
import uuid
from base64 import b64encode
from urllib.parse import unquote

import pytest
import responses
from globus_sdk.testing import RegisteredResponse
from globus_sdk.transport import RetryConfig

from rtlib import config as cfg
from rtlib.errors import PathOutsideRoot
from rtlib.transfer.base import TransferRequest
from rtlib.transfer.batching import plan_batches, plan_by_count, summarize
from rtlib.transfer.globus import GlobusEndpoint, GlobusTransferBackend
from rtlib.transfer.identity import ServiceAccountIdentity, TokenCache

SRC_COLL = "6c54cade-bde5-45c1-bdea-f4bd71dba2cc"
DST_COLL = "1c6c2a8c-9d4a-4a55-8d9a-3e1f3b8b7a10"
CLIENT_ID = "9f3a0b8e-58b2-4a5c-9a1e-0f4f4c2b7d11"
SECRET = "s3cr3t-Zq9v!known-to-the-test"
GB = 10**9


# -- registered responses --------------------------------------------------------------------
def add_token(token: str, expires_in: int = 172800) -> None:
    RegisteredResponse(
        service="auth", method="POST", path="/v2/oauth2/token",
        json={"access_token": token, "scope": "urn:globus:auth:scope:transfer.api.globus.org:all", "expires_in": expires_in,
              "token_type": "Bearer", "resource_server": "transfer.api.globus.org", "other_tokens": []},
    ).add()


def add_submission_id() -> None:
    RegisteredResponse(service="transfer", path="/v0.10/submission_id", json={"value": str(uuid.uuid4())}).add()


def add_submit(task_id: str) -> None:
    RegisteredResponse(
        service="transfer", method="POST", path="/v0.10/transfer",
        json={"DATA_TYPE": "transfer_result", "code": "Accepted", "message": "The transfer has been accepted", "task_id": task_id,
              "submission_id": str(uuid.uuid4()), "request_id": "abc", "resource": "/v0.10/transfer"},
    ).add()


def add_error(method: str, path: str, status: int, code: str, message: str, **extra) -> None:
    RegisteredResponse(service="transfer", method=method, path=path, status=status,
                       json={"code": code, "message": message, "request_id": "r1", "resource": path, **extra}).add()


def add_task(task_id: str, status: str, *, bytes_transferred: int = 0, is_paused: bool = False, nice_status: str | None = None) -> None:
    RegisteredResponse(
        service="transfer", path=f"/v0.10/task/{task_id}",
        json={"DATA_TYPE": "task", "task_id": task_id, "type": "TRANSFER", "status": status, "nice_status": nice_status,
              "is_paused": is_paused, "bytes_transferred": bytes_transferred, "files": 0, "files_transferred": 0,
              "source_endpoint_id": SRC_COLL, "destination_endpoint_id": DST_COLL, "sync_level": 3, "verify_checksum": True},
    ).add()


def add_results(task_id: str, done: list[tuple[str, str]], skipped: list[dict] = ()) -> None:
    RegisteredResponse(
        service="transfer", path=f"/v0.10/task/{task_id}/successful_transfers",
        json={"DATA_TYPE": "successful_transfers", "marker": 0, "next_marker": None,
              "DATA": [{"DATA_TYPE": "successful_transfer", "source_path": s, "destination_path": d} for s, d in done]},
    ).add()
    RegisteredResponse(
        service="transfer", path=f"/v0.10/task/{task_id}/skipped_errors",
        json={"DATA_TYPE": "skipped_errors", "marker": 0, "next_marker": None,
              "DATA": [{"DATA_TYPE": "skipped_error_info", "is_directory": False, **e} for e in skipped]},
    ).add()


def add_events(task_id: str, events: list[dict]) -> None:
    RegisteredResponse(
        service="transfer", path=f"/v0.10/task/{task_id}/event_list",
        json={"DATA_TYPE": "event_list", "offset": 0, "limit": 100, "has_next_page": False, "total": len(events),
              "DATA": [{"DATA_TYPE": "event", "time": "2024-05-01 10:00:00+00:00", "is_error": True, **e} for e in events]},
    ).add()


def add_cancel(task_id: str) -> None:
    RegisteredResponse(service="transfer", method="POST", path=f"/v0.10/task/{task_id}/cancel",
                       json={"DATA_TYPE": "result", "code": "Canceled", "message": "The task has been cancelled."}).add()


def calls(method: str, suffix: str) -> list:
    return [c for c in responses.calls if c.request.method == method and c.request.url.split("?")[0].endswith(suffix)]


# -- fixtures ---------------------------------------------------------------------------------
@pytest.fixture
def mocked():
    responses.start()
    try:
        yield
    finally:
        responses.stop()
        responses.reset()


@pytest.fixture
def identity(tmp_path, monkeypatch):
    monkeypatch.setenv("RTLIB_TEST_GLOBUS_SECRET", SECRET)
    account = cfg.ServiceAccount(client_id=CLIENT_ID, secret_env="RTLIB_TEST_GLOBUS_SECRET")
    return ServiceAccountIdentity("8id", account, token_cache=TokenCache(tmp_path / "tokens.json"), data_access=[DST_COLL])


def make_backend(identity, **kw) -> GlobusTransferBackend:
    opts = dict(poll_initial_s=0.001, poll_max_s=0.005, stall_limit_s=5.0, task_retries=1, network_retries=2, backoff_s=0.001, max_backoff_s=0.002)
    opts.update(kw)
    return GlobusTransferBackend(
        {"aps": GlobusEndpoint("aps", SRC_COLL, "/data/8id"), "alcf": GlobusEndpoint("alcf", DST_COLL, "/eagle/rtlib")},
        lambda src, dst: identity,
        retry_config=RetryConfig(max_retries=1, backoff=lambda ctx: 0.0),
        **opts,
    )


def req(i: int, name: str, size: int = 1000) -> TransferRequest:
    return TransferRequest(i, "aps", f"scan/{name}", "alcf", f"jobs/1/in/{name}", size)


def src(name: str) -> str:
    return f"/data/8id/scan/{name}"


def dst(name: str) -> str:
    return f"/eagle/rtlib/jobs/1/in/{name}"


# -- batching ---------------------------------------------------------------------------------
def test_planner_fills_tasks_by_bytes_and_never_past_the_item_cap():
    sizes = [6 * GB, 6 * GB, 6 * GB, 1, 1, 1, 1, 40 * GB, 6 * GB]
    batches = plan_batches(list(enumerate(sizes)), lambda x: x[1], max_bytes=15 * GB, max_items=3)
    assert [[i for i, _ in b.items] for b in batches] == [[0, 1], [2, 3, 4], [5, 6, 8], [7]]
    assert all(b.total_bytes <= 15 * GB for b in batches if len(b) > 1)
    assert max(len(b) for b in batches) <= 3


def test_planner_keeps_endpoint_pairs_apart_and_count_rule_ignores_size():
    items = [("a", 1), ("b", 1), ("a", 1)]
    batches = plan_batches(items, lambda x: x[1], key=lambda x: x[0])
    assert [(b.key, len(b)) for b in batches] == [("a", 2), ("b", 1)]
    counted = plan_by_count([10 * GB] * 250, lambda s: s, per_batch=100)
    assert [len(b) for b in counted] == [100, 100, 50] and summarize(counted)["max_bytes"] == 1000 * GB


def test_batch_is_split_by_bytes_into_tasks_with_checksum_sync(mocked, identity):
    add_token("tok-1")
    add_submission_id()
    for t in ("task-a", "task-b"):
        add_submit(t)
    add_task("task-a", "SUCCEEDED", bytes_transferred=2 * 8 * GB)
    add_task("task-b", "SUCCEEDED", bytes_transferred=8 * GB)
    add_results("task-a", [(src("f0"), dst("f0")), (src("f1"), dst("f1"))])
    add_results("task-b", [(src("f2"), dst("f2"))])
    backend = make_backend(identity, batch_bytes=16 * GB)
    seen, moved = [], []
    out = backend.transfer_batch([req(i, f"f{i}", 8 * GB) for i in range(3)], moved.append, on_outcome=seen.append)

    submitted = [json.loads(c.request.body) for c in calls("POST", "/v0.10/transfer")]
    assert [[d["source_path"] for d in s["DATA"]] for s in submitted] == [[src("f0"), src("f1")], [src("f2")]]
    assert all(s["sync_level"] == 3 and s["verify_checksum"] is True for s in submitted)  # 3: checksum
    assert {s["source_endpoint"] for s in submitted} == {SRC_COLL} and {s["destination_endpoint"] for s in submitted} == {DST_COLL}
    assert [o.ok for o in out] == [True, True, True] and sorted(o.item_id for o in seen) == [0, 1, 2]
    assert sum(moved) == 3 * 8 * GB
    # the service account authenticated once, and asked for the mapped collection's data_access scope
    token_calls = calls("POST", "/v2/oauth2/token")
    assert len(token_calls) == 1 and f"{DST_COLL}/data_access" in unquote(token_calls[0].request.body)


def test_partial_failure_maps_each_file_to_its_own_outcome(mocked, identity):
    add_token("tok-1")
    add_submission_id()
    add_submit("task-p")
    add_task("task-p", "SUCCEEDED")
    add_results("task-p", [(src("ok"), dst("ok"))], skipped=[
        {"source_path": src("gone"), "destination_path": dst("gone"), "error_code": "FILE_NOT_FOUND",
         "error_details": "No such file or directory"},
    ])
    add_events("task-p", [])
    add_submit("task-p2")  # the unaccounted file is resubmitted once
    add_task("task-p2", "FAILED", nice_status="FILE_SIZE_CHANGED")
    add_results("task-p2", [])
    backend = make_backend(identity)
    out = backend.transfer_batch([req(1, "ok"), req(2, "gone"), req(3, "odd")])
    ok, gone, odd = out
    assert ok.ok and ok.bytes == 1000
    assert not gone.ok and gone.permanent and "FILE_NOT_FOUND" in gone.error and src("gone") in gone.error
    assert not odd.ok and not odd.permanent and "gave up after 2 Globus task(s)" in odd.error and "task-p2" in odd.error


@pytest.mark.parametrize("requested", [False, True], ids=["scope-not-requested", "scope-requested"])
def test_consent_required_names_the_scopes_and_what_to_do(mocked, tmp_path, monkeypatch, requested):
    monkeypatch.setenv("RTLIB_TEST_GLOBUS_SECRET", SECRET)
    account = cfg.ServiceAccount(client_id=CLIENT_ID, secret_env="RTLIB_TEST_GLOBUS_SECRET")
    ident = ServiceAccountIdentity("8id", account, token_cache=TokenCache(tmp_path / "tokens.json"),
                                   data_access=[DST_COLL] if requested else [],
                                   collection_names={SRC_COLL: "aps", DST_COLL: "alcf"}, own_endpoint="aps")
    add_token("tok-1")
    add_submission_id()
    scope = f"urn:globus:auth:scope:transfer.api.globus.org:all[*https://auth.globus.org/scopes/{DST_COLL}/data_access]"
    add_error("POST", "/v0.10/transfer", 403, "ConsentRequired", "Missing required data_access consent", required_scopes=[scope])
    [out] = make_backend(ident).transfer_batch([req(1, "a")])
    assert not out.ok and out.permanent
    assert f"consent to the scope(s) {scope}. To consent: " in out.error and CLIENT_ID in out.error
    if requested:  # the client already asks for it: only the collection's administrator can let it in
        assert "set `data_access = true`" not in out.error
        assert f"let the client identity {CLIENT_ID}@clients.auth.globus.org use the collection" in out.error
        assert f"alcf ({DST_COLL})" in out.error
    else:  # the exact config key that makes the next token carry the scope
        assert f"set `data_access = true` under [endpoints.alcf] (collection {DST_COLL}) in the site config" in out.error
    # and the command that re-checks, then the one that restarts the jobs
    assert "re-check with `rtlib transfer --beamline 8id aps:PATH alcf:DIR/`" in out.error and "`rtlib retry JOB_ID`" in out.error
    assert f"(file aps:{src('a')} -> alcf:{dst('a')})" in out.error


def test_path_not_found_and_permission_denied_fail_with_path_and_identity(mocked, identity):
    add_token("tok-1")
    add_error("GET", f"/v0.10/operation/endpoint/{SRC_COLL}/stat", 404, "ClientError.NotFound", f"Path {src('missing')} not found")
    backend = make_backend(identity)
    from rtlib.errors import InputDataError

    with pytest.raises(InputDataError, match="scan/missing") as err:
        backend.list_files("aps", "scan/missing")
    assert src("missing") in str(err.value)

    add_submission_id()
    add_error("POST", "/v0.10/transfer", 403, "PermissionDenied", "No permission on the destination path")
    [out] = backend.transfer_batch([req(1, "a")])
    assert not out.ok and out.permanent and "permission denied" in out.error and CLIENT_ID in out.error and "'8id'" in out.error


def test_paths_outside_base_path_are_refused_before_any_call(mocked, identity):
    backend = make_backend(identity)
    with pytest.raises(PathOutsideRoot, match="base_path /data/8id"):
        backend.globus_path("aps", "../../etc/passwd")
    [out] = backend.transfer_batch([TransferRequest(1, "aps", "/etc/passwd", "alcf", "x", 1)])
    assert out.permanent and "outside the endpoint's base_path" in out.error
    assert len(responses.calls) == 0


def test_expired_token_is_renewed_once_then_succeeds(mocked, identity, tmp_path):
    identity.token_cache.put(identity.cache_key, "tok-stale", 2**31)  # cached, looks valid, but revoked
    add_token("tok-fresh")
    add_error("GET", "/v0.10/submission_id", 401, "AuthenticationFailed", "Token is not active")
    add_submission_id()
    add_submit("task-t")
    add_task("task-t", "SUCCEEDED")
    add_results("task-t", [(src("a"), dst("a"))])
    [out] = make_backend(identity).transfer_batch([req(1, "a")])
    assert out.ok
    auths = [c.request.headers["Authorization"] for c in calls("GET", "/v0.10/submission_id")]
    assert auths == ["Bearer tok-stale", "Bearer tok-fresh"]
    assert len(calls("POST", "/v2/oauth2/token")) == 1
    assert identity.token_cache.get(identity.cache_key)[0] == "tok-fresh"  # the renewed token was cached


def test_token_rejected_after_reauth_fails_clearly(mocked, identity):
    add_token("tok-1")
    add_error("GET", "/v0.10/submission_id", 401, "AuthenticationFailed", "Token is not active")
    [out] = make_backend(identity).transfer_batch([req(1, "a")])
    assert not out.ok and out.permanent
    assert "even after re-authenticating once" in out.error and CLIENT_ID in out.error
    assert len(calls("POST", "/v2/oauth2/token")) == 2  # the first token, and exactly one renewal


def test_stalled_task_is_cancelled_and_retried_then_succeeds(mocked, identity):
    add_token("tok-1")
    add_submission_id()
    add_submit("task-s1")
    add_submit("task-s2")
    add_task("task-s1", "ACTIVE", is_paused=True)
    add_cancel("task-s1")
    add_results("task-s1", [(src("a"), dst("a"))])  # one file had arrived before the stall
    add_events("task-s1", [{"code": "PAUSED", "description": "paused by an administrator", "details": "pause rule 12"}])
    add_task("task-s2", "SUCCEEDED")
    add_results("task-s2", [(src("b"), dst("b"))])
    out = make_backend(identity, stall_limit_s=0.02).transfer_batch([req(1, "a"), req(2, "b")])
    assert [o.ok for o in out] == [True, True] and out[1].attempts == 2
    assert len(calls("POST", "/v0.10/task/task-s1/cancel")) == 1
    resubmitted = json.loads(calls("POST", "/v0.10/transfer")[1].request.body)
    assert [d["source_path"] for d in resubmitted["DATA"]] == [src("b")]


def test_stalled_task_past_its_retries_fails_with_the_event_text(mocked, identity):
    add_token("tok-1")
    add_submission_id()
    add_submit("task-x")
    add_task("task-x", "INACTIVE")
    add_cancel("task-x")
    add_results("task-x", [])
    add_events("task-x", [{"code": "CONNECTION_RESET", "description": "connection reset", "details": "peer reset by gridftp"}])
    [out] = make_backend(identity, stall_limit_s=0.01, task_retries=0).transfer_batch([req(1, "a")])
    assert not out.ok and not out.permanent
    assert "inactive" in out.error and "was cancelled" in out.error and "CONNECTION_RESET" in out.error and "peer reset" in out.error


def test_network_errors_are_retried_with_backoff_then_fail(mocked, identity):
    import requests

    add_token("tok-1")
    RegisteredResponse(service="transfer", path="/v0.10/submission_id", body=requests.ConnectionError("link down")).add()
    add_submission_id()
    add_submit("task-n")
    add_task("task-n", "SUCCEEDED")
    add_results("task-n", [(src("a"), dst("a"))])
    [out] = make_backend(identity).transfer_batch([req(1, "a")])
    assert out.ok

    responses.reset()
    RegisteredResponse(service="transfer", path="/v0.10/submission_id", body=requests.ConnectionError("link down")).add()
    [out] = make_backend(identity).transfer_batch([req(2, "a")])
    assert not out.ok and not out.permanent and "network error" in out.error and "gave up after 3 attempts" in out.error


def test_tasks_in_flight_are_bounded(mocked, identity):
    add_token("tok-1")
    add_submission_id()
    for i in range(4):
        add_submit(f"task-{i}")
        add_task(f"task-{i}", "SUCCEEDED")
        add_results(f"task-{i}", [(src(f"f{i}"), dst(f"f{i}"))])
    backend = make_backend(identity, batch_bytes=1000, tasks_in_flight=1)
    out = backend.transfer_batch([req(i, f"f{i}") for i in range(4)])
    assert all(o.ok for o in out)
    order = [(c.request.method, c.request.url.split("/v0.10/")[-1].split("?")[0]) for c in responses.calls if "/task/" in c.request.url or c.request.url.endswith("/transfer")]
    # with one slot, each task is polled to its end before the next is submitted
    submits = [i for i, (m, u) in enumerate(order) if m == "POST" and u == "transfer"]
    polls_of_first = [i for i, (m, u) in enumerate(order) if u == "task/task-0"]
    assert polls_of_first and max(polls_of_first) < submits[1]


def _ls_page(path: str, entries: list[tuple[str, str, int]], *, offset: int, limit: int, total: int) -> None:
    RegisteredResponse(service="transfer", path=f"/v0.10/operation/endpoint/{SRC_COLL}/ls",
                       json={"DATA_TYPE": "file_list", "path": path, "offset": offset, "limit": limit, "total": total,
                             "length": len(entries), "DATA": [{"DATA_TYPE": "file", "name": n, "type": t, "size": sz}
                                                              for n, t, sz in entries]}).add()


def test_list_files_walks_a_directory_following_every_page(mocked, identity):
    from urllib.parse import parse_qs, urlparse

    add_token("tok-1")
    RegisteredResponse(service="transfer", path=f"/v0.10/operation/endpoint/{SRC_COLL}/stat",
                       json={"DATA_TYPE": "file", "name": "scan", "type": "dir", "size": 4096}).add()
    # three entries in scan/, two per page; then the sub-directory, which fits in one page
    _ls_page(src(""), [("a.h5", "file", 878_000_000), ("sub", "dir", 4096)], offset=0, limit=2, total=3)
    _ls_page(src(""), [("b.h5", "file", 5)], offset=2, limit=2, total=3)
    _ls_page(src("sub"), [("c.h5", "file", 7)], offset=0, limit=2, total=1)
    files = make_backend(identity, ls_page_size=2).list_files("aps", "scan")
    assert files == [("scan/a.h5", 878_000_000), ("scan/b.h5", 5), ("scan/sub/c.h5", 7)]
    asked = [parse_qs(urlparse(c.request.url).query) for c in calls("GET", "/ls")]
    assert [(q["path"][0], q["offset"][0], q["limit"][0]) for q in asked] == [
        ("/data/8id/scan", "0", "2"), ("/data/8id/scan", "2", "2"), ("/data/8id/scan/sub", "0", "2")]


def test_a_listing_page_that_repeats_itself_ends_the_walk(mocked, identity):
    add_token("tok-1")
    RegisteredResponse(service="transfer", path=f"/v0.10/operation/endpoint/{SRC_COLL}/stat",
                       json={"DATA_TYPE": "file", "name": "scan", "type": "dir", "size": 4096}).add()
    # a server that ignores the offset (and gives no total) must not make the walk loop forever
    for _ in range(2):
        _ls_page(src(""), [("a.h5", "file", 1), ("b.h5", "file", 2)], offset=0, limit=2, total=None)
    assert make_backend(identity, ls_page_size=2).list_files("aps", "scan") == [("scan/a.h5", 1), ("scan/b.h5", 2)]
    assert len(calls("GET", "/ls")) == 2


def test_the_secret_appears_in_no_log_record_outcome_or_token_file(mocked, identity, caplog, tmp_path):
    caplog.set_level(logging.DEBUG)
    for name in ("globus_sdk", "rtlib", "urllib3", ""):
        logging.getLogger(name).setLevel(logging.DEBUG)
    add_token("tok-1")
    add_submission_id()
    add_submit("task-l")
    add_task("task-l", "SUCCEEDED")
    add_results("task-l", [(src("a"), dst("a"))], skipped=[
        {"source_path": src("b"), "destination_path": dst("b"), "error_code": "PERMISSION_DENIED", "error_details": "denied"}])
    add_error("GET", "/v0.10/submission_id", 401, "AuthenticationFailed", "Token is not active")
    backend = make_backend(identity)
    out = backend.transfer_batch([req(1, "a"), req(2, "b")])
    out += backend.transfer_batch([req(3, "c")])  # the error path too
    assert any(r.name.startswith("globus_sdk") for r in caplog.records)  # the SDK's debug log was captured
    texts = [r.getMessage() for r in caplog.records] + [caplog.text] + [repr(o) for o in out]
    texts.append((tmp_path / "tokens.json").read_text())
    basic = b64encode(f"{CLIENT_ID}:{SECRET}".encode()).decode()  # how it travels to Globus Auth
    assert not [t for t in texts if SECRET in t or basic in t]
    # the basic-auth header carries it to the token endpoint, and nowhere else
    assert all(SECRET not in json.dumps(dict(c.request.headers)) for c in responses.calls if "oauth2" not in c.request.url)


def test_cancel_a_submitted_task_and_refuse_unknown_ones(mocked, identity):
    from rtlib.errors import EndpointError
    from rtlib.transfer.globus import _Task

    backend = make_backend(identity)
    add_token("tok-1")
    add_submission_id()
    add_submit("task-c")
    add_cancel("task-c")
    task = _Task("aps", "alcf", [])
    backend._submit(task, lambda o: None)
    assert task.task_id == "task-c" and backend.cancel("task-c") is True
    assert len(calls("POST", "/v0.10/task/task-c/cancel")) == 1
    with pytest.raises(EndpointError, match="not submitted by this backend"):
        backend.cancel("someone-elses-task")


def test_router_refuses_a_local_directory_paired_with_a_globus_only_endpoint(tmp_path):
    from rtlib.transfer.factory import make_transfer_backend
    from rtlib.transfer.routing import RoutingTransferBackend

    raw = cfg.default_config(tmp_path)
    raw["endpoints"]["remote"] = {"kind": "globus", "collection_id": SRC_COLL}
    backend = make_transfer_backend(cfg.validate(raw))
    assert isinstance(backend, RoutingTransferBackend)
    (tmp_path / "endpoints/aps").mkdir(parents=True)
    (tmp_path / "endpoints/aps/f").write_bytes(b"1")
    out = backend.transfer_batch([TransferRequest(1, "aps", "f", "alcf", "g", 1), TransferRequest(2, "aps", "f", "remote", "g", 1)])
    assert out[0].ok and (tmp_path / "endpoints/alcf/g").read_bytes() == b"1"
    assert not out[1].ok and out[1].permanent and "Globus cannot reach" in out[1].error


def test_requests_of_two_beamlines_run_as_their_own_accounts_in_separate_tasks(mocked, tmp_path, monkeypatch):
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class JobRequest(TransferRequest):  # a request carrying its job's beamline
        beamline: str | None = None

    monkeypatch.setenv("RTLIB_TEST_GLOBUS_SECRET", SECRET)
    other = "0d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6"
    idents = {bl: ServiceAccountIdentity(bl, cfg.ServiceAccount(client_id=cid, secret_env="RTLIB_TEST_GLOBUS_SECRET"),
                                         token_cache=None) for bl, cid in (("8id", CLIENT_ID), ("9id", other))}
    asked = []

    def identity_for(src_ep, dst_ep, beamline=None):
        asked.append((src_ep, dst_ep, beamline))
        return idents[beamline]

    add_token("tok-8id")
    add_token("tok-9id")
    add_submission_id()
    add_submit("task-8")
    add_submit("task-9")
    add_task("task-8", "SUCCEEDED")
    add_task("task-9", "SUCCEEDED")
    add_results("task-8", [(src("a"), dst("a")), (src("c"), dst("c"))])
    add_results("task-9", [(src("b"), dst("b"))])
    backend = GlobusTransferBackend(
        {"aps": GlobusEndpoint("aps", SRC_COLL, "/data/8id"), "alcf": GlobusEndpoint("alcf", DST_COLL, "/eagle/rtlib")},
        identity_for, poll_initial_s=0.001, poll_max_s=0.002, retry_config=RetryConfig(max_retries=0))
    reqs = [JobRequest(i, "aps", f"scan/{n}", "alcf", f"jobs/1/in/{n}", 10, beamline=bl)
            for i, (n, bl) in enumerate((("a", "8id"), ("b", "9id"), ("c", "8id")))]
    out = backend.transfer_batch(reqs)
    assert [o.ok for o in out] == [True, True, True]
    assert asked == [("aps", "alcf", "8id"), ("aps", "alcf", "9id")]  # one client per (pair, beamline)
    submits = calls("POST", "/v0.10/transfer")
    by_token = {c.request.headers["Authorization"]: [d["source_path"] for d in json.loads(c.request.body)["DATA"]] for c in submits}
    assert by_token == {"Bearer tok-8id": [src("a"), src("c")], "Bearer tok-9id": [src("b")]}
    grants = [c.request.headers["Authorization"] for c in calls("POST", "/v2/oauth2/token")]
    assert grants == [f"Basic {b64encode(f'{cid}:{SECRET}'.encode()).decode()}" for cid in (CLIENT_ID, other)]
