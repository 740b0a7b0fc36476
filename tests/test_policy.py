"""Queue policy: real-time jobs go to demand queues, bulk jobs to preemptable ones; misfits are refused."""

from __future__ import annotations

import pytest

from rtlib import config as cfg
from rtlib import jobs
from rtlib.compute.policy import NoQueueFits, choose_queue, preference, request_for
from rtlib.store import JobStore


def _settings(tmp_path, **policy):
    raw = cfg.default_config(tmp_path / "ws")
    raw["sites"]["hpc"] = {
        "compute": "slurm", "scratch_endpoint": "alcf",
        "queues": [
            {"name": "demand", "max_nodes": 2, "max_walltime_min": 60},
            {"name": "preemptable", "max_nodes": 10, "max_walltime_min": 1440, "preemptable": True},
        ],
        "policy": {"urgent_min_priority": 5, **policy},
    }  # fmt: skip
    s = cfg.validate(raw)
    cfg.ensure_workspace(s)
    return s


def test_urgent_goes_to_demand_and_bulk_to_preemptable(tmp_path):
    site = _settings(tmp_path).sites["hpc"]
    assert choose_queue(site, "noop", priority=5).name == "demand"
    assert choose_queue(site, "noop", priority=100).name == "demand"
    assert choose_queue(site, "noop", priority=4).name == "preemptable"
    assert [q.name for q in preference(site, 0)] == ["preemptable", "demand"]


def test_a_named_queue_overrides_the_rule(tmp_path):
    site = _settings(tmp_path).sites["hpc"]
    assert choose_queue(site, "noop", priority=0, requested="demand").name == "demand"
    assert choose_queue(site, "noop", priority=9, requested="preemptable").name == "preemptable"


def test_an_urgent_job_too_long_for_demand_falls_back_to_preemptable(tmp_path):
    site = _settings(tmp_path, workloads={"xpcs": {"nodes": 1, "walltime_min": 240}}).sites["hpc"]
    assert request_for(site, "xpcs").walltime_min == 240
    assert choose_queue(site, "xpcs", priority=9).name == "preemptable"
    with pytest.raises(NoQueueFits, match="does not fit queue 'demand': 240 min > max_walltime_min 60"):
        choose_queue(site, "xpcs", priority=9, requested="demand")


def test_a_job_that_fits_no_queue_is_refused_with_every_reason(tmp_path):
    site = _settings(tmp_path, workloads={"laue": {"nodes": 1, "walltime_min": 2000}}).sites["hpc"]
    with pytest.raises(NoQueueFits) as info:
        choose_queue(site, "laue", priority=0)
    msg = str(info.value)
    assert "preemptable: 2000 min > max_walltime_min 1440" in msg
    assert "demand: 2000 min > max_walltime_min 60" in msg
    assert "policy.workloads.laue" in msg  # where to fix it


def test_a_task_asking_for_more_than_one_node_is_refused_before_any_scheduler(tmp_path):
    site = _settings(tmp_path, workloads={"laue": {"nodes": 2, "walltime_min": 30}}).sites["hpc"]
    with pytest.raises(NoQueueFits, match=r"asks for 2 nodes, but an rtlib analysis task runs in one dask worker on one node") as info:
        choose_queue(site, "laue", priority=0)
    assert "policy.workloads.laue" in str(info.value)
    with pytest.raises(NoQueueFits, match="asks for 2 nodes"):
        choose_queue(site, "laue", priority=0, requested="preemptable")  # naming a queue does not help


def test_a_task_must_leave_the_walltime_margin_of_the_worker_job(tmp_path):
    site = _settings(tmp_path, workloads={"xpcs": {"nodes": 1, "walltime_min": 60}}).sites["hpc"]
    # 60 min fits demand's 60 min limit, but not its worker jobs (60 min less the 60 s margin): preemptable takes it
    assert choose_queue(site, "xpcs", priority=9).name == "preemptable"
    with pytest.raises(NoQueueFits, match=r"60 min > the queue's worker job walltime \(max_walltime_min\) 60 min less jobqueue.walltime_margin_s 60 s"):
        choose_queue(site, "xpcs", priority=9, requested="demand")


def test_submit_records_the_policy_queue_and_refuses_misfits(tmp_path):
    s = _settings(tmp_path, workloads={"laue": {"nodes": 1, "walltime_min": 3000}})
    store = JobStore(s.store)
    try:
        (cfg.Path(s.endpoints["aps"].root) / "in.dat").write_bytes(b"x")
        urgent = jobs.submit(store, s, "noop", source_endpoint="aps", inputs=["in.dat"], site="hpc", priority=7)
        bulk = jobs.submit(store, s, "noop", source_endpoint="aps", inputs=["in.dat"], site="hpc", priority=-1)
        named = jobs.submit(store, s, "noop", source_endpoint="aps", inputs=["in.dat"], site="hpc", priority=-1, queue="demand")
        assert [store.get_job(j).queue for j in (urgent, bulk, named)] == ["demand", "preemptable", "demand"]
        with pytest.raises(NoQueueFits, match="3000 min > max_walltime_min 1440"):
            jobs.submit(store, s, "laue", source_endpoint="aps", inputs=["in.dat"], site="hpc")
        assert len(store.list_jobs()) == 3  # the refused job was never recorded
    finally:
        store.close()
