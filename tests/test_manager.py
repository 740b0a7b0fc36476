"""JobManager: what the REST API and widgets will wire, tested without a server."""

from __future__ import annotations

import pytest

from rtlib.manager import ApiError, JobManager
from rtlib.store import JobStore

from helpers import make_settings, produce


@pytest.fixture
def manager(tmp_path, store_url):
    settings = make_settings(tmp_path / "ws", store_url)
    store = JobStore(settings.store)
    yield JobManager(settings, store)
    store.close()


def test_sites_and_workloads(manager):
    (site,) = manager.sites()
    assert site["name"] == "local" and {q["name"] for q in site["queues"]} == {"demand", "preemptable"}
    assert site["accounts"]["rtlib::aps"] == 100
    names = {w["name"]: w for w in manager.workloads()}
    assert {"saxs", "xpcs", "laue", "noop"} <= set(names)
    assert "num_q_bins" in names["saxs"]["schema"]["properties"]


def test_submit_list_get_cancel_retry(manager):
    (ep, rel), = produce(manager.settings, 1)
    job = manager.submit({"workload": "saxs", "source": f"{ep}:{rel}", "params": {"num_q_bins": 50}, "beamline": "aps-demo"})
    assert job["state"] == "CREATED" and job["params"]["num_q_bins"] == 50 and job["account"] == "rtlib::aps"
    assert "lease_owner" not in job and job["events"][0]["to_state"] == "CREATED"
    page = manager.list_jobs(state="created", limit=10)
    assert [j["id"] for j in page["jobs"]] == [job["id"]] and page["counts"] == {"CREATED": 1}
    assert manager.list_jobs(workload="xpcs")["jobs"] == []
    assert manager.cancel(job["id"])["state"] == "CANCELLED"
    with pytest.raises(ApiError) as e:
        manager.cancel(job["id"])
    assert e.value.status == 409 and "already CANCELLED" in e.value.message
    assert manager.retry(job["id"])["state"] == "CREATED"
    assert [ev["to_state"] for ev in manager.events()] == ["CREATED", "CANCELLED", "CREATED"]
    with pytest.raises(ApiError) as e:
        manager.get_job(999)
    assert e.value.status == 404


@pytest.mark.parametrize(
    "body, field, words",
    [
        ({"workload": "saxs", "source": "aps:raw/a.h5", "params": {"num_q_binz": 3}}, "params.num_q_binz", "unknown parameter"),
        ({"workload": "saxs", "source": "aps:raw/a.h5", "params": {"num_q_bins": "many"}}, "params.num_q_bins", "num_q_bins"),
        ({"workload": "saxz", "source": "aps:raw/a.h5"}, "workload", "unknown workload"),
        ({"workload": "saxs", "source": "aps:../../etc/passwd"}, "source", "'..' is not allowed"),
        ({"workload": "saxs", "source": "nowhere:raw/a.h5"}, "source", "unknown endpoint"),
        ({"workload": "saxs"}, "source", "source is required"),
        ({"workload": "saxs", "source": "aps:a", "colour": "red"}, "colour", "unknown field"),
    ],
)
def test_bad_requests_name_the_field_and_record_nothing(manager, body, field, words):
    with pytest.raises(ApiError) as e:
        manager.submit(body)
    assert e.value.status == 400 and e.value.field == field and words in e.value.message
    assert manager.list_jobs()["jobs"] == []


def test_paging_limits(manager):
    with pytest.raises(ApiError) as e:
        manager.list_jobs(limit=10_000)
    assert e.value.field == "limit"
    with pytest.raises(ApiError) as e:
        manager.list_jobs(state="RUNNIN")
    assert e.value.field == "state" and "RUNNING" in e.value.message

    assert manager.list_jobs(state="created")["total"] == 0


def test_page_total_counts_what_the_filter_matches(manager):
    (ep, rel), = produce(manager.settings, 1)
    for workload, beamline in [("noop", "aps-demo"), ("noop", None), ("saxs", "aps-demo"), ("noop", "aps-demo")]:
        manager.submit({"workload": workload, "source": f"{ep}:{rel}", **({"beamline": beamline} if beamline else {})})
    page = manager.list_jobs(workload="noop", beamline="aps-demo", limit=1)
    assert len(page["jobs"]) == 1 and page["total"] == 2 and page["counts"] == {"CREATED": 4}
    assert manager.list_jobs(limit=1, offset=3)["total"] == 4
    manager.cancel(1)
    assert manager.list_jobs(state="cancelled")["total"] == 1 and manager.list_jobs(state="created", workload="noop")["total"] == 2


