"""Writing the results: ``laue.h5`` and ``laue_peaks.csv``.

Layout of ``laue.h5`` (units in each dataset's ``units`` attribute)::

    /laue                       attributes: parameters (JSON), geometry, input file, wire steps,
                                depth per wire step, depth resolution, rtlib version
    /laue/depth_resolved        (depths, y, x) float32  intensity from each depth, counts per image
    /laue/depth_um              (depths,)   bin centres along the beam, um
    /laue/depth_edges_um        (depths+1,) bin edges, um
    /laue/peaks                 (peaks,) table: depth_um, x_px, y_px, intensity, height, depth_index, row, col
    /laue/peak_profiles         (peaks, depths) each peak's intensity against depth (summed over its pixel box)

Both files are written under a temporary name and renamed, so a run killed
mid-write leaves no half-written result behind under the final name.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

import rtlib

from .reconstruct import DepthBins

H5_NAME = "laue.h5"
CSV_NAME = "laue_peaks.csv"


def write_results(
    outdir: Path,
    stack: np.ndarray,
    bins: DepthBins,
    peaks: np.ndarray,
    profiles: np.ndarray,
    params: dict[str, Any],
    attrs: dict[str, Any],
) -> tuple[Path, Path]:
    h5_path, csv_path = outdir / H5_NAME, outdir / CSV_NAME
    tmp = outdir / (H5_NAME + ".partial")
    with h5py.File(tmp, "w") as f:
        group = f.create_group("laue")
        group.attrs["parameters"] = json.dumps(params)
        group.attrs["rtlib_version"] = rtlib.__version__
        for key, value in attrs.items():
            group.attrs[key] = value
        height, width = stack.shape[1:]
        chunks = (1, min(height, 256), min(width, 256))
        group.create_dataset("depth_resolved", data=stack, chunks=chunks, compression="gzip",
                             compression_opts=1, shuffle=True).attrs["units"] = "counts/image"
        group.create_dataset("depth_um", data=bins.centres_um).attrs["units"] = "um"
        group.create_dataset("depth_edges_um", data=bins.edges_um).attrs["units"] = "um"
        table = group.create_dataset("peaks", data=peaks)
        table.attrs["columns"] = ",".join(peaks.dtype.names)
        table.attrs["units"] = "depth_um: um; x_px, y_px: pixels (0 = centre of the first pixel); intensity, height: counts/image"
        group.create_dataset("peak_profiles", data=profiles).attrs["units"] = "counts/image"
    os.replace(tmp, h5_path)

    tmp = outdir / (CSV_NAME + ".partial")
    with open(tmp, "w") as fh:
        fh.write(",".join(peaks.dtype.names) + "\n")
        for row in peaks:
            fh.write(",".join(f"{v:.10g}" for v in row.tolist()) + "\n")
    os.replace(tmp, csv_path)
    return h5_path, csv_path


def read_results(path: Path) -> dict[str, Any]:
    """Everything in a ``laue.h5``, as numpy arrays and plain values (for notebooks and tests)."""
    with h5py.File(path, "r") as f:
        group = f["laue"]
        out: dict[str, Any] = {name: group[name][()] for name in group}
        out["attrs"] = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in group.attrs.items()}
    out["parameters"] = json.loads(out["attrs"]["parameters"])
    return out
