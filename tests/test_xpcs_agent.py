"""XPCS through the agent: good datasets come home analysed, bad ones fail alone with a specific reason."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from rtlib import jobs
from rtlib.compute.local import LocalDaskBackend
from rtlib.runtime import open_runtime
from rtlib.states import State
from rtlib.synth.xpcs import write_xpcs_file

from helpers import assert_results_home, make_settings


def test_xpcs_jobs_with_bad_inputs(tmp_path):
    settings = make_settings(tmp_path / "ws")
    rt = open_runtime(settings)
    rt.compute = LocalDaskBackend(workers=2)
    rt.compute.start()
    try:
        roots = {ep: Path(settings.endpoints[ep].root) for ep in ("aps", "als", "nsls2")}
        for ep, root in roots.items():
            (root / "raw").mkdir(parents=True)
            write_xpcs_file(root / "raw/good.h5", frames=200, height=48, width=48, seed=len(ep))
        good = (roots["aps"] / "raw/good.h5").read_bytes()
        (roots["aps"] / "raw/truncated.h5").write_bytes(good[: len(good) // 3])
        write_xpcs_file(roots["als"] / "raw/zeros.h5", frames=200, height=48, width=48)
        with h5py.File(roots["als"] / "raw/zeros.h5", "r+") as f:
            f["/entry/data/data"][...] = 0
        with h5py.File(roots["nsls2"] / "raw/good.h5", "r") as src, h5py.File(roots["nsls2"] / "raw/nan.h5", "w") as f:
            src.copy("/entry", f)
            frames = src["/entry/data/data"][()].astype(np.float32)
            frames[77, 20, 30] = np.nan
            del f["/entry/data/data"]
            f["/entry/data/data"] = frames
        (roots["nsls2"] / "raw/nodata.h5").write_bytes((roots["nsls2"] / "raw/good.h5").read_bytes())
        with h5py.File(roots["nsls2"] / "raw/nodata.h5", "r+") as f:
            del f["/entry/data/data"]
        with h5py.File(roots["aps"] / "raw/qmap_40x40.h5", "w") as f:
            f["/data/dynamicMap"] = np.ones((40, 40), np.int32)
            f["/data/staticMap"] = np.ones((40, 40), np.int32)
        ok = [jobs.submit(rt.store, settings, "xpcs", source_endpoint=ep, inputs=["raw/good.h5"]) for ep in roots]
        truncated = jobs.submit(rt.store, settings, "xpcs", source_endpoint="aps", inputs=["raw/truncated.h5"])
        zeros = jobs.submit(rt.store, settings, "xpcs", source_endpoint="als", inputs=["raw/zeros.h5"])
        nan = jobs.submit(rt.store, settings, "xpcs", source_endpoint="nsls2", inputs=["raw/nan.h5"],
                          params={"frames_per_chunk": 50})
        nodata = jobs.submit(rt.store, settings, "xpcs", source_endpoint="nsls2", inputs=["raw/nodata.h5"])
        misshaped = jobs.submit(rt.store, settings, "xpcs", source_endpoint="aps", inputs=["raw/good.h5"],
                                params={"qmap_file": "raw/qmap_40x40.h5"})
        rt.agent("local").run(until_idle=True, max_seconds=240)

        for jid, ep in zip(ok, roots):
            job = rt.store.get_job(jid)
            assert job.state == State.DONE, job.error
            with h5py.File(roots[ep] / f"results/xpcs/job-{jid}/xpcs.h5") as f:
                g2 = f["/xpcs/multitau/normalized_g2"][()]
                assert g2.ndim == 2 and np.isfinite(g2).any()
        t, z = rt.store.get_job(truncated), rt.store.get_job(zeros)
        assert t.state == State.FAILED and "truncated.h5" in t.error
        assert z.state == State.FAILED and "zero" in z.error.lower()
        expected_errors = {
            nan: ("nan.h5", "frame 77", "NaN"),
            nodata: ("nodata.h5", "no dataset /entry/data/data"),
            misshaped: ("qmap_40x40.h5", "/data/dynamicMap has shape (40, 40)", "48 x 48"),
        }
        for jid, parts in expected_errors.items():
            job = rt.store.get_job(jid)
            assert job.state == State.FAILED, (jid, job.state, job.error)
            for part in parts:
                assert part in job.error, f"{part!r} not in {job.error!r}"
        for jid in (truncated, zeros, *expected_errors):
            assert rt.store.items(jid, "out") == []  # nothing staged out for a failed analysis
        assert_results_home(settings, rt.store)
    finally:
        rt.close()
