"""The parts of the APS 8-ID-I result layout that pyXPCSViewer reads besides g2 itself: q-map axes, geometry, C2.

pyXPCSViewer's ``XpcsFile`` (and its q-map loader) reads, beside the correlations:

- ``/xpcs/qmap``: the ROI maps and mask, the q-map *grid* — ``*_num_pts`` is (q bins, φ bins),
  ``*_v_list_dim0`` the q of each q bin and ``*_v_list_dim1`` the φ of each φ bin, and
  ``*_index_mapping`` the 0-based grid cell (q_bin·φ_bins + φ_bin) of each ROI column, in the order
  the g2 columns and ``scattering_1d`` entries are written — plus ``map_names``/``map_units``,
  the beam centre (pixels), ``detector_distance`` and ``pixel_size`` (both m), and a ``hash`` attribute
  it caches q-maps by;
- ``/entry/instrument/incident_beam/incident_energy`` (keV), ``/entry/instrument/detector_1/frame_time``
  and ``count_time`` (s), ``/entry/start_time``; ``/entry/instrument/bluesky/metadata`` is the group
  its file-type check looks for (``legacy`` files have ``/xpcs/Version`` instead);
- ``/xpcs/multitau/delay_list`` in frames (it multiplies by frame_time · stride · averaging);
- ``/xpcs/temporal_mean/scattering_1d_segments`` (segments, static ROIs): I(q) over consecutive parts of
  the record, its stability plot;
- ``/xpcs/twotime/correlation_map/c2_NNNNN``: the upper triangle of C2 (it adds the transpose and halves
  the diagonal), NNNNN = 1-based ROI column; ``/xpcs/twotime/normalized_g2`` (delays, ROIs) and
  ``normalized_g2_segments`` (delays, segments, ROIs): diagonal averages of C2 over the whole record and
  over equal parts of it; ``processed_bins`` (1-based ROI columns); ``config/stride_frame``, ``avg_frame``.

A q-map computed from the geometry is a full grid (label = q_bin·φ_bins + φ_bin + 1). A q-map file's labels
are arbitrary, so its ROIs are written as a (ROIs, 1) grid in label order; the labels themselves are kept in
``dynamic_roi_labels`` / ``static_roi_labels``.
"""

from __future__ import annotations

import hashlib
import warnings
from datetime import datetime, timezone
from typing import Any

import numpy as np

from ..saxs.geometry import DetectorGeometry
from .qmap import QMap

# keV · Å: E = HC / λ
HC_KEV_ANGSTROM = 12.398419843320026
TWOTIME_SEGMENTS = 5


def qmap_sections(qmap: QMap, geometry: DetectorGeometry | None, dynamic_pixels: np.ndarray,
                  static_pixels: np.ndarray) -> dict[str, dict[str, Any]]:
    dyn_mapping, dyn_pts, dq, dphi = _grid(qmap.dynamic_labels, qmap.dynamic_q, qmap.grid)
    st_mapping, st_pts, sq, sphi = _grid(qmap.static_labels, qmap.static_q, qmap.static_grid)
    g = geometry.values() if geometry is not None else {}
    nan = float("nan")
    pixel_m = g.get("pixel_size_um", nan) * 1e-6
    digest = hashlib.sha256()
    for array in (qmap.dynamic_map, qmap.static_map, qmap.mask):
        digest.update(np.ascontiguousarray(array).tobytes())
    qmap_group = {
        "dynamic_roi_map": qmap.dynamic_map, "static_roi_map": qmap.static_map, "mask": qmap.mask.astype(np.int32),
        "dynamic_index_mapping": dyn_mapping, "static_index_mapping": st_mapping,
        "dynamic_num_pts": dyn_pts, "static_num_pts": st_pts,
        "dynamic_v_list_dim0": (dq, "1/angstrom"), "static_v_list_dim0": (sq, "1/angstrom"),
        "dynamic_v_list_dim1": (dphi, "degree"), "static_v_list_dim1": (sphi, "degree"),
        "map_names": np.array([b"q", b"phi"]), "map_units": np.array(["Å⁻¹".encode(), "°".encode()]),
        "beam_center_x": (g.get("beam_center_x_px", nan), "pixel"), "beam_center_y": (g.get("beam_center_y_px", nan), "pixel"),
        "detector_distance": (g.get("detector_distance_m", nan), "m"), "pixel_size": (pixel_m, "m"),
        # rtlib's own: the labels of the ROI columns and their pixel counts
        "dynamic_roi_labels": qmap.dynamic_labels, "static_roi_labels": qmap.static_labels,
        "dynamic_roi_pixels": dynamic_pixels, "static_roi_pixels": static_pixels,
    }
    return {"qmap": qmap_group, "@qmap": {"hash": digest.hexdigest()}}


