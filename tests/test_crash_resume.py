"""An agent process killed with SIGKILL mid-transfer and mid-analysis resumes with nothing lost or doubled."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from rtlib import jobs
from rtlib.states import State
from rtlib.store import JobStore

from helpers import assert_results_home, make_settings, produce, temporaries, wait_for

pytestmark = pytest.mark.slow
RTLIB = [sys.executable, "-m", "rtlib.cli"]


def _start_agent(ws: Path, *extra: str) -> subprocess.Popen:
    # its own session, so SIGKILL to the group takes its dask workers down too, as a node reboot would
    return subprocess.Popen(
        [*RTLIB, "agent", "--workspace", str(ws), *extra],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "RTLIB_CONFIG": ""},
    )


def _kill(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def test_sigkill_mid_transfer_and_mid_analysis(tmp_path):
    ws = tmp_path / "ws"
    settings = make_settings(ws)
    store = JobStore(settings.store)
    data = produce(settings, 6, frames=60, size_px=128)  # ~2 MB each
    ids = [jobs.submit(store, settings, "noop", source_endpoint=ep, inputs=[rel], params={"sleep_s": 1.5}) for ep, rel in data]

    # 1. slow link: kill while files are in flight and some are already done
    agent = _start_agent(ws, "--link-mbps", "8")
    try:
        wait_for(lambda: store.items(state="done") and store.list_jobs(states=[State.STAGING_IN]), "a partly staged job")
    finally:
        _kill(agent)
    assert any(it.state == "pending" for it in store.items(direction="in")), "the kill must land mid-transfer"

    # 2. restart; kill while an analysis runs
    agent = _start_agent(ws)
    try:
        wait_for(lambda: store.list_jobs(states=[State.RUNNING]), "a running analysis")
        time.sleep(0.3)
    finally:
        _kill(agent)
    running = store.list_jobs(states=[State.RUNNING])
    assert running, "the kill must land mid-analysis"

    # 3. restart and let it finish
    agent = _start_agent(ws, "--until-idle")
    try:
        agent.wait(timeout=180)
    finally:
        if agent.poll() is None:
            _kill(agent)
    assert agent.returncode == 0, agent.stderr.read().decode()[-3000:]

    final = store.list_jobs(ids=ids)
    assert [j.state for j in final] == [State.DONE] * len(ids), [(j.id, j.state, j.error) for j in final]
    events = store.events()
    done_per_job = Counter(e.job_id for e in events if e.to_state == "DONE")
    run_done_per_job = Counter(e.job_id for e in events if e.to_state == "RUN_DONE")
    assert all(done_per_job[i] == 1 for i in ids), done_per_job
    assert all(run_done_per_job[i] == 1 for i in ids), run_done_per_job
    lost = {e.job_id for e in events if e.to_state == "PREEMPTED"}
    assert {j.id for j in running} <= lost, "a run killed with its agent is recorded as preempted"
    assert_results_home(settings, store)
    for ep in settings.endpoints.values():
        assert temporaries(Path(ep.root)) == [], "no partial file may remain"
    store.close()
