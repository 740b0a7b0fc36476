"""Finding the detector file among the inputs, opening it, and streaming its frames in chunks.

Every way a file can be unusable becomes an InputDataError that names the
file, the problem and what to do about it; h5py's own OSErrors are caught
and rephrased so that a person reading a failed job knows where to look.
"""

from __future__ import annotations

from pathlib import Path
from typing import ContextManager, Iterable, Iterator

import h5py
import hdf5plugin  # noqa: F401  registers the LZ4 / bitshuffle / Blosc filters detectors write with
import numpy as np

from ...errors import InputDataError
from ..h5safe import open_input

HDF5_SUFFIXES = (".h5", ".hdf5", ".nxs")

# No area detector has frames this large (an Eiger2 16M has 1.8e7 pixels);
# a dataset that claims more is almost surely not a frame stack, and its
# float64 sum image and q map alone would not fit in memory.
MAX_PIXELS_PER_FRAME = 2**27
# Compressed detector data (sparse XPCS under LZ4) shrinks tens of times, never this much: a file
# declaring more frame bytes than this multiple of its size is mostly unwritten chunks (fill
# values), crafted or broken, and reading it would cost hours for nothing.
MAX_DECLARED_TO_FILE_RATIO = 1000
# Frames held at once are capped so that one chunk, as float64, stays under this many bytes.
CHUNK_BUDGET_BYTES = 256 * 2**20
_LISTED = 20  # group members named in an error message
_SUGGESTED = 5  # 3-D datasets suggested in an error message
_NDIM_HINT = {2: ": one image, not a series of frames", 4: ": several stacks, or frames of a 3-D detector"}


def select_input(inputs: list[Path], *, workload: str = "saxs", what: str = "area-detector file") -> Path:
    """The first input named .h5/.hdf5/.nxs; failing that, the first whose content is HDF5.

    One run reduces one file: a job that stages several gets the first, and
    the rest are reported as ignored in the summary.
    """
    paths = [Path(p) for p in inputs]
    if not paths:
        raise InputDataError(f"{workload} got no input files; stage the {what} (.h5, .hdf5 or .nxs) as the job's input")
    for p in paths:
        if p.suffix.lower() in HDF5_SUFFIXES:
            return p
    for p in paths:
        if p.is_file() and h5py.is_hdf5(p):
            return p
    names = ", ".join(str(p) for p in paths[:_LISTED]) + (" ..." if len(paths) > _LISTED else "")
    raise InputDataError(
        f"no input HDF5 file among the {len(paths)} inputs ({names}); {workload} reads one {what} "
        f"named {'/'.join(HDF5_SUFFIXES)}: stage that file as the job's input"
    )


def open_detector_file(path: Path, staged: Iterable[Path] = (), workload: str = "saxs") -> ContextManager[h5py.File]:
    """The detector file, opened under the safe-open rules (``h5safe``); ``staged``: the job's input files."""
    return open_input(path, staged, workload=workload)


def frames_dataset(f: h5py.File, dataset_path: str, file_label: str, workload: str = "saxs") -> h5py.Dataset:
    """The frame stack at ``dataset_path``, checked to be a non-empty, numeric (frames, y, x) dataset;
    ``workload`` is the one reading it, named in the errors."""
    try:
        obj = f.get(dataset_path)
    except (KeyError, OSError):  # a dangling soft or external link: as good as missing
        obj = None
    if obj is None:
        raise InputDataError(_missing_dataset_message(f, dataset_path, file_label, workload))
    if not isinstance(obj, h5py.Dataset):
        raise InputDataError(
            f"{file_label}: {dataset_path} is a group, not a dataset; it holds {_members(obj)}. "
            f"{_suggestion(f, workload)}"
        )
    if obj.ndim != 3:
        raise InputDataError(
            f"{file_label}: dataset {dataset_path} has shape {obj.shape} ({obj.ndim}-D{_NDIM_HINT.get(obj.ndim, '')}); "
            f"{workload} needs a 3-D stack (frames, y, x). {_suggestion(f, workload)}"
        )
    if obj.dtype.kind not in "uif":
        raise InputDataError(f"{file_label}: dataset {dataset_path} holds {obj.dtype} values; expected detector counts (numbers)")
    frames, height, width = obj.shape
    if frames == 0 or height == 0 or width == 0:
        raise InputDataError(f"{file_label}: dataset {dataset_path} is empty (shape {obj.shape}); the acquisition wrote no frames")
    if height * width > MAX_PIXELS_PER_FRAME:
        raise InputDataError(
            f"{file_label}: dataset {dataset_path} declares frames of {height} x {width} pixels, larger than any "
            f"area detector; set dataset_path to the frame stack"
        )
    check_declared_size(f, obj, dataset_path, file_label, "frames")
    return obj


