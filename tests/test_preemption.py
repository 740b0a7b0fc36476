"""A dask worker killed under a running analysis: PREEMPTED, re-queued while the budget lasts, then FAILED."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

from rtlib import jobs
from rtlib.compute.local import LocalDaskBackend
from rtlib.runtime import open_runtime
from rtlib.states import State

from helpers import assert_results_home, make_settings, produce


PARTIAL = "partial.txt"


def _kill_worker_running(compute: LocalDaskBackend, scratch: Path, stop: threading.Event, kills: list[int], partials: list[Path],
                         max_kills: int, min_tasks: int = 1) -> None:  # fmt: skip
    """Kill (SIGKILL) the worker process that runs an rtlib task once it wrote its partial file, up to max_kills times.

    With min_tasks=2 it waits until that worker also holds a second (queued) task: on a loaded machine the agent
    may hand out the second job only after the first has finished, and the test needs both on the worker."""
    while not stop.is_set() and len(kills) < max_kills:
        processing = compute.client.processing()
        busy = {addr: [str(k) for k in keys if str(k).startswith("rtlib-job-")] for addr, keys in processing.items()}
        busy = {a: keys for a, keys in busy.items() if len(keys) >= min_tasks}
        if busy:
            addr, keys = next(iter(busy.items()))
            deadline = time.monotonic() + 20
            running = []
            while not running and time.monotonic() < deadline:
                running = [p for p in (_partial_of(scratch, k) for k in keys) if p.exists()]
                time.sleep(0.05)
            if not running:
                continue
            partials.append(running[0])
            pids = compute.client.run(os.getpid, workers=[addr])
            for pid in pids.values():
                os.kill(pid, signal.SIGKILL)
                kills.append(pid)
            time.sleep(1.0)  # the nanny restarts the worker
        time.sleep(0.05)


def _partial_of(scratch: Path, key: str) -> Path:
    _, job_id, attempt, token = key.rsplit("-", 3)
    return scratch / f"jobs/{int(job_id):08d}/attempt-{attempt}-{token}" / PARTIAL


def _run_with_killer(tmp_path, max_attempts: int, max_kills: int):
    settings = make_settings(tmp_path / "ws", max_attempts=max_attempts)
    rt = open_runtime(settings)
    rt.compute = LocalDaskBackend(workers=1)
    rt.compute.start()
    try:
        (ep, rel), = produce(settings, 1)
        jid = jobs.submit(rt.store, settings, "noop", source_endpoint=ep, inputs=[rel], params={"sleep_s": 3, "partial_file": PARTIAL})
        stop, kills, partials = threading.Event(), [], []
        scratch = Path(settings.endpoints[settings.sites["local"].scratch_endpoint].root)
        killer = threading.Thread(target=_kill_worker_running, args=(rt.compute, scratch, stop, kills, partials, max_kills), daemon=True)
        killer.start()
        rt.agent("local").run(until_idle=True, max_seconds=120)
        stop.set()
        killer.join(10)
        assert len(partials) == len(kills), "each killed attempt had written its partial file"
        return settings, rt, jid, kills
    except BaseException:
        rt.close()
        raise


def assert_no_partial_output(settings, store, job_id: int) -> None:
    outs = store.items(job_id, "out")
    assert not any(i.dst_path.endswith(PARTIAL) or i.src_path.endswith(PARTIAL) for i in outs), outs
    assert all("/attempt-" not in i.src_path for i in outs), "only the promoted final attempt is staged out"
    dest = Path(settings.endpoints[store.get_job(job_id).dest_endpoint].root)
    assert not list(dest.rglob(PARTIAL)), "a killed attempt's partial file reached the destination"


def test_preempted_run_is_requeued_and_finishes(tmp_path):
    settings, rt, jid, kills = _run_with_killer(tmp_path, max_attempts=3, max_kills=1)
    try:
        job = rt.store.get_job(jid)
        assert len(kills) == 1
        assert job.state == State.DONE, job.error
        assert job.attempts == 2
        path = [e.to_state for e in rt.store.events(jid)]
        assert path.count("PREEMPTED") == 1 and path.count("RUN_DONE") == 1
        assert path[path.index("PREEMPTED") + 1] == "STAGED_IN"
        assert [i for i in rt.store.items(jid, "out") if i.dst_path.endswith("noop.txt")], "the final attempt's output arrived"
        assert_no_partial_output(settings, rt.store, jid)
        assert_results_home(settings, rt.store)
    finally:
        rt.close()


def test_preemption_beyond_budget_fails_with_history(tmp_path):
    settings, rt, jid, kills = _run_with_killer(tmp_path, max_attempts=2, max_kills=2)
    try:
        job = rt.store.get_job(jid)
        assert len(kills) == 2
        assert job.state == State.FAILED
        assert "out of retries (2/2" in job.error
        assert [e.to_state for e in rt.store.events(jid)].count("PREEMPTED") == 2
        assert rt.store.items(jid, "out") == [], "a killed attempt's partial output is never staged out"
        assert_no_partial_output(settings, rt.store, jid)
    finally:
        rt.close()


def test_a_cluster_left_without_workers_is_replaced_and_the_job_rerun(tmp_path):
    """A nanny that gives up (its restart timed out on a loaded node) leaves no worker: the agent must not wait forever."""
    settings = make_settings(tmp_path / "ws", max_attempts=3)
    rt = open_runtime(settings)
    rt.compute = LocalDaskBackend(workers=1, revive_after_s=2.0)
    rt.compute.start()
    try:
        (ep, rel), = produce(settings, 1)
        jid = jobs.submit(rt.store, settings, "noop", source_endpoint=ep, inputs=[rel], params={"sleep_s": 2})
        emptied = []

        def empty_the_cluster():
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not emptied:
                if rt.store.get_job(jid).state == State.RUNNING:
                    time.sleep(0.3)
                    rt.compute.cluster.scale(0)  # every worker gone, none coming back by itself
                    emptied.append(True)
                time.sleep(0.05)

        threading.Thread(target=empty_the_cluster, daemon=True).start()
        rt.agent("local").run(until_idle=True, max_seconds=120)
        job = rt.store.get_job(jid)
        assert emptied and rt.compute.restarts == 1
        assert job.state == State.DONE, job.error
        path = [e.to_state for e in rt.store.events(jid)]
        # the attempt running when the workers went, and the one queued on the empty cluster when it was replaced
        assert path.count("PREEMPTED") == 2 and path.count("RUN_DONE") == 1, path
        assert "was replaced" in [e.reason for e in rt.store.events(jid) if e.to_state == "PREEMPTED"][-1]
        assert_results_home(settings, rt.store)
    finally:
        rt.close()


def test_a_cluster_start_killed_twice_is_retried_then_runs(monkeypatch):
    """Workers killed while the cluster starts (a preemption, a loaded node): the start is retried with backoff."""
    import pytest

    from rtlib.compute import local
    from rtlib.errors import ComputeStartError

    real, calls = local.LocalCluster, []

    def flaky(*args, **kwargs):
        calls.append(time.monotonic())
        if len(calls) <= 2:
            raise RuntimeError("Nanny failed to start.")
        return real(*args, **kwargs)

    monkeypatch.setattr(local, "LocalCluster", flaky)
    backend = LocalDaskBackend(workers=1, start_timeout_s=30)
    backend.start()
    try:
        assert len(calls) == 3 and calls[2] - calls[1] >= 1.9  # backoff 1 s, then 2 s
        assert backend.client.submit(sum, [1, 2], pure=False).result(timeout=60) == 3
    finally:
        backend.close()

    def broken(*args, **kwargs):
        raise RuntimeError("Nanny failed to start.")

    monkeypatch.setattr(local, "LocalCluster", broken)
    started = time.monotonic()
    with pytest.raises(ComputeStartError, match=r"did not start after \d+ tries in 4 s: RuntimeError: Nanny failed"):
        LocalDaskBackend(workers=1, start_timeout_s=4).start()
    assert time.monotonic() - started < 4.5


def test_an_attempt_lost_before_it_started_is_not_charged(tmp_path):
    """One worker holds a running attempt and a queued one when it is killed: only the running one uses a retry."""
    settings = make_settings(tmp_path / "ws", max_attempts=2)
    rt = open_runtime(settings)
    rt.compute = LocalDaskBackend(workers=1)  # the agent keeps one spare task queued on it
    rt.compute.start()
    try:
        ids = [jobs.submit(rt.store, settings, "noop", source_endpoint=ep, inputs=[rel], params={"sleep_s": 3, "partial_file": PARTIAL})
               for ep, rel in produce(settings, 2)]
        stop, kills, partials = threading.Event(), [], []
        scratch = Path(settings.endpoints[settings.sites["local"].scratch_endpoint].root)
        killer = threading.Thread(target=_kill_worker_running, args=(rt.compute, scratch, stop, kills, partials, 1, 2), daemon=True)
        killer.start()
        rt.agent("local").run(until_idle=True, max_seconds=120)
        stop.set()
        killer.join(10)
        assert len(kills) == 1
        final = {j.id: j for j in rt.store.list_jobs(ids=ids)}
        assert all(j.state == State.DONE for j in final.values()), [(j.id, j.error) for j in final.values()]
        lost = {i: [e.reason for e in rt.store.events(i) if e.to_state == "PREEMPTED"] for i in ids}
        ran, queued = sorted(ids, key=lambda i: "not counted" in " ".join(lost[i]))
        assert len(lost[ran]) == 1 and "not counted" not in lost[ran][0] and final[ran].attempts == 2, lost
        assert len(lost[queued]) == 1 and "it had not started, so it is not counted" in lost[queued][0], lost
        assert final[queued].attempts == 1, "an attempt that never began must not use up the job's retries"
        assert_results_home(settings, rt.store)
    finally:
        rt.close()