def test_newest_first_pages_from_the_other_end(manager):
    (ep, rel), = produce(manager.settings, 1)
    ids = [manager.submit({"workload": "noop" if i % 2 else "saxs", "source": f"{ep}:{rel}"})["id"] for i in range(7)]
    ids_of = lambda page: [j["id"] for j in page["jobs"]]  # noqa: E731
    assert ids_of(manager.list_jobs(order="newest", limit=3)) == ids[::-1][:3]
    assert ids_of(manager.list_jobs(order="newest", limit=3, offset=3)) == ids[::-1][3:6]
    assert ids_of(manager.list_jobs(order="newest", limit=3, offset=6)) == ids[:1]
    assert ids_of(manager.list_jobs(order="newest", limit=3, offset=7)) == []
    noop = [i for n, i in enumerate(ids) if n % 2]
    page = manager.list_jobs(order="newest", workload="noop", limit=2)
    assert ids_of(page) == noop[::-1][:2] and page["total"] == len(noop)
    with pytest.raises(ApiError) as e:
        manager.list_jobs(order="random")
    assert e.value.status == 400 and e.value.field == "order"


def test_endpoints_name_kind_and_beamlines_and_nothing_secret(tmp_path, store_url):
    from rtlib import config as cfg

    raw = cfg.default_config(tmp_path / "ws")
    raw["store_url"] = store_url
    collection = "0b4c1d7e-5f0a-4a8e-9d3e-2b6f1a7c9e11"
    raw["endpoints"]["remote"] = {"kind": "globus", "collection_id": collection, "base_path": "/secret/base", "facility": "aps"}
    raw["beamlines"]["aps-remote"] = {"facility": "aps", "endpoint": "remote", "account": "rtlib::aps",
                                      "service_account": {"client_id": "cid-123", "client_secret": "s3cret-value"}}
    settings = cfg.validate(raw)
    cfg.ensure_workspace(settings)
    store = JobStore(settings.store)
    try:
        endpoints = {e["name"]: e for e in JobManager(settings, store).endpoints()}
    finally:
        store.close()
    assert endpoints["remote"] == {"name": "remote", "kind": "globus", "facility": "aps", "beamlines": ["aps-remote"], "scratch": False}
    assert endpoints["als"]["beamlines"] == ["als-demo"] and endpoints["als"]["kind"] == "local"
    assert [n for n, e in endpoints.items() if e["scratch"]] == ["alcf"]
    text = repr(endpoints)
    for secret in (collection, "/secret/base", "s3cret-value", "cid-123", str(tmp_path)):
        assert secret not in text


# -- inputs as the REST API sends them ---------------------------------------------------------
def test_submit_takes_input_objects_and_checks_them_against_the_root(manager, tmp_path):
    (ep, rel), = produce(manager.settings, 1)
    job = manager.submit({"workload": "noop", "input": {"endpoint": ep, "path": rel}})
    assert job["source_endpoint"] == ep and job["inputs"] == [rel]
    job = manager.submit({"workload": "noop", "inputs": [{"endpoint": ep, "path": rel}, f"{ep}:raw"]})
    assert job["inputs"] == [rel, "raw"]
    outside = tmp_path / "secret.h5"
    outside.write_bytes(b"x")
    for body, field, words in [
        ({"workload": "noop", "input": {"endpoint": ep, "path": str(outside)}}, "input", "outside the endpoint root"),
        ({"workload": "noop", "inputs": [{"endpoint": ep, "path": rel}, {"endpoint": "als", "path": "b"}]}, "inputs", "one endpoint"),
        ({"workload": "noop", "input": {"endpoint": ep}}, "input", "two non-empty strings"),
        ({"workload": "noop", "input": {"endpoint": ep, "path": rel}, "source": f"{ep}:{rel}"}, "source", "only one of"),
        ({"workload": "noop", "input": {"endpoint": ep, "path": rel}, "dest": f"als:{outside}"}, "dest", "outside the endpoint root"),
        ({"workload": "noop", "input": {"endpoint": ep, "path": rel}, "queue": "express"}, "queue", "express"),
    ]:
        with pytest.raises(ApiError) as e:
            manager.submit(body)
        assert e.value.status == 400 and e.value.field == field and words in e.value.message, body
    assert len(manager.list_jobs()["jobs"]) == 2


def test_symlink_leading_out_of_the_root_is_refused(manager, tmp_path):
    root = manager.settings.endpoints["aps"].root
    (tmp_path / "elsewhere").mkdir()
    (root / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ApiError) as e:
        manager.submit({"workload": "noop", "input": {"endpoint": "aps", "path": "link/data.h5"}})
    assert e.value.field == "input" and "outside the endpoint root" in e.value.message


