"""The parameters of the connectomics workload; lengths in nm or px as named, areas and volumes in their units."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator


class ConnectomicsParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pixel_size_nm: float | None = Field(None, gt=0, allow_inf_nan=False, description="in-plane pixel size, nm; None: from layout.json")
    section_thickness_nm: float | None = Field(None, gt=0, allow_inf_nan=False, description="section thickness, nm; None: from layout.json")
    stitch_upsample: int = Field(20, ge=1, le=200, description="sub-pixel factor of the tile-pair phase correlation (1/px)")
    align_patch_px: int = Field(48, ge=16, description="side of the square patches correlated between sections, px")
    align_stride_px: int = Field(24, ge=4, description="spacing of those patches, px")
    align_mesh_spacing_px: int = Field(32, ge=8, description="spacing of the elastic mesh nodes, px")
    align_smoothness: float = Field(0.5, ge=0, description="weight of the mesh's elastic penalty against one patch measurement")
    align_max_shift_px: float = Field(6.0, gt=0, description="a patch moving more than this between sections is an outlier, px")
    mask_smoothing_nm: float = Field(60.0, gt=0, description="the network's non-target probability is smoothed over this (Gaussian sigma, nm) before masking")
    mask_threshold: float = Field(0.5, gt=0, lt=1, description="smoothed non-target probability (vessel, soma, resin) above this is masked")
    working_pixel_nm: float = Field(8.0, gt=0, description="the U-Net reads the image near this pixel size (integer in-plane binning)")
    max_masked_fraction: float = Field(0.5, gt=0, le=1, description="a mask over this share of the volume is a warning (an error with strict)")
    strict: bool = Field(False, description="warnings about the result (no neuron found, too much masked) fail the run")
    weights: str | None = Field(None, description="U-Net weights (.pt); None: the weights shipped with rtlib")
    foreground_threshold: float = Field(0.5, gt=0, lt=1, description="neuron-interior probability threshold")
    seed_boundary_max: float = Field(0.2, gt=0, lt=1, description="seeds are interior with membrane probability below this")
    seed_erosion_nm: float = Field(0.0, ge=0, description="seed cores shrink in-plane by this, so a gap in a membrane joins no neurons, nm")
    merge_threshold: float = Field(0.35, ge=0, le=1, description="merge segments whose interface's mean membrane probability is below this")
    min_object_volume_um3: float = Field(0.002, ge=0, description="neurons smaller than this are dropped, um^3")
    teasar_scale: float = Field(2.0, gt=0, description="kimimaro TEASAR scale (dimensionless)")
    teasar_const_nm: float = Field(300.0, ge=0, description="kimimaro TEASAR const, nm")
    min_contact_area_nm2: float = Field(10000.0, ge=0, description="smaller contacts are not graph edges, nm^2")
    min_seed_voxels: int = Field(30, ge=1, description="seed components smaller than this (voxels) seed nothing")
    block_sections: int = Field(16, ge=1, description="sections per processing block (Zarr chunk) of the block-wise steps")
    block_px: int = Field(128, ge=32, description="in-plane side of a processing block, px; a multiple of 4 (the U-Net pooling)")
    split_over_workers: bool = Field(False, description="run the blocks as dask tasks on the cluster this run is a task of")

    @field_validator("block_px")
    @classmethod
    def _pooling_multiple(cls, value: int) -> int:
        if value % 4:
            raise ValueError(f"block_px = {value} is not a multiple of 4 (the U-Net pools twice by 2); use e.g. {value - value % 4 or 4}")
        return value
