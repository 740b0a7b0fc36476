"""Writing ``xpcs.h5`` in the APS 8-ID-I result layout, so existing viewers open it.

Layout (units in each dataset's ``units`` attribute where they have one)::

    /xpcs                                    attributes: parameters (JSON), geometry, sources, rtlib version
    /xpcs/multitau/normalized_g2             (delays, dynamic ROIs)
    /xpcs/multitau/normalized_g2_err         (delays, dynamic ROIs)
    /xpcs/multitau/delay_list                (delays,) s
    /xpcs/multitau/config/...                delays_per_level, levels, normalization, stride_frame, avg_frame
    /xpcs/multitau/fit/{tau,beta,baseline,gamma}[_err]   (dynamic ROIs,)  τ in s; plus fit_ok, q
    /xpcs/twotime/correlation_map/c2_00001   (steps, steps) per processed ROI, named by its label
    /xpcs/twotime/processed_bins             (processed ROIs,) labels
    /xpcs/twotime/config/frame_binning, delta_t (s per step)
    /xpcs/temporal_mean/scattering_2d        (1, y, x) counts/pixel/frame
    /xpcs/temporal_mean/scattering_1d        (1, static ROIs) counts/pixel/frame
    /xpcs/spatial_mean/intensity_vs_time     (2, frames): time (s), mean counts per good pixel
    /xpcs/qmap/dynamic_roi_map, static_roi_map, mask   (y, x)
    /xpcs/qmap/dynamic_index_mapping, static_index_mapping   ROI labels
    /xpcs/qmap/dynamic_v_list_dim0, static_v_list_dim0       q per ROI, 1/angstrom
    /xpcs/qmap/dynamic_num_pts, static_num_pts               pixels per ROI

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
    """``sections``: group path under /xpcs -> {name: array or (array, units)}."""
    final = outdir / H5_NAME
    tmp = outdir / (H5_NAME + ".partial")
    with h5py.File(tmp, "w") as f:
        root = f.create_group("xpcs")
        for key, value in attrs.items():
            root.attrs[key] = json.dumps(value) if isinstance(value, (dict, list)) else value
        root.attrs["rtlib_version"] = rtlib.__version__
        for group_path, items in sections.items():
            group = root.require_group(group_path)
            for name, item in items.items():
                data, units = item if isinstance(item, tuple) else (item, None)
                dset = group.create_dataset(name, data=data)
                if units:
                    dset.attrs["units"] = units
    os.replace(tmp, final)
    return final
