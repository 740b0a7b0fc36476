"""Issue 15, findings 2, 6 (HDF5 part) and 7 (xpcs part): what an HDF5 input can make a workload read.

Finding 2: external raw storage, an external link or a virtual dataset (VDS) in a staged file made the
workload read a file outside the job (its bytes came back in the results). Finding 6: a small file
with a gzip chunk that decodes to gigabytes held each worker at 4+ GB for an hour. Finding 7: xpcs on
a 2-D or 4-D dataset said "saxs needs a 3-D stack". Every run here goes through the workload's own
``run``, as the agent calls it.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
import zlib
import time
from pathlib import Path

import h5py
import hdf5plugin
import numpy as np
import pytest

from rtlib.errors import InputDataError
from rtlib.workloads import get_workload

DATA = "/entry/data/data"
PARAMS = {"saxs": {}, "xpcs": {"frame_time_s": 0.001}, "laue": {"depth_end_um": 10.0}}
MARK = b"SECRET-of-another-workspace-"
BOMB_BYTES = 320 * 2**20  # one chunk's decoded size: past the 256 MiB cap, and cheap enough to build


def _write_honest(workload: str, path: Path) -> Path:
    if workload == "saxs":
        from rtlib.synth.detector import write_detector_file

        write_detector_file(path, frames=4, height=32, width=32)
    elif workload == "xpcs":
        from rtlib.synth.xpcs import write_xpcs_file

        write_xpcs_file(path, frames=64, height=16, width=16, num_q_rings=2, seed=0)
    else:
        from rtlib.synth.laue import write_laue_scan

        write_laue_scan(path, height_px=16, width_px=16, num_sources=1, seed=1, depth_end_um=10.0)
    return path


def _run(workload: str, inputs: list[Path], outdir: Path) -> dict:
    wl = get_workload(workload)
    outdir.mkdir(exist_ok=True)
    return wl.run(wl.validate(PARAMS[workload]), inputs, outdir, lambda fraction, message="": None)


def _secret_frames(frames: np.ndarray, secret_dir: Path) -> tuple[Path, Path]:
    """The frames as another workspace's files would hold them: raw bytes after a marker, and an HDF5 file."""
    secret_dir.mkdir(exist_ok=True)
    raw = secret_dir / "frames.bin"
    raw.write_bytes(MARK + frames.tobytes())
    with h5py.File(secret_dir / "outside.h5", "w") as f:
        f["data"] = frames
        f["mark"] = np.frombuffer(MARK, dtype="u1")
    raw.chmod(0o600)
    return raw, secret_dir / "outside.h5"


def _point_outside(path: Path, kind: str, secret_dir: Path, monkeypatch) -> Path:
    """Replace the frame stack of ``path`` by one whose bytes live in ``secret_dir``; the outside file."""
    with h5py.File(path, "a") as f:
        frames = f[DATA][()]
        del f[DATA]
        raw, outside = _secret_frames(frames, secret_dir)
        if kind == "external storage":
            f.create_dataset(DATA, shape=frames.shape, dtype=frames.dtype, external=[(str(raw), len(MARK), frames.nbytes)])
            return raw
        if kind == "external storage, relative":  # HDF5 reads it from the working directory
            monkeypatch.chdir(secret_dir)
            f.create_dataset(DATA, shape=frames.shape, dtype=frames.dtype, external=[(raw.name, len(MARK), frames.nbytes)])
            return raw
        if kind == "external link":
            f[DATA] = h5py.ExternalLink(os.path.relpath(outside, path.parent), "/data")
            return outside
        layout = h5py.VirtualLayout(shape=frames.shape, dtype=frames.dtype)
        layout[:] = h5py.VirtualSource(str(outside), "/data", shape=frames.shape)
        f.create_virtual_dataset(DATA, layout)
        return outside


def _assert_nothing_leaked(outdir: Path) -> None:
    leaked = [p for p in outdir.rglob("*") if p.is_file() and MARK in p.read_bytes()]
    assert leaked == []
    assert [p.name for p in outdir.iterdir()] == []  # refused before any result was written


def _outside_message(outside: Path, where: str = DATA) -> str:
    return (rf"{re.escape(where)} .*{re.escape(os.path.realpath(outside))}, outside the job's staged input files; "
            r".*stage that file with the job")


