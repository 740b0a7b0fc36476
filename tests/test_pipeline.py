"""The whole real-time loop in-process: stage in, analyse on a real dask LocalCluster, stage out."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import h5py
import numpy as np
import pytest

from rtlib import jobs
from rtlib.errors import EndpointError, ParameterError
from rtlib.runtime import Runtime, open_runtime
from rtlib.states import State
from rtlib.store import JobSpec
from rtlib.transfer.base import TransferBackend

from helpers import assert_results_home, make_settings, produce, temporaries


def _runtime(settings, compute, **kw) -> Runtime:
    rt = open_runtime(settings, **kw)
    rt.compute = compute
    return rt


def _run_all(rt: Runtime, max_seconds: float = 120) -> None:
    agent = rt.agent("local")
    agent.run(until_idle=True, max_seconds=max_seconds)


def test_full_loop_three_endpoints(tmp_path, store_url, compute):
    settings = make_settings(tmp_path / "ws", store_url)
    rt = _runtime(settings, compute)
    try:
        data = produce(settings, 6)
        ids = [jobs.submit(rt.store, settings, "saxs", source_endpoint=ep, inputs=[rel], params={"num_q_bins": 32}, beamline=f"{ep}-demo")
               for ep, rel in data]
        _run_all(rt)
        done = rt.store.list_jobs(ids=ids)
        assert [j.state for j in done] == [State.DONE] * 6, [(j.id, j.state, j.error) for j in done]
        assert assert_results_home(settings, rt.store) >= 6 * 3
        for (ep, _), job in zip(data, done):
            res = Path(settings.endpoints[ep].root) / f"results/saxs/job-{job.id}"
            with h5py.File(res / "saxs.h5") as f:
                assert f["/saxs/intensity"].shape == (32,)
                assert np.isfinite(f["/saxs/intensity"][()]).any()
            assert (res / "summary.json").exists()
            assert job.summary["frames"] == 4
            states = [e.to_state for e in rt.store.events(job.id)]
            assert states == ["CREATED", "STAGING_IN", "STAGED_IN", "RUNNING", "RUN_DONE", "STAGING_OUT", "DONE"]
        for ep in settings.endpoints.values():
            assert temporaries(Path(ep.root)) == []
    finally:
        rt.compute = None
        rt.close()


def test_bad_input_fails_only_that_job(tmp_path, compute):
    settings = make_settings(tmp_path / "ws")
    rt = _runtime(settings, compute)
    try:
        good = produce(settings, 3)
        aps = Path(settings.endpoints["aps"].root)
        # a truncated HDF5 file
        (aps / "raw/truncated.h5").write_bytes((aps / good[0][1]).read_bytes()[:3000])
        # a symlink inside the endpoint that points outside its root
        outside = tmp_path / "secret.h5"
        outside.write_bytes(b"not for you")
        os.symlink(outside, aps / "raw/escape.h5")
        ok_ids = [jobs.submit(rt.store, settings, "saxs", source_endpoint=ep, inputs=[rel]) for ep, rel in good]
        bad = {
            "truncated": jobs.submit(rt.store, settings, "saxs", source_endpoint="aps", inputs=["raw/truncated.h5"]),
            "missing dataset": jobs.submit(rt.store, settings, "saxs", source_endpoint="aps", inputs=[good[0][1]], params={"dataset_path": "/entry/nope"}),
            "missing file": jobs.submit(rt.store, settings, "saxs", source_endpoint="aps", inputs=["raw/never-written.h5"]),
            "escape": jobs.submit(rt.store, settings, "saxs", source_endpoint="aps", inputs=["raw/escape.h5"]),
            # a client that skipped validation: the agent validates again before staging anything
            "unknown param": rt.store.create_job(JobSpec(workload="saxs", source_endpoint="aps", inputs=[good[0][1]], dest_endpoint="aps",
                                                         output_path="results/x", params={"beam_centre": 3})),
        }
        # submission-time refusals: nothing is recorded
        with pytest.raises(ParameterError, match="unknown parameter 'beam_centre'"):
            jobs.submit(rt.store, settings, "saxs", source_endpoint="aps", inputs=[good[0][1]], params={"beam_centre": 3})
        with pytest.raises(ParameterError, match="num_q_bins"):
            jobs.submit(rt.store, settings, "saxs", source_endpoint="aps", inputs=[good[0][1]], params={"num_q_bins": "many"})
        with pytest.raises(EndpointError, match=r"'\.\.' is not allowed"):
            jobs.submit(rt.store, settings, "saxs", source_endpoint="aps", inputs=["../../etc/passwd"])
        _run_all(rt)
        for jid in ok_ids:
            assert rt.store.get_job(jid).state == State.DONE
        errors = {k: rt.store.get_job(v) for k, v in bad.items()}
        assert all(j.state == State.FAILED for j in errors.values()), {k: (j.state, j.error) for k, j in errors.items()}
        assert "truncated.h5" in errors["truncated"].error and "InputDataError" in errors["truncated"].error
        assert "/entry/nope" in errors["missing dataset"].error
        assert "never-written.h5" in errors["missing file"].error
        assert "outside" in errors["escape"].error and not list((Path(settings.endpoints["alcf"].root)).rglob("escape.h5"))
        assert "unknown parameter 'beam_centre'" in errors["unknown param"].error
        assert_results_home(settings, rt.store)
    finally:
        rt.compute = None
        rt.close()


def test_transfer_faults_all_jobs_done(tmp_path, compute):
    settings = make_settings(tmp_path / "ws", transfer_retries=8)
    rt = _runtime(settings, compute, faults="fail=0.2,corrupt=0.2,seed=7")
    try:
        data = produce(settings, 9)
        ids = [jobs.submit(rt.store, settings, "saxs", source_endpoint=ep, inputs=[rel]) for ep, rel in data]
        _run_all(rt)
        assert [rt.store.get_job(i).state for i in ids] == [State.DONE] * 9
        injector = rt.transfer.faults
        assert injector.failures_injected > 0 and injector.corruptions_injected > 0
        retried = [it for it in rt.store.items() if it.attempts > 1]
        assert retried, "faults were injected, so some items must have needed more than one attempt"
        assert_results_home(settings, rt.store)
        staged = list((Path(settings.endpoints["alcf"].root) / "jobs").rglob("in/*.h5"))
        src = {Path(rel).name: Path(settings.endpoints[ep].root) / rel for ep, rel in data}
        for p in staged:  # every staged copy is byte-identical to its source: corruption was caught
            assert p.read_bytes() == src[p.name].read_bytes()
    finally:
        rt.compute = None
        rt.close()


def test_cancel_and_retry(tmp_path, compute):
    settings = make_settings(tmp_path / "ws")
    rt = _runtime(settings, compute)
    try:
        (ep, rel), = produce(settings, 1)
        jid = jobs.submit(rt.store, settings, "noop", source_endpoint=ep, inputs=[rel], params={"sleep_s": 0.1})
        jobs.cancel(rt.store, jid)
        assert rt.store.get_job(jid).state == State.CANCELLED
        _run_all(rt, max_seconds=10)
        assert rt.store.get_job(jid).state == State.CANCELLED
        jobs.retry(rt.store, jid)
        _run_all(rt)
        job = rt.store.get_job(jid)
        assert job.state == State.DONE and job.attempts == 1
    finally:
        rt.compute = None
        rt.close()


class RecordingTransfer(TransferBackend):
    """Wraps the real backend; records each batch (direction, item count, bytes) and the most batches in flight at once."""

    def __init__(self, inner):
        self.inner = inner
        self.batches: list[tuple[str, int, int]] = []
        self.in_flight = self.max_in_flight = 0
        self._lock = threading.Lock()

    def list_files(self, endpoint, path):
        return self.inner.list_files(endpoint, path)

    def local_path(self, endpoint, path):
        return self.inner.local_path(endpoint, path)

    def transfer_batch(self, requests, progress=None, *, on_outcome=None):
        direction = "in" if requests[0].dst_endpoint == "alcf" else "out"
        with self._lock:
            self.batches.append((direction, len(requests), sum(r.size_bytes for r in requests)))
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return self.inner.transfer_batch(requests, progress, on_outcome=on_outcome)
        finally:
            with self._lock:
                self.in_flight -= 1

    def close(self):
        self.inner.close()


def _intervals(store, job_ids, start: State, end: State) -> dict[int, tuple[float, float]]:
    """Per job, when it entered `start` and when it entered `end` after that (from the event table)."""
    out = {}
    for jid in job_ids:
        times = {e.to_state: e.timestamp for e in store.events(jid)}
        out[jid] = (times[start.value], times[end.value])
    return out


def test_transfers_are_batched_by_bytes_bounded_in_flight_and_overlap_analysis(tmp_path, compute):
    n_jobs, in_flight = 8, 2
    settings = make_settings(tmp_path / "ws", transfers_in_flight=in_flight, batch_bytes=1_200_000)
    rt = _runtime(settings, compute, link_mbps=24.0)  # each ~0.5 MB input takes about 0.2 s of the whole link
    recorder = RecordingTransfer(rt.transfer)
    rt.transfer = recorder
    try:
        data = produce(settings, n_jobs, frames=16, size_px=128)
        size = (Path(settings.endpoints["aps"].root) / data[0][1]).stat().st_size
        assert 400_000 < size < 600_000
        ids = [jobs.submit(rt.store, settings, "noop", source_endpoint=ep, inputs=[rel], params={"sleep_s": 0.5}) for ep, rel in data]
        _run_all(rt)
        assert [rt.store.get_job(i).state for i in ids] == [State.DONE] * n_jobs

        stage_in = [b for b in recorder.batches if b[0] == "in"]
        assert sum(b[1] for b in stage_in) == n_jobs, "every input sent exactly once"
        # batched by bytes: never past batch_bytes (a lone larger item aside), and several inputs per batch
        assert all(nbytes <= settings.agent.batch_bytes or items == 1 for _, items, nbytes in recorder.batches), recorder.batches
        assert max(items for _, items, _ in stage_in) == settings.agent.batch_bytes // size == 2, stage_in
        assert len(stage_in) < n_jobs
        # bounded in flight, and the bound was used
        assert recorder.max_in_flight == in_flight

        # stage-in of later jobs overlaps the analysis of earlier ones
        staging = _intervals(rt.store, ids, State.STAGING_IN, State.STAGED_IN)
        running = _intervals(rt.store, ids, State.RUNNING, State.RUN_DONE)
        overlaps = {(a, b) for a, (r0, r1) in running.items() for b, (s0, s1) in staging.items() if a != b and s0 < r1 and r0 < s1}
        assert len({b for _, b in overlaps}) >= 2, (staging, running)
        first_run = min(r0 for r0, _ in running.values())
        assert sum(s1 > first_run for _, s1 in staging.values()) >= 2, "analysis started before every input had arrived"
    finally:
        rt.compute = None
        rt.close()
