"""The detector file of an xpcs run: choosing it, opening it, its frame stack, frame time, and frames in chunks.

Opening and naming problems are shared with the saxs reader (one wording for
one failure); what is particular to XPCS is checked here: bad values
(NaN, infinite or negative counts) stop the run at the chunk that holds them,
naming the frame, since a correlation over them would be silently wrong.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import ContextManager, Iterable, Iterator

import h5py
import numpy as np

from ...errors import InputDataError, ParameterError
from ..saxs import reader as saxs_reader
from ..saxs.reader import HDF5_SUFFIXES, iter_frame_chunks

__all__ = ["FRAME_TIME_KEYS", "checked_chunks", "frame_time", "frames_dataset", "open_detector_file", "select_inputs"]

FRAME_TIME_KEYS = (
    "/entry/instrument/detector/frame_time",
    "/entry/instrument/detector/count_time",  # when the detector has no dead time it is the frame time
)


def open_detector_file(path: Path, staged: Iterable[Path] = ()) -> ContextManager[h5py.File]:
    """The detector file, opened under the safe-open rules (``h5safe``); ``staged``: the job's input files."""
    return saxs_reader.open_detector_file(path, staged, workload="xpcs")


def frames_dataset(f: h5py.File, dataset_path: str, file_label: str) -> h5py.Dataset:
    """The (frames, y, x) stack, checked as saxs checks it; errors name xpcs."""
    return saxs_reader.frames_dataset(f, dataset_path, file_label, workload="xpcs")


def select_inputs(inputs: list[Path], qmap_file: str | None) -> tuple[Path, Path | None]:
    """(detector file, q-map file or None) among the staged inputs.

    ``qmap_file`` is matched against the inputs by name first (it was staged
    with the job), then taken as a path. The detector file is the first HDF5
    input that is not the q-map.
    """
    paths = [Path(p) for p in inputs]
    if not paths:
        raise InputDataError("xpcs got no input files; stage the detector HDF5 file (.h5, .hdf5 or .nxs) as the job's input")
    qmap = None
    if qmap_file is not None:
        wanted = Path(qmap_file)
        qmap = next((p for p in paths if p.name == wanted.name), None) or wanted
        if not qmap.is_file():
            raise InputDataError(f"q-map file {qmap_file} is neither among the inputs ({', '.join(p.name for p in paths)}) nor an existing file; stage it with the job")
    candidates = [p for p in paths if qmap is None or p.resolve() != qmap.resolve()]
    for p in candidates:
        if p.suffix.lower() in HDF5_SUFFIXES:
            return p, qmap
    for p in candidates:
        if p.is_file() and h5py.is_hdf5(p):
            return p, qmap
    if candidates:
        return candidates[0], qmap  # opening it gives the precise error
    raise InputDataError("the only input is the q-map file; stage the detector file with it")


def frame_time(f: h5py.File, given_s: float | None, file_label: str) -> tuple[float, str]:
    """Seconds between frames and where the value came from."""
    if given_s is not None:
        return float(given_s), "parameter"
    for key in FRAME_TIME_KEYS:
        obj = f.get(key)
        if isinstance(obj, h5py.Dataset) and obj.size == 1 and obj.dtype.kind in "uif":
            value = float(np.asarray(obj[()]).reshape(()))
            unit = obj.attrs.get("units", "s")
            unit = unit.decode() if isinstance(unit, bytes) else str(unit)
            scale = {"s": 1.0, "second": 1.0, "seconds": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6}.get(unit.strip().lower())
            if scale is None:
                raise InputDataError(f"{file_label}: {key} has units {unit!r}, not a time rtlib knows (s, ms, us); pass frame_time_s")
            if not (math.isfinite(value) and value > 0):
                raise InputDataError(f"{file_label}: {key} = {value} is not a positive time; pass frame_time_s")
            return value * scale, f"file:{key}"
    raise ParameterError(f"frame_time_s was not given and {file_label} has no {' nor '.join(FRAME_TIME_KEYS)}; pass frame_time_s in the job parameters")


def checked_chunks(dataset: h5py.Dataset, frames_per_chunk: int, file_label: str) -> Iterator[tuple[int, int, np.ndarray]]:
    """``iter_frame_chunks``, refusing NaN, infinite or negative values with the first frame that has one."""
    floating = dataset.dtype.kind == "f"
    signed = dataset.dtype.kind in "if"
    for start, stop, block in iter_frame_chunks(dataset, frames_per_chunk, file_label):
        if floating:
            bad = ~np.isfinite(block)
            if bad.any():
                frame = start + int(np.argmax(bad.reshape(len(block), -1).any(axis=1)))
                raise InputDataError(
                    f"{file_label}: frame {frame} of {dataset.name} holds NaN or infinite values ({int(bad.sum())} in frames "
                    f"{start}..{stop - 1}); mask the bad pixels in the q-map or repair the file"
                )
        if signed and (block < 0).any():
            frame = start + int(np.argmax((block < 0).reshape(len(block), -1).any(axis=1)))
            raise InputDataError(f"{file_label}: frame {frame} of {dataset.name} has negative counts; XPCS needs counts >= 0")
        yield start, stop, block
