"""Writing ``xpcs.h5`` in the APS 8-ID-I result layout, so existing viewers open it.

Layout (units in each dataset's ``units`` attribute where they have one); what pyXPCSViewer reads and how
(q-map grid, C2 halves, delays in frames) is explained in ``viewer_layout``::

    /xpcs                                    attributes: parameters (JSON), geometry, sources, rtlib version
    /xpcs/multitau/normalized_g2             (delays, dynamic ROIs)
    /xpcs/multitau/normalized_g2_err         (delays, dynamic ROIs)
    /xpcs/multitau/delay_list                (delays,) frames; delay_s: the same in s
    /xpcs/multitau/config/...                delays_per_level, levels, normalization, stride_frame, avg_frame
    /xpcs/multitau/fit/{tau,beta,baseline,gamma}[_err]   (dynamic ROIs,)  τ in s; plus fit_ok, q, and
                                             flag: why a ROI has no τ (fit.FLAGS key; empty when it has one)
    /xpcs/twotime/correlation_map/c2_00001   (steps, steps) upper triangle of C(t1, t2), per ROI column (1-based)
    /xpcs/twotime/processed_bins, normalized_g2, normalized_g2_segments, delay_list (frames)
    /xpcs/twotime/config/frame_binning, stride_frame, avg_frame, delta_t (s per step)
    /xpcs/temporal_mean/scattering_2d        (1, y, x) counts/pixel/frame
    /xpcs/temporal_mean/scattering_1d        (1, static ROIs) counts/pixel/frame; _segments: (≤10, static ROIs)
    /xpcs/spatial_mean/intensity_vs_time     (2, frames): time (s), mean counts per good pixel
    /xpcs/qmap/dynamic_roi_map, static_roi_map, mask   (y, x)
    /xpcs/qmap/*_index_mapping, *_num_pts, *_v_list_dim0/1, map_names, map_units   the viewer's q-map grid
    /xpcs/qmap/beam_center_x/_y (px), detector_distance, pixel_size (m); attribute hash
    /xpcs/qmap/dynamic_roi_labels, static_roi_labels, dynamic_roi_pixels, static_roi_pixels   per ROI column
    /entry/start_time, /entry/instrument/detector_1/{frame_time,count_time,distance,x_pixel_size,...},
    /entry/instrument/incident_beam/incident_energy (keV), /entry/instrument/bluesky/metadata (layout marker)

Written under a temporary name and renamed: a killed run leaves no half-written result under the final name.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

import rtlib

H5_NAME = "xpcs.h5"


def write_results(outdir: Path, sections: dict[str, dict[str, Any]], attrs: dict[str, Any]) -> Path:
    """``sections``: group path under /xpcs (or from the root when it starts with "/") -> {name: array or
    (array, units)}; a path prefixed with "@" gives that group's attributes instead."""
    final = outdir / H5_NAME
    tmp = outdir / (H5_NAME + ".partial")
    with h5py.File(tmp, "w") as f:
        root = f.create_group("xpcs")
        for key, value in attrs.items():
            root.attrs[key] = json.dumps(value) if isinstance(value, (dict, list)) else value
        root.attrs["rtlib_version"] = rtlib.__version__
        for group_path, items in sections.items():
            as_attrs = group_path.startswith("@")
            group_path = group_path.removeprefix("@")
            group = f.require_group(group_path) if group_path.startswith("/") else root.require_group(group_path)
            if as_attrs:
                group.attrs.update(items)
                continue
            for name, item in items.items():
                data, units = item if isinstance(item, tuple) else (item, None)
                dset = group.create_dataset(name, data=data)
                if units:
                    dset.attrs["units"] = units
    os.replace(tmp, final)
    return final
