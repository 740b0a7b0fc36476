"""Writing the results: ``saxs.h5`` and ``saxs_iq.csv``.

Layout of ``saxs.h5`` (units in each dataset's ``units`` attribute)::

    /saxs                       attributes: the geometry used and each value's source,
                                input file, dataset path, frames, rtlib version
    /saxs/q_inv_angstrom        (num_q_bins,)    bin centres, 1/angstrom
    /saxs/q_edges_inv_angstrom  (num_q_bins+1,)  bin edges, 1/angstrom
    /saxs/intensity             (num_q_bins,)    mean counts per pixel per frame (NaN: empty bin)
    /saxs/intensity_err         (num_q_bins,)    standard error of that mean (see integrate)
    /saxs/pixels_per_bin        (num_q_bins,)
    /saxs/scattering_2d         (y, x)           time-averaged image, counts per pixel per frame

Both files are written under a temporary name and renamed, so a run killed
mid-write leaves no half-written result behind under the final name.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

import rtlib

from .integrate import RadialBins

H5_NAME = "saxs.h5"
CSV_NAME = "saxs_iq.csv"


def write_results(
    outdir: Path,
    bins: RadialBins,
    intensity: np.ndarray,
    intensity_err: np.ndarray,
    mean_image: np.ndarray,
    attrs: dict[str, Any],
) -> tuple[Path, Path]:
    h5_path, csv_path = outdir / H5_NAME, outdir / CSV_NAME
    tmp = outdir / (H5_NAME + ".partial")
    with h5py.File(tmp, "w") as f:
        group = f.create_group("saxs")
        group.attrs.update(attrs)
        group.attrs["rtlib_version"] = rtlib.__version__
        _dataset(group, "q_inv_angstrom", bins.centres_inv_angstrom, "1/angstrom")
        _dataset(group, "q_edges_inv_angstrom", bins.edges_inv_angstrom, "1/angstrom")
        _dataset(group, "intensity", intensity, "counts/pixel/frame")
        _dataset(group, "intensity_err", intensity_err, "counts/pixel/frame")
        _dataset(group, "pixels_per_bin", bins.pixels_per_bin.astype(np.int64), "pixels")
        # float32 holds a time average of counts to 7 digits, and halves what travels back.
        _dataset(group, "scattering_2d", mean_image.astype(np.float32), "counts/pixel/frame")
    os.replace(tmp, h5_path)

    tmp = outdir / (CSV_NAME + ".partial")
    table = np.column_stack([bins.centres_inv_angstrom, intensity, intensity_err])
    np.savetxt(tmp, table, delimiter=",", fmt="%.10g", header="q_inv_angstrom,intensity,intensity_err", comments="")
    os.replace(tmp, csv_path)
    return h5_path, csv_path


def _dataset(group: h5py.Group, name: str, data: np.ndarray, units: str) -> None:
    group.create_dataset(name, data=data).attrs["units"] = units
