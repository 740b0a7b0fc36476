"""Two agent processes on one PostgreSQL store share a site's jobs and never make the same step twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from rtlib import config as cfg
from rtlib import jobs
from rtlib.store import JobStore

from helpers import assert_results_home

pytestmark = pytest.mark.postgres


def _site_toml(ws: Path, store_url: str) -> str:
    eps = "\n".join(f'[endpoints.{n}]\nkind = "local"\nroot = "{ws / "endpoints" / n}"\n' for n in ("aps", "als", "nsls2", "alcf"))
    return f'workspace = "{ws}"\nstore_url = "{store_url}"\n{eps}\n[sites.local]\nscratch_endpoint = "alcf"\nworkers = 1\n[agent]\npoll_s = 0.02\nlease_s = 10\n'


def test_two_agents_one_postgres_store(tmp_path, postgres_server):
    url = postgres_server.create_database("two_agents")
    ws = tmp_path / "ws"
    site = tmp_path / "site.toml"
    site.write_text(_site_toml(ws, url))
    settings = cfg.load(site)
    cfg.ensure_workspace(settings)
    store = JobStore(url)
    ids = []
    for i, ep in enumerate(["aps", "als", "nsls2"] * 8):
        root = Path(settings.endpoints[ep].root) / "raw"
        root.mkdir(parents=True, exist_ok=True)
        (root / f"d{i}.dat").write_bytes(os.urandom(50_000))
        ids.append(jobs.submit(store, settings, "noop", source_endpoint=ep, inputs=[f"raw/d{i}.dat"], params={"sleep_s": 0.2}))
    cmd = [sys.executable, "-m", "rtlib.cli", "agent", "--until-idle", "--max-jobs", "4", "--config", str(site)]
    agents = [subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _ in range(2)]
    try:
        for a in agents:
            a.wait(timeout=240)
    finally:
        for a in agents:
            if a.poll() is None:
                os.killpg(a.pid, signal.SIGKILL)
                a.wait()
    assert [a.returncode for a in agents] == [0, 0], [a.stderr.read().decode()[-2000:] for a in agents]

    final = store.list_jobs(ids=ids)
    assert all(j.state.value == "DONE" for j in final), [(j.id, j.state, j.error) for j in final]
    events = store.events()
    steps = Counter((e.job_id, e.to_state) for e in events)
    assert all(n == 1 for n in steps.values()), [k for k, n in steps.items() if n > 1]
    owners = Counter(e.agent for e in events if e.to_state == "RUN_DONE")
    assert len(owners) == 2 and min(owners.values()) >= 3, owners  # both agents did real work
    assert_results_home(settings, store)
    store.close()
    postgres_server.drop_database("two_agents")


def _runtime_on_postgres(tmp_path, postgres_server, database: str, workers: int):
    """Settings whose store is a new database on the session's PostgreSQL server, and a runtime on a started
    LocalCluster of ``workers`` workers."""
    from rtlib.compute.local import LocalDaskBackend
    from rtlib.runtime import open_runtime

    from helpers import make_settings

    settings = make_settings(tmp_path / "ws", postgres_server.create_database(database))
    rt = open_runtime(settings)
    rt.compute = LocalDaskBackend(workers=workers)
    rt.compute.start()
    return settings, rt


def test_agent_survives_postgres_restart(tmp_path, postgres_server, caplog):
    """The store restarts under load: the agent backs off, re-adopts its jobs, and finishes each exactly once."""
    import threading
    import time

    from helpers import produce

    caplog.set_level("WARNING", logger="rtlib.agent")
    settings, rt = _runtime_on_postgres(tmp_path, postgres_server, "restart_under_load", workers=2)
    try:
        ids = [jobs.submit(rt.store, settings, "noop", source_endpoint=ep, inputs=[rel], params={"sleep_s": 0.3})
               for ep, rel in produce(settings, 12)]
        agent = rt.agent("local")
        runner = threading.Thread(target=agent.run, kwargs={"until_idle": True, "max_seconds": 180})
        runner.start()
        deadline = time.monotonic() + 60
        while not rt.store.list_jobs(states=["DONE"]) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert rt.store.list_jobs(states=["DONE"]), "some jobs must finish before the restart"
        postgres_server.restart(down_s=2.0)  # longer than the agent's poll, claim and sync intervals
        runner.join(200)
        assert not runner.is_alive()
        assert "job store unreachable" in caplog.text, "the restart must have been felt by the agent"
        final = rt.store.list_jobs(ids=ids)
        assert all(j.state.value == "DONE" for j in final), [(j.id, j.state, j.error) for j in final]
        events = rt.store.events()
        for to_state in ("RUN_DONE", "DONE"):
            per_job = Counter(e.job_id for e in events if e.to_state == to_state)
            assert all(per_job[i] == 1 for i in ids), (to_state, per_job)
        assert_results_home(settings, rt.store)
    finally:
        rt.close()
        postgres_server.drop_database("restart_under_load")


def test_an_analysis_running_through_a_store_restart_is_picked_up_again(tmp_path, postgres_server, caplog):
    """A PostgreSQL restart while an analysis runs: the agent forgets its jobs, re-adopts them, and re-attaches to
    the analysis still running on the cluster instead of charging a lost attempt and running it again."""
    import threading
    import time

    from helpers import produce

    caplog.set_level("INFO", logger="rtlib.agent")
    settings, rt = _runtime_on_postgres(tmp_path, postgres_server, "restart_mid_run", workers=1)
    try:
        (ep, rel), = produce(settings, 1)
        jid = jobs.submit(rt.store, settings, "noop", source_endpoint=ep, inputs=[rel], params={"sleep_s": 6})
        agent = rt.agent("local")
        runner = threading.Thread(target=agent.run, kwargs={"until_idle": True, "max_seconds": 120})
        runner.start()
        scratch = Path(settings.endpoints[settings.sites["local"].scratch_endpoint].root)
        deadline = time.monotonic() + 60
        while not list(scratch.glob(f"jobs/{jid:08d}/attempt-*/.started")) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert list(scratch.glob(f"jobs/{jid:08d}/attempt-*/.started")), "the analysis must be running at the restart"
        postgres_server.restart(down_s=1.0)
        runner.join(150)
        assert not runner.is_alive()
        assert "job store unreachable" in caplog.text, "the restart must have been felt by the agent"
        job = rt.store.get_job(jid)
        assert job.state.value == "DONE", job.error
        path = [e.to_state for e in rt.store.events(jid)]
        assert "PREEMPTED" not in path and path.count("RUNNING") == 1 and job.attempts == 1, path
        assert "picked up again after the store came back" in caplog.text
        assert_results_home(settings, rt.store)
    finally:
        rt.close()
        postgres_server.drop_database("restart_mid_run")