@pytest.mark.parametrize("kind", ["external storage", "external storage, relative", "external link", "virtual dataset"])
@pytest.mark.parametrize("workload", ["saxs", "xpcs", "laue"])
def test_frames_kept_in_an_outside_file_are_refused(tmp_path, workload, kind, monkeypatch):
    staged = tmp_path / "jobs/00000014/in"
    staged.mkdir(parents=True)
    path = _write_honest(workload, staged / "scan.h5")
    outside = _point_outside(path, kind, tmp_path / "other-workspace", monkeypatch)
    with pytest.raises(InputDataError, match=_outside_message(outside)) as err:
        _run(workload, [path], tmp_path / "out")
    assert MARK.decode() not in str(err.value)
    _assert_nothing_leaked(tmp_path / "out")


@pytest.mark.parametrize("kind", ["external link", "virtual dataset"])
def test_hdf5_prefix_variables_cannot_redirect_a_staged_link(tmp_path, kind, monkeypatch):
    """HDF5 looks under HDF5_EXT_PREFIX / HDF5_VDS_PREFIX before the linking file's own folder: a same-named
    file there is read instead of the staged one."""
    staged = tmp_path / "in"
    staged.mkdir()
    master = _write_honest("saxs", staged / "master.h5")
    with h5py.File(master, "a") as f:
        frames = f[DATA][()]
        del f[DATA]
        with h5py.File(staged / "frames.h5", "w") as g:
            g["data"] = frames
        if kind == "external link":
            f[DATA] = h5py.ExternalLink("frames.h5", "/data")
        else:
            layout = h5py.VirtualLayout(shape=frames.shape, dtype=frames.dtype)
            layout[:] = h5py.VirtualSource("frames.h5", "/data", shape=frames.shape)
            f.create_virtual_dataset(DATA, layout)
    secret_dir = tmp_path / "other-workspace"
    secret_dir.mkdir()
    with h5py.File(secret_dir / "frames.h5", "w") as g:
        g["data"] = frames * 7
    monkeypatch.setenv("HDF5_EXT_PREFIX" if kind == "external link" else "HDF5_VDS_PREFIX", str(secret_dir))
    with pytest.raises(InputDataError, match=_outside_message(secret_dir / "frames.h5")):
        _run("saxs", [master, staged / "frames.h5"], tmp_path / "out")
    _assert_nothing_leaked(tmp_path / "out")


def test_an_outside_link_anywhere_in_the_file_is_refused(tmp_path):
    """Not only the frames: a geometry value (read by saxs) linked to another workspace's file."""
    staged = tmp_path / "in"
    staged.mkdir()
    path = _write_honest("saxs", staged / "scan.h5")
    secret = tmp_path / "other-workspace.h5"
    with h5py.File(secret, "w") as g:
        g["distance"] = 9.0
    key = "/entry/instrument/detector/distance"
    with h5py.File(path, "a") as f:
        assert key in f
        del f[key]
        f[key] = h5py.ExternalLink(str(secret), "/distance")
    with pytest.raises(InputDataError, match=_outside_message(secret, key)):
        _run("saxs", [path], tmp_path / "out")


def test_links_into_staged_files_are_followed_and_audited(tmp_path):
    """An Eiger-style master linking its staged data file is read; what that data file points to is audited too."""
    staged = tmp_path / "in"
    staged.mkdir()
    master = _write_honest("saxs", staged / "master.h5")
    with h5py.File(master, "a") as f:
        frames = f[DATA][()]
        del f[DATA]
        f[DATA] = h5py.ExternalLink("frames.h5", "/data")
    raw, _ = _secret_frames(frames, tmp_path / "other-workspace")
    with h5py.File(staged / "frames.h5", "w") as g:  # staged, but its bytes are kept outside
        g.create_dataset("data", shape=frames.shape, dtype=frames.dtype, external=[(str(raw), len(MARK), frames.nbytes)])
    with pytest.raises(InputDataError, match=_outside_message(raw, "dataset /data")):
        _run("saxs", [master, staged / "frames.h5"], tmp_path / "out")
    _assert_nothing_leaked(tmp_path / "out")

    with h5py.File(staged / "frames.h5", "w") as g:  # the honest data file: the same run now works
        g["data"] = frames
    with h5py.File(staged / "virtual.h5", "w") as v:  # and so does a VDS over it
        layout = h5py.VirtualLayout(shape=frames.shape, dtype=frames.dtype)
        layout[:] = h5py.VirtualSource("frames.h5", "/data", shape=frames.shape)
        v.create_virtual_dataset(DATA, layout)
        with h5py.File(master, "r") as m:
            m.copy("/entry/instrument", v["/entry"])
    linked = _run("saxs", [master, staged / "frames.h5"], tmp_path / "linked")
    mapped = _run("saxs", [staged / "virtual.h5", staged / "frames.h5", master], tmp_path / "mapped")
    assert linked["frames"] == mapped["frames"] == len(frames)
    assert linked["mean_intensity"] == pytest.approx(mapped["mean_intensity"]) and linked["mean_intensity"] > 0


