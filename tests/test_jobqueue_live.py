"""dask-jobqueue on a real local Slurm (and PBS-style qsub over it): queues, accounts, preemption, budgets, trouble.

The Slurm is started once for this module by tests/slurmserver.py (munged + slurmctld + slurmd in a
temporary directory, free loopback ports). Its two partitions stand for the demand and preemptable
queues. If Slurm or munge is missing the fixture fails with the install command; nothing is skipped.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from rtlib import config as cfg
from rtlib import jobs
from rtlib.runtime import open_runtime
from rtlib.states import State
from rtlib.store import JobStore

from helpers import assert_results_home, produce
from slurmserver import SlurmServer

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def slurm():
    with SlurmServer() as server:
        yield server


def hpc_settings(tmp_path: Path, *, compute: str = "slurm", max_attempts: int = 3, budgets: dict | None = None,
                 queue_opts: dict | None = None, **jobqueue) -> cfg.Settings:  # fmt: skip
    raw = cfg.default_config(tmp_path / "ws")
    raw["agent"] = {"poll_s": 0.02, "max_attempts": max_attempts}
    raw["sites"]["hpc"] = {
        "compute": compute,
        "scratch_endpoint": "alcf",
        "queues": [
            {"name": "demand", "max_nodes": 2, "max_walltime_min": 60, **(queue_opts or {})},
            {"name": "preemptable", "max_nodes": 2, "max_walltime_min": 1440, "preemptable": True},
        ],
        "policy": {"urgent_min_priority": 1, "default": {"nodes": 1, "walltime_min": 10}},
        "jobqueue": {"cores_per_node": 1, "memory_per_node_gb": 0.5, "scheduler_host": "127.0.0.1", "idle_timeout_s": 1,
                     "log_directory": str(tmp_path / "joblogs"), "prologue": ["export RTLIB_TEST_PROLOGUE=1"], **jobqueue},
    }  # fmt: skip
    raw["accounts"]["rtlib::aps"]["scheduler_account"] = "rtlib_aps"
    raw["accounts"]["rtlib::als"]["scheduler_account"] = "rtlib_als"
    for name, hours in (budgets or {}).items():
        raw["accounts"][name]["node_hours"] = hours
    settings = cfg.validate(raw)
    cfg.ensure_workspace(settings)
    return settings


def submit(rt, settings, ep: str, rel: str, *, sleep_s: float, priority: int, account: str | None = None, **params) -> int:
    extra = {"account": account} if account else {}
    return jobs.submit(rt.store, settings, "noop", source_endpoint=ep, inputs=[rel], params={"sleep_s": sleep_s, **params},
                       site="hpc", beamline=f"{ep}-demo", priority=priority, **extra)  # fmt: skip


def rtlib_jobs(slurm, partition: str | None = None) -> list[dict]:
    """rtlib's batch jobs the controller holds, leaving out ones already cancelled and only completing (CG)."""
    return [r for r in slurm.squeue() if r["name"].startswith("rtlib-") and r["state"] != "COMPLETING"
            and (partition is None or r["partition"] == partition)]  # fmt: skip


def assert_no_partial_output(settings, store, job_id: int) -> None:
    """No stage-out item and no file at the destination comes from a killed attempt's partial file."""
    job = store.get_job(job_id)
    outs = store.items(job_id, "out")
    assert not any(i.dst_path.endswith(PARTIAL) or i.src_path.endswith(PARTIAL) for i in outs), outs
    assert all("/attempt-" not in i.src_path for i in outs), "only the promoted final attempt is staged out"
    dest = Path(settings.endpoints[job.dest_endpoint].root)
    assert not list(dest.rglob(PARTIAL)), "a killed attempt's partial file reached the destination"


PARTIAL = "partial.txt"


def check_noop_result(settings, store, job_id: int) -> None:
    """The delivered result says what the analysis saw: one input of the staged size."""
    job = store.get_job(job_id)
    (item,) = store.items(job_id, "in")
    out = [i for i in store.items(job_id, "out") if i.dst_path.endswith("noop.txt")]
    assert len(out) == 1, out
    text = (Path(settings.endpoints[job.dest_endpoint].root) / out[0].dst_path).read_text()
    assert text == f"1 inputs, {item.size_bytes} bytes\n"


