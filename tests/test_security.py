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