def check_declared_size(f: h5py.File, obj: h5py.Dataset, dataset_path: str, file_label: str, what: str) -> None:
    """Refuse a stack whose declared size the file cannot hold (unwritten chunks: crashed or crafted)."""
    declared = int(np.prod(obj.shape, dtype=np.float64)) * obj.dtype.itemsize
    on_disk = max(1, Path(f.filename).stat().st_size)
    if declared > MAX_DECLARED_TO_FILE_RATIO * on_disk:
        shape = " x ".join(map(str, obj.shape))
        raise InputDataError(
            f"{file_label}: dataset {dataset_path} declares {shape} {obj.dtype} {what} "
            f"({declared / 1e9:.3g} GB) but the file holds only {on_disk} bytes: its {what} were never written "
            "(a crashed acquisition, or a crafted file); re-acquire or re-transfer it"
        )


def iter_frame_chunks(dataset: h5py.Dataset, frames_per_chunk: int, file_label: str) -> Iterator[tuple[int, int, np.ndarray]]:
    """(start, stop, frames[start:stop]) for consecutive chunks of at most ``frames_per_chunk`` frames.

    Only one chunk is ever in memory, so the declared shape is never trusted
    to fit: a file claiming a huge number of frames costs time, not memory,
    and data missing behind a declared shape fails at the chunk that lacks it.
    """
    total = dataset.shape[0]
    frame_bytes_f64 = 8 * int(np.prod(dataset.shape[1:]))
    frames_per_chunk = max(1, min(frames_per_chunk, CHUNK_BUDGET_BYTES // frame_bytes_f64))
    for start in range(0, total, frames_per_chunk):
        stop = min(total, start + frames_per_chunk)
        try:
            block = dataset[start:stop]
        except OSError as err:
            raise InputDataError(
                f"{file_label}: reading frames {start}..{stop - 1} of {dataset.name} failed ({err}); the file is "
                "damaged (re-transfer it) or compressed with a filter this installation lacks (install hdf5plugin)"
            ) from None
        yield start, stop, block


# -- messages ---------------------------------------------------------------------------


def _missing_dataset_message(f: h5py.File, dataset_path: str, file_label: str, workload: str) -> str:
    parts = [p for p in dataset_path.split("/") if p]
    deepest, deepest_name = f, "/"
    for i in range(len(parts)):
        candidate = "/" + "/".join(parts[: i + 1])
        try:
            obj = f.get(candidate)
        except (KeyError, OSError):
            break
        if not isinstance(obj, h5py.Group):
            break
        deepest, deepest_name = obj, candidate
    where = f"the top level holds {_members(f)}"
    if deepest_name != "/":
        where = f"the nearest existing group {deepest_name} holds {_members(deepest)}; " + where
    return f"{file_label} has no dataset {dataset_path}: {where}. {_suggestion(f, workload)}"


def _members(group: h5py.Group) -> str:
    names = sorted(group.keys())
    if not names:
        return "nothing"
    shown = ", ".join(names[:_LISTED])
    return shown + (f" and {len(names) - _LISTED} more" if len(names) > _LISTED else "")


def _suggestion(f: h5py.File, workload: str) -> str:
    stacks: list[str] = []

    def visit(name: str, obj: object) -> object:
        if isinstance(obj, h5py.Dataset) and obj.ndim == 3:
            stacks.append("/" + name)
        return True if len(stacks) >= _SUGGESTED else None  # a non-None return stops the walk

    f.visititems(visit)
    if not stacks:
        return f"The file has no 3-D dataset, so it holds no frame stack {workload} can read."
    return f"Set dataset_path to the frame stack; 3-D datasets in the file: {', '.join(stacks)}."
