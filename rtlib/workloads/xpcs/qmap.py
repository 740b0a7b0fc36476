"""The q partitions of a run: dynamic ROIs (correlated) and static ROIs (I(q)), from a file or from the geometry.

A q-map file has the APS mask-tool layout: ``/data/dynamicMap`` and
``/data/staticMap`` hold an integer ROI label per pixel (0 = excluded),
``/data/mask`` is 1 on good pixels; optional ``/data/dqlist`` and
``/data/sqlist`` give each ROI's q (1/Å), else it is the mean pixel q from
the geometry. Labels need not be consecutive: ROI k is the k-th smallest
label present, and the labels are kept in the results.

Computed q-maps: equal-width q bins between the smallest and the largest
pixel q, each split into ``num_phi_bins`` equal azimuthal sectors; label =
q_bin · num_phi_bins + phi_bin + 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import h5py
import numpy as np

from ...errors import InputDataError
from ..h5safe import open_input
from ..saxs.geometry import DetectorGeometry


# /data/dqlist and /data/sqlist hold one q per ROI label; no q-map has more labels than this (16 M pixels).
MAX_LISTED_Q = 2**24


@dataclass(frozen=True)
class QMap:
    dynamic_map: np.ndarray  # (y, x) int32 label, 0 = excluded
    static_map: np.ndarray  # (y, x) int32 label, 0 = excluded
    mask: np.ndarray  # (y, x) bool, True = good pixel
    dynamic_labels: np.ndarray  # (rois,) label of each dynamic ROI, ascending
    static_labels: np.ndarray
    dynamic_q: np.ndarray  # (rois,) 1/Å, NaN when unknown
    static_q: np.ndarray
    dynamic_phi_deg: np.ndarray  # (rois,) sector centre, NaN when unknown
    source: str
    # (q bins, φ bins) of a computed q-map, whose label is q_bin·φ_bins + φ_bin + 1; None for a q-map file
    grid: tuple[int, int] | None = None
    static_grid: tuple[int, int] | None = None

    @property
    def num_dynamic(self) -> int:
        return len(self.dynamic_labels)

    def dynamic_pixels(self) -> tuple[np.ndarray, np.ndarray]:
        """(flat pixel index, ROI index 0..rois-1) of every pixel in a dynamic ROI."""
        flat = self.dynamic_map.ravel()
        index = np.flatnonzero(flat)
        return index, np.searchsorted(self.dynamic_labels, flat[index])

    def static_index(self) -> np.ndarray:
        """ROI index per pixel for the static map, -1 outside."""
        flat = self.static_map.ravel()
        out = np.full(flat.shape, -1, dtype=np.intp)
        inside = flat > 0
        out[inside] = np.searchsorted(self.static_labels, flat[inside])
        return out


def load_qmap(path: Path, height: int, width: int, geometry: DetectorGeometry | None, staged: Iterable[Path] = ()) -> QMap:
    """The q-map file at ``path``, opened under the safe-open rules (``h5safe``); ``staged``: the job's input files."""
    label = str(path)
    with open_input(path, staged, workload="xpcs", what="q-map file") as f:
        maps = {}
        for key in ("dynamicMap", "staticMap", "mask"):
            obj = f.get(f"/data/{key}")
            if obj is None:
                if key == "mask":
                    continue
                raise InputDataError(f"q-map file {label} has no /data/{key}; it needs /data/dynamicMap and /data/staticMap "
                                     f"(integer ROI label per pixel, 0 = excluded) as the APS mask tool writes them")
            shape = getattr(obj, "shape", "a group")  # checked before reading: a crafted file may declare any shape
            if shape != (height, width):
                raise InputDataError(f"q-map file {label}: /data/{key} has shape {shape} but the frames are "
                                     f"{height} x {width}; use the q-map made for this detector (and its ROI/binning)")
            if obj.dtype.kind not in "uib":
                raise InputDataError(f"q-map file {label}: /data/{key} holds {obj.dtype} values; expected integer labels")
            maps[key] = np.asarray(obj[()])
        mask = maps["mask"].astype(bool) if "mask" in maps else np.ones((height, width), bool)
        dynamic = np.where(mask, maps["dynamicMap"], 0).astype(np.int32)
        static = np.where(mask, maps["staticMap"], 0).astype(np.int32)
        if (dynamic < 0).any() or (static < 0).any():
            raise InputDataError(f"q-map file {label} has negative ROI labels; labels are >= 0 (0 = excluded)")
        dyn_labels, st_labels = np.unique(dynamic[dynamic > 0]), np.unique(static[static > 0])
        if len(dyn_labels) == 0:
            raise InputDataError(f"q-map file {label}: /data/dynamicMap selects no good pixel; every label is 0 or masked")
        dq = _listed_q(f, "dqlist", dyn_labels)
        sq = _listed_q(f, "sqlist", st_labels)
    q_px = geometry.q_map(height, width) if geometry is not None else None
    if dq is None:
        dq = _mean_q(q_px, dynamic, dyn_labels)
    if sq is None:
        sq = _mean_q(q_px, static, st_labels)
    return QMap(dynamic, static, mask, dyn_labels, st_labels, dq, sq, np.full(len(dyn_labels), np.nan), f"file:{path.name}")


