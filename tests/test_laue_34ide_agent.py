"""A 34-ID-E scan (step files + geometry XML) as a job through the agent: staged, reconstructed with its row blocks
split over the cluster, results home with nothing of the stacked copy; a scan missing a step fails naming the file."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from rtlib import jobs
from rtlib.compute.local import LocalDaskBackend
from rtlib.runtime import open_runtime
from rtlib.states import State
from rtlib.synth.laue import LaueSource, write_laue_scan_34ide

from helpers import assert_results_home, make_settings

PARAMS = {"depth_start_um": -10.0, "depth_end_um": 50.0, "depth_step_um": 1.0, "rows_per_block": 16}
SOURCES = [LaueSource(depth_um=9.2, x_px=14.0, y_px=15.0, counts=4000.0),
           LaueSource(depth_um=21.4, x_px=14.0, y_px=15.0, counts=3000.0),
           LaueSource(depth_um=30.1, x_px=30.0, y_px=28.0, counts=5000.0)]


def test_34ide_scan_through_the_agent(tmp_path):
    settings = make_settings(tmp_path / "ws")
    rt = open_runtime(settings)
    rt.compute = LocalDaskBackend(workers=2)
    rt.compute.start()
    try:
        root = Path(settings.endpoints["aps"].root)
        write_laue_scan_34ide(root / "raw34", height_px=40, width_px=40, sources=SOURCES, seed=4)
        names = sorted(p.name for p in (root / "raw34").glob("wire_scan_*.h5"))
        inputs = [f"raw34/{n}" for n in names] + ["raw34/geoN.xml"]
        ok = jobs.submit(rt.store, settings, "laue", source_endpoint="aps", inputs=inputs,
                         params={**PARAMS, "split_over_workers": True})
        gap = jobs.submit(rt.store, settings, "laue", source_endpoint="aps",
                          inputs=[i for i in inputs if not i.endswith(names[20])], params=PARAMS)
        rt.agent("local").run(until_idle=True, max_seconds=180)

        job = rt.store.get_job(ok)
        assert job.state == State.DONE, job.error
        assert job.summary["input_layout"] == "34ide" and job.summary["step_files"] == len(names)
        found = sorted(p["depth_um"] for p in job.summary["peaks"])
        np.testing.assert_allclose(found, sorted(s.depth_um for s in SOURCES), atol=0.6)
        home = root / f"results/laue/job-{ok}"
        assert sorted(p.name for p in home.iterdir()) == ["laue.h5", "laue_peaks.csv", "summary.json"]
        with h5py.File(home / "laue.h5") as f:
            assert bool(f["/laue"].attrs["split_over_workers"])
            assert f["/laue"].attrs["geometry_file"] == "geoN.xml"
        failed = rt.store.get_job(gap)
        assert failed.state == State.FAILED and names[20] in failed.error and "is missing" in failed.error
        assert rt.store.items(gap, "out") == []
        assert_results_home(settings, rt.store)
    finally:
        rt.close()
