"""SAXS: the time-averaged scattering image and its azimuthal average I(q) from an area-detector file.

One run reduces one HDF5 file (the first ``.h5``/``.hdf5``/``.nxs`` input; see
``reader.select_input``), reading ``frames_per_chunk`` frames at a time so
the stack is never in memory whole. Results: ``saxs.h5`` and ``saxs_iq.csv``
(layout in ``output``). No solid-angle, polarisation or flat-field
correction is applied.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..base import ProgressFn, Workload
from .geometry import DetectorGeometry, geometry_attrs, resolve_geometry
from .integrate import FrameSum, RadialBins, azimuthal_average
from .output import CSV_NAME, H5_NAME, write_results
from .params import SaxsParams
from .reader import HDF5_SUFFIXES, frames_dataset, iter_frame_chunks, open_detector_file, select_input

__all__ = ["DetectorGeometry", "HDF5_SUFFIXES", "SaxsParams", "run", "workload"]

# Share of the progress bar given to reading frames; the rest is binning and writing.
_READ_SHARE = 0.95


def run(params: SaxsParams, inputs: list[Path], outdir: Path, progress: ProgressFn) -> dict[str, Any]:
    path = select_input(inputs)
    label = str(path)
    with open_detector_file(path, inputs) as f:
        frames = frames_dataset(f, params.dataset_path, label)
        geometry = resolve_geometry(params, f, label)
        total, height, width = frames.shape
        bins = RadialBins.from_q_map(geometry.q_map(height, width), params.num_q_bins)
        frame_sum = FrameSum(height, width)
        progress(0.0, f"reducing {total} frames of {height} x {width} from {path.name}")
        for _, stop, block in iter_frame_chunks(frames, params.frames_per_chunk, label):
            frame_sum.add(block)
            progress(_READ_SHARE * stop / total, f"read {stop}/{total} frames")

    mean_image = frame_sum.mean_image()
    intensity, intensity_err = azimuthal_average(frame_sum, bins)
    attrs = {
        **geometry_attrs(geometry),
        "input_file": path.name,
        "dataset_path": params.dataset_path,
        "frames": total,
        "num_q_bins": params.num_q_bins,
    }
    write_results(outdir, bins, intensity, intensity_err, mean_image, attrs)
    progress(1.0, f"wrote {H5_NAME} and {CSV_NAME}")

    others = [Path(p).name for p in inputs if Path(p) != path]
    summary: dict[str, Any] = {
        "input": path.name,
        "frames": int(total),
        "q_min": float(bins.edges_inv_angstrom[0]),
        "q_max": float(bins.edges_inv_angstrom[-1]),
        "num_q_bins": int(params.num_q_bins),
        "empty_q_bins": int((bins.pixels_per_bin == 0).sum()),
        "mean_intensity": float(mean_image.mean()),
    }
    if others:
        summary["ignored_inputs"] = others
    return summary


workload = Workload(
    name="saxs",
    params_model=SaxsParams,
    run=run,
    description="time-averaged 2D scattering image and azimuthally averaged I(q) from an area-detector HDF5 file",
)
