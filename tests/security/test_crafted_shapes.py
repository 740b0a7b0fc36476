"""Security review checks of issue 10 that belong to no single module: crafted shapes, truncated files, leaked secrets."""

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


@pytest.mark.parametrize("dataset, shape, message", [
    ("/entry/data/data", (10**6, 4096, 4096), r"declares 1000000 x 4096 x 4096 float64 wire-step images .* never written"),
    ("/entry/wire/position_um", (10**9, 3), r"position_um has shape \(1000000000, 3\); expected \(steps, 3\)|more values than"),
    ("/entry/detector/position_um", (10**9,), r"position_um has shape \(1000000000,\); expected shape \(3,\)"),
])
def test_laue_file_with_a_huge_declared_dataset_is_refused_before_reading(tmp_path, dataset, shape, message):
    from rtlib.synth.laue import write_laue_scan

    path = tmp_path / "scan.h5"
    write_laue_scan(path, height_px=16, width_px=16, num_sources=1, seed=1, depth_end_um=10.0)
    with h5py.File(path, "a") as f:  # replace one dataset with a huge one of which nothing is written
        del f[dataset]
        f.create_dataset(dataset, shape=shape, dtype="float64", chunks=(1,) * (len(shape) - 1) + (min(shape[-1], 4096),))
    wl = get_workload("laue")
    tracemalloc.start()
    t0 = time.perf_counter()
    with pytest.raises(InputDataError, match=message):
        wl.run(wl.validate({}), [path], tmp_path / "out", lambda f, m="": None)
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


def _png_declaring(path: Path, width: int, height: int) -> Path:
    """A valid 8x8 grayscale PNG whose header then claims width x height pixels (CRC fixed up)."""
    import io
    import struct
    import zlib

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8), mode="L").save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4:ihdr + 12] = struct.pack(">II", width, height)
    data[ihdr + 17:ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr:ihdr + 17])) & 0xFFFFFFFF)
    path.write_bytes(bytes(data))
    return path


def test_em_tile_with_a_huge_declared_size_is_refused_before_decoding(tmp_path):
    from rtlib.workloads.connectomics.io import read_tile

    tile = _png_declaring(tmp_path / "tile_00_00.png", 9000, 9000)  # under PIL's own bomb limit: 81 MB if decoded
    tracemalloc.start()
    with pytest.raises(InputDataError, match=r"tile_00_00.png declares 9000 x 9000 px; layout.json says 96x96"):
        read_tile(tile, (96, 96))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 16 * 2**20, f"peak {peak / 2**20:.0f} MiB"


def test_result_zarr_with_huge_chunks_is_refused_before_reading(tmp_path):
    import zarr

    from rtlib.napari_plugin import read_result

    group = zarr.open_group(str(tmp_path / "crafted.zarr"), mode="w")
    group.attrs["scale_nm"] = [40.0, 4.0, 4.0]
    group.create_array("image", shape=(4096, 65536, 65536), chunks=(4096, 65536, 65536), dtype="uint8")
    group.create_array("segmentation", shape=(8, 8, 8), chunks=(8, 8, 8), dtype="uint32")
    # The reader imports dask.array lazily, which can import xarray and pandas (tens of MiB of modules):
    # import them first, so that the peak measured is the data read, not the code loaded.
    import dask.array  # noqa: F401

    tracemalloc.start()
    with pytest.raises(InputDataError, match=r"array 'image' declares chunks of 4096 x 65536 x 65536 uint8 .* damaged or crafted"):
        read_result(tmp_path / "crafted.zarr")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 64 * 2**20, f"peak {peak / 2**20:.0f} MiB"
