"""Laue through the agent: a scan comes home reconstructed (its row blocks split over the cluster), bad scans fail alone."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from rtlib import jobs
from rtlib.compute.local import LocalDaskBackend
from rtlib.runtime import open_runtime
from rtlib.states import State
from rtlib.synth.laue import read_ground_truth, write_laue_scan

from helpers import assert_results_home, make_settings

PARAMS = {"depth_start_um": -10.0, "depth_end_um": 50.0, "depth_step_um": 1.0, "rows_per_block": 16}


def test_laue_jobs_through_the_agent(tmp_path):
    settings = make_settings(tmp_path / "ws")
    rt = open_runtime(settings)
    rt.compute = LocalDaskBackend(workers=2)
    rt.compute.start()
    try:
        root = Path(settings.endpoints["aps"].root)
        (root / "raw").mkdir(parents=True)
        write_laue_scan(root / "raw/scan.h5", height_px=48, width_px=48, num_sources=3, seed=2)
        good = (root / "raw/scan.h5").read_bytes()
        (root / "raw/truncated.h5").write_bytes(good[: len(good) // 3])
        (root / "raw/short.h5").write_bytes(good)
        with h5py.File(root / "raw/short.h5", "r+") as f:
            positions = f["/entry/wire/position_um"][()]
            del f["/entry/wire/position_um"]
            f["/entry/wire/position_um"] = positions[:-1]
        ok = jobs.submit(rt.store, settings, "laue", source_endpoint="aps", inputs=["raw/scan.h5"],
                         params={**PARAMS, "split_over_workers": True})
        truncated = jobs.submit(rt.store, settings, "laue", source_endpoint="aps", inputs=["raw/truncated.h5"], params=PARAMS)
        short = jobs.submit(rt.store, settings, "laue", source_endpoint="aps", inputs=["raw/short.h5"], params=PARAMS)
        rt.agent("local").run(until_idle=True, max_seconds=120)

        job = rt.store.get_job(ok)
        assert job.state == State.DONE, job.error
        truth = read_ground_truth(root / "raw/scan.h5")
        assert job.summary["num_peaks"] == len(truth)
        with h5py.File(root / f"results/laue/job-{ok}/laue.h5") as f:
            assert f["/laue/depth_resolved"].shape == (60, 48, 48)
            assert bool(f["/laue"].attrs["split_over_workers"])  # the blocks ran as tasks of the cluster
            peaks = f["/laue/peaks"][()]
        for source in truth:
            nearest = peaks[np.argmin(np.hypot(peaks["x_px"] - source.x_px, peaks["y_px"] - source.y_px))]
            assert abs(nearest["depth_um"] - source.depth_um) < 1.0
        t, s = rt.store.get_job(truncated), rt.store.get_job(short)
        assert t.state == State.FAILED and "truncated.h5" in t.error and "InputDataError" in t.error
        assert s.state == State.FAILED and "one wire position per image" in s.error
        assert rt.store.items(truncated, "out") == [] and rt.store.items(short, "out") == []
        assert_results_home(settings, rt.store)
    finally:
        rt.close()