def test_two_beamlines_run_to_done_in_their_policy_queues_charged_to_their_suballocations(tmp_path, slurm):
    settings = hpc_settings(tmp_path)
    rt = open_runtime(settings)
    try:
        (aps, aps_rel), (als, als_rel) = produce(settings, 2)
        urgent = submit(rt, settings, aps, aps_rel, sleep_s=1, priority=5)  # real-time -> demand
        bulk = submit(rt, settings, als, als_rel, sleep_s=1, priority=0)  # backlog -> preemptable
        seen: dict[str, dict] = {}

        def watch(_agent):
            for row in slurm.squeue():
                seen[row["id"]] = row

        rt.agent("hpc").run(until_idle=True, max_seconds=120, on_tick=watch, tick_s=0.2)
        for jid, queue, account in ((urgent, "demand", "rtlib::aps"), (bulk, "preemptable", "rtlib::als")):
            job = rt.store.get_job(jid)
            assert job.state == State.DONE, job.error
            assert (job.queue, job.account) == (queue, account)
            check_noop_result(settings, rt.store, jid)
        assert_results_home(settings, rt.store)
    finally:
        rt.close()  # workers leave: their last run time is charged
    # the batch jobs went to the partitions the policy chose, under each beamline's scheduler account
    finished = {row["JobId"]: row for row in slurm.completed()}
    ran = {(row["Partition"], row["Account"]) for jid, row in finished.items() if jid in seen and row["Name"].startswith("rtlib-")}
    assert ("demand", "rtlib_aps") in ran and ("preemptable", "rtlib_als") in ran, (ran, seen)
    store = JobStore(settings.store)
    try:
        usage = store.usage_rows()
        by_account = store.used_node_hours()
        assert {u["account"] for u in usage} == {"rtlib::aps", "rtlib::als"}
        assert {(u["account"], u["queue"]) for u in usage} == {("rtlib::aps", "demand"), ("rtlib::als", "preemptable")}
        assert all(u["batch_job"] in finished for u in usage)
        for account in ("rtlib::aps", "rtlib::als"):
            # at least the analysis' own second, and no more than the whole test
            assert 1 / 3600 <= by_account[account] <= 120 / 3600, by_account
    finally:
        store.close()


def _preempt_runs(backend, slurm, scratch: Path, stop: threading.Event, kills: list[str], partials: list[Path], max_kills: int) -> None:
    """scancel the batch job of the worker running an rtlib task, once its partial file is written."""
    while not stop.is_set() and len(kills) < max_kills:
        for pool in list(backend.pools.values()):
            for key, worker in list(pool.running_on.items()):
                batch = pool.batch_ids.get(pool.job_of(worker))
                if batch and batch not in kills and key in pool.handles:
                    _, job_id, attempt, token = key.rsplit("-", 3)
                    partial = scratch / f"jobs/{int(job_id):08d}/attempt-{attempt}-{token}" / PARTIAL
                    deadline = time.monotonic() + 20
                    while not partial.exists() and time.monotonic() < deadline:
                        time.sleep(0.05)
                    assert partial.exists(), f"the attempt never wrote {partial}"
                    partials.append(partial)
                    time.sleep(0.5)
                    slurm.run("scancel", batch, check=False)
                    kills.append(batch)
                    break
        time.sleep(0.05)


def _run_preempted(tmp_path, slurm, *, max_attempts: int, max_kills: int):
    settings = hpc_settings(tmp_path, max_attempts=max_attempts)
    rt = open_runtime(settings)
    (ep, rel), = produce(settings, 1)
    jid = submit(rt, settings, ep, rel, sleep_s=4, priority=0, partial_file=PARTIAL)
    agent = rt.agent("hpc")
    stop, kills, partials = threading.Event(), [], []
    scratch = Path(settings.endpoints[settings.sites["hpc"].scratch_endpoint].root)
    killer = threading.Thread(target=_preempt_runs, args=(rt.compute, slurm, scratch, stop, kills, partials, max_kills), daemon=True)
    killer.start()
    try:
        agent.run(until_idle=True, max_seconds=150)
    finally:
        stop.set()
        killer.join(10)
    assert len(partials) == len(kills), "every killed attempt had written its partial file"
    return settings, rt, jid, kills


