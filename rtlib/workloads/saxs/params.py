"""The parameters of the saxs workload. Geometry left at None is read from the detector file."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class SaxsParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset_path: str = Field(
        "/entry/data/data", min_length=1,
        description="HDF5 path of the frames inside the detector file, shape (frames, y, x)",
    )
    beam_center_x_px: float | None = Field(
        None, allow_inf_nan=False, description="beam centre column in pixels, 0 = centre of the first pixel; None: from the file",
    )
    beam_center_y_px: float | None = Field(
        None, allow_inf_nan=False, description="beam centre row in pixels, 0 = centre of the first pixel; None: from the file",
    )
    detector_distance_m: float | None = Field(None, gt=0, allow_inf_nan=False, description="sample-to-detector distance in metres; None: from the file")
    pixel_size_um: float | None = Field(None, gt=0, allow_inf_nan=False, description="pixel size in micrometres (square pixels); None: from the file")
    wavelength_angstrom: float | None = Field(None, gt=0, allow_inf_nan=False, description="X-ray wavelength in ångström; None: from the file")
    num_q_bins: int = Field(200, ge=2, description="number of equal-width q bins between the smallest and largest pixel q")
    frames_per_chunk: int = Field(
        32, ge=1, description="frames read at a time; memory is about frames_per_chunk x one frame",
    )