# -- finding 6: decompression bombs --------------------------------------------------------

_CHILD = """
import json, resource, sys, time
from pathlib import Path
from rtlib.workloads import get_workload
workload, params, path, outdir = sys.argv[1], json.loads(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
wl = get_workload(workload)
params = wl.validate(params)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
try:
    wl.run(params, [path], outdir, lambda fraction, message="": None)
    outcome = "DONE"
except Exception as err:
    outcome = f"{type(err).__name__}: {err}"
print(json.dumps({"outcome": outcome, "seconds": time.perf_counter() - start,
                  "grew_bytes": 1024 * (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)}))
"""


@functools.lru_cache(maxsize=1)
def _gzip_of_zeros(nbytes: int) -> bytes:
    """A zlib stream of ``nbytes`` zeros (about nbytes / 1030 bytes), built piece by piece."""
    coder, piece = zlib.compressobj(9), bytes(16 * 2**20)
    parts = [coder.compress(piece) for _ in range(nbytes // len(piece))]
    return b"".join(parts) + coder.compress(piece[: nbytes % len(piece)]) + coder.flush()


def _bomb(workload: str, path: Path, kind: str) -> None:
    """Frames whose first gzip chunk decodes to BOMB_BYTES: a chunk declared that large (rows past the frames:
    HDF5 decodes a whole chunk to read any of it), or a small declared chunk whose stream runs on."""
    with h5py.File(path, "a") as f:
        frames = f[DATA][()]
        del f[DATA]
        rows = frames.shape[1:]
        row_bytes = int(np.prod(rows)) * frames.dtype.itemsize
        if kind == "declared chunk":
            d = f.create_dataset(DATA, shape=frames.shape, maxshape=(None, *rows), dtype=frames.dtype,
                                 chunks=(BOMB_BYTES // row_bytes, *rows), compression="gzip")
        else:
            d = f.create_dataset(DATA, data=frames, chunks=(1, *rows), compression="gzip")
        d.id.write_direct_chunk((0,) * frames.ndim, _gzip_of_zeros(BOMB_BYTES))
        f["padding"] = np.random.default_rng(0).integers(0, 255, 2**20, dtype="u1")  # the file is ~1.4 MB


@pytest.mark.parametrize("kind", ["declared chunk", "stream past its chunk"])
@pytest.mark.parametrize("workload", ["saxs", "xpcs", "laue"])
def test_gzip_bomb_is_refused_fast_and_small(tmp_path, workload, kind):
    path = _write_honest(workload, tmp_path / "bomb.h5")
    _bomb(workload, path, kind)
    assert path.stat().st_size < 5 * 2**20
    (tmp_path / "out").mkdir()
    # a process of its own: the memory HDF5 takes is out of tracemalloc's sight, and ru_maxrss is per process
    done = subprocess.run([sys.executable, "-c", _CHILD, workload, json.dumps(PARAMS[workload]), str(path), str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    expected = (r"chunks of \d+ x \d+ x \d+ .* more than the 256 MiB one chunk may take" if kind == "declared chunk"
                else r"gzip chunk at \(0, 0, 0\) of \d+ bytes that decodes to more than its declared \d+ bytes")
    assert result["outcome"].startswith("InputDataError") and re.search(expected, result["outcome"]), result["outcome"]
    assert DATA in result["outcome"] and str(path) in result["outcome"]
    assert result["seconds"] < 10
    assert result["grew_bytes"] < 64 * 2**20, f"grew {result['grew_bytes'] / 2**20:.0f} MiB"


def test_a_filter_rtlib_cannot_bound_is_refused_before_reading(tmp_path):
    path = _write_honest("saxs", tmp_path / "zstd.h5")
    with h5py.File(path, "a") as f:
        frames = f[DATA][()]
        del f[DATA]
        f.create_dataset(DATA, data=frames, chunks=(1, *frames.shape[1:]), **hdf5plugin.Zstd())
    with pytest.raises(InputDataError, match=rf"{DATA} is compressed with filter 32015 \(.*\), which rtlib does not read .*"
                                             r"re-compress it with one of gzip, shuffle, fletcher32, lzf, blosc, lz4, bitshuffle"):
        _run("saxs", [path], tmp_path / "out")


# -- finding 7: the error names the workload that runs -------------------------------------


@pytest.mark.parametrize("shape", [(16, 16), (2, 8, 16, 16)])
def test_xpcs_on_a_stack_of_the_wrong_rank_names_xpcs(tmp_path, shape):
    path = _write_honest("xpcs", tmp_path / "scan.h5")
    with h5py.File(path, "a") as f:
        del f[DATA]
        f[DATA] = np.ones(shape, dtype="uint16")
    with pytest.raises(InputDataError) as err:
        _run("xpcs", [path], tmp_path / "out")
    message = str(err.value)
    assert "xpcs needs a 3-D stack (frames, y, x)" in message and "saxs" not in message
    assert f"dataset {DATA} has shape {shape} ({len(shape)}-D" in message


def test_laue_reads_row_blocks_within_the_memory_budget(tmp_path, monkeypatch):
    """saxs and xpcs cap the frames they hold at once; laue reads all wire steps of a block of rows, which a
    crafted (steps, y, x) shape could make any size: the block is capped the same way, whatever rows_per_block."""
    from rtlib.workloads.laue import reader, reconstruct

    path = _write_honest("laue", tmp_path / "scan.h5")
    with h5py.File(path, "r") as f:
        steps, height, width = f[DATA].shape
    whole = _run("laue", [path], tmp_path / "whole")
    monkeypatch.setattr(reconstruct, "BLOCK_BUDGET_BYTES", 3 * 8 * steps * width, raising=False)  # 3 rows, float64
    blocks = []
    real_read_rows = reader.read_rows

    def recording(path, dataset_path, row_start, row_stop, *args):
        blocks.append(row_stop - row_start)
        return real_read_rows(path, dataset_path, row_start, row_stop, *args)

    monkeypatch.setattr(reader, "read_rows", recording)
    capped = _run("laue", [path], tmp_path / "capped")
    assert blocks == [3] * (height // 3) + ([height % 3] if height % 3 else [])
    assert capped["peaks"] == whole["peaks"] and capped["num_peaks"] == whole["num_peaks"]


def test_a_photon_event_file_claiming_millions_of_empty_frames_is_refused_fast(tmp_path):
    """A Rigaku .bin states its frame count in its last word: two words claiming 2^24 frames would have the run
    correlate 16.7 M empty 512 x 1024 frames (hours of work from 16 bytes). Run in a child process, so that
    code without the check fails by the timeout instead of hanging the suite."""
    path = tmp_path / "claims.bin"
    np.array([(0 << 40) | (5 << 16) | 1, ((2**24 - 1) << 40) | (5 << 16) | 1], dtype="<u8").tofile(path)
    params = {"frame_time_s": 0.001, "pixel_size_um": 75.0, "detector_distance_m": 5.0, "wavelength_angstrom": 1.0,
              "beam_center_x_px": 512.0, "beam_center_y_px": 256.0}
    code = (
        "import json, sys; from pathlib import Path; from rtlib.workloads import get_workload\n"
        "wl = get_workload('xpcs'); p = json.loads(sys.argv[3])\n"
        "try:\n"
        "    wl.run(wl.validate(p), [Path(sys.argv[1])], Path(sys.argv[2]), lambda f, m='': None)\n"
        "except Exception as err:\n"
        "    print(type(err).__name__, err)\n"
        "else:\n"
        "    print('DONE')\n"
    )
    started = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-c", code, str(path), str(tmp_path / "out"), json.dumps(params)],
                              capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("a 16-byte event file kept the run busy for 30 s")
    assert re.search(r"InputDataError .*last event is in frame 16777215, but the file holds only 2 events", done.stdout), done
    assert time.perf_counter() - started < 30
    assert not any((tmp_path / "out").rglob("*.h5"))
