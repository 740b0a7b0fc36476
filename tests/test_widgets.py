"""The ipywidgets, driven headless: set values, press the buttons, look at the store and the files."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import ipywidgets as W
import pytest

from jupyter_ext.widgets import JobMonitor, LaunchWidget, TransferWidget, control_for, control_value
from rtlib.manager import JobManager
from rtlib.store import JobStore
from rtlib.transfer.local import LocalTransferBackend

from helpers import make_settings, produce


@pytest.fixture
def settings(tmp_path):
    return make_settings(tmp_path / "ws")


@pytest.fixture
def manager(settings):
    # a shaped link (40 Mbps), so a transfer takes long enough for the bar to be seen moving
    backend = LocalTransferBackend({n: ep.root for n, ep in settings.endpoints.items()}, link_mbps=40)
    m = JobManager(settings, JobStore(settings.store), transfer=backend)
    yield m
    m.close()


def test_controls_follow_the_schema():
    assert isinstance(control_for("n", {"type": "integer", "minimum": 2, "default": 200}), W.IntText)
    slider = control_for("n", {"type": "integer", "minimum": 1, "maximum": 9, "default": 3})
    assert isinstance(slider, W.IntSlider) and (slider.min, slider.max, slider.value) == (1, 9, 3)
    mode = control_for("mode", {"type": "string", "enum": ["fast", "exact"], "default": "exact"})
    assert isinstance(mode, W.Dropdown) and list(mode.options) == ["fast", "exact"] and mode.value == "exact"
    assert isinstance(control_for("flag", {"type": "boolean", "default": True}), W.Checkbox)
    prop = {"anyOf": [{"type": "number", "exclusiveMinimum": 0}, {"type": "null"}], "default": None}
    nullable = control_for("d", prop)
    assert isinstance(nullable, W.Text) and control_value(nullable, prop) is None
    nullable.value = "1.5"
    assert control_value(nullable, prop) == 1.5


def test_launch_widget_form_is_generated_from_the_workload_schema(manager):
    w = LaunchWidget(manager)
    w.workload.value = "saxs"
    assert set(w.params) == set(manager.workloads()[[x["name"] for x in manager.workloads()].index("saxs")]["schema"]["properties"])
    assert isinstance(w.params["num_q_bins"], W.IntText) and w.params["num_q_bins"].value == 200
    assert isinstance(w.params["dataset_path"], W.Text) and w.params["dataset_path"].value == "/entry/data/data"
    w.workload.value = "noop"
    noop = {w["name"]: w for w in manager.workloads()}["noop"]["schema"]["properties"]
    assert "sleep_s" in noop and set(w.params) == set(noop)
    assert [v for _, v in w.queue.options] == [None, "demand", "preemptable"]


def test_launch_widget_submits_a_job(manager):
    (ep, rel), = produce(manager.settings, 1)
    w = LaunchWidget(manager)
    w.workload.value = "saxs"
    w.beamline.value = "aps-demo"
    w.queue.value = "preemptable"
    w.input_endpoint.value = ep
    w.input_path.value = rel
    w.params["num_q_bins"].value = 77
    w.params["beam_center_x_px"].value = "31.5"
    w.submit_button.click()
    (job,) = manager.store.list_jobs()
    assert job.workload == "saxs" and job.queue == "preemptable" and job.account == "rtlib::aps" and job.inputs == [rel]
    assert job.params["num_q_bins"] == 77 and job.params["beam_center_x_px"] == 31.5 and job.params["detector_distance_m"] is None
    assert w.last_job["id"] == job.id and f"<b>{job.id}</b>" in w.status.value


def test_launch_widget_shows_server_side_validation_next_to_the_field(manager):
    (ep, rel), = produce(manager.settings, 1)
    w = LaunchWidget(manager)
    w.workload.value = "saxs"
    w.input_endpoint.value = ep
    w.input_path.value = rel
    w.params["num_q_bins"].value = 1  # the schema says minimum 2: the manager refuses it
    w.submit_button.click()
    assert "num_q_bins" in w.param_errors["num_q_bins"].value and "greater than or equal to 2" in w.param_errors["num_q_bins"].value
    assert all(label.value == "" for name, label in w.param_errors.items() if name != "num_q_bins")
    assert "var(--jp-error-color1)" in w.param_errors["num_q_bins"].value  # the theme's colour, not one of ours
    assert not re.search(r"#[0-9a-fA-F]{3,8}\b|rgba?\(", w.param_errors["num_q_bins"].value)
    assert manager.store.list_jobs() == [] and w.last_job is None

    w.params["num_q_bins"].value = 50
    w.input_path.value = "../../etc/passwd"
    w.submit_button.click()
    assert "not allowed" in w.errors["input"].value and w.param_errors["num_q_bins"].value == ""
    assert manager.store.list_jobs() == []


def test_transfer_widget_bar_follows_real_progress(manager, settings):
    src = Path(settings.endpoints["aps"].root) / "raw" / "big.bin"
    src.parent.mkdir(parents=True)
    src.write_bytes(os.urandom(2_000_000))  # 16 Mbit at 40 Mbps: about 0.4 s
    w = TransferWidget(manager, poll_s=0.02)
    seen: list[int] = []
    w.progress.observe(lambda change: seen.append(change["new"]), names="value")
    w.source_endpoint.value, w.source_path.value = "aps", "raw/big.bin"
    w.destination_endpoint.value, w.destination_path.value = "nsls2", "incoming/"
    w.start_button.click()
    assert w.start_button.disabled
    tr = w.wait(30)
    assert tr["state"] == "SUCCEEDED" and w.progress.bar_style == "success"
    assert w.progress.max == 2_000_000 and w.progress.value == 2_000_000 and w.progress.description == "100 %"
    partial = [v for v in seen if 0 < v < 2_000_000]
    assert len(partial) >= 2 and partial == sorted(partial)  # the bar moved through intermediate values, never back
    assert (Path(settings.endpoints["nsls2"].root) / "incoming" / "big.bin").read_bytes() == src.read_bytes()
    assert not w.start_button.disabled


def test_transfer_widget_refuses_a_destination_outside_the_root(manager, settings, tmp_path):
    (ep, rel), = produce(settings, 1)
    w = TransferWidget(manager)
    w.source_endpoint.value, w.source_path.value = ep, rel
    w.destination_endpoint.value, w.destination_path.value = "als", str(tmp_path / "escaped.h5")
    assert w.start() is None
    assert "outside the endpoint root" in w.errors["destination"].value
    assert not (tmp_path / "escaped.h5").exists() and manager.list_transfers()["transfers"] == []


def test_job_monitor_refreshes_on_a_timer_and_stops(manager):
    (ep, rel), = produce(manager.settings, 1)
    mon = JobMonitor(manager, interval_s=0.05, autostart=False)
    assert mon.rows == [] and "no jobs" in mon.summary.value
    job = manager.submit({"workload": "noop", "source": f"{ep}:{rel}"})
    assert [r["id"] for r in mon.refresh()] == [job["id"]] and "CREATED" in mon.table.value

    mon.start()
    assert mon.running
    manager.cancel(job["id"])
    deadline = time.monotonic() + 10
    while "CANCELLED" not in mon.table.value and time.monotonic() < deadline:
        time.sleep(0.02)
    assert mon.rows[0]["state"] == "CANCELLED" and "CANCELLED: 1" in mon.summary.value
    mon.stop()
    assert not mon.running
    count = mon.refreshes
    time.sleep(0.2)
    assert mon.refreshes == count  # stopped means stopped

    mon.state.value = "CANCELLED"
    assert [r["id"] for r in mon.rows] == [job["id"]]