def test_scancel_of_the_worker_job_preempts_the_task_which_reruns_to_done(tmp_path, slurm):
    settings, rt, jid, kills = _run_preempted(tmp_path, slurm, max_attempts=3, max_kills=1)
    try:
        job = rt.store.get_job(jid)
        assert len(kills) == 1
        assert job.state == State.DONE, job.error
        assert job.attempts == 2
        events = rt.store.events(jid)
        path = [e.to_state for e in events]
        assert path.count("PREEMPTED") == 1 and path[path.index("PREEMPTED") + 1] == "STAGED_IN"
        preempted = next(e for e in events if e.to_state == "PREEMPTED")
        assert f"batch job {kills[0]}" in preempted.reason and "queue preemptable" in preempted.reason
        check_noop_result(settings, rt.store, jid)
        assert_no_partial_output(settings, rt.store, jid)  # only the final attempt's outputs arrive
        assert_results_home(settings, rt.store)
    finally:
        rt.close()


def test_two_preemptions_with_a_retry_budget_of_one_fail_with_both_attempts(tmp_path, slurm):
    settings, rt, jid, kills = _run_preempted(tmp_path, slurm, max_attempts=2, max_kills=2)
    try:
        job = rt.store.get_job(jid)
        assert len(kills) == 2
        assert job.state == State.FAILED
        assert "out of retries (2/2" in job.error
        reasons = [e.reason for e in rt.store.events(jid) if e.to_state == "PREEMPTED"]
        assert len(reasons) == 2
        assert reasons[0].startswith("attempt 1:") and reasons[1].startswith("attempt 2:")
        assert f"batch job {kills[0]}" in reasons[0] and f"batch job {kills[1]}" in reasons[1]
        assert rt.store.items(jid, "out") == [], "a killed attempt's partial output is never staged out"
        assert_no_partial_output(settings, rt.store, jid)
        dest = Path(settings.endpoints[job.dest_endpoint].root) / "results"
        assert not dest.exists() or not any(dest.rglob("*.txt"))
    finally:
        rt.close()


def test_over_budget_job_is_held_off_the_scheduler_until_the_budget_is_raised(tmp_path, slurm, monkeypatch):
    from typer.testing import CliRunner

    from rtlib.cli import app

    settings = hpc_settings(tmp_path, budgets={"rtlib::aps": 0.05})  # the job asks 1 node x 10 min = 0.167
    rt = open_runtime(settings)
    try:
        (ep, rel), = produce(settings, 1)
        jid = submit(rt, settings, ep, rel, sleep_s=0.5, priority=5)
        agent = rt.agent("hpc")
        in_squeue = []
        agent.run(max_seconds=6, on_tick=lambda _a: in_squeue.extend(slurm.squeue()), tick_s=0.3)
        job = rt.store.get_job(jid)
        assert job.state == State.HELD
        assert "needs 0.1667 node-hours" in job.error and "account rtlib::aps has 0.05 of 0.05 left" in job.error
        assert in_squeue == [] and rt.compute.pools == {}, "a held job never reaches the scheduler"
        # visible where people look: `rtlib status` and `rtlib accounts`
        monkeypatch.setenv("RTLIB_STORE_URL", settings.store)
        runner = CliRunner()
        out = runner.invoke(app, ["status", str(jid), "-w", str(settings.workspace)])
        assert out.exit_code == 0 and "HELD" in out.output and "rtlib accounts --set rtlib::aps=HOURS" in out.output.replace("\n", "")
        out = runner.invoke(app, ["accounts", "-w", str(settings.workspace), "--json"])
        assert out.exit_code == 0, out.output
        assert '"held_jobs": [\n      %d\n    ]' % jid in out.output
        rt.store.set_budget("rtlib::aps", 5)  # what `rtlib accounts --set rtlib::aps=5` does
        rt.agent("hpc").run(until_idle=True, max_seconds=90)
        job = rt.store.get_job(jid)
        assert job.state == State.DONE, job.error
        assert job.error is None
        path = [e.to_state for e in rt.store.events(jid)]
        assert path[path.index("HELD") + 1] == "STAGED_IN" and "RUNNING" not in path[: path.index("HELD")]
    finally:
        rt.close()


