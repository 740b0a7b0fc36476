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
        ok = [jobs.submit(rt.store, settings, "xpcs", source_endpoint=ep, inputs=["raw/good.h5"]) for ep in roots]
        truncated = jobs.submit(rt.store, settings, "xpcs", source_endpoint="aps", inputs=["raw/truncated.h5"])
        zeros = jobs.submit(rt.store, settings, "xpcs", source_endpoint="als", inputs=["raw/zeros.h5"])
        rt.agent("local").run(until_idle=True, max_seconds=180)

        for jid, ep in zip(ok, roots):
            job = rt.store.get_job(jid)
            assert job.state == State.DONE, job.error
            with h5py.File(roots[ep] / f"results/xpcs/job-{jid}/xpcs.h5") as f:
                g2 = f["/xpcs/multitau/normalized_g2"][()]
                assert g2.ndim == 2 and np.isfinite(g2).any()
        t, z = rt.store.get_job(truncated), rt.store.get_job(zeros)
        assert t.state == State.FAILED and "truncated.h5" in t.error
        assert z.state == State.FAILED and "zero" in z.error.lower()
        assert rt.store.items(truncated, "out") == [] and rt.store.items(zeros, "out") == []
        assert_results_home(settings, rt.store)
    finally:
        rt.close()
