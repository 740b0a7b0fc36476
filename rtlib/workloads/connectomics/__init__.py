"""Connectomics: EM tiles -> stitch -> align -> mask -> segment (3D U-Net) -> skeletons -> connectivity graph.

One run processes one EM directory (``io`` documents the layout): the
tiles of each section are stitched (``stitch``), sections are aligned to
section 0 (``align``), non-target regions are masked (``mask``), all one section at a time into
a Zarr group; then, block by block with overlaps (``blockwise``, in turn or
as dask tasks), a small 3D U-Net predicts membranes and neuron interiors
(``unet``), seeded growth with agglomeration makes 3D neurons
(``segment``), and their sizes, centroids, bounding boxes and contacts are
tabulated; kimimaro skeletonizes each neuron from its own bounding box
(``skeleton``) and the tables form a networkx graph (``graph``). No step
holds the whole volume. Results:
``connectomics.zarr`` (layout in ``io``), viewable with ``rtlib view``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

import rtlib

from ...errors import RtlibError
from .._dask import cluster_client
from ..base import ProgressFn, Workload
from . import io
from .align import AlignSettings, SectionAligner
from .params import ConnectomicsParams

__all__ = ["ConnectomicsParams", "RESULT_NAME", "UNIMAGED", "SuspectResult", "result_warnings", "run", "workload"]

RESULT_NAME = "connectomics.zarr"
UNIMAGED = "unimaged"  # (z, y, x) bool: no tile covered the pixel (part of the mask)
_CANVAS_PAD_PX = 32  # sections are fused onto a canvas this much larger than the frame, so drifted content is kept


def run(params: ConnectomicsParams, inputs: list[Path], outdir: Path, progress: ProgressFn) -> dict[str, Any]:
    root = io.find_root(inputs)
    layout = io.read_layout(root)
    pixel_nm = params.pixel_size_nm or layout.pixel_size_nm
    thickness_nm = params.section_thickness_nm or layout.section_thickness_nm
    spacing = (thickness_nm, pixel_nm, pixel_nm)
    sections = io.section_dirs(root)
    shape = (len(sections), *layout.frame_shape)
    block = (params.block_sections, params.block_px, params.block_px)
    result = outdir / RESULT_NAME
    attrs = {"pixel_size_nm": pixel_nm, "section_thickness_nm": thickness_nm, "scale_nm": list(spacing),
             "rtlib_version": rtlib.__version__, "input": root.name, "sections": len(sections),
             "canvas_origin_px": [-_CANVAS_PAD_PX, -_CANVAS_PAD_PX], "parameters": params.model_dump(mode="json")}
    io.create_result(result, shape, layout, block, _CANVAS_PAD_PX, attrs)
    import zarr

    # the pixels no tile covered, kept apart from the mask (which also holds what the network finds is no neuropil)
    zarr.open_group(str(result), mode="r+").create_array(UNIMAGED, shape=shape, dtype=bool, fill_value=True,
                                                         chunks=tuple(min(c, s) for c, s in zip(block, shape)))
    timings: dict[str, float] = {}
    stitch_residuals, stitch_warnings = stitch_align_mask(sections, layout, params, result, progress, timings)

    from .blockwise import (BlockGrid, ZarrArrays, contacts_blocks, describe, label_summary_blocks, mask_blocks, predict_blocks,
                            segment_blocks)
    from .graph import graph_from_tables, write_graphml
    from .mask import MaskSettings
    from .ome import write_ngff
    from .segment import SegmentSettings
    from .skeleton import TeasarSettings, cable_length_nm, skeletonize_objects, write_swc
    from .unet import scale_factor

    store = ZarrArrays(str(result))
    grid = BlockGrid(shape, block)
    factor = scale_factor(pixel_nm, params.working_pixel_nm)
    with cluster_client(params.split_over_workers) as client:
        started = time.perf_counter()
        predict_blocks(store, grid, params.weights, client, factor)
        timings["unet_s"] = time.perf_counter() - started
        progress(0.65, f"U-Net boundary and foreground maps done ({len(grid)} blocks, read at {pixel_nm * factor:g} nm)")
        started = time.perf_counter()
        mask_blocks(store, grid, MaskSettings.from_nm(params.mask_smoothing_nm, pixel_nm, params.mask_threshold), client)
        timings["mask_s"] = timings.get("mask_s", 0.0) + time.perf_counter() - started
        progress(0.7, "masked what the network finds is no neuropil")
        started = time.perf_counter()
        voxel_nm3 = thickness_nm * pixel_nm * pixel_nm
        segment_blocks(store, grid, SegmentSettings(
            foreground_threshold=params.foreground_threshold, seed_boundary_max=params.seed_boundary_max,
            min_seed_voxels=params.min_seed_voxels, merge_threshold=params.merge_threshold,
            seed_erosion_px=params.seed_erosion_nm / pixel_nm,
            min_voxels=max(1, int(params.min_object_volume_um3 * 1e9 / voxel_nm3))), client)
        summaries = label_summary_blocks(store, grid, io.SEGMENTATION, client)
        timings["segment_s"] = time.perf_counter() - started
        progress(0.8, f"segmented {len(summaries)} neurons")
        # skeletons: one neuron's bounding box per task, never the whole volume
        started = time.perf_counter()
        skeletons = skeletonize_objects(store, summaries, spacing, TeasarSettings(
            scale=params.teasar_scale, const_nm=params.teasar_const_nm), shape=shape, name=io.SEGMENTATION, client=client)
        timings["skeleton_s"] = time.perf_counter() - started
        started = time.perf_counter()
        areas = contacts_blocks(store, grid, spacing, client=client)
        used_client = client is not None
    cables = {int(k): cable_length_nm(s) for k, s in skeletons.items()}
    graph = graph_from_tables(summaries, areas, spacing, min_area_nm2=params.min_contact_area_nm2, cable_nm=cables)
    timings["graph_s"] = time.perf_counter() - started
    progress(0.9, f"{len(skeletons)} skeletons, {graph.number_of_edges()} contacts")

    write_swc(skeletons, result / io.SKELETONS)
    write_graphml(graph, result / io.GRAPH)
    write_ngff(result, spacing, block=block)
    mask_fraction = float(np.mean([np.asarray(store.get(io.MASK)[z]).mean() for z in range(shape[0])]))
    unimaged_fraction = float(np.mean([np.asarray(store.get(UNIMAGED)[z]).mean() for z in range(shape[0])]))
    warnings = result_warnings(len(summaries), mask_fraction, params)
    import zarr

    zarr.open_group(str(result), mode="r+").attrs["warnings"] = warnings
    for warning in warnings:
        progress(0.99, f"WARNING: {warning}")
    if warnings and params.strict:
        raise SuspectResult("; ".join(warnings) + " (strict: the run fails; without strict it is a warning in the summary)")
    progress(1.0, f"wrote {RESULT_NAME}")
    return {
        "warnings": warnings,
        "input": root.name,
        "shape": list(shape),
        "scale_nm": list(spacing),
        "neurons": len(summaries),
        "skeletons": len(skeletons),
        "contacts": graph.number_of_edges(),
        "masked_fraction": round(mask_fraction, 4),
        "unimaged_fraction": round(unimaged_fraction, 4),
        "stitch_residual_px": round(float(np.max(stitch_residuals)), 4) if stitch_residuals else 0.0,
        "stitch_warnings": stitch_warnings,
        "cable_length_um": round(sum(cables.values()) / 1000, 3),
        **describe(grid),
        "split_over_workers": used_client,
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
    }


class SuspectResult(RtlibError):
    """A run whose result is not believable (no neuron segmented, most of the volume masked) with ``strict``."""


def result_warnings(neurons: int, masked_fraction: float, params: ConnectomicsParams) -> list[str]:
    """What a person must know before trusting the result; empty when nothing is suspect."""
    warnings = []
    if neurons == 0:
        warnings.append("no neuron was segmented: check the input's pixel size and contrast, or the U-Net weights")
    if masked_fraction > params.max_masked_fraction:
        warnings.append(f"{masked_fraction:.0%} of the volume is masked as no neuropil (more than max_masked_fraction = "
                        f"{params.max_masked_fraction:.0%}): the network may not recognise this tissue")
    return warnings


def stitch_align_mask(sections: list[Path], layout: io.Layout, params: ConnectomicsParams, result: Path,
                      progress: ProgressFn, timings: dict[str, float]) -> tuple[list[float], list[str]]:
    """Tiles, mosaic, aligned image and mask of every section, written to ``result`` one section at a time.

    Returns the stitching residual (px) of each section and the stitching warnings (also in the result's
    ``stitch_warnings`` attribute); a section whose tiles cannot be stitched is an InputDataError."""
    import zarr

    from .mask import fill_uncovered
    from .normalize import correct_tiles, normalize_section, tile_corrections
    from .stitch import fuse, stitch_section

    group = zarr.open_group(str(result), mode="r+")
    frame = layout.frame_shape
    pad = _CANVAS_PAD_PX
    canvas = (frame[0] + 2 * pad, frame[1] + 2 * pad)
    aligner = SectionAligner(frame, AlignSettings(
        patch_px=params.align_patch_px, stride_px=params.align_stride_px, mesh_spacing_px=params.align_mesh_spacing_px,
        smoothness=params.align_smoothness, max_shift_px=params.align_max_shift_px))
    keys = [(r, c) for r in range(layout.rows) for c in range(layout.cols)]
    residuals, warnings = [], []
    stitch_s = align_s = mask_s = 0.0
    for z, folder in enumerate(sections):
        tiles = io.read_section(folder, layout)
        started = time.perf_counter()
        stitched = stitch_section(tiles, (layout.rows, layout.cols), layout.overlap_px, upsample=params.stitch_upsample,
                                  section=f"section {folder.name} ({folder})")
        warnings.extend(stitched.warnings)
        # per tile: gains and offsets matched across the overlaps; per section: percentile anchors (``normalize``)
        corrected = correct_tiles(tiles, tile_corrections(tiles, stitched.positions_px))
        mosaic, cov = fuse(corrected, stitched.positions_px, canvas, (-pad, -pad))
        mosaic = normalize_section(mosaic, cov)
        residuals.append(stitched.residual_px)
        stitch_s += time.perf_counter() - started
        started = time.perf_counter()
        aligned, valid, _ = aligner.add(mosaic.astype(np.float32), cov, (-pad, -pad))
        image = np.clip(np.rint(aligned), 0, 255).astype(np.uint8)
        align_s += time.perf_counter() - started
        started = time.perf_counter()
        mask = ~valid  # unimaged pixels; what is no neuropil is found from the network's output (``mask``)
        image = fill_uncovered(image, valid)  # what the U-Net reads; the mask excludes these pixels
        mask_s += time.perf_counter() - started
        group[io.TILES][z] = np.stack([tiles[k] for k in keys])
        group[io.TILE_POSITIONS][z] = np.stack([stitched.positions_px[k] for k in keys])
        group[io.MOSAIC][z] = mosaic
        group[io.IMAGE][z] = image
        group[io.MASK][z] = mask
        group[UNIMAGED][z] = ~valid
        progress(0.45 * (z + 1) / len(sections), f"stitched, aligned and masked section {z + 1}/{len(sections)}")
    timings["stitch_s"] = stitch_s
    timings["align_s"] = align_s
    timings["mask_s"] = mask_s
    group.attrs["stitch_warnings"] = warnings
    return residuals, warnings


workload = Workload(
    name="connectomics",
    params_model=ConnectomicsParams,
    run=run,
    description="EM tiles to neurons: stitch, align, mask, 3D U-Net segmentation, kimimaro skeletons, contact graph (Zarr)",
)
