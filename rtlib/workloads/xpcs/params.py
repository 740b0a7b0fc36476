"""The parameters of the xpcs workload. Geometry and frame time left at None are read from the detector file."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class XpcsParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset_path: str = Field(
        "/entry/data/data", min_length=1,
        description="HDF5 path of the frames inside the detector file, shape (frames, y, x)",
    )
    mode: Literal["multitau", "twotime", "both"] = Field("multitau", description="which correlations to compute")
    qmap_file: str | None = Field(
        None, description="q-map HDF5 file (APS mask-tool layout: /data/dynamicMap, /data/staticMap, /data/mask), "
        "staged with the job; None: partitions computed from the geometry",
    )
    frame_time_s: float | None = Field(None, gt=0, allow_inf_nan=False, description="time between frames in seconds; None: from the file")
    beam_center_x_px: float | None = Field(None, allow_inf_nan=False, description="beam centre column in pixels; None: from the file")
    beam_center_y_px: float | None = Field(None, allow_inf_nan=False, description="beam centre row in pixels; None: from the file")
    detector_distance_m: float | None = Field(None, gt=0, allow_inf_nan=False, description="sample-to-detector distance in metres; None: from the file")
    pixel_size_um: float | None = Field(None, gt=0, allow_inf_nan=False, description="pixel size in micrometres (square pixels); None: from the file")
    wavelength_angstrom: float | None = Field(None, gt=0, allow_inf_nan=False, description="X-ray wavelength in ångström; None: from the file")
    num_dynamic_q_bins: int = Field(10, ge=1, description="dynamic q bins when the q-map is computed from the geometry")
    num_static_q_bins: int = Field(100, ge=1, description="static q bins when the q-map is computed from the geometry")
    num_phi_bins: int = Field(1, ge=1, description="azimuthal sectors of every q bin when the q-map is computed")
    delays_per_level: int = Field(
        16, ge=2, le=1024,
        description="multi-tau buffers per level (even): level 0 has delays 1..n-1 frames, each further level "
        "n/2..n-1 in units of 2^level frames",
    )
    max_levels: int | None = Field(None, ge=1, le=40, description="multi-tau levels; None: as many as the record allows")
    g2_normalization: Literal["static", "pixel", "roi"] = Field(
        "static", description="symmetric normalisation by intensities averaged over each pixel's static ROI (APS "
        "smoothing), by each pixel's own (biased for short records), or of ROI sums (scikit-beam)",
    )
    twotime_rois: list[int] | None = Field(None, description="dynamic ROI labels for two-time; None: all")
    twotime_frame_binning: int = Field(1, ge=1, description="frames summed into one two-time time step")
    fit_stretched: bool = Field(False, description="fit the stretching exponent γ; False: γ = 1")
    frames_per_chunk: int = Field(64, ge=1, description="frames read at a time; memory is about frames_per_chunk x one frame plus the correlator state (which holds up to 512 frames of the ROI pixels in their own type, correlated together)")

    @field_validator("delays_per_level")
    @classmethod
    def _even(cls, value: int) -> int:
        if value % 2:
            raise ValueError(f"must be even, got {value}")
        return value

    @field_validator("twotime_rois")
    @classmethod
    def _labels(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and (not value or min(value) < 1):
            raise ValueError("ROI labels are integers >= 1 (0 is the excluded region); give at least one, or None for all")
        return value
