"""The parameters of the laue workload. The geometry comes from the scan file; only the wire diameter can be overridden."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# The depth-resolved stack is held in memory as float32: refuse a range that cannot fit.
MAX_DEPTH_BINS = 20_000


class LaueParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset_path: str = Field("/entry/data/data", min_length=1, description="HDF5 path of the wire-step images (steps, y, x)")
    depth_start_um: float = Field(0.0, allow_inf_nan=False, description="start of the reconstructed depth range along the beam, um")
    depth_end_um: float = Field(100.0, allow_inf_nan=False, description="end of the reconstructed depth range along the beam, um")
    depth_step_um: float = Field(1.0, gt=0, allow_inf_nan=False, description="depth bin width, um")
    wire_edge: Literal["leading", "trailing", "both"] = Field(
        "leading", description="the wire edge whose triangulation places the intensity; both: the mean of the two",
    )
    wire_diameter_um: float | None = Field(None, gt=0, allow_inf_nan=False, description="wire diameter, um; None: from the file")
    rows_per_block: int = Field(64, ge=1, description="detector rows reconstructed at a time (and per dask task)")
    split_over_workers: bool = Field(
        False, description="when running on a dask worker, reconstruct the row blocks as tasks across the cluster",
    )
    peak_threshold_sigma: float = Field(6.0, gt=0, allow_inf_nan=False, description="a peak stands this many robust sigmas above the noise")
    peak_min_intensity: float = Field(0.0, ge=0, allow_inf_nan=False, description="smallest integrated intensity of a peak, counts")
    peak_window_px: int = Field(4, ge=1, description="half-width in pixels of a peak's box (local maximum, centroid, intensity)")
    peak_window_depth_bins: int = Field(3, ge=1, description="half-height in depth bins of a peak's box")
    max_peaks: int = Field(1000, ge=1, description="most peaks reported, brightest first")

    @model_validator(mode="after")
    def _depth_range(self) -> "LaueParams":
        if self.depth_end_um <= self.depth_start_um:
            raise ValueError(f"depth_end_um ({self.depth_end_um}) must be greater than depth_start_um ({self.depth_start_um})")
        bins = (self.depth_end_um - self.depth_start_um) / self.depth_step_um
        if bins > MAX_DEPTH_BINS:
            raise ValueError(f"the depth range makes {bins:.0f} bins, more than {MAX_DEPTH_BINS}; use a larger depth_step_um or a narrower range")
        return self