def test_sbatch_refusing_the_worker_job_fails_the_job_with_the_scheduler_message(tmp_path, slurm):
    settings = hpc_settings(tmp_path, queue_opts={"scheduler_queue": "nosuchpartition"})
    rt = open_runtime(settings)
    try:
        (ep, rel), = produce(settings, 1)
        jid = submit(rt, settings, ep, rel, sleep_s=0, priority=5)
        t0 = time.monotonic()
        rt.agent("hpc").run(until_idle=True, max_seconds=60)
        job = rt.store.get_job(jid)
        assert job.state == State.FAILED
        assert time.monotonic() - t0 < 30, "no hang"
        assert "SchedulerCommandError" in job.error and "refused the worker job for queue 'demand'" in job.error
        assert "invalid partition" in job.error.lower()  # sbatch's own words
    finally:
        rt.close()


def test_missing_scheduler_command_fails_the_job_with_the_fix(tmp_path, slurm):
    empty = tmp_path / "no-slurm-here"
    empty.mkdir()
    settings = hpc_settings(tmp_path, commands_dir=str(empty))
    rt = open_runtime(settings)
    try:
        (ep, rel), = produce(settings, 1)
        jid = submit(rt, settings, ep, rel, sleep_s=0, priority=5)
        rt.agent("hpc").run(until_idle=True, max_seconds=30)
        job = rt.store.get_job(jid)
        assert job.state == State.FAILED
        assert f"`sbatch` was not found in {empty}" in job.error and "commands_dir" in job.error
    finally:
        rt.close()


def test_batch_job_stuck_in_the_queue_is_cancelled_and_resubmitted(tmp_path, slurm):
    settings = hpc_settings(tmp_path, queue_opts={"queued_limit_s": 3})
    slurm.run("scontrol", "update", "PartitionName=demand", "State=DOWN")  # jobs queue there but do not start
    rt = open_runtime(settings)
    try:
        (ep, rel), = produce(settings, 1)
        jid = submit(rt, settings, ep, rel, sleep_s=0.5, priority=5)
        agent = rt.agent("hpc")
        first: list[str] = []

        def reopen_after_first_cancel(_agent):
            pools = list(rt.compute.pools.values())
            if pools and pools[0].batch_ids and not first:
                first.extend(pools[0].batch_ids.values())
            if pools and pools[0].stuck_cancelled >= 1:
                slurm.run("scontrol", "update", "PartitionName=demand", "State=UP")

        agent.run(until_idle=True, max_seconds=90, on_tick=reopen_after_first_cancel, tick_s=0.2)
        job = rt.store.get_job(jid)
        assert job.state == State.DONE, job.error
        pool = next(iter(rt.compute.pools.values()))
        assert pool.stuck_cancelled >= 1 and pool.jobs_submitted >= 2
        assert any("queued in demand for over 3 s: cancelled and submitted again" in e for e in rt.compute.events)
        cancelled = {row["JobId"]: row for row in slurm.completed()}
        assert first and cancelled[first[0]]["JobState"] == "CANCELLED" and cancelled[first[0]]["NodeList"] in ("", "(null)", "None assigned")
    finally:
        slurm.run("scontrol", "update", "PartitionName=demand", "State=UP", check=False)
        rt.close()


