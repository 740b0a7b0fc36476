"""Laue: depth-resolved reconstruction of a differential-aperture (wire) scan, and peaks in depth.

One run reads one wire-scan file (``reader.select_input``; layout in
``rtlib.synth.laue``): its images and the geometry of beam, wire and
detector; or an APS 34-ID-E scan, per-step files and the geoN geometry XML
(``scan34ide``), first checked and copied into one such file. Consecutive images are differenced and each difference placed at
the depth the wire edge swept (``reconstruct``), one block of detector rows
at a time, optionally as dask tasks across the cluster the run is on; then
peaks are found in the depth-resolved stack (``peaks``). Results:
``laue.h5`` and ``laue_peaks.csv`` (layout in ``output``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ...errors import InputDataError, ParameterError
from .._dask import client_used, cluster_client
from ..base import ProgressFn, Workload
from .geometry import ScanGeometry, make_geometry
from .output import CSV_NAME, H5_NAME, read_results, write_results
from .params import LaueParams
from .peaks import find_peaks
from .reader import images_dataset, open_scan_file, read_geometry, select_input
from .reconstruct import DepthBins, depth_per_step_um, reconstruct_file
from .scan34ide import STACKED_DATASET, is_34ide_input, stack_scan

__all__ = ["DepthBins", "LaueParams", "ScanGeometry", "make_geometry", "read_results", "run", "workload"]

# The depth-resolved stack (float32) and the peak search's working copies must fit in memory.
MAX_STACK_BYTES = 4 * 2**30
_RECONSTRUCT_SHARE = 0.85
_PEAKS_REPORTED = 20
# A 34-ID-E scan's step files are copied into one file under this name in the output folder, removed after.
_STACKED_NAME = ".laue_34ide_steps.h5.partial"
_STACKING_SHARE = 0.1


def run(params: LaueParams, inputs: list[Path], outdir: Path, progress: ProgressFn) -> dict[str, Any]:
    if not is_34ide_input(inputs):
        return _run_on_file(params, select_input(inputs), inputs, params.dataset_path, outdir, progress, {})
    # A 34-ID-E scan (step files + geometry XML) is checked and copied into one file of rtlib's layout first.
    stacked = outdir / _STACKED_NAME
    try:
        _, facts = stack_scan([Path(p) for p in inputs], stacked, params.wire_diameter_um,
                              progress=lambda f, m: progress(_STACKING_SHARE * f, m))
        return _run_on_file(params, stacked, [stacked], STACKED_DATASET, outdir,
                            lambda f, m: progress(_STACKING_SHARE + (1 - _STACKING_SHARE) * f, m), facts)
    finally:
        stacked.unlink(missing_ok=True)


def _run_on_file(params: LaueParams, path: Path, inputs: list[Path], dataset_path: str, outdir: Path,
                 progress: ProgressFn, facts: dict[str, Any]) -> dict[str, Any]:
    label = str(path)
    with open_scan_file(path, inputs) as f:
        images = images_dataset(f, dataset_path, label)
        shape = tuple(images.shape)
        geometry = read_geometry(f, label, shape, params.wire_diameter_um)
    steps, height, width = shape
    bins = DepthBins.from_range(params.depth_start_um, params.depth_end_um, params.depth_step_um)
    stack_bytes = 4 * bins.count * height * width
    if stack_bytes > MAX_STACK_BYTES:
        raise ParameterError(
            f"{bins.count} depth bins of {height} x {width} pixels make a {stack_bytes / 2**30:.1f} GiB result, more than "
            f"{MAX_STACK_BYTES / 2**30:.0f} GiB; narrow depth_start_um..depth_end_um or raise depth_step_um"
        )
    progress(0.0, f"reconstructing {steps} wire steps of {height} x {width} into {bins.count} depth bins")

    def report(fraction: float, message: str) -> None:
        progress(_RECONSTRUCT_SHARE * fraction, message)

    with cluster_client(params.split_over_workers) as client:
        stack = reconstruct_file(str(path), dataset_path, geometry, bins, params.wire_edge,
                                 rows_per_block=params.rows_per_block, client=client, progress=report, staged=inputs)
    per_step = depth_per_step_um(geometry, "trailing" if params.wire_edge == "trailing" else "leading")
    # A source is placed no better than the coarser of the bin and what one wire step sweeps; maxima in
    # depth further apart than that are separate peaks.
    resolution_um = max(bins.step_um, per_step) if np.isfinite(per_step) else bins.step_um
    progress(_RECONSTRUCT_SHARE, "finding peaks")
    peaks, profiles = find_peaks(
        stack, bins.centres_um, threshold_sigma=params.peak_threshold_sigma, min_intensity=params.peak_min_intensity,
        window_px=params.peak_window_px, window_depth_bins=params.peak_window_depth_bins,
        depth_resolution_bins=resolution_um / bins.step_um, max_peaks=params.max_peaks,
    )
    attrs = {
        **geometry.to_attrs(),
        **facts,
        "input_file": facts.get("first_step_file", path.name),
        "wire_steps": steps,
        "wire_edge": params.wire_edge,
        "depth_per_wire_step_um": per_step,
        "depth_resolution_um": resolution_um,
        "split_over_workers": client_used(params.split_over_workers),
    }
    write_results(outdir, stack, bins, peaks, profiles, params.model_dump(mode="json"), attrs)
    progress(1.0, f"wrote {H5_NAME} and {CSV_NAME}: {len(peaks)} peaks")

    summary: dict[str, Any] = {
        "input": facts.get("first_step_file", path.name),
        **facts,
        "wire_steps": int(steps),
        "image_shape": [int(height), int(width)],
        "depth_bins": int(bins.count),
        "depth_range_um": [float(bins.edges_um[0]), float(bins.edges_um[-1])],
        "depth_step_um": float(bins.step_um),
        "depth_per_wire_step_um": round(per_step, 6),
        "depth_resolution_um": round(resolution_um, 6),
        "num_peaks": int(len(peaks)),
        "peaks": [
            {"depth_um": round(float(p["depth_um"]), 4), "x_px": round(float(p["x_px"]), 3),
             "y_px": round(float(p["y_px"]), 3), "intensity": round(float(p["intensity"]), 3)}
            for p in peaks[:_PEAKS_REPORTED]
        ],
    }
    others = [Path(p).name for p in inputs if Path(p) != path]
    if others and not facts:
        summary["ignored_inputs"] = others
    return summary


workload = Workload(
    name="laue",
    params_model=LaueParams,
    run=run,
    description="depth-resolved Laue (wire-scan, DAXM) reconstruction of a wire-step image stack, with peaks in depth",
)