def entry_sections(geometry: DetectorGeometry | None, frame_time_s: float,
                   count_time_s: float) -> dict[str, dict[str, Any]]:
    """``/entry``: when the run was, the geometry where 8-ID-I keeps it, and the frame and count times the viewer
    scales delays with (rtlib reads no exposure time, so the caller passes the frame time for both)."""
    g = geometry.values() if geometry is not None else {}
    nan = float("nan")
    pixel_m = g.get("pixel_size_um", nan) * 1e-6
    energy_kev = HC_KEV_ANGSTROM / g["wavelength_angstrom"] if "wavelength_angstrom" in g else nan
    return {"/entry": {"start_time": datetime.now(timezone.utc).isoformat(timespec="seconds")},
            "/entry/instrument/incident_beam": {"incident_energy": (energy_kev, "keV")},
            "/entry/instrument/detector_1": {"frame_time": (frame_time_s, "s"), "count_time": (count_time_s, "s"),
                                             "x_pixel_size": (pixel_m, "m"), "y_pixel_size": (pixel_m, "m"),
                                             "distance": (g.get("detector_distance_m", nan), "m"),
                                             "beam_center_x": (g.get("beam_center_x_px", nan), "pixel"),
                                             "beam_center_y": (g.get("beam_center_y_px", nan), "pixel")},
            "/entry/instrument/bluesky/metadata": {},
            "@/entry/instrument/bluesky/metadata": {"writer": "rtlib (APS 8-ID-I result layout)"}}


def _grid(labels: np.ndarray, q: np.ndarray, grid: tuple[int, int] | None):
    """(index mapping, num_pts, q per q bin, φ per φ bin) of ROIs with these labels."""
    n = len(labels)
    if grid is not None and n == grid[0] * grid[1]:  # a full grid: every (q, φ) cell holds pixels
        num_q, num_phi = grid
        cell = labels.astype(np.int64) - 1
        q_of_bin = np.bincount(cell // num_phi, weights=q, minlength=num_q) / num_phi
        phi = (np.arange(num_phi) + 0.5) * 360.0 / num_phi
        return cell, np.array([num_q, num_phi]), q_of_bin, phi
    return np.arange(n), np.array([n, 1]), np.asarray(q, dtype=np.float64), np.array([np.nan])


def stability_segments(cumulative: list[tuple[int, np.ndarray]], pixels: np.ndarray) -> np.ndarray:
    """(segments, static ROIs) mean counts/pixel/frame from cumulative per-ROI sums taken at frame counts."""
    rows = []
    previous_frames, previous = 0, np.zeros_like(pixels, dtype=np.float64)
    for frames, sums in cumulative:
        if frames > previous_frames:
            with np.errstate(invalid="ignore", divide="ignore"):
                rows.append((sums - previous) / (frames - previous_frames) / pixels)
            previous_frames, previous = frames, sums
    return np.array(rows)


def twotime_sections(maps: list[np.ndarray], columns: list[int], frame_binning: int,
                     dt_s: float) -> dict[str, dict[str, Any]]:
    """C2 as the upper triangle per ROI column (1-based ``columns``), and its diagonal averages over the record
    and over segments of it (delays of 1 step and more: the upper triangle). Zeroes the lower triangle of
    ``maps`` in place."""
    steps = maps[0].shape[0] if maps else 0
    full = max(steps // 2, 1)
    seg_len = steps // TWOTIME_SEGMENTS
    segments = TWOTIME_SEGMENTS if seg_len >= 2 else 1
    seg_len = steps // segments
    g2 = np.full((full, len(maps)), np.nan)
    g2_segments = np.full((max(seg_len - 1, 1), segments, len(maps)), np.nan)
    upper = {}
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        # nanmean of an all-NaN diagonal (a time step without counts) is NaN, as intended
        warnings.simplefilter("ignore", RuntimeWarning)
        for k, c2 in enumerate(maps):
            for row in range(1, steps):  # in place: a second (steps, steps) copy per ROI would double the memory
                c2[row, :row] = 0.0
            upper[k] = c2
            g2[:, k] = _diagonal_means(c2, 1, full)
            for s in range(segments):
                block = c2[s * seg_len:(s + 1) * seg_len, s * seg_len:(s + 1) * seg_len]
                g2_segments[:, s, k] = _diagonal_means(block, 1, g2_segments.shape[0])
    delays = np.arange(1, full + 1) * frame_binning
    return {
        "twotime/correlation_map": {f"c2_{columns[k]:05d}": c2 for k, c2 in upper.items()},
        "twotime": {"processed_bins": np.asarray(columns, dtype=np.int64), "normalized_g2": g2,
                    "normalized_g2_segments": g2_segments, "delay_list": (delays, "frames")},
        "twotime/config": {"frame_binning": frame_binning, "stride_frame": 1, "avg_frame": frame_binning,
                           "delta_t": (dt_s * frame_binning, "s")},
    }


def _diagonal_means(c2: np.ndarray, first: int, count: int) -> np.ndarray:
    out = np.full(count, np.nan)
    for i, offset in enumerate(range(first, first + count)):
        if offset < c2.shape[0]:
            out[i] = np.nanmean(np.diagonal(c2, offset=offset))
    return out

