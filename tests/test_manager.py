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