def test_pbs_cluster_runs_live_through_qsub_over_slurm(tmp_path, slurm, monkeypatch):
    monkeypatch.chdir(tmp_path)  # slurm-wlm-torque's qsub writes the job's .o/.e files where it runs, whatever the script says
    settings = hpc_settings(tmp_path, compute="pbs")
    rt = open_runtime(settings)
    try:
        (ep, rel), = produce(settings, 1)
        jid = submit(rt, settings, ep, rel, sleep_s=0.5, priority=5)
        rt.agent("hpc").run(until_idle=True, max_seconds=90)
        job = rt.store.get_job(jid)
        assert job.state == State.DONE, job.error
        check_noop_result(settings, rt.store, jid)
        pool = next(iter(rt.compute.pools.values()))
        assert pool.jobs_submitted >= 1 and type(pool.cluster).__name__ == "PBSCluster"
    finally:
        rt.close()
    finished = [row for row in slurm.completed() if row["Name"] == "rtlib-demand" and row["JobId"] in set(pool.batch_ids.values())]
    assert finished and finished[0]["Partition"] == "demand" and finished[0]["Account"] == "rtlib_aps"


def test_shell_text_in_a_job_reaches_the_scheduler_only_as_data(tmp_path, slurm):
    """Issue 10: a file name or a field holding shell syntax never runs; it is refused or carried as data."""
    settings = hpc_settings(tmp_path)
    canary = tmp_path / "PWNED"
    home_canary = tmp_path / "home" / "keep.txt"
    home_canary.parent.mkdir()
    home_canary.write_text("still here")
    rel = f"raw/scan; rm -rf {home_canary.parent} $(touch {canary}) `touch {canary}`.h5"
    src = Path(settings.endpoints["aps"].root) / rel
    src.parent.mkdir(parents=True, exist_ok=True)
    src.write_bytes(b"x" * 1234)
    rt = open_runtime(settings)
    try:
        # fields that reach the batch script are checked against the config before anything is submitted
        for bad in ({"account": "rtlib::aps; rm -rf ~"}, {"queue": "demand; rm -rf ~"}):
            with pytest.raises(Exception) as err:
                jobs.submit(rt.store, settings, "noop", source_endpoint="aps", inputs=["raw/a.h5"], site="hpc", beamline="aps-demo", **bad)
            msg = str(err.value)
            assert "rm -rf" in msg and ("configured" in msg or "its queues" in msg), msg
        jid = submit(rt, settings, "aps", rel, sleep_s=0, priority=5)
        names: set[str] = set()
        rt.agent("hpc").run(until_idle=True, max_seconds=120, on_tick=lambda _a: names.update(r["name"] for r in slurm.squeue()), tick_s=0.2)
        job = rt.store.get_job(jid)
        assert job.state == State.DONE, job.error
        check_noop_result(settings, rt.store, jid)  # the worker read the oddly named file as one input of its size
    finally:
        rt.close()
    assert not canary.exists(), "a command substitution in a file name ran"
    assert home_canary.read_text() == "still here"
    assert names and all(n.startswith("rtlib-") and ";" not in n for n in names), names
    scripts = "\n".join(p.read_text(errors="replace") for p in (tmp_path / "joblogs").rglob("*") if p.is_file())
    assert "rm -rf" not in scripts and "PWNED" not in scripts


class _Sampler:
    """Samples rtlib's batch jobs in one partition every 0.1 s on its own thread."""

    def __init__(self, slurm, partition: str):
        self.slurm, self.partition = slurm, partition
        self.held: list[int] = []  # batch jobs pending or running, per sample
        self.running: list[int] = []
        self.accounts: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(0.1):
            rows = rtlib_jobs(self.slurm, self.partition)
            self.held.append(len(rows))
            self.running.append(sum(r["state"] == "RUNNING" for r in rows))
            self.accounts |= {r["account"] for r in rows}

    def __enter__(self) -> "_Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)