def compute_qmap(geometry: DetectorGeometry, height: int, width: int, num_dynamic_q: int, num_static_q: int,
                 num_phi: int, mask: np.ndarray | None = None) -> QMap:
    q = geometry.q_map(height, width)
    yy = np.arange(height, dtype=np.float64)[:, None] - geometry.beam_center_y_px
    xx = np.arange(width, dtype=np.float64)[None, :] - geometry.beam_center_x_px
    phi = np.degrees(np.arctan2(yy, xx)) % 360.0
    mask = np.ones((height, width), bool) if mask is None else mask
    phi_bin = np.minimum((phi / (360.0 / num_phi)).astype(np.int64), num_phi - 1)

    def partition(bins: int) -> tuple[np.ndarray, np.ndarray]:
        edges = np.linspace(q[mask].min(), q[mask].max(), bins + 1)
        q_bin = np.clip(np.searchsorted(edges, q, side="right") - 1, 0, bins - 1)
        labels = np.where(mask, q_bin * num_phi + phi_bin + 1, 0).astype(np.int32)
        return labels, edges

    dynamic, d_edges = partition(num_dynamic_q)
    static, s_edges = partition(num_static_q)
    dyn_labels, st_labels = np.unique(dynamic[dynamic > 0]), np.unique(static[static > 0])
    sector = 360.0 / num_phi
    dyn_phi = ((dyn_labels - 1) % num_phi + 0.5) * sector
    return QMap(dynamic, static, mask, dyn_labels, st_labels, _mean_q(q, dynamic, dyn_labels),
                _mean_q(q, static, st_labels), dyn_phi, "geometry", (num_dynamic_q, num_phi), (num_static_q, num_phi))


def _listed_q(f: h5py.File, key: str, labels: np.ndarray) -> np.ndarray | None:
    """q per ROI from /data/<key>, indexed by label - 1 (the mask tool's convention), if it covers every label."""
    obj = f.get(f"/data/{key}")
    if not isinstance(obj, h5py.Dataset) or obj.size > MAX_LISTED_Q:
        return None  # not a list of q, or (checked before reading) longer than any mask tool writes
    values = np.asarray(obj[()], dtype=np.float64).ravel()
    if len(labels) and labels.max() > len(values):
        return None
    return values[labels - 1]


def _mean_q(q_px: np.ndarray | None, labels_map: np.ndarray, labels: np.ndarray) -> np.ndarray:
    if q_px is None:
        return np.full(len(labels), np.nan)
    flat = labels_map.ravel()
    inside = flat > 0
    index = np.searchsorted(labels, flat[inside])
    counts = np.bincount(index, minlength=len(labels))
    return np.bincount(index, weights=q_px.ravel()[inside], minlength=len(labels)) / np.maximum(counts, 1)
