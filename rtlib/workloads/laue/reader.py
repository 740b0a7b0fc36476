"""Finding and opening the wire-scan file, reading its geometry and its images by blocks of rows.

The layout is documented in ``rtlib.synth.laue`` and the README. Every way
a file can be unusable (missing, truncated, not HDF5, a dataset missing or
of the wrong shape, as many wire positions as images or not, a scan that
goes back and forth) is an InputDataError naming the file and the dataset.
"""

from __future__ import annotations

from pathlib import Path
from typing import ContextManager, Iterable

import h5py
import hdf5plugin  # noqa: F401  registers the compression filters detectors write with
import numpy as np

from ...errors import InputDataError
from ..h5safe import open_input
from ..saxs.reader import HDF5_SUFFIXES  # noqa: F401  (re-exported: the same rule for every one-file workload)
from ..saxs.reader import check_declared_size
from ..saxs.reader import select_input as select_hdf5_input
from .geometry import ScanGeometry, make_geometry

# A wire scan has at most this many steps (one position, x y z, per step): a geometry dataset that declares
# more is crafted or not geometry, and is refused before it is read.
MAX_WIRE_STEPS = 10**6

# name in make_geometry -> (dataset, shape; None: one number)
GEOMETRY_DATASETS: dict[str, tuple[str, tuple[int, ...] | None]] = {
    "wire_diameter_um": ("/entry/wire/diameter_um", None),
    "wire_axis": ("/entry/wire/axis", (3,)),
    "beam_origin_um": ("/entry/beam/origin_um", (3,)),
    "beam_direction": ("/entry/beam/direction", (3,)),
    "detector_position_um": ("/entry/detector/position_um", (3,)),
    "detector_rotation_rad": ("/entry/detector/rotation_rad", (3,)),
    "pixel_size_x_um": ("/entry/detector/pixel_size_x_um", None),
    "pixel_size_y_um": ("/entry/detector/pixel_size_y_um", None),
}
WIRE_POSITIONS = "/entry/wire/position_um"


def select_input(inputs: list[Path]) -> Path:
    """The wire-scan file among the inputs (the same rule as every one-file workload)."""
    return select_hdf5_input(inputs, workload="laue", what="wire-scan HDF5 file")


def open_scan_file(path: Path, staged: Iterable[Path | str] = (), check_streams: bool = True) -> ContextManager[h5py.File]:
    """The wire-scan file, opened under the safe-open rules (``h5safe``); ``staged``: the job's input files."""
    return open_input(path, staged, workload="laue", check_streams=check_streams)


def images_dataset(f: h5py.File, dataset_path: str, label: str) -> h5py.Dataset:
    """The (steps, y, x) image stack, checked: numeric, at least two steps, not empty."""
    obj = _get(f, dataset_path)
    if obj is None:
        raise InputDataError(f"{label} has no dataset {dataset_path}; the top level holds {sorted(f.keys())}. "
                             "Set dataset_path to the wire-step image stack (steps, y, x)")
    if not isinstance(obj, h5py.Dataset) or obj.ndim != 3:
        shape = getattr(obj, "shape", "a group")
        raise InputDataError(f"{label}: {dataset_path} is {shape}; laue needs a 3-D image stack (wire steps, y, x)")
    if obj.dtype.kind not in "uif":
        raise InputDataError(f"{label}: {dataset_path} holds {obj.dtype} values; expected detector counts")
    steps, height, width = obj.shape
    if steps < 2 or height == 0 or width == 0:
        raise InputDataError(f"{label}: {dataset_path} has shape {obj.shape}; a wire scan needs at least 2 steps of non-empty images")
    check_declared_size(f, obj, dataset_path, label, "wire-step images")
    return obj


