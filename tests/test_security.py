"""Security review checks that belong to no single module (issue 10): crafted inputs and leaked secrets."""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path

import h5py
import pytest

from rtlib.errors import InputDataError
from rtlib.workloads import get_workload
from rtlib.workloads.saxs import reader


def _crafted(path: Path, shape: tuple[int, int, int]) -> Path:
    with h5py.File(path, "w") as f:  # declares a huge stack, writes no chunk of it
        f.create_dataset("/entry/data/data", shape=shape, dtype="uint16", chunks=(1, 256, 256))
    return path


@pytest.mark.parametrize("workload", ["saxs", "xpcs"])
def test_huge_declared_shape_is_refused_fast_and_small(tmp_path, workload):
    path = _crafted(tmp_path / "huge.h5", (10**6, 8192, 8192))
    wl = get_workload(workload)
    tracemalloc.start()
    t0 = time.perf_counter()
    with pytest.raises(InputDataError, match=r"declares 1000000 x 8192 x 8192 uint16 frames .* never written"):
        wl.run(wl.validate({"frame_time_s": 0.001} if workload == "xpcs" else {}), [path], tmp_path, lambda f, m="": None)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert time.perf_counter() - t0 < 10
    assert peak < 64 * 2**20, f"peak {peak / 2**20:.0f} MiB"


def test_chunk_is_capped_by_the_memory_budget(tmp_path, monkeypatch):
    path = tmp_path / "big-frames.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("/entry/data/data", data=__import__("numpy").ones((6, 512, 512), dtype="uint16"))
    monkeypatch.setattr(reader, "CHUNK_BUDGET_BYTES", 2 * 8 * 512 * 512)  # two float64 frames
    with h5py.File(path) as f:
        sizes = [stop - start for start, stop, _ in reader.iter_frame_chunks(f["/entry/data/data"], 32, "big-frames.h5")]
    assert sizes == [2, 2, 2]


def test_executed_notebooks_carry_no_secret(tmp_path, monkeypatch):
    """A service-account secret in the kernel's environment never reaches an executed notebook or its outputs."""
    from rtlib.notebooks import run_notebook
    from rtlib.synth.detector import write_detector_file

    secret = "nb-secret-8c1f0a-must-not-leak"
    monkeypatch.setenv("RTLIB_APS_SECRET", secret)
    monkeypatch.setenv("GLOBUS_SDK_CLIENT_SECRET", secret)
    data = tmp_path / "scan.h5"
    write_detector_file(data, frames=4, height=64, width=64, seed=1)
    run = run_notebook("saxs", data, tmp_path / "out", {"num_q_bins": 20}, progress=False)
    written = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert any(p.suffix == ".ipynb" for p in written), written
    for p in written:
        assert secret.encode() not in p.read_bytes(), f"{p} holds the secret"
    assert run is not None