# -- events ----------------------------------------------------------------------------------------
def test_events_resume_after_an_id(manager):
    (ep, rel), = produce(manager.settings, 1)
    assert manager.last_event_id() == 0
    a = manager.submit({"workload": "noop", "source": f"{ep}:{rel}"})
    mark = manager.last_event_id()
    b = manager.submit({"workload": "noop", "source": f"{ep}:{rel}"})
    manager.cancel(b["id"])
    new = manager.events(mark)
    assert [(e["job_id"], e["state"], e["from_state"]) for e in new] == [(b["id"], "CREATED", None), (b["id"], "CANCELLED", "CREATED")]
    assert all({"id", "job_id", "state", "reason", "time"} <= set(e) for e in new)
    assert new[1]["reason"] == "cancelled by user" and new[1]["time"] >= new[0]["time"]
    assert manager.last_event_id() == new[-1]["id"]
    assert [e["job_id"] for e in manager.events(0, job_id=a["id"])] == [a["id"]]
    assert manager.events(manager.last_event_id()) == []
    with pytest.raises(ApiError) as e:
        manager.events(-1)
    assert e.value.field == "since"


def test_wait_for_returns_at_a_final_state_or_times_out(manager):
    (ep, rel), = produce(manager.settings, 1)
    job = manager.submit({"workload": "noop", "source": f"{ep}:{rel}"})
    with pytest.raises(ApiError) as e:
        manager.wait_for(job["id"], timeout_s=0.1, poll_s=0.02)
    assert e.value.status == 408 and "agent" in e.value.message
    manager.cancel(job["id"])
    assert manager.wait_for(job["id"], timeout_s=1)["state"] == "CANCELLED"


# -- ad-hoc transfers ----------------------------------------------------------------------------
def test_adhoc_transfer_of_a_directory(manager):
    produce(manager.settings, 2)  # raw/scan-000.h5 at aps, raw/scan-001.h5 at als
    produce(manager.settings, 1, seed=5)  # overwrite aps's
    src_root = manager.settings.endpoints["aps"].root
    (src_root / "raw" / "sub").mkdir()
    (src_root / "raw" / "sub" / "notes.txt").write_text("beam dump at 12:03")
    tr = manager.start_transfer({"source": {"endpoint": "aps", "path": "raw"}, "destination": "alcf:copies/raw"})
    assert tr["state"] in ("ACTIVE", "SUCCEEDED") and tr["files_total"] == 2
    total = sum(p.stat().st_size for p in (src_root / "raw").rglob("*") if p.is_file())
    assert tr["bytes_total"] == total
    done = manager.wait_transfer(tr["id"], timeout_s=30)
    assert done["state"] == "SUCCEEDED" and done["bytes_done"] == total and done["files_done"] == 2 and done["fraction"] == 1.0
    assert done["finished_at"] >= done["started_at"]
    dst = manager.settings.endpoints["alcf"].root / "copies" / "raw"
    assert (dst / "sub" / "notes.txt").read_text() == "beam dump at 12:03"
    assert (dst / "scan-000.h5").read_bytes() == (src_root / "raw" / "scan-000.h5").read_bytes()
    assert [t["id"] for t in manager.list_transfers()["transfers"]] == [tr["id"]]
    assert manager.get_transfer(tr["id"])["state"] == "SUCCEEDED"
    with pytest.raises(ApiError) as e:
        manager.get_transfer(99)
    assert e.value.status == 404


def test_adhoc_transfer_failure_is_recorded_with_its_reason(manager):
    (ep, rel), = produce(manager.settings, 1)
    blocker = manager.settings.endpoints["als"].root / "taken"
    blocker.write_text("a file where a directory is needed")
    tr = manager.start_transfer({"source": f"{ep}:{rel}", "destination": "als:taken/scan.h5"})
    done = manager.wait_transfer(tr["id"], timeout_s=30)
    assert done["state"] == "FAILED" and done["files_failed"] == 1
    assert "taken" in done["errors"][0]


def test_adhoc_transfer_refusals_write_nothing(manager, tmp_path):
    (ep, rel), = produce(manager.settings, 1)
    for body, field, words in [
        ({"source": f"{ep}:{rel}", "destination": {"endpoint": "als", "path": "../../../escaped.h5"}}, "destination", "'..' is not allowed"),
        ({"source": f"{ep}:{rel}", "destination": {"endpoint": "als", "path": str(tmp_path / "escaped.h5")}}, "destination", "outside"),
        ({"source": {"endpoint": ep, "path": str(tmp_path)}, "destination": "als:x"}, "source", "outside"),
        ({"source": f"{ep}:raw/none.h5", "destination": "als:x"}, "source", "does not exist"),
        ({"source": f"{ep}:{rel}", "destination": "moon:x"}, "destination", "unknown endpoint"),
        ({"source": f"{ep}:{rel}"}, "destination", "destination is required"),
        ({"source": f"{ep}:{rel}", "destination": "als:x", "mode": "fast"}, "mode", "unknown field"),
    ]:
        with pytest.raises(ApiError) as e:
            manager.start_transfer(body)
        assert e.value.status == 400 and e.value.field == field and words in e.value.message, body
    assert manager.list_transfers()["transfers"] == []
    assert not (tmp_path / "escaped.h5").exists()
    assert [p for p in manager.settings.endpoints["als"].root.rglob("*")] == []