def read_geometry(f: h5py.File, label: str, image_shape: tuple[int, int, int], wire_diameter_um: float | None = None) -> ScanGeometry:
    """The scan geometry stored in the file; ``wire_diameter_um`` given replaces the file's."""
    values: dict[str, object] = {}
    for name, (key, shape) in GEOMETRY_DATASETS.items():
        if name == "wire_diameter_um" and wire_diameter_um is not None:
            values[name] = float(wire_diameter_um)
            continue
        values[name] = _read_numbers(f, key, shape, label)
    steps, height, width = image_shape
    positions = _read_numbers(f, WIRE_POSITIONS, None, label, scalar=False)
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise InputDataError(f"{label}: {WIRE_POSITIONS} has shape {positions.shape}; expected (steps, 3), "
                             "the wire centre x, y, z in um at each step")
    if positions.shape[0] != steps:
        raise InputDataError(f"{label}: {positions.shape[0]} wire positions in {WIRE_POSITIONS} but {steps} images in "
                             "the image stack; there must be one wire position per image")
    try:
        geometry = make_geometry(wire_centres_um=positions, height_px=height, width_px=width, **values)
    except ValueError as err:
        raise InputDataError(f"{label}: unusable geometry: {err}") from None
    travel = geometry.scan_positions_um()
    if not np.all(np.diff(travel) > 0):
        bad = int(np.argmax(np.diff(travel) <= 0)) + 1
        raise InputDataError(
            f"{label}: the wire scan is not monotonic: step {bad} is at {travel[bad]:.4g} um along the scan, "
            f"step {bad - 1} at {travel[bad - 1]:.4g} um (positions in {WIRE_POSITIONS}); a wire scan must move "
            "the wire one way, across the wire axis"
        )
    return geometry


def read_rows(path: str, dataset_path: str, row_start: int, row_stop: int, staged: tuple[str, ...] = ()) -> np.ndarray:
    """(steps, row_stop - row_start, x) images of a block of rows, as float64.

    The file is audited again (a worker has only its path), but its compressed streams are not decoded to be
    measured once per block: the run did that when it opened the file first.
    """
    label = str(path)
    with open_scan_file(Path(path), staged, check_streams=False) as f:
        dset = images_dataset(f, dataset_path, label)
        try:
            return dset[:, row_start:row_stop, :].astype(np.float64)
        except OSError as err:
            raise InputDataError(
                f"{label}: reading rows {row_start}..{row_stop - 1} of {dataset_path} failed ({err}); the file is "
                "damaged (re-transfer it) or compressed with a filter this installation lacks"
            ) from None


def _get(f: h5py.File, key: str):
    try:
        return f.get(key)
    except (KeyError, OSError):  # a dangling link is as good as missing
        return None


def _read_numbers(f: h5py.File, key: str, shape: tuple[int, ...] | None, label: str, scalar: bool = True) -> np.ndarray | float:
    obj = _get(f, key)
    if obj is None:
        raise InputDataError(f"{label} has no dataset {key}; a laue wire-scan file needs it (see the layout in the README)")
    if not isinstance(obj, h5py.Dataset) or obj.dtype.kind not in "uif":
        raise InputDataError(f"{label}: {key} is not a numeric dataset")
    one_number = shape is None and scalar
    # the declared shape is checked before reading: a crafted file may declare any
    if one_number and obj.size != 1:
        raise InputDataError(f"{label}: {key} has shape {obj.shape}; expected one number")
    if shape is not None and obj.shape != shape:
        raise InputDataError(f"{label}: {key} has shape {obj.shape}; expected shape {shape}")
    if obj.size > 3 * MAX_WIRE_STEPS:
        raise InputDataError(f"{label}: {key} declares shape {obj.shape}, more values than a wire scan's geometry has "
                             f"(at most {MAX_WIRE_STEPS} steps); the file is damaged or crafted")
    try:
        data = np.asarray(obj[()], dtype=np.float64)
    except OSError as err:
        raise InputDataError(f"{label}: reading {key} failed ({err}); the file is damaged, re-transfer it") from None
    if not np.all(np.isfinite(data)):
        raise InputDataError(f"{label}: {key} holds non-finite values")
    return float(data.reshape(())) if one_number else data