@pytest.mark.parametrize("accounts, max_nodes", [(("rtlib::aps", "rtlib::als"), 1), (("rtlib::aps", "rtlib::als", "rtlib::nsls2"), 2)])
def test_a_queue_node_limit_binds_all_accounts_together(tmp_path, slurm, accounts, max_nodes):
    """Suballocations sharing one queue never hold more than its max_nodes batch jobs there between them."""
    settings = hpc_settings(tmp_path, queue_opts={"max_nodes": max_nodes})
    rt = open_runtime(settings)
    try:
        files = produce(settings, 2 * len(accounts))
        ids = [submit(rt, settings, ep, rel, sleep_s=1.5, priority=5, account=accounts[i % len(accounts)])
               for i, (ep, rel) in enumerate(files)]  # fmt: skip
        with _Sampler(slurm, "demand") as seen:
            rt.agent("hpc").run(until_idle=True, max_seconds=150)
        for jid in ids:
            job = rt.store.get_job(jid)
            assert job.state == State.DONE, job.error
            assert job.queue == "demand" and job.attempts == 1, [e.reason for e in rt.store.events(jid)]  # no attempt lost to the sharing
        assert {key for key in rt.compute.pools} == {("demand", a) for a in accounts}
        assert seen.held and max(seen.held) == max_nodes, seen.held  # never more at once, over all accounts
        assert seen.accounts == {settings.accounts[a].scheduler_account or a.split("::")[0] for a in accounts}, seen.accounts
    finally:
        rt.close()


def test_workers_follow_the_backlog_up_to_max_nodes_and_scale_to_zero_when_idle(tmp_path, slurm):
    settings = hpc_settings(tmp_path, idle_timeout_s=1)  # demand: max_nodes 2
    rt = open_runtime(settings)
    try:
        files = produce(settings, 5)
        ids = [submit(rt, settings, ep, rel, sleep_s=3, priority=5, account="rtlib::aps") for ep, rel in files]  # one pool
        with _Sampler(slurm, "demand") as seen:
            rt.agent("hpc").run(until_idle=True, max_seconds=150)
            assert all(rt.store.get_job(j).state == State.DONE for j in ids), [rt.store.get_job(j).error for j in ids]
            (pool,) = rt.compute.pools.values()
            # the backlog drains: within idle_timeout_s (+ scancel and a few monitor rounds) nothing is left
            t0 = time.monotonic()
            while time.monotonic() - t0 < 1 + 10 and (rtlib_jobs(slurm) or pool.cluster.worker_spec or pool.joined):
                time.sleep(0.1)
            left_s = time.monotonic() - t0
        assert max(seen.held) == 2 and max(seen.running) == 2, (seen.held, seen.running)  # reached, never exceeded
        assert rtlib_jobs(slurm) == [], slurm.squeue()
        assert pool.cluster.worker_spec == {} and pool.joined == {}, "scaled to zero"
        assert left_s < 11, left_s
        assert pool.jobs_submitted >= 2
    finally:
        rt.close()


def test_a_queue_that_keeps_batch_jobs_stuck_fails_the_job_after_max_stuck_resubmits(tmp_path, slurm):
    settings = hpc_settings(tmp_path, queue_opts={"queued_limit_s": 2, "max_stuck_resubmits": 1})
    slurm.run("scontrol", "update", "PartitionName=demand", "State=DOWN")  # jobs queue there but never start
    rt = open_runtime(settings)
    try:
        (ep, rel), = produce(settings, 1)
        jid = submit(rt, settings, ep, rel, sleep_s=0, priority=5)
        t0 = time.monotonic()
        rt.agent("hpc").run(until_idle=True, max_seconds=60)
        job = rt.store.get_job(jid)
        assert job.state == State.FAILED, job.state
        assert time.monotonic() - t0 < 40
        assert "2 worker batch jobs in a row" in job.error and "stayed queued in 'demand'" in job.error
        assert "max_stuck_resubmits" in job.error and "SchedulerCommandError" in job.error
        (pool,) = rt.compute.pools.values()
        assert pool.stuck_cancelled == 2 and pool.jobs_submitted == 2  # the first, one resubmission, then no more
        time.sleep(1)
        assert rtlib_jobs(slurm, "demand") == [], "nothing is left queued"
    finally:
        slurm.run("scontrol", "update", "PartitionName=demand", "State=UP", check=False)
        rt.close()
